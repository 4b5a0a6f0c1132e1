"""pg_llm_cy: pg_llm's kernels for Python, and a client for the extension.

    from pg_llm_cy import kernels       # the Cython kernels (numpy in/out)
"""
__version__ = "0.2.0"
