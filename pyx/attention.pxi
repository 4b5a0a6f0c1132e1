# Causal multi-head self-attention, forward beside backward.
#
# Core (as GPT-2 lays it out): qkv(B,T,3C) holds q | k | v for each token,
# head h owning columns [h*hs, (h+1)*hs) of each; att(B,NH,T,T) keeps the
# softmax probabilities for the backward; out(B,T,C) the heads' contexts.
#
# Both directions work in blocks of ATTN_BLOCK queries of one (sequence,
# head), so that each key and value row read from memory serves up to 32
# queries (one query at a time, a long sequence was bound by re-reading the
# whole head once per query): scores as row-invariant tiles, and every
# weighted sum of rows held in registers (pgllm_axpy_rows), in the order of
# the rows, as the one-query-at-a-time loops summed them.
#
# Parallel strategy: forward over (b, h, query block) units, the longest
# first (each writes its own att rows and output slices); backward over
# (b, h) pairs, because query t writes dk/dv of every earlier row of the
# same head: one thread per head keeps those writes private and the
# summation order fixed.

# ---------------------------------------------------------------------------
# Pieces shared with the inference forward's attention (gpt2.pxi)
# ---------------------------------------------------------------------------
cdef extern from *:
    # The weighted sum of value rows, with the output row's floats held in
    # vector registers across the keys (a plain loop loaded and stored them
    # once per key).  Each float is o = o + a[t] * v[t] in the order of t,
    # whichever part of the row it is in.
    """
    /* o[0:n] = o[0:n] + sum over t < nt, in order, of a[t] * v[t*ldv + 0:n] */
    static inline void pgllm_axpy_rows(const float *a, const float *v, int64_t ldv, int64_t nt,
                                       int64_t n, float *o)
    {
        int64_t d = 0, t;
        for (; d + 32 <= n; d += 32)
        {
            pgllm_v8 o0 = pgllm_v8_load(o + d), o1 = pgllm_v8_load(o + d + 8),
                     o2 = pgllm_v8_load(o + d + 16), o3 = pgllm_v8_load(o + d + 24);
            for (t = 0; t < nt; t++)
            {
                const float *vt = v + t * ldv + d;
                pgllm_v8 at = {a[t], a[t], a[t], a[t], a[t], a[t], a[t], a[t]};
                o0 += at * pgllm_v8_load(vt);
                o1 += at * pgllm_v8_load(vt + 8);
                o2 += at * pgllm_v8_load(vt + 16);
                o3 += at * pgllm_v8_load(vt + 24);
            }
            pgllm_v8_store(o + d, o0); pgllm_v8_store(o + d + 8, o1);
            pgllm_v8_store(o + d + 16, o2); pgllm_v8_store(o + d + 24, o3);
        }
        for (; d + 8 <= n; d += 8)
        {
            pgllm_v8 o0 = pgllm_v8_load(o + d);
            for (t = 0; t < nt; t++)
            {
                pgllm_v8 at = {a[t], a[t], a[t], a[t], a[t], a[t], a[t], a[t]};
                o0 += at * pgllm_v8_load(v + t * ldv + d);
            }
            pgllm_v8_store(o + d, o0);
        }
        for (; d < n; d++)
        {
            float od = o[d];
            for (t = 0; t < nt; t++)
                od += a[t] * v[t * ldv + d];
            o[d] = od;
        }
    }
    """
    void pgllm_axpy_rows(const float *a, const float *v, int64_t ldv, int64_t nt, int64_t n,
                         float *o) nogil


cdef enum:
    ATTN_KEYS = 4       # keys per score tile: the row-invariant tiles' TILE_B
    ATTN_BLOCK = 32     # queries per block: their scores (32 x 1024 floats) stay in L2
    ATTN_VBLOCK = 64    # value rows per pass of the weighted sum (16 KB: L1)


