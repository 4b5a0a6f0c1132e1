# Elementwise and row-wise ops, each forward beside its backward.
#
# Parallel strategy: elementwise ops split the array into CHUNK-sized pieces
# (prange, static schedule); row-wise ops split rows.  Reductions across rows
# (dgamma, dbeta, column sums) split columns instead, so each output element
# is summed by one thread in row order: the result does not depend on the
# thread count.  The cancel flag is polled once per chunk or row.

cdef enum:
    COL_BLOCK = 64      # columns per task in column reductions

cdef inline int _status(const int *cancel) noexcept nogil:
    return PGLLM_INTERRUPTED if PGLLM_CANCELLED(cancel) else PGLLM_OK

# ---------------------------------------------------------------------------
# add / scale / fill
# ---------------------------------------------------------------------------
cdef public int pgllm_add(const float *a, const float *b, float *out, int64_t n) noexcept nogil:
    cdef int64_t c, i, lo, hi
    cdef int64_t nchunks = (n + CHUNK - 1) // CHUNK
    cdef const float *pa
    cdef const float *pb
    cdef float *po
    for c in prange(nchunks, num_threads=_threads_for(n), schedule='static'):
        lo = c * CHUNK
        hi = min(lo + CHUNK, n)
        pa = a + lo
        pb = b + lo
        po = out + lo
        for i in range(hi - lo):
            po[i] = pa[i] + pb[i]
    return PGLLM_OK


cdef public int pgllm_scale(float *x, int64_t n, float alpha) noexcept nogil:
    cdef int64_t c, i, lo, hi
    cdef int64_t nchunks = (n + CHUNK - 1) // CHUNK
    cdef float *px
    for c in prange(nchunks, num_threads=_threads_for(n), schedule='static'):
        lo = c * CHUNK
        hi = min(lo + CHUNK, n)
        px = x + lo
        for i in range(hi - lo):
            px[i] = px[i] * alpha
    return PGLLM_OK


cdef public int pgllm_fill(float *x, int64_t n, float value) noexcept nogil:
    cdef int64_t i
    for i in range(n):
        x[i] = value
    return PGLLM_OK


cdef public int pgllm_all_finite(const float *x, int64_t n) noexcept nogil:
    """1 if no element is NaN or +-Inf.  |v| <= FLT_MAX is false for both."""
    cdef int64_t i
    cdef int bad = 0
    for i in range(n):
        bad = bad | (not (fabsf(x[i]) <= <float> 3.4028234663852886e38))
    return not bad


cdef inline double _sum_squares_serial(const float *x, int64_t n) noexcept nogil:
    cdef double acc[8]
    cdef int64_t i = 0
    cdef int l
    for l in range(8):
        acc[l] = 0.0
    while i + 8 <= n:
        for l in range(8):
            acc[l] = acc[l] + <double> x[i + l] * x[i + l]
        i = i + 8
    while i < n:
        acc[0] = acc[0] + <double> x[i] * x[i]
        i = i + 1
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))


cdef public double pgllm_sum_squares(const float *x, int64_t n) noexcept nogil:
    """sum(x^2) in double; per-chunk partial sums are added in chunk order,
    so the result does not depend on the thread count."""
    cdef int64_t nchunks = (n + CHUNK - 1) // CHUNK
    cdef double *partial
    cdef double total = 0.0
    cdef int64_t c, lo
    if n <= 0:
        return 0.0
    partial = <double *> malloc(nchunks * sizeof(double))
    if partial == NULL:
        for c in range(nchunks):
            lo = c * CHUNK
            total = total + _sum_squares_serial(x + lo, min(<int64_t> CHUNK, n - lo))
        return total
    for c in prange(nchunks, num_threads=_threads_for(n), schedule='static'):
        lo = c * CHUNK
        partial[c] = _sum_squares_serial(x + lo, min(<int64_t> CHUNK, n - lo))
    for c in range(nchunks):
        total = total + partial[c]
    free(partial)
    return total


# ---------------------------------------------------------------------------
# checksum64: the integrity check of the shared weight cache's files
# ---------------------------------------------------------------------------
# xxHash64's accumulation round on four lanes of 8-byte words, per 1 MB
# block; the block sums are then folded in block order, so the result does
# not depend on the thread count.  Not xxHash64 itself (no need to match it):
# every round is a bijection of its lane, so any one changed word changes
# the block's sum; the final mix is the RNG's (_mix64, common.pxi).
cdef enum:
    CHECKSUM_BLOCK = 1 << 20

