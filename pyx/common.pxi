# Shared helpers of the kernels: status codes, CPU dispatch, thread counts,
# vectorisable math, a counter-based RNG and aligned scratch memory.
#
# Pitfall: in the server build the Cython module's init function never runs,
# so a module-level `cdef int x = 5` would stay 0 there.  Globals that need an
# initial value are C statics (verbatim C below); everything else is computed
# on first use.

cdef extern from "pg_llm_kernels.h" nogil:
    enum:
        PGLLM_OK
        PGLLM_INTERRUPTED
        PGLLM_ENOMEM
        PGLLM_EINVAL
        PGLLM_EFORMAT
        PGLLM_NO_TRANS
        PGLLM_TRANS
        PGLLM_OVERWRITE
        PGLLM_ACCUMULATE
    bint PGLLM_CANCELLED(const int *p)

cdef extern from *:
    """
    static int pgllm__avx512 = -1;         /* -1: not probed yet */
    static int pgllm__force_portable = 0;
    static int pgllm__probe_avx512(void)
    {
    #if defined(__GNUC__) && defined(__x86_64__)
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl")
            && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq");
    #else
        return 0;
    #endif
    }
    """
    int pgllm__avx512
    int pgllm__force_portable
    int pgllm__probe_avx512() nogil

cdef extern from "<stdlib.h>" nogil:
    void *aligned_alloc(size_t alignment, size_t size)

cdef public int pgllm_cpu_has_avx512() noexcept nogil:
    global pgllm__avx512
    if pgllm__avx512 < 0:
        pgllm__avx512 = pgllm__probe_avx512()
    return pgllm__avx512 and not pgllm__force_portable

cdef public void pgllm_set_force_portable(int force) noexcept nogil:
    global pgllm__force_portable
    pgllm__force_portable = force

cdef public int pgllm_omp_team_size() noexcept nogil:
    cdef int n = 0
    cdef int *pn = &n           # names assigned inside parallel() are private
    with parallel():
        if openmp.omp_get_thread_num() == 0:
            pn[0] = openmp.omp_get_num_threads()
    return n

cdef enum:
    # below this many elements an elementwise op runs on one thread: a team
    # wake-up costs more than the loop
    SERIAL_ELEMS = 1 << 15
    # elementwise ops are cut into chunks of this size; the cancel flag is
    # polled once per chunk
    CHUNK = 1 << 14
    VEC = 16                    # lanes of the explicit multi-accumulator reductions

cdef inline int _threads_for(int64_t work) noexcept nogil:
    """OpenMP team size for a loop of `work` elements."""
    if work < SERIAL_ELEMS:
        return 1
    return openmp.omp_get_max_threads()

cdef inline float *_alloc_floats(int64_t n) noexcept nogil:
    """64-byte aligned scratch (NULL on failure); free with free()."""
    cdef size_t nbytes = <size_t> n * sizeof(float)
    nbytes = (nbytes + 63) & ~(<size_t> 63)
    if nbytes == 0:
        nbytes = 64
    return <float *> aligned_alloc(64, nbytes)

# ---------------------------------------------------------------------------
# Vectorisable math.  fminf/fmaxf are library calls unless -ffinite-math-only
# (their NaN rules differ from the min/max instructions); a plain comparison
# compiles to vminps/vmaxps.
# ---------------------------------------------------------------------------
cdef inline float _fmax(float a, float b) noexcept nogil:
    return a if a > b else b

cdef inline float _fmin(float a, float b) noexcept nogil:
    return a if a < b else b

# ---------------------------------------------------------------------------
# Vectorisable math (continued).  libm's expf/tanhf are scalar calls that stop gcc from
# vectorising a loop; these are straight-line arithmetic that it vectorises.
# ---------------------------------------------------------------------------
cdef union _f32bits:
    float f
    int32_t i

cdef inline float _exp(float x) noexcept nogil:
    """exp(x), relative error < 2e-7 on the normal range; 0 below -87.3.

    Cephes' expf: x = n*ln2 + r with |r| <= ln2/2, a degree-6 polynomial for
    e^r, and 2^n built in the exponent bits.  Every constant is cast to float:
    a double literal would turn the whole loop into double arithmetic."""
    cdef float xc = _fmin(_fmax(x, <float> -87.33654), <float> 88.72283)
    # round to nearest by adding and removing 1.5 * 2^23 (floorf is a libm
    # call without -fno-trapping-math)
    cdef float n = (xc * <float> 1.44269504088896341 + <float> 12582912.0) - <float> 12582912.0
    cdef float r = xc - n * <float> 0.693359375
    cdef float p
    cdef _f32bits scale
    r = r + n * <float> 2.12194440e-4
    p = <float> 1.9875691500e-4
    p = p * r + <float> 1.3981999507e-3
    p = p * r + <float> 8.3334519073e-3
    p = p * r + <float> 4.1665795894e-2
    p = p * r + <float> 1.6666665459e-1
    p = p * r + <float> 5.0000001201e-1
    p = p * r * r + r + <float> 1.0
    scale.i = (<int32_t> n + 127) << 23
    if x < <float> -87.33654:
        return 0.0
    return p * scale.f

