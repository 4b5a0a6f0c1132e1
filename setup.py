"""Builds pg_llm_cy, the Python package, with pg_llm_cy._kernels compiled from
the very same pyx/_kernels.pyx that the PGXS Makefile links into pg_llm.so.

    pip install .            # kernels + client + CLI
    PG_LLM_DEBUG=1 pip install .    # bounds checks in the memoryview wrappers
"""
import os
import sys

from setuptools import Extension, setup
from Cython.Build import cythonize

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "pyx"))
import build_config  # noqa: E402  (pyx/build_config.py: one place for flags)

kernels = Extension(
    "pg_llm_cy._kernels",
    ["pyx/_kernels.pyx"],
    include_dirs=["pyx"],
    depends=[os.path.join("pyx", f) for f in os.listdir("pyx")
             if f.endswith((".pxi", ".pxd", ".h"))],
    extra_compile_args=build_config.kernel_cflags() + ["-Wno-unused-function"],
    extra_link_args=["-fopenmp", "-lz"],
)

setup(
    ext_modules=cythonize(
        [kernels],
        compiler_directives=build_config.DIRECTIVES,
        build_dir="build/cython-py",
        include_path=["pyx"],
    ),
)