cdef void _attend_scores(const float *q, int64_t ldq, int64_t nq, int64_t first,
                         const float *k, int64_t ldk, int64_t hs, float scale, float *scores,
                         int64_t lds) noexcept nogil:
    """scores[i * lds + t] = (q_i . k_t) * scale for every key t <= first + i
    (and up to 3 past it, < first + nq, unused): query i is at position
    first + i; q rows ldq apart, k rows ldk apart.  The dot is the
    row-invariant one (_rowinv_tile3 / _rowinv_tile1 give every element the
    same value), so one query alone while decoding gets bit for bit the
    scores it gets among a prompt's queries."""
    cdef int64_t span = first + nq
    cdef const float *w[ATTN_KEYS]
    cdef float tile[TILE_A * ATTN_KEYS]
    cdef int64_t t0, i, j, nk
    cdef int r
    t0 = 0
    while t0 < span:
        nk = min(<int64_t> ATTN_KEYS, span - t0)
        for j in range(ATTN_KEYS):
            w[j] = k + min(t0 + j, span - 1) * ldk
        i = max(t0 - first, <int64_t> 0)        # the first query that sees key t0
        while i + TILE_A <= nq:
            _rowinv_tile3(q + i * ldq, q + (i + 1) * ldq, q + (i + 2) * ldq, w, hs, tile)
            for r in range(TILE_A):
                for j in range(nk):
                    scores[(i + r) * lds + t0 + j] = tile[r * ATTN_KEYS + j] * scale
            i = i + TILE_A
        while i < nq:
            _rowinv_tile1(q + i * ldq, w, hs, tile)
            for j in range(nk):
                scores[i * lds + t0 + j] = tile[j] * scale
            i = i + 1
        t0 = t0 + ATTN_KEYS


cdef void _softmax_weights(float *row, int64_t npos) noexcept nogil:
    """row[t] = exp(row[t] - max) / sum, t < npos: the attention weights."""
    cdef float m = <float> -3.4028234663852886e38
    cdef float s = 0.0, a
    cdef int64_t t
    for t in range(npos):
        m = _fmax(m, row[t])
    for t in range(npos):
        a = _exp(row[t] - m)
        row[t] = a
        s = s + a
    s = <float> 1.0 / s
    for t in range(npos):
        row[t] = row[t] * s


cdef void _attend_values(const float *w, int64_t ldw, int64_t nq, int64_t first,
                         const float *v, int64_t ldv, int64_t hs, float *out,
                         int64_t ldo) noexcept nogil:
    """out_i = sum over keys t <= first + i, in order, of w[i * ldw + t] * v_t
    for the nq queries of a block (query i at position first + i; v rows ldv
    apart, out rows ldo apart): value rows in blocks of ATTN_VBLOCK, each
    serving every query that sees it."""
    cdef int64_t t0, i, d, nt
    cdef float *o
    for i in range(nq):
        o = out + i * ldo
        for d in range(hs):
            o[d] = 0.0
    t0 = 0
    while t0 < first + nq:
        for i in range(max(t0 - first, <int64_t> 0), nq):
            nt = min(first + i + 1, t0 + ATTN_VBLOCK) - t0
            pgllm_axpy_rows(w + i * ldw + t0, v + t0 * ldv, ldv, nt, hs, out + i * ldo)
        t0 = t0 + ATTN_VBLOCK

# ---------------------------------------------------------------------------
# Training: the (B, NH, T, T) probabilities kept for the backward
# ---------------------------------------------------------------------------
cdef inline float _keep_scale(uint64_t stream, uint64_t i, float p, float scale) noexcept nogil:
    """Inverted-dropout factor of element i: 0 (dropped) or 1/(1-p)."""
    if p <= 0:
        return 1.0
    return scale if _rand_uniform(stream, i) >= p else <float> 0.0


cdef void _attention_fwd_block(const float *qkv, float *att, float *out, int64_t b, int64_t h,
                               int64_t r0, int64_t nq, int64_t T, int64_t C, int64_t NH,
                               float p, float dscale, uint64_t stream,
                               float *dropped) noexcept nogil:
    """Queries r0 .. r0 + nq - 1 of (b, h): their att rows and outputs.
    dropped (nq * T): the probabilities after dropout, when p > 0."""
    cdef int64_t hs = C // NH
    cdef int64_t C3 = 3 * C
    cdef int64_t i, t, t2, base
    cdef float *arows = att + ((b * NH + h) * T + r0) * T
    _attend_scores(qkv + (b * T + r0) * C3 + h * hs, C3, nq, r0, qkv + b * T * C3 + C + h * hs,
                   C3, hs, <float> 1.0 / sqrtf(<float> hs), arows, T)
    for i in range(nq):
        t = r0 + i
        _softmax_weights(arows + i * T, t + 1)
        for t2 in range(t + 1, T):
            arows[i * T + t2] = 0.0
        if p > 0:
            base = ((b * NH + h) * T + t) * T
            for t2 in range(t + 1):
                dropped[i * T + t2] = arows[i * T + t2] * _keep_scale(stream, base + t2, p, dscale)
    _attend_values(dropped if p > 0 else arows, T, nq, r0, qkv + b * T * C3 + 2 * C + h * hs, C3,
                   hs, out + (b * T + r0) * C + h * hs, C)