cdef inline float _sum(const float *x, int64_t n) noexcept nogil:
    """Sum with VEC independent lanes (vectorises without -ffast-math)."""
    cdef float acc[VEC]
    cdef int64_t i, l
    cdef int64_t nv = n - n % VEC
    cdef float s = 0.0
    for l in range(VEC):
        acc[l] = 0.0
    i = 0
    while i < nv:
        for l in range(VEC):
            acc[l] = acc[l] + x[i + l]
        i = i + VEC
    for l in range(VEC):
        s = s + acc[l]
    for i in range(nv, n):
        s = s + x[i]
    return s

cdef inline float _dot(const float *x, const float *y, int64_t n) noexcept nogil:
    """Dot product with 2*VEC independent lanes."""
    cdef float acc[2 * VEC]
    cdef int64_t i, l
    cdef int64_t nv = n - n % (2 * VEC)
    cdef float s = 0.0
    for l in range(2 * VEC):
        acc[l] = 0.0
    i = 0
    while i < nv:
        for l in range(2 * VEC):
            acc[l] = acc[l] + x[i + l] * y[i + l]
        i = i + 2 * VEC
    for l in range(2 * VEC):
        s = s + acc[l]
    for i in range(nv, n):
        s = s + x[i] * y[i]
    return s

cdef inline float _max(const float *x, int64_t n) noexcept nogil:
    cdef float m = x[0]
    cdef int64_t i
    for i in range(1, n):
        m = _fmax(m, x[i])
    return m

# ---------------------------------------------------------------------------
# Counter-based random numbers: value i of stream `seed` is a pure function
# of (seed, i), so results do not depend on thread count or call history
# (dropout masks, batch sampling and token sampling are reproducible).
# ---------------------------------------------------------------------------
cdef inline uint64_t _mix64(uint64_t z) noexcept nogil:
    """splitmix64's finaliser (a bijection with good avalanche)."""
    z = (z ^ (z >> 30)) * <uint64_t> 0xbf58476d1ce4e5b9ULL
    z = (z ^ (z >> 27)) * <uint64_t> 0x94d049bb133111ebULL
    return z ^ (z >> 31)

cdef inline uint64_t _rand_u64(uint64_t seed, uint64_t i) noexcept nogil:
    return _mix64(_mix64(seed + <uint64_t> 0x9e3779b97f4a7c15ULL) + i * <uint64_t> 0x9e3779b97f4a7c15ULL)

cdef public uint64_t pgllm_rand_u64(uint64_t seed, uint64_t i) noexcept nogil:
    return _rand_u64(seed, i)


cdef inline float _rand_uniform(uint64_t seed, uint64_t i) noexcept nogil:
    """Uniform in [0, 1) with 24 random bits."""
    return <float> (_rand_u64(seed, i) >> 40) * <float> (1.0 / 16777216.0)

cdef inline double _rand_uniform64(uint64_t seed, uint64_t i) noexcept nogil:
    """Uniform in [0, 1) with 53 random bits."""
    return <double> (_rand_u64(seed, i) >> 11) * (1.0 / 9007199254740992.0)


def rand_uniform_into(uint64_t seed, float[::1] out):
    """First len(out) values of the uniform stream `seed` (tests)."""
    cdef Py_ssize_t i
    for i in range(out.shape[0]):
        out[i] = _rand_uniform(seed, i)


def cpu_has_avx512():
    return bool(pgllm_cpu_has_avx512())


def set_force_portable(bint force):
    """Use the AVX2 code path even where AVX-512 exists (tests, benchmarks)."""
    pgllm_set_force_portable(force)


def omp_team_size():
    return pgllm_omp_team_size()


def set_num_threads(int n):
    openmp.omp_set_num_threads(n)


def get_max_threads():
    return openmp.omp_get_max_threads()


def exp_into(const float[::1] x, float[::1] out):
    """The kernels' vectorised exp (tests compare it with numpy)."""
    cdef Py_ssize_t i
    if out.shape[0] != x.shape[0]:
        raise ValueError("exp_into: sizes differ")
    for i in range(x.shape[0]):
        out[i] = _exp(x[i])


cdef double _sum_chunk(const float *x, int64_t n) noexcept nogil:
    return _sum(x, n)


def memory_read_bandwidth(int64_t nbytes=1 << 29, int reps=5):
    """GB/s of an OpenMP streaming read of nbytes (best of reps), with the
    current thread count: the ceiling of memory-bound kernels (benchmarks)."""
    import numpy as np
    import time
    cdef int64_t n = nbytes // 4, c, nchunks
    buf = np.ones(n, np.float32)
    cdef float[::1] b = buf
    cdef double best = 1e30, t0
    cdef double *part
    nchunks = (n + CHUNK - 1) // CHUNK
    part = <double *> malloc(nchunks * sizeof(double))
    for _ in range(reps):
        t0 = time.perf_counter()
        with nogil:
            for c in prange(nchunks, num_threads=openmp.omp_get_max_threads(), schedule='static'):
                part[c] = _sum_chunk(&b[c * CHUNK], min(<int64_t> CHUNK, n - c * CHUNK))
        best = min(best, time.perf_counter() - t0)
    free(part)
    return nbytes / best / 1e9
