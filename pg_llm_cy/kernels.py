"""The Cython kernels that pg_llm.so runs in the server, for Python.

Every function here is the same compiled code as the server's (pyx/), reached
through typed-memoryview wrappers: numpy float32 arrays in, numpy out.
"""
from pg_llm_cy._kernels import *  # noqa: F401,F403
from pg_llm_cy._kernels import _check_status  # noqa: F401
