"""pg_llm_cy: pg_llm's kernels for Python, and a client for the extension.

    from pg_llm_cy import kernels       # the Cython kernels (numpy in/out)
"""
import os as _os
import sys as _sys

__version__ = "0.5.0"


def _compiled(d):
    return any(f.startswith("_kernels.") and f.endswith((".so", ".pyd")) for f in _os.listdir(d))


# Run from the repository's root (`python -m pg_llm_cy ...`), this is the
# source tree's package, without the compiled kernels: an installed copy's
# serve instead (pip install . builds them there).
_here = _os.path.dirname(_os.path.abspath(__file__))
if not _compiled(_here):
    for _d in _sys.path:
        _cand = _os.path.join(_d or ".", "pg_llm_cy")
        if _os.path.isdir(_cand) and _os.path.realpath(_cand) != _os.path.realpath(_here) and _compiled(_cand):
            __path__.append(_cand)
            break
