"""pg_llm's numeric kernels, compiled twice from this one source:

  * into pg_llm.so for PostgreSQL (PGXS Makefile): only the `cdef public ...
    noexcept nogil` functions are used there, through pg_llm_kernels.h; no
    Python interpreter exists in the server;
  * into the Python extension pg_llm_cy._kernels (setup.py): the `def`
    wrappers taking typed memoryviews, for tests, benchmarks and tools.

Every kernel is a `cdef` core on raw pointers with explicit shapes; long ones
poll a cancel flag once per tile and return a status (pg_llm_kernels.h).

Where things are (in include order, below):
  * GEMM, every matrix product: gemm.pxi (tiled; the reference beside it);
  * layer ops, each forward beside its backward (GELU, softmax, layernorm,
    cross-entropy, dropout, AdamW, clipping): ops.pxi; attention:
    attention.pxi;
  * GPT-2: the parameter table, init and the inference forward with a KV
    cache in gpt2.pxi; the training forward and backward, layer by layer, in
    gpt2_train.pxi; choosing the next token (sampling, beam step) in
    decode.pxi;
  * text and files: utf8.pxi, json.pxi, bpe.pxi (the tokenizer), parsers.pxi
    (.npz, .safetensors).
ARCHITECTURE.md maps every SQL function to its C entry (pyx/shim/) and the
kernels it calls.

One compilation unit on purpose: cimporting cdef functions from another
Cython module resolves them at import time through Python (capsules), which
never happens inside the server.  The parts are therefore `include`d.

Rules for code in the cores (ARCHITECTURE.md has the rest of the ABI):
  * never `with nogil` or `prange(..., nogil=True)` inside a nogil function:
    Cython then emits GIL-state calls that abort a backend;
  * inside prange, `x += y` is a reduction: write `x = x + y`;
  * take private row pointers inside prange loops: indexing shared arrays
    there stops gcc from vectorising under -fno-strict-aliasing;
  * every prange/parallel names its num_threads explicitly;
  * module-level cdef variables are never initialised in the server (the
    module init does not run): use C statics or lazy initialisation.

Compiler directives are set in pyx/build_config.py (one place for both builds).
"""
from cython.parallel cimport prange, parallel, threadid
from libc.stdlib cimport malloc, calloc, realloc, free, qsort
from libc.string cimport memset, memcpy, memcmp, memchr
from libc.stdint cimport int64_t, int32_t, uint64_t, uint32_t, uint8_t, uint16_t, int8_t
from libc.math cimport sqrtf, sqrt, fabsf, fabs, floorf, logf, log, cos, sin, pow, M_PI
cimport openmp

include "common.pxi"
include "gemm.pxi"
include "ops.pxi"
include "attention.pxi"
include "gpt2.pxi"
include "decode.pxi"
include "gpt2_train.pxi"
include "utf8.pxi"
include "json.pxi"
include "bpe.pxi"
include "parsers.pxi"
