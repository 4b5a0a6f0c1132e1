# Causal multi-head self-attention, forward beside backward.
#
# Core (as GPT-2 lays it out): qkv(B,T,3C) holds q | k | v for each token,
# head h owning columns [h*hs, (h+1)*hs) of each; att(B,NH,T,T) keeps the
# softmax probabilities for the backward; out(B,T,C) the heads' contexts.
#
# Parallel strategy: forward over (b, t, h) rows (each writes its own att row
# and output slice); backward over (b, h) pairs, because row t writes dk/dv
# of every earlier row of the same head: one thread per head keeps those
# writes private and the summation order fixed.

cdef inline float _keep_scale(uint64_t stream, uint64_t i, float p, float scale) noexcept nogil:
    """Inverted-dropout factor of element i: 0 (dropped) or 1/(1-p)."""
    if p <= 0:
        return 1.0
    return scale if _rand_uniform(stream, i) >= p else <float> 0.0


cdef int _attention_fwd(const float *qkv, float *att, float *out, int64_t B, int64_t T,
                        int64_t C, int64_t NH, float p, uint64_t stream,
                        const int *cancel) noexcept nogil:
    """att keeps the softmax probabilities before dropout; out uses the
    dropped-out ones (mask from (stream, index), recomputed in the backward)."""
    cdef int64_t hs = C // NH
    cdef int64_t C3 = 3 * C
    cdef int64_t nunits = B * T * NH
    cdef int64_t u, b, t, h, t2, i, base
    cdef float scale = <float> 1.0 / sqrtf(<float> hs)
    cdef float dscale = <float> 1.0 / (<float> 1.0 - p) if p < 1 else <float> 0.0
    cdef float m, s, inv, a
    cdef const float *q
    cdef const float *k
    cdef const float *v
    cdef float *arow
    cdef float *o
    for u in prange(nunits, num_threads=_threads_for(nunits * T * hs), schedule='static'):
        if PGLLM_CANCELLED(cancel):
            continue
        b = u // (T * NH)
        t = (u // NH) % T
        h = u % NH
        q = qkv + (b * T + t) * C3 + h * hs
        arow = att + ((b * NH + h) * T + t) * T
        m = <float> -3.4028234663852886e38
        for t2 in range(t + 1):
            k = qkv + (b * T + t2) * C3 + C + h * hs
            a = _dot(q, k, hs) * scale
            arow[t2] = a
            m = _fmax(m, a)
        s = 0.0
        for t2 in range(t + 1):
            a = _exp(arow[t2] - m)
            arow[t2] = a
            s = s + a
        inv = <float> 1.0 / s
        for t2 in range(t + 1):
            arow[t2] = arow[t2] * inv
        for t2 in range(t + 1, T):
            arow[t2] = 0.0
        o = out + (b * T + t) * C + h * hs
        for i in range(hs):
            o[i] = 0.0
        base = ((b * NH + h) * T + t) * T
        for t2 in range(t + 1):
            v = qkv + (b * T + t2) * C3 + 2 * C + h * hs
            a = arow[t2] * _keep_scale(stream, base + t2, p, dscale)
            for i in range(hs):
                o[i] = o[i] + a * v[i]
    return _status(cancel)


cdef public int pgllm_attention_core_forward(const float *qkv, float *att, float *out,
                                             int64_t B, int64_t T, int64_t C, int64_t NH,
                                             const int *cancel) noexcept nogil:
    return _attention_fwd(qkv, att, out, B, T, C, NH, 0.0, 0, cancel)


cdef void _attention_head_backward(const float *qkv, const float *att, const float *dout,
                                   float *dqkv, float *datt, int64_t b, int64_t h,
                                   int64_t T, int64_t C, int64_t NH, float p,
                                   uint64_t stream) noexcept nogil:
    """Gradients of one (sequence, head): writes its q/k/v columns of dqkv."""
    cdef int64_t hs = C // NH
    cdef int64_t C3 = 3 * C
    cdef int64_t t, t2, i, base
    cdef float scale = <float> 1.0 / sqrtf(<float> hs)
    cdef float dscale = <float> 1.0 / (<float> 1.0 - p) if p < 1 else <float> 0.0
    cdef float s, d, keep
    cdef const float *arow
    cdef const float *dor
    cdef const float *q
    cdef const float *k
    cdef const float *v
    cdef float *dq
    cdef float *dk
    cdef float *dv
    for t in range(T):
        dq = dqkv + (b * T + t) * C3 + h * hs
        for i in range(hs):
            dq[i] = 0.0
            dq[C + i] = 0.0
            dq[2 * C + i] = 0.0
    for t in range(T):
        arow = att + ((b * NH + h) * T + t) * T
        dor = dout + (b * T + t) * C + h * hs
        base = ((b * NH + h) * T + t) * T
        # out[t] = sum_t2 drop(att[t,t2]) v[t2]
        s = 0.0
        for t2 in range(t + 1):
            v = qkv + (b * T + t2) * C3 + 2 * C + h * hs
            dv = dqkv + (b * T + t2) * C3 + 2 * C + h * hs
            keep = _keep_scale(stream, base + t2, p, dscale)
            datt[t2] = _dot(dor, v, hs) * keep
            s = s + arow[t2] * datt[t2]
            d = arow[t2] * keep
            for i in range(hs):
                dv[i] += d * dor[i]
        # softmax backward, then through the scaled q.k product
        q = qkv + (b * T + t) * C3 + h * hs
        dq = dqkv + (b * T + t) * C3 + h * hs
        for t2 in range(t + 1):
            d = arow[t2] * (datt[t2] - s) * scale
            k = qkv + (b * T + t2) * C3 + C + h * hs
            dk = dqkv + (b * T + t2) * C3 + C + h * hs
            for i in range(hs):
                dq[i] += d * k[i]
                dk[i] += d * q[i]


cdef int _attention_bwd(const float *qkv, const float *att, const float *dout, float *dqkv,
                        int64_t B, int64_t T, int64_t C, int64_t NH, float p, uint64_t stream,
                        const int *cancel) noexcept nogil:
    cdef int64_t u, nunits = B * NH
    cdef float *datt = NULL
    cdef int nt = _threads_for(B * NH * T * T * (C // NH))
    cdef int failed = 0
    cdef int *pfailed = &failed
    nt = <int> min(<int64_t> nt, nunits)
    with parallel(num_threads=nt):
        datt = _alloc_floats(T)
        for u in prange(nunits, schedule='static'):
            if datt == NULL:
                pfailed[0] = 1
                continue
            if PGLLM_CANCELLED(cancel):
                continue
            _attention_head_backward(qkv, att, dout, dqkv, datt, u // NH, u % NH, T, C, NH,
                                     p, stream)
        free(datt)
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
