"""Build settings shared by the two builds of pyx/_kernels.pyx.

setup.py imports this module; the PGXS Makefile runs it as a script to get
the same values on its command line.  One place for Cython directives and
code-generation flags, so the Python package and pg_llm.so are compiled alike.

Environment:
  PG_LLM_DEBUG=1         bounds/initialisation checks in the Python-facing
                         wrappers, -O1 -g (the server kernels use raw
                         pointers and are unaffected by Cython's checks)
  PG_LLM_MARCH=native    opt in to -march=native (default: x86-64-v3 with an
                         AVX-512 path picked at run time)
"""
import os
import platform
import sys

DEBUG = os.environ.get("PG_LLM_DEBUG", "0") not in ("", "0")

DIRECTIVES = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": False,
    "initializedcheck": DEBUG,
    "nonecheck": DEBUG,
    "cdivision": True,
    "overflowcheck": False,
    "infer_types": False,
    "embedsignature": True,
}


def march_flags():
    march = os.environ.get("PG_LLM_MARCH", "").strip()
    if march:
        return [f"-march={march}"]
    if platform.machine() in ("x86_64", "AMD64"):
        return ["-march=x86-64-v3", "-mtune=generic"]
    return []


def kernel_cflags():
    opt = ["-O1", "-g"] if DEBUG else ["-O3"]
    return opt + march_flags() + ["-fopenmp", "-ffunction-sections", "-fdata-sections",
                                  "-fno-math-errno",
                                  # no FP trap is ever enabled: lets gcc if-convert and
                                  # vectorise loops with selects (exp clamps, max)
                                  "-fno-trapping-math"]


def cython_cli_directives():
    return " ".join(f"-X {k}={v}" for k, v in DIRECTIVES.items())


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "directives"
    if what == "directives":
        print(cython_cli_directives())
    elif what == "cflags":
        print(" ".join(kernel_cflags()))
    else:
        raise SystemExit(f"unknown query {what!r}")