cdef int _attention_fwd(const float *qkv, float *att, float *out, int64_t B, int64_t T,
                        int64_t C, int64_t NH, float p, uint64_t stream,
                        const int *cancel) noexcept nogil:
    """att keeps the softmax probabilities before dropout; out uses the
    dropped-out ones (mask from (stream, index), recomputed in the backward)."""
    cdef int64_t nblk = (T + ATTN_BLOCK - 1) // ATTN_BLOCK
    cdef int64_t nunits = B * NH * nblk
    cdef int64_t u, blk, r0
    cdef float dscale = <float> 1.0 / (<float> 1.0 - p) if p < 1 else <float> 0.0
    cdef float *dropped = NULL
    cdef int failed = 0
    cdef int *pfailed = &failed
    cdef int nt = <int> min(<int64_t> _threads_for(B * NH * T * T * (C // NH)), nunits)
    with parallel(num_threads=nt):
        dropped = _alloc_floats(min(T, <int64_t> ATTN_BLOCK) * T) if p > 0 else NULL
        for u in prange(nunits, schedule='dynamic'):
            if p > 0 and dropped == NULL:
                pfailed[0] = 1
                continue
            if PGLLM_CANCELLED(cancel):
                continue
            blk = nblk - 1 - u // (B * NH)
            r0 = blk * ATTN_BLOCK
            _attention_fwd_block(qkv, att, out, (u // NH) % B, u % NH, r0,
                                 min(T - r0, <int64_t> ATTN_BLOCK), T, C, NH, p, dscale, stream,
                                 dropped)
        free(dropped)
    if failed:
        return PGLLM_ENOMEM
    return _status(cancel)


cdef public int pgllm_attention_core_forward(const float *qkv, float *att, float *out,
                                             int64_t B, int64_t T, int64_t C, int64_t NH,
                                             const int *cancel) noexcept nogil:
    return _attention_fwd(qkv, att, out, B, T, C, NH, 0.0, 0, cancel)


cdef void _attention_head_backward(const float *qkv, const float *att, const float *dout,
                                   float *dqkv, float *scratch, int64_t b, int64_t h,
                                   int64_t T, int64_t C, int64_t NH, float p,
                                   uint64_t stream) noexcept nogil:
    """Gradients of one (sequence, head): writes its q/k/v columns of dqkv.
    Query blocks in order; in each, dP = dout . v (row-invariant tiles),
    then the softmax backward row by row (dS over dP, in place), dq_t from
    its dS row, and for each key row dk and dv from the block's column of
    dS and of the dropped probabilities.  Every dq, dk and dv row sums its
    terms in the order of the one-query-at-a-time loop: dq over keys, dk
    and dv over queries.  scratch: 2 * ATTN_BLOCK * T + ATTN_BLOCK floats."""
    cdef int64_t hs = C // NH
    cdef int64_t C3 = 3 * C
    cdef int64_t r0, nq, span, i, j, t, t2, i0, base
    cdef float scale = <float> 1.0 / sqrtf(<float> hs)
    cdef float dscale = <float> 1.0 / (<float> 1.0 - p) if p < 1 else <float> 0.0
    cdef float s, keep, g
    cdef float *dP = scratch                        # (nq, span): dP, then dS
    cdef float *P = scratch + ATTN_BLOCK * T        # (nq, span): probabilities after dropout
    cdef float *col = P + ATTN_BLOCK * T            # (nq): a column of either
    cdef const float *arow
    cdef const float *q0 = qkv + b * T * C3 + h * hs
    cdef const float *k0 = q0 + C
    cdef const float *v0 = q0 + 2 * C
    cdef float *dq
    for t in range(T):
        dq = dqkv + (b * T + t) * C3 + h * hs
        for i in range(hs):
            dq[i] = 0.0
            dq[C + i] = 0.0
            dq[2 * C + i] = 0.0
    r0 = 0
    while r0 < T:
        nq = min(T - r0, <int64_t> ATTN_BLOCK)
        span = r0 + nq
        _attend_scores(dout + (b * T + r0) * C + h * hs, C, nq, r0, v0, C3, hs, <float> 1.0,
                       dP, span)
        for i in range(nq):
            t = r0 + i
            arow = att + ((b * NH + h) * T + t) * T
            base = ((b * NH + h) * T + t) * T
            s = 0.0
            for t2 in range(t + 1):
                keep = _keep_scale(stream, base + t2, p, dscale)
                g = dP[i * span + t2] * keep
                s = s + arow[t2] * g
                dP[i * span + t2] = g
                P[i * span + t2] = arow[t2] * keep
            for t2 in range(t + 1):
                dP[i * span + t2] = arow[t2] * (dP[i * span + t2] - s) * scale
            pgllm_axpy_rows(dP + i * span, k0, C3, t + 1, hs, dqkv + (b * T + t) * C3 + h * hs)
        for t2 in range(span):
            i0 = max(t2 - r0, <int64_t> 0)             # the first query that sees key t2
            for j in range(nq - i0):
                col[j] = P[(i0 + j) * span + t2]
            pgllm_axpy_rows(col, dout + (b * T + r0 + i0) * C + h * hs, C, nq - i0, hs,
                            dqkv + (b * T + t2) * C3 + 2 * C + h * hs)
            for j in range(nq - i0):
                col[j] = dP[(i0 + j) * span + t2]
            pgllm_axpy_rows(col, q0 + (r0 + i0) * C3, C3, nq - i0, hs,
                            dqkv + (b * T + t2) * C3 + C + h * hs)
        r0 = r0 + nq


cdef int _attention_bwd(const float *qkv, const float *att, const float *dout, float *dqkv,
                        int64_t B, int64_t T, int64_t C, int64_t NH, float p, uint64_t stream,
                        const int *cancel) noexcept nogil:
    cdef int64_t u, nunits = B * NH
    cdef float *scratch = NULL
    cdef int nt = _threads_for(B * NH * T * T * (C // NH))
    cdef int failed = 0
    cdef int *pfailed = &failed
    nt = <int> min(<int64_t> nt, nunits)
    with parallel(num_threads=nt):
        scratch = _alloc_floats(2 * ATTN_BLOCK * T + ATTN_BLOCK)
        for u in prange(nunits, schedule='static'):
            if scratch == NULL:
                pfailed[0] = 1
                continue
            if PGLLM_CANCELLED(cancel):
                continue
            _attention_head_backward(qkv, att, dout, dqkv, scratch, u // NH, u % NH, T, C, NH,
                                     p, stream)
        free(scratch)
    if failed:
        return PGLLM_ENOMEM
    return _status(cancel)


cdef public int pgllm_attention_core_backward(const float *qkv, const float *att,
                                              const float *dout, float *dqkv,
                                              int64_t B, int64_t T, int64_t C, int64_t NH,
                                              const int *cancel) noexcept nogil:
    return _attention_bwd(qkv, att, dout, dqkv, B, T, C, NH, 0.0, 0, cancel)


# ---------------------------------------------------------------------------
# One sequence with fused QKV and output projections (the SQL op)
# ---------------------------------------------------------------------------
cdef public int pgllm_attention_forward(const float *x, const float *w_qkv, const float *b_qkv,
                                        const float *w_o, const float *b_o,
                                        float *qkv, float *att, float *ctx, float *y,
                                        int64_t T, int64_t D, int64_t n_head,
                                        const int *cancel) noexcept nogil:
    cdef int rc
    rc = pgllm_gemm(PGLLM_NO_TRANS, PGLLM_NO_TRANS,
                    T, 3 * D, D, x, D, w_qkv, 3 * D, qkv, 3 * D, b_qkv, PGLLM_OVERWRITE, cancel)
    if rc != PGLLM_OK:
        return rc
    rc = pgllm_attention_core_forward(qkv, att, ctx, 1, T, D, n_head, cancel)
    if rc != PGLLM_OK:
        return rc
    return pgllm_gemm(PGLLM_NO_TRANS, PGLLM_NO_TRANS,
                      T, D, D, ctx, D, w_o, D, y, D, b_o, PGLLM_OVERWRITE, cancel)


cdef public int pgllm_attention_backward(const float *x, const float *w_qkv, const float *w_o,
                                         const float *qkv, const float *att, const float *ctx,
                                         const float *dy, float *dctx, float *dqkv,
                                         float *dx, float *dw_qkv, float *db_qkv,
                                         float *dw_o, float *db_o,
                                         int64_t T, int64_t D, int64_t n_head,
                                         const int *cancel) noexcept nogil:
    cdef int rc
    # y = ctx @ w_o + b_o
    # dctx = dy w_o^T
    rc = pgllm_gemm(PGLLM_NO_TRANS, PGLLM_TRANS,
                    T, D, D, dy, D, w_o, D, dctx, D, NULL, PGLLM_OVERWRITE, cancel)
    if rc == PGLLM_OK:
        # dw_o = ctx^T dy
        rc = pgllm_gemm(PGLLM_TRANS, PGLLM_NO_TRANS,
                        D, D, T, ctx, D, dy, D, dw_o, D, NULL, PGLLM_OVERWRITE, cancel)
    if rc == PGLLM_OK:
        rc = pgllm_colsum(dy, db_o, T, D, cancel)
    if rc == PGLLM_OK:
        rc = pgllm_attention_core_backward(qkv, att, dctx, dqkv, 1, T, D, n_head, cancel)
    # qkv = x @ w_qkv + b_qkv
    if rc == PGLLM_OK:
        rc = pgllm_gemm(PGLLM_NO_TRANS, PGLLM_TRANS,
                        T, D, 3 * D, dqkv, 3 * D, w_qkv, 3 * D, dx, D, NULL, PGLLM_OVERWRITE, cancel)
    if rc == PGLLM_OK:
        rc = pgllm_gemm(PGLLM_TRANS, PGLLM_NO_TRANS,
                        D, 3 * D, T, x, D, dqkv, 3 * D, dw_qkv, 3 * D, NULL, PGLLM_OVERWRITE, cancel)
    if rc == PGLLM_OK:
        rc = pgllm_colsum(dqkv, db_qkv, T, 3 * D, cancel)
    return rc


def attention_forward(const float[:, ::1] x, const float[:, ::1] w_qkv, const float[::1] b_qkv,
                      const float[:, ::1] w_o, const float[::1] b_o,
                      float[:, ::1] qkv, float[:, :, ::1] att, float[:, ::1] ctx, float[:, ::1] y,
                      int n_head):
    """Causal self-attention of one sequence x (T, D) into y; qkv, att, ctx
    receive the intermediates the backward needs."""
    cdef int64_t T = x.shape[0], D = x.shape[1]
    if n_head <= 0 or D % n_head:
        raise ValueError("attention: n_head must divide D")
    if (w_qkv.shape[0], w_qkv.shape[1]) != (D, 3 * D) or b_qkv.shape[0] != 3 * D \
            or (w_o.shape[0], w_o.shape[1]) != (D, D) or b_o.shape[0] != D \
            or (qkv.shape[0], qkv.shape[1]) != (T, 3 * D) \
            or (att.shape[0], att.shape[1], att.shape[2]) != (n_head, T, T) \
            or (ctx.shape[0], ctx.shape[1]) != (T, D) or (y.shape[0], y.shape[1]) != (T, D):
        raise ValueError("attention: shapes")
    if T == 0:
        return
    cdef int rc
    with nogil:
        rc = pgllm_attention_forward(&x[0, 0], &w_qkv[0, 0], &b_qkv[0], &w_o[0, 0], &b_o[0],
                                     &qkv[0, 0], &att[0, 0, 0], &ctx[0, 0], &y[0, 0],
                                     T, D, n_head, NULL)
    _check_status(rc)


def attention_backward(const float[:, ::1] x, const float[:, ::1] w_qkv,
                       const float[:, ::1] w_o,
                       const float[:, ::1] qkv, const float[:, :, ::1] att,
                       const float[:, ::1] ctx, const float[:, ::1] dy,
                       float[:, ::1] dctx, float[:, ::1] dqkv,
                       float[:, ::1] dx, float[:, ::1] dw_qkv, float[::1] db_qkv,
                       float[:, ::1] dw_o, float[::1] db_o, int n_head):
    """Gradients from the forward's intermediates (qkv, att, ctx)."""
    cdef int64_t T = x.shape[0], D = x.shape[1]
    if n_head <= 0 or D % n_head:
        raise ValueError("attention_backward: n_head must divide D")
    if (dy.shape[0], dy.shape[1]) != (T, D) or (dx.shape[0], dx.shape[1]) != (T, D) \
            or (dctx.shape[0], dctx.shape[1]) != (T, D) or (dqkv.shape[0], dqkv.shape[1]) != (T, 3 * D) \
            or (dw_qkv.shape[0], dw_qkv.shape[1]) != (D, 3 * D) or db_qkv.shape[0] != 3 * D \
            or (dw_o.shape[0], dw_o.shape[1]) != (D, D) or db_o.shape[0] != D \
            or (qkv.shape[0], qkv.shape[1]) != (T, 3 * D) or (ctx.shape[0], ctx.shape[1]) != (T, D) \
            or (att.shape[0], att.shape[1], att.shape[2]) != (n_head, T, T):
        raise ValueError("attention_backward: shapes")
    if T == 0:
        return
    cdef int rc
    with nogil:
        rc = pgllm_attention_backward(&x[0, 0], &w_qkv[0, 0], &w_o[0, 0], &qkv[0, 0],
                                      &att[0, 0, 0], &ctx[0, 0], &dy[0, 0], &dctx[0, 0], &dqkv[0, 0],
                                      &dx[0, 0], &dw_qkv[0, 0], &db_qkv[0], &dw_o[0, 0], &db_o[0],
                                      T, D, n_head, NULL)
    _check_status(rc)