cdef extern from *:
    """
    #define PGLLM_XP1 UINT64_C(11400714785074694791)
    #define PGLLM_XP2 UINT64_C(14029467366897019727)
    #define PGLLM_XP3 UINT64_C(1609587929392839161)
    """
    const uint64_t _XP1 "PGLLM_XP1"
    const uint64_t _XP2 "PGLLM_XP2"
    const uint64_t _XP3 "PGLLM_XP3"

cdef inline uint64_t _rotl64(uint64_t x, int r) noexcept nogil:
    return (x << r) | (x >> (64 - r))


cdef uint64_t _checksum_block(const uint8_t *p, int64_t n, uint64_t seed) noexcept nogil:
    """The plain reference: one block, serial."""
    cdef uint64_t acc[4]
    cdef uint64_t w, h
    cdef int64_t i = 0
    cdef int l
    for l in range(4):
        acc[l] = seed + <uint64_t> (l + 1) * _XP1
    while i + 32 <= n:
        for l in range(4):
            memcpy(&w, p + i + 8 * l, 8)
            acc[l] = _rotl64(acc[l] + w * _XP2, 31) * _XP1
        i = i + 32
    h = _rotl64(acc[0], 1) + _rotl64(acc[1], 7) + _rotl64(acc[2], 12) + _rotl64(acc[3], 18)
    while i < n:
        h = _rotl64(h ^ (<uint64_t> p[i] * _XP3), 11) * _XP1
        i = i + 1
    return _mix64(h ^ <uint64_t> n)


cdef public uint64_t pgllm_checksum64(const void *data, int64_t nbytes) noexcept nogil:
    """A 64-bit checksum of nbytes at data.  Parallel over 1 MB blocks
    (each thread sums whole blocks into its slot; the fold is serial)."""
    cdef const uint8_t *p = <const uint8_t *> data
    cdef int64_t nblocks = (nbytes + CHECKSUM_BLOCK - 1) // CHECKSUM_BLOCK
    cdef uint64_t *partial
    cdef uint64_t h = <uint64_t> nbytes * _XP3
    cdef int64_t b
    if nbytes <= 0:
        return _mix64(h)
    partial = <uint64_t *> malloc(nblocks * sizeof(uint64_t))
    if partial == NULL:
        for b in range(nblocks):
            h = _rotl64(h ^ _checksum_block(p + b * CHECKSUM_BLOCK,
                                            min(<int64_t> CHECKSUM_BLOCK, nbytes - b * CHECKSUM_BLOCK),
                                            <uint64_t> b), 27) * _XP1
        return _mix64(h)
    for b in prange(nblocks, num_threads=_threads_for(nbytes // 4), schedule='static'):
        partial[b] = _checksum_block(p + b * CHECKSUM_BLOCK,
                                     min(<int64_t> CHECKSUM_BLOCK, nbytes - b * CHECKSUM_BLOCK),
                                     <uint64_t> b)
    for b in range(nblocks):
        h = _rotl64(h ^ partial[b], 27) * _XP1
    free(partial)
    return _mix64(h)


cdef public double pgllm_mean(const float *x, int64_t n) noexcept nogil:
    cdef double s = 0.0
    cdef int64_t i
    if n <= 0:
        return 0.0
    for i in range(n):
        s = s + x[i]
    return s / n


cdef public double pgllm_clip_scale(const float *g, int64_t n, double max_norm,
                                    double *norm) noexcept nogil:
    norm[0] = sqrt(pgllm_sum_squares(g, n))
    if max_norm <= 0:
        return 1.0
    return min(1.0, max_norm / (norm[0] + 1e-6))


cdef public double pgllm_clip_by_norm(const float *g, float *out, int64_t n,
                                      float max_norm) noexcept nogil:
    cdef double norm
    cdef double coef = pgllm_clip_scale(g, n, max_norm, &norm)
    if out != g:
        memcpy(out, g, n * sizeof(float))
    if coef < 1.0:
        pgllm_scale(out, n, <float> coef)
    return norm


# ---------------------------------------------------------------------------
# GELU, GPT-2's tanh form: 0.5 x (1 + tanh(k (x + 0.044715 x^3))), k = sqrt(2/pi)
# computed as x * sigmoid(2u) (the same function, no cancellation near 0)
# ---------------------------------------------------------------------------
cdef inline void _gelu_range(const float *x, float *y, int64_t n) noexcept nogil:
    cdef int64_t i
    cdef float v, u
    cdef float k = <float> 0.7978845608028654
    for i in range(n):
        v = x[i]
        u = k * (v + <float> 0.044715 * v * v * v)
        y[i] = v / (<float> 1.0 + _exp(<float> -2.0 * u))


cdef inline void _gelu_backward_range(const float *x, const float *dy, float *dx,
                                      int64_t n) noexcept nogil:
    cdef int64_t i
    cdef float v, u, s, d
    cdef float k = <float> 0.7978845608028654
    for i in range(n):
        v = x[i]
        u = k * (v + <float> 0.044715 * v * v * v)
        s = <float> 1.0 / (<float> 1.0 + _exp(<float> -2.0 * u))
        d = s + v * <float> 2.0 * s * (<float> 1.0 - s) * k * (<float> 1.0 + <float> 0.134145 * v * v)
        dx[i] = dy[i] * d


cdef public int pgllm_gelu_forward(const float *x, float *y, int64_t n,
                                   const int *cancel) noexcept nogil:
    cdef int64_t c, lo, hi
    cdef int64_t nchunks = (n + CHUNK - 1) // CHUNK
    for c in prange(nchunks, num_threads=_threads_for(n), schedule='static'):
        if PGLLM_CANCELLED(cancel):
            continue
        lo = c * CHUNK
        hi = min(lo + CHUNK, n)
        _gelu_range(x + lo, y + lo, hi - lo)
    return _status(cancel)


cdef public int pgllm_gelu_backward(const float *x, const float *dy, float *dx, int64_t n,
                                    const int *cancel) noexcept nogil:
    cdef int64_t c, lo, hi
    cdef int64_t nchunks = (n + CHUNK - 1) // CHUNK
    for c in prange(nchunks, num_threads=_threads_for(n), schedule='static'):
        if PGLLM_CANCELLED(cancel):
            continue
        lo = c * CHUNK
        hi = min(lo + CHUNK, n)
        _gelu_backward_range(x + lo, dy + lo, dx + lo, hi - lo)
    return _status(cancel)


# ---------------------------------------------------------------------------
# softmax over rows: y = exp(x - max) / sum;  dx = y * (dy - sum(dy * y))
# ---------------------------------------------------------------------------
cdef inline void _softmax_row(const float *x, float *y, int64_t n) noexcept nogil:
    cdef int64_t i
    cdef float m = _max(x, n)
    cdef float s, inv
    for i in range(n):
        y[i] = _exp(x[i] - m)
    s = _sum(y, n)
    inv = <float> 1.0 / s
    for i in range(n):
        y[i] = y[i] * inv


cdef public int pgllm_softmax_forward(const float *x, float *y, int64_t rows, int64_t cols,
                                      const int *cancel) noexcept nogil:
    cdef int64_t r
    for r in prange(rows, num_threads=_threads_for(rows * cols), schedule='static'):
        if PGLLM_CANCELLED(cancel):
            continue
        _softmax_row(x + r * cols, y + r * cols, cols)
    return _status(cancel)


cdef public int pgllm_softmax_backward(const float *y, const float *dy, float *dx,
                                       int64_t rows, int64_t cols,
                                       const int *cancel) noexcept nogil:
    cdef int64_t r, i
    cdef float s
    cdef const float *yr
    cdef const float *dyr
    cdef float *dxr
    for r in prange(rows, num_threads=_threads_for(rows * cols), schedule='static'):
        if PGLLM_CANCELLED(cancel):
            continue
        yr = y + r * cols
        dyr = dy + r * cols
        dxr = dx + r * cols
        s = _dot(yr, dyr, cols)
        for i in range(cols):
            dxr[i] = yr[i] * (dyr[i] - s)
    return _status(cancel)


# ---------------------------------------------------------------------------
# layernorm over the last dimension (biased variance, as GPT-2/torch)
# ---------------------------------------------------------------------------
cdef inline void _ln_stats(const float *x, int64_t n, float eps,
                           float *mean_out, float *rstd_out) noexcept nogil:
    cdef int64_t i
    cdef float m = _sum(x, n) / n
    cdef float acc[VEC]
    cdef float v = 0.0, d
    cdef int64_t nv = n - n % VEC
    cdef int l
    for l in range(VEC):
        acc[l] = 0.0
    i = 0
    while i < nv:
        for l in range(VEC):
            d = x[i + l] - m
            acc[l] = acc[l] + d * d
        i = i + VEC
    for l in range(VEC):
        v = v + acc[l]
    for i in range(nv, n):
        d = x[i] - m
        v = v + d * d
    mean_out[0] = m
    rstd_out[0] = <float> 1.0 / sqrtf(v / n + eps)


cdef inline void _layernorm_row(const float *x, const float *gamma, const float *beta,
                                float *y, int64_t n, float eps,
                                float *mean_out, float *rstd_out) noexcept nogil:
    cdef float m, rs
    cdef int64_t i
    _ln_stats(x, n, eps, &m, &rs)
    for i in range(n):
        y[i] = (x[i] - m) * rs * gamma[i] + beta[i]
    if mean_out != NULL:
        mean_out[0] = m
    if rstd_out != NULL:
        rstd_out[0] = rs


cdef public int pgllm_layernorm_forward(const float *x, const float *gamma, const float *beta,
                                        float *y, float *mean, float *rstd,
                                        int64_t rows, int64_t cols, float eps,
                                        const int *cancel) noexcept nogil:
    cdef int64_t r
    for r in prange(rows, num_threads=_threads_for(rows * cols), schedule='static'):
        if PGLLM_CANCELLED(cancel):
            continue
        _layernorm_row(x + r * cols, gamma, beta, y + r * cols, cols, eps,
                       mean + r if mean != NULL else NULL,
                       rstd + r if rstd != NULL else NULL)
    return _status(cancel)


cdef public int pgllm_layernorm_backward(const float *x, const float *dy, const float *gamma,
                                         const float *mean, const float *rstd, float eps,
                                         float *dx, float *dgamma, float *dbeta,
                                         int64_t rows, int64_t cols,
                                         const int *cancel) noexcept nogil:
    return _layernorm_backward(x, dy, gamma, mean, rstd, eps, dx, dgamma, dbeta, rows, cols, 0, 0,
                               cancel)


cdef int _layernorm_backward(const float *x, const float *dy, const float *gamma,
                             const float *mean, const float *rstd, float eps,
                             float *dx, float *dgamma, float *dbeta,
                             int64_t rows, int64_t cols, int dx_accumulate, int param_accumulate,
                             const int *cancel) noexcept nogil:
    """dx = rstd * (dy*g - mean(dy*g) - norm * mean(dy*g*norm)); dgamma = sum dy*norm;
    dbeta = sum dy.  Rows in parallel for dx, columns in parallel for dgamma/dbeta.
    With dx_accumulate dx is added to (the residual stream's gradient); with
    param_accumulate, dgamma and dbeta are (gradient accumulation)."""
    cdef float *stats = NULL
    cdef const float *mu = mean
    cdef const float *rs = rstd
    cdef int64_t r, i, cb, j0, j1, nblocks
    cdef float m, s, a, b, nrm, dn
    cdef const float *xr
    cdef const float *dyr
    cdef float *dxr
    cdef int nt = _threads_for(rows * cols)
    if mu == NULL or rs == NULL:
        stats = _alloc_floats(2 * rows)
        if stats == NULL:
            return PGLLM_ENOMEM
        for r in prange(rows, num_threads=nt, schedule='static'):
            _ln_stats(x + r * cols, cols, eps, &stats[r], &stats[rows + r])
        mu = stats
        rs = stats + rows
    for r in prange(rows, num_threads=nt, schedule='static'):
        if PGLLM_CANCELLED(cancel):
            continue
        xr = x + r * cols
        dyr = dy + r * cols
        dxr = dx + r * cols
        m = mu[r]
        s = rs[r]
        a = 0.0
        b = 0.0
        for i in range(cols):
            dn = dyr[i] * gamma[i]
            a = a + dn
            b = b + dn * (xr[i] - m) * s
        a = a / cols
        b = b / cols
        for i in range(cols):
            nrm = (xr[i] - m) * s
            if dx_accumulate:
                dxr[i] = dxr[i] + (dyr[i] * gamma[i] - a - nrm * b) * s
            else:
                dxr[i] = (dyr[i] * gamma[i] - a - nrm * b) * s
    nblocks = (cols + COL_BLOCK - 1) // COL_BLOCK
    for cb in prange(nblocks, num_threads=nt, schedule='static'):
        if PGLLM_CANCELLED(cancel):
            continue
        j0 = cb * COL_BLOCK
        j1 = min(j0 + COL_BLOCK, cols)
        _ln_param_grads(x, dy, mu, rs, dgamma, dbeta, rows, cols, j0, j1, param_accumulate)
    free(stats)
    return _status(cancel)


cdef inline void _ln_param_grads(const float *x, const float *dy, const float *mu,
                                 const float *rs, float *dgamma, float *dbeta,
                                 int64_t rows, int64_t cols, int64_t j0, int64_t j1,
                                 int accumulate) noexcept nogil:
    cdef int64_t r, j
    cdef float m, s
    cdef const float *xr
    cdef const float *dyr
    if not accumulate:
        for j in range(j0, j1):
            dgamma[j] = 0.0
            dbeta[j] = 0.0
    for r in range(rows):
        xr = x + r * cols
        dyr = dy + r * cols
        m = mu[r]
        s = rs[r]
        for j in range(j0, j1):
            dgamma[j] += dyr[j] * (xr[j] - m) * s
            dbeta[j] += dyr[j]


cdef public int pgllm_colsum(const float *X, float *out, int64_t rows, int64_t cols,
                             const int *cancel) noexcept nogil:
    return _colsum(X, out, rows, cols, 0, cancel)


cdef int _colsum(const float *X, float *out, int64_t rows, int64_t cols, int accumulate,
                 const int *cancel) noexcept nogil:
    """out (+)= column sums of X; columns split among threads, rows summed in order."""
    cdef int64_t cb, j0, j1, r, j
    cdef int64_t nblocks = (cols + COL_BLOCK - 1) // COL_BLOCK
    cdef const float *xr
    cdef float *o
    for cb in prange(nblocks, num_threads=_threads_for(rows * cols), schedule='static'):
        if PGLLM_CANCELLED(cancel):
            continue
        j0 = cb * COL_BLOCK
        j1 = min(j0 + COL_BLOCK, cols)
        o = out + j0
        if not accumulate:
            for j in range(j1 - j0):
                o[j] = 0.0
        for r in range(rows):
            xr = X + r * cols + j0
            for j in range(j1 - j0):
                o[j] = o[j] + xr[j]
    return _status(cancel)


# ---------------------------------------------------------------------------
# cross-entropy from logits: loss = logsumexp(x) - x[target]
# backward: scale * (softmax(x) - onehot(target))
# ---------------------------------------------------------------------------
cdef inline float _logsumexp_row(const float *x, int64_t n) noexcept nogil:
    cdef float m = _max(x, n)
    cdef float acc[VEC]
    cdef float s = 0.0
    cdef int64_t i
    cdef int64_t nv = n - n % VEC
    cdef int l
    for l in range(VEC):
        acc[l] = 0.0
    i = 0
    while i < nv:
        for l in range(VEC):
            acc[l] = acc[l] + _exp(x[i + l] - m)
        i = i + VEC
    for l in range(VEC):
        s = s + acc[l]
    for i in range(nv, n):
        s = s + _exp(x[i] - m)
    return m + logf(s)


cdef public int pgllm_cross_entropy_forward(const float *logits, const int32_t *targets,
                                            float *losses, int64_t rows, int64_t V,
                                            const int *cancel) noexcept nogil:
    cdef int64_t r
    cdef const float *x
    for r in prange(rows, num_threads=_threads_for(rows * V), schedule='static'):
        if PGLLM_CANCELLED(cancel):
            continue
        x = logits + r * V
        losses[r] = _logsumexp_row(x, V) - x[targets[r]]
    return _status(cancel)


cdef public int pgllm_cross_entropy_backward(const float *logits, const int32_t *targets,
                                             float *dlogits, int64_t rows, int64_t V,
                                             float scale, const int *cancel) noexcept nogil:
    cdef int64_t r, i
    cdef float lse
    cdef const float *x
    cdef float *d
    for r in prange(rows, num_threads=_threads_for(rows * V), schedule='static'):
        if PGLLM_CANCELLED(cancel):
            continue
        x = logits + r * V
        d = dlogits + r * V
        lse = _logsumexp_row(x, V)
        for i in range(V):
            d[i] = scale * _exp(x[i] - lse)
        d[targets[r]] = d[targets[r]] - scale
    return _status(cancel)


# ---------------------------------------------------------------------------
# dropout (inverted): keep element i iff uniform(seed, i) >= p, scale 1/(1-p)
# ---------------------------------------------------------------------------
cdef public int pgllm_dropout_forward(const float *x, float *y, int64_t n, float p,
                                      uint64_t seed, const int *cancel) noexcept nogil:
    cdef int64_t c, i, lo, hi
    cdef int64_t nchunks = (n + CHUNK - 1) // CHUNK
    cdef float scale = <float> 0.0 if p >= 1 else <float> 1.0 / (<float> 1.0 - p)
    for c in prange(nchunks, num_threads=_threads_for(n), schedule='static'):
        if PGLLM_CANCELLED(cancel):
            continue
        lo = c * CHUNK
        hi = min(lo + CHUNK, n)
        for i in range(lo, hi):
            y[i] = x[i] * scale if _rand_uniform(seed, i) >= p else <float> 0.0
    return _status(cancel)


cdef public int pgllm_dropout_backward_seeded(const float *dy, float *dx, int64_t n, float p,
                                              uint64_t seed, const int *cancel) noexcept nogil:
    return pgllm_dropout_forward(dy, dx, n, p, seed, cancel)


cdef public int pgllm_dropout_backward_masked(const float *x, const float *y, const float *dy,
                                              float *dx, int64_t n, float p,
                                              const int *cancel) noexcept nogil:
    """Mask recovered from the forward's output: dropped iff y == 0 and x != 0
    (an element with x == 0 counts as kept; use the seeded form to be exact)."""
    cdef int64_t c, i, lo, hi
    cdef int64_t nchunks = (n + CHUNK - 1) // CHUNK
    cdef float scale = <float> 0.0 if p >= 1 else <float> 1.0 / (<float> 1.0 - p)
    for c in prange(nchunks, num_threads=_threads_for(n), schedule='static'):
        if PGLLM_CANCELLED(cancel):
            continue
        lo = c * CHUNK
        hi = min(lo + CHUNK, n)
        for i in range(lo, hi):
            dx[i] = <float> 0.0 if (y[i] == 0 and x[i] != 0) else dy[i] * scale
    return _status(cancel)


# ---------------------------------------------------------------------------
# transpose (rows, cols) -> (cols, rows), in 32x32 tiles
# ---------------------------------------------------------------------------
cdef public int pgllm_transpose(const float *x, float *y, int64_t rows, int64_t cols,
                                const int *cancel) noexcept nogil:
    cdef int64_t nrb = (rows + 31) // 32
    cdef int64_t rb, cb, r, c, r0, r1, c0, c1
    for rb in prange(nrb, num_threads=_threads_for(rows * cols), schedule='static'):
        if PGLLM_CANCELLED(cancel):
            continue
        r0 = rb * 32
        r1 = min(r0 + 32, rows)
        c0 = 0
        while c0 < cols:
            c1 = min(c0 + 32, cols)
            for r in range(r0, r1):
                for c in range(c0, c1):
                    y[c * rows + r] = x[r * cols + c]
            c0 = c0 + 32
    return _status(cancel)


# ---------------------------------------------------------------------------
# AdamW (Loshchilov & Hutter; torch.optim.AdamW's arithmetic):
#   g = grad * grad_scale (clipping);  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
#   w = w - lr * wd * w - lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps)
# Not restartable (updates in place), so it polls no cancel flag.
# ---------------------------------------------------------------------------
cdef public int pgllm_adamw_step(float *w, const float *g, float *m, float *v, int64_t n,
                                 float lr, float beta1, float beta2, float eps,
                                 float weight_decay, int64_t step,
                                 float grad_scale) noexcept nogil:
    cdef int64_t c, i, lo, hi
    cdef int64_t nchunks = (n + CHUNK - 1) // CHUNK
    cdef float bc1 = <float> (1.0 - (<double> beta1) ** step)
    cdef float bc2_sqrt = <float> sqrt(1.0 - (<double> beta2) ** step)
    cdef float step_size = lr / bc1
    cdef float decay = <float> 1.0 - lr * weight_decay
    cdef float gi, mi, vi
    cdef float *pw
    cdef const float *pg
    cdef float *pm
    cdef float *pv
    for c in prange(nchunks, num_threads=_threads_for(n), schedule='static'):
        lo = c * CHUNK
        hi = min(lo + CHUNK, n)
        pw = w + lo
        pg = g + lo
        pm = m + lo
        pv = v + lo
        for i in range(hi - lo):
            gi = pg[i] * grad_scale
            mi = beta1 * pm[i] + (<float> 1.0 - beta1) * gi
            vi = beta2 * pv[i] + (<float> 1.0 - beta2) * gi * gi
            pm[i] = mi
            pv[i] = vi
            pw[i] = pw[i] * decay - step_size * mi / (sqrtf(vi) / bc2_sqrt + eps)
    return PGLLM_OK


cdef public double pgllm_lr_schedule(int64_t step, int64_t warmup, int64_t total,
                                     double lr_max, double lr_min) noexcept nogil:
    """nanoGPT's get_lr: linear warmup over `warmup` steps, then cosine decay
    from lr_max to lr_min until step `total`, lr_min after."""
    cdef double ratio
    if step < warmup:
        return lr_max * (step + 1) / (warmup + 1)
    if step > total:
        return lr_min
    if total <= warmup:
        return lr_min
    ratio = <double> (step - warmup) / <double> (total - warmup)
    return lr_min + 0.5 * (1.0 + cos(M_PI * ratio)) * (lr_max - lr_min)


# ---------------------------------------------------------------------------
# Python wrappers: typed memoryviews in, outputs written in place; shapes are
# checked here (pg_llm_cy/kernels.py adds numpy conveniences on top)
# ---------------------------------------------------------------------------
def _same(Py_ssize_t a, Py_ssize_t b, what):
    if a != b:
        raise ValueError(f"{what}: sizes differ ({a} vs {b})")


def add_into(const float[::1] a, const float[::1] b, float[::1] out):
    _same(a.shape[0], b.shape[0], "add"); _same(a.shape[0], out.shape[0], "add")
    if a.shape[0]:
        with nogil:
            pgllm_add(&a[0], &b[0], &out[0], a.shape[0])


def gelu_forward(const float[::1] x, float[::1] y):
    _same(x.shape[0], y.shape[0], "gelu")
    cdef int rc = 0
    if x.shape[0]:
        with nogil:
            rc = pgllm_gelu_forward(&x[0], &y[0], x.shape[0], NULL)
    _check_status(rc)


def gelu_backward(const float[::1] x, const float[::1] dy, float[::1] dx):
    _same(x.shape[0], dy.shape[0], "gelu_backward"); _same(x.shape[0], dx.shape[0], "gelu_backward")
    cdef int rc = 0
    if x.shape[0]:
        with nogil:
            rc = pgllm_gelu_backward(&x[0], &dy[0], &dx[0], x.shape[0], NULL)
    _check_status(rc)


def softmax_forward(const float[:, ::1] x, float[:, ::1] y):
    _same(x.shape[0] * x.shape[1], y.shape[0] * y.shape[1], "softmax")
    cdef int rc = 0
    if x.shape[0] and x.shape[1]:
        with nogil:
            rc = pgllm_softmax_forward(&x[0, 0], &y[0, 0], x.shape[0], x.shape[1], NULL)
    _check_status(rc)


def softmax_backward(const float[:, ::1] y, const float[:, ::1] dy, float[:, ::1] dx):
    _same(y.shape[0] * y.shape[1], dy.shape[0] * dy.shape[1], "softmax_backward")
    _same(y.shape[0] * y.shape[1], dx.shape[0] * dx.shape[1], "softmax_backward")
    cdef int rc = 0
    if y.shape[0] and y.shape[1]:
        with nogil:
            rc = pgllm_softmax_backward(&y[0, 0], &dy[0, 0], &dx[0, 0], y.shape[0], y.shape[1], NULL)
    _check_status(rc)


def layernorm_forward(const float[:, ::1] x, const float[::1] gamma, const float[::1] beta,
                      float[:, ::1] y, float[::1] mean, float[::1] rstd, float eps=1e-5):
    cdef Py_ssize_t rows = x.shape[0], cols = x.shape[1]
    _same(gamma.shape[0], cols, "layernorm gamma"); _same(beta.shape[0], cols, "layernorm beta")
    _same(y.shape[0] * y.shape[1], rows * cols, "layernorm y")
    _same(mean.shape[0], rows, "layernorm mean"); _same(rstd.shape[0], rows, "layernorm rstd")
    cdef int rc = 0
    if rows and cols:
        with nogil:
            rc = pgllm_layernorm_forward(&x[0, 0], &gamma[0], &beta[0], &y[0, 0], &mean[0], &rstd[0],
                                         rows, cols, eps, NULL)
    _check_status(rc)


def layernorm_backward(const float[:, ::1] x, const float[:, ::1] dy, const float[::1] gamma,
                       float[:, ::1] dx, float[::1] dgamma, float[::1] dbeta, float eps=1e-5):
    cdef Py_ssize_t rows = x.shape[0], cols = x.shape[1]
    _same(dy.shape[0] * dy.shape[1], rows * cols, "layernorm_backward dy")
    _same(dx.shape[0] * dx.shape[1], rows * cols, "layernorm_backward dx")
    _same(gamma.shape[0], cols, "layernorm_backward gamma")
    _same(dgamma.shape[0], cols, "layernorm_backward dgamma")
    _same(dbeta.shape[0], cols, "layernorm_backward dbeta")
    cdef int rc = 0
    if rows and cols:
        with nogil:
            rc = pgllm_layernorm_backward(&x[0, 0], &dy[0, 0], &gamma[0], NULL, NULL, eps,
                                          &dx[0, 0], &dgamma[0], &dbeta[0], rows, cols, NULL)
    _check_status(rc)


def colsum(const float[:, ::1] x, float[::1] out):
    _same(out.shape[0], x.shape[1], "colsum")
    cdef int rc = 0
    if x.shape[0] and x.shape[1]:
        with nogil:
            rc = pgllm_colsum(&x[0, 0], &out[0], x.shape[0], x.shape[1], NULL)
    _check_status(rc)


def _check_targets(const int[::1] t, Py_ssize_t rows, Py_ssize_t V):
    cdef Py_ssize_t i
    _same(t.shape[0], rows, "cross_entropy targets")
    for i in range(rows):
        if t[i] < 0 or t[i] >= V:
            raise ValueError(f"cross_entropy: target {t[i]} outside [0, {V})")


def cross_entropy_forward(const float[:, ::1] logits, const int[::1] targets, float[::1] losses):
    _check_targets(targets, logits.shape[0], logits.shape[1])
    _same(losses.shape[0], logits.shape[0], "cross_entropy losses")
    cdef int rc = 0
    if logits.shape[0]:
        with nogil:
            rc = pgllm_cross_entropy_forward(&logits[0, 0], <const int32_t *> &targets[0], &losses[0],
                                             logits.shape[0], logits.shape[1], NULL)
    _check_status(rc)


def cross_entropy_backward(const float[:, ::1] logits, const int[::1] targets,
                           float[:, ::1] dlogits, float scale=1.0):
    _check_targets(targets, logits.shape[0], logits.shape[1])
    _same(dlogits.shape[0] * dlogits.shape[1], logits.shape[0] * logits.shape[1],
          "cross_entropy_backward")
    cdef int rc = 0
    if logits.shape[0]:
        with nogil:
            rc = pgllm_cross_entropy_backward(&logits[0, 0], <const int32_t *> &targets[0],
                                              &dlogits[0, 0], logits.shape[0], logits.shape[1],
                                              scale, NULL)
    _check_status(rc)


def dropout_forward(const float[::1] x, float[::1] y, float p, uint64_t seed):
    _same(x.shape[0], y.shape[0], "dropout")
    cdef int rc = 0
    if x.shape[0]:
        with nogil:
            rc = pgllm_dropout_forward(&x[0], &y[0], x.shape[0], p, seed, NULL)
    _check_status(rc)


def dropout_backward_masked(const float[::1] x, const float[::1] y, const float[::1] dy,
                            float[::1] dx, float p):
    _same(x.shape[0], y.shape[0], "dropout_backward"); _same(x.shape[0], dy.shape[0], "dropout_backward")
    _same(x.shape[0], dx.shape[0], "dropout_backward")
    cdef int rc = 0
    if x.shape[0]:
        with nogil:
            rc = pgllm_dropout_backward_masked(&x[0], &y[0], &dy[0], &dx[0], x.shape[0], p, NULL)
    _check_status(rc)


def transpose_into(const float[:, ::1] x, float[:, ::1] y):
    _same(y.shape[0], x.shape[1], "transpose"); _same(y.shape[1], x.shape[0], "transpose")
    cdef int rc = 0
    if x.shape[0] and x.shape[1]:
        with nogil:
            rc = pgllm_transpose(&x[0, 0], &y[0, 0], x.shape[0], x.shape[1], NULL)
    _check_status(rc)


def adamw_step(float[::1] w, const float[::1] g, float[::1] m, float[::1] v,
               float lr, float beta1=0.9, float beta2=0.999, float eps=1e-8,
               float weight_decay=0.0, int64_t step=1, float grad_scale=1.0):
    """In place, as torch.optim.AdamW; step counts from 1."""
    _same(w.shape[0], g.shape[0], "adamw"); _same(w.shape[0], m.shape[0], "adamw")
    _same(w.shape[0], v.shape[0], "adamw")
    if step < 1:
        raise ValueError("adamw_step: step counts from 1")
    if w.shape[0]:
        with nogil:
            pgllm_adamw_step(&w[0], &g[0], &m[0], &v[0], w.shape[0], lr, beta1, beta2, eps,
                             weight_decay, step, grad_scale)


def clip_scale(const float[::1] g, double max_norm):
    """(scale, norm): the factor training scales the gradient by before AdamW
    (torch's clip_grad_norm_; 1 when max_norm <= 0), and the gradient norm."""
    cdef double norm = 0.0, scale
    cdef const float *p = &g[0] if g.shape[0] else NULL
    with nogil:
        scale = pgllm_clip_scale(p, g.shape[0], max_norm, &norm)
    return scale, norm


def clip_by_norm(const float[::1] g, float[::1] out, float max_norm):
    """out = g scaled to norm <= max_norm; returns the norm of g."""
    _same(g.shape[0], out.shape[0], "clip_by_norm")
    if g.shape[0] == 0:
        return 0.0
    return pgllm_clip_by_norm(&g[0], &out[0], g.shape[0], max_norm)


def checksum64(const uint8_t[::1] data):
    """The checksum of the shared weight cache's files (pgllm_checksum64)."""
    if data.shape[0] == 0:
        return pgllm_checksum64(NULL, 0)
    return pgllm_checksum64(&data[0], data.shape[0])


def sum_squares(const float[::1] x):
    if x.shape[0] == 0:
        return 0.0
    return pgllm_sum_squares(&x[0], x.shape[0])


def all_finite(const float[::1] x):
    if x.shape[0] == 0:
        return True
    return bool(pgllm_all_finite(&x[0], x.shape[0]))


def lr_schedule(int64_t step, int64_t warmup, int64_t total, double lr_max, double lr_min=0.0):
    return pgllm_lr_schedule(step, warmup, total, lr_max, lr_min)
