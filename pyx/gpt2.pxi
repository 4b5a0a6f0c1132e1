# GPT-2, llm.c style: one parameter buffer, explicit shapes on every pointer.
#
#   B: sequences, T / Tn: positions, C: n_embd, NH: n_head, hs = C / NH,
#   L: n_layer, V: vocab, maxT: n_positions
#
# Parameters are in llm.c's order (PGLLM_P_* in pg_llm_kernels.h) and linear
# weights are (out, in), so every product here is a gemm with op(B) = B^T:
# the tiled path when many rows, contiguous dot products when few (decoding).

cdef extern from "pg_llm_kernels.h" nogil:
    ctypedef struct PgllmGPT2Config:
        int64_t n_layer
        int64_t n_head
        int64_t n_embd
        int64_t n_positions
        int64_t vocab
        float eps
    enum:
        PGLLM_P_WTE
        PGLLM_P_WPE
        PGLLM_P_LN1W
        PGLLM_P_LN1B
        PGLLM_P_QKVW
        PGLLM_P_QKVB
        PGLLM_P_ATTPROJW
        PGLLM_P_ATTPROJB
        PGLLM_P_LN2W
        PGLLM_P_LN2B
        PGLLM_P_FCW
        PGLLM_P_FCB
        PGLLM_P_FCPROJW
        PGLLM_P_FCPROJB
        PGLLM_P_LNFW
        PGLLM_P_LNFB
        PGLLM_NUM_PARAM_TENSORS


cdef public int64_t pgllm_gpt2_param_sizes(const PgllmGPT2Config *cfg,
                                           int64_t *sizes) noexcept nogil:
    cdef int64_t C = cfg.n_embd, L = cfg.n_layer, total = 0
    cdef int i
    sizes[PGLLM_P_WTE] = cfg.vocab * C
    sizes[PGLLM_P_WPE] = cfg.n_positions * C
    sizes[PGLLM_P_LN1W] = L * C
    sizes[PGLLM_P_LN1B] = L * C
    sizes[PGLLM_P_QKVW] = L * 3 * C * C
    sizes[PGLLM_P_QKVB] = L * 3 * C
    sizes[PGLLM_P_ATTPROJW] = L * C * C
    sizes[PGLLM_P_ATTPROJB] = L * C
    sizes[PGLLM_P_LN2W] = L * C
    sizes[PGLLM_P_LN2B] = L * C
    sizes[PGLLM_P_FCW] = L * 4 * C * C
    sizes[PGLLM_P_FCB] = L * 4 * C
    sizes[PGLLM_P_FCPROJW] = L * C * 4 * C
    sizes[PGLLM_P_FCPROJB] = L * C
    sizes[PGLLM_P_LNFW] = C
    sizes[PGLLM_P_LNFB] = C
    for i in range(PGLLM_NUM_PARAM_TENSORS):
        total = total + sizes[i]
    return total


cdef struct Params:
    # pointers into the parameter buffer, one per tensor kind (all layers)
    float *t[16]


cdef inline void _param_pointers(const PgllmGPT2Config *cfg, const float *params,
                                 Params *p) noexcept nogil:
    cdef int64_t sizes[16]
    cdef int i
    cdef float *ptr = <float *> params
    pgllm_gpt2_param_sizes(cfg, sizes)
    for i in range(PGLLM_NUM_PARAM_TENSORS):
        p.t[i] = ptr
        ptr = ptr + sizes[i]


# ---------------------------------------------------------------------------
# initialisation (GPT-2 / nanoGPT): normal(0, 0.02) weights and embeddings,
# residual projections scaled by 1/sqrt(2 n_layer), zero biases, unit
# layernorm weights.  Counter-based Gaussians: the result depends on the seed
# only, not on the thread count.
# ---------------------------------------------------------------------------
cdef inline float _gauss(uint64_t stream, uint64_t i) noexcept nogil:
    """Standard normal number i of `stream` (Box-Muller on a pair of uniforms)."""
    cdef uint64_t pair = i >> 1
    cdef double u1 = _rand_uniform64(stream, 2 * pair) + 1e-300
    cdef double u2 = _rand_uniform64(stream, 2 * pair + 1)
    cdef double r = sqrt(-2.0 * log(u1))
    if i & 1:
        return <float> (r * sin(2.0 * M_PI * u2))
    return <float> (r * cos(2.0 * M_PI * u2))


cdef int _fill_normal(float *x, int64_t n, float std, uint64_t stream,
                      const int *cancel) noexcept nogil:
    cdef int64_t c, i, lo, hi
    cdef int64_t nchunks = (n + CHUNK - 1) // CHUNK
    for c in prange(nchunks, num_threads=_threads_for(n), schedule='static'):
        if PGLLM_CANCELLED(cancel):
            continue
        lo = c * CHUNK
        hi = min(lo + CHUNK, n)
        for i in range(lo, hi):
            x[i] = std * _gauss(stream, i)
    return _status(cancel)


cdef public int pgllm_gpt2_init(const PgllmGPT2Config *cfg, float *params,
                                uint64_t seed, const int *cancel) noexcept nogil:
    """GPT-2's initialisation (nanoGPT's: N(0, 0.02), residual projections
    N(0, 0.02 / sqrt(2 n_layer)), layernorms 1 and 0, biases 0).  Restartable:
    every value is written, a function of (seed, tensor, index)."""
    cdef int64_t sizes[16]
    cdef Params p
    cdef int k
    cdef float std
    cdef float resid_std = <float> (0.02 / sqrt(2.0 * cfg.n_layer))
    pgllm_gpt2_param_sizes(cfg, sizes)
    _param_pointers(cfg, params, &p)
    for k in range(PGLLM_NUM_PARAM_TENSORS):
        if k == PGLLM_P_LN1W or k == PGLLM_P_LN2W or k == PGLLM_P_LNFW:
            pgllm_fill(p.t[k], sizes[k], 1.0)
        elif (k == PGLLM_P_LN1B or k == PGLLM_P_LN2B or k == PGLLM_P_LNFB or
              k == PGLLM_P_QKVB or k == PGLLM_P_ATTPROJB or k == PGLLM_P_FCB or
              k == PGLLM_P_FCPROJB):
            pgllm_fill(p.t[k], sizes[k], 0.0)
        else:
            std = resid_std if (k == PGLLM_P_ATTPROJW or k == PGLLM_P_FCPROJW) else <float> 0.02
            if _fill_normal(p.t[k], sizes[k], std, _mix64(seed * <uint64_t> 31 + <uint64_t> k),
                            cancel) != PGLLM_OK:
                return PGLLM_INTERRUPTED
    return PGLLM_OK


# ---------------------------------------------------------------------------
# inference with a KV cache
# ---------------------------------------------------------------------------
cdef public int64_t pgllm_gpt2_work_floats(const PgllmGPT2Config *cfg, int64_t B,
                                           int64_t Tn) noexcept nogil:
    # x, xn, attention output: (B*Tn, C) each; qkv: (B*Tn, 3C); mlp: (B*Tn, 4C)
    return B * Tn * cfg.n_embd * 10


cdef void _attend_cached(const float *q, const float *k, const float *v, int64_t npos,
                         int64_t C, int64_t hs, float *scores, float *out) noexcept nogil:
    """out(hs) = softmax(q . k[t] / sqrt(hs), t < npos) @ v; k, v rows C apart."""
    cdef float scale = <float> 1.0 / sqrtf(<float> hs)
    cdef float m = <float> -3.4028234663852886e38
    cdef float s = 0.0, a
    cdef int64_t t, i
    for t in range(npos):
        a = _dot(q, k + t * C, hs) * scale
        scores[t] = a
        m = _fmax(m, a)
    for t in range(npos):
        a = _exp(scores[t] - m)
        scores[t] = a
        s = s + a
    s = <float> 1.0 / s
    for i in range(hs):
        out[i] = 0.0
    for t in range(npos):
        a = scores[t] * s
        for i in range(hs):
            out[i] = out[i] + a * v[t * C + i]


cdef int _attention_cached(const PgllmGPT2Config *cfg, const float *qkv, const float *kv_l,
                           int64_t B, int64_t Tn, int64_t past, int64_t kv_cap,
                           int64_t layer_stride, float *out, const int *cancel) noexcept nogil:
    """qkv (B*Tn, 3C): queries of the new tokens; kv_l: this layer's cache of
    sequence 0 (sequences layer_stride apart), keys then values, (kv_cap, C)
    each.  out (B*Tn, C)."""
    cdef int64_t C = cfg.n_embd, NH = cfg.n_head
    cdef int64_t hs = C // NH
    cdef int64_t nunits = B * Tn * NH
    cdef int64_t u, b, t, h
    cdef float *scores = NULL
    cdef const float *kb
    cdef int failed = 0
    cdef int *pfailed = &failed
    cdef int nt = <int> min(<int64_t> _threads_for(nunits * (past + Tn) * hs * 4), nunits)
    with parallel(num_threads=nt):
        scores = _alloc_floats(past + Tn)
        for u in prange(nunits, schedule='static'):
            if scores == NULL:
                pfailed[0] = 1
                continue
            if PGLLM_CANCELLED(cancel):
                continue
            b = u // (Tn * NH)
            t = (u // NH) % Tn
            h = u % NH
            kb = kv_l + b * layer_stride
            _attend_cached(qkv + (b * Tn + t) * 3 * C + h * hs, kb + h * hs,
                           kb + kv_cap * C + h * hs, past + t + 1, C, hs, scores,
                           out + (b * Tn + t) * C + h * hs)
        free(scores)
    if failed:
        return PGLLM_ENOMEM
    return _status(cancel)


cdef public int pgllm_gpt2_forward_cached(const PgllmGPT2Config *cfg, const float *params,
                                          const int32_t *tokens, int64_t B, int64_t Tn,
                                          int64_t past, float *kv, int64_t kv_cap,
                                          float *work, float *logits, int all_positions,
                                          const int *cancel) noexcept nogil:
    cdef int64_t C = cfg.n_embd, V = cfg.vocab, L = cfg.n_layer
    cdef int64_t BT = B * Tn
    cdef int64_t layer_stride = L * 2 * kv_cap * C     # between sequences in kv
    cdef int64_t b, t, l, i, rows
    cdef Params p
    cdef float *x = work                # (BT, C) residual stream
    cdef float *xn = x + BT * C         # (BT, C) layernorm output
    cdef float *att = xn + BT * C       # (BT, C) attention output
    cdef float *qkv = att + BT * C      # (BT, 3C)
    cdef float *hmlp = qkv + BT * 3 * C  # (BT, 4C)
    cdef float *kv_l
    cdef const float *e
    cdef const float *pe
    cdef float *xr
    cdef float *kdst
    cdef float *vdst
    cdef int rc = PGLLM_OK
    _param_pointers(cfg, params, &p)

    # token + position embeddings
    for b in range(B):
        for t in range(Tn):
            e = p.t[PGLLM_P_WTE] + tokens[b * Tn + t] * C
            pe = p.t[PGLLM_P_WPE] + (past + t) * C
            xr = x + (b * Tn + t) * C
            for i in range(C):
                xr[i] = e[i] + pe[i]

    for l in range(L):
        if PGLLM_CANCELLED(cancel):
            return PGLLM_INTERRUPTED
        kv_l = kv + l * 2 * kv_cap * C
        # attention block: x += attn(ln_1(x))
        rc = pgllm_layernorm_forward(x, p.t[PGLLM_P_LN1W] + l * C, p.t[PGLLM_P_LN1B] + l * C,
                                     xn, NULL, NULL, BT, C, cfg.eps, cancel)
        if rc == PGLLM_OK:
            rc = pgllm_gemm(0, 1, BT, 3 * C, C, xn, C, p.t[PGLLM_P_QKVW] + l * 3 * C * C, C,
                            qkv, 3 * C, p.t[PGLLM_P_QKVB] + l * 3 * C, 0, cancel)
        if rc != PGLLM_OK:
            return rc
        for b in range(B):
            for t in range(Tn):
                kdst = kv_l + b * layer_stride + (past + t) * C
                vdst = kdst + kv_cap * C
                memcpy(kdst, qkv + (b * Tn + t) * 3 * C + C, C * sizeof(float))
                memcpy(vdst, qkv + (b * Tn + t) * 3 * C + 2 * C, C * sizeof(float))
        rc = _attention_cached(cfg, qkv, kv_l, B, Tn, past, kv_cap, layer_stride, att, cancel)
        if rc == PGLLM_OK:
            rc = pgllm_gemm(0, 1, BT, C, C, att, C, p.t[PGLLM_P_ATTPROJW] + l * C * C, C,
                            x, C, p.t[PGLLM_P_ATTPROJB] + l * C, 1, cancel)
        # MLP block: x += proj(gelu(fc(ln_2(x))))
        if rc == PGLLM_OK:
            rc = pgllm_layernorm_forward(x, p.t[PGLLM_P_LN2W] + l * C, p.t[PGLLM_P_LN2B] + l * C,
                                         xn, NULL, NULL, BT, C, cfg.eps, cancel)
        if rc == PGLLM_OK:
            rc = pgllm_gemm(0, 1, BT, 4 * C, C, xn, C, p.t[PGLLM_P_FCW] + l * 4 * C * C, C,
                            hmlp, 4 * C, p.t[PGLLM_P_FCB] + l * 4 * C, 0, cancel)
        if rc == PGLLM_OK:
            rc = pgllm_gelu_forward(hmlp, hmlp, BT * 4 * C, cancel)
        if rc == PGLLM_OK:
            rc = pgllm_gemm(0, 1, BT, C, 4 * C, hmlp, 4 * C, p.t[PGLLM_P_FCPROJW] + l * 4 * C * C,
                            4 * C, x, C, p.t[PGLLM_P_FCPROJB] + l * C, 1, cancel)
        if rc != PGLLM_OK:
            return rc

    # final layernorm of the rows whose logits are wanted, then x @ wte^T
    if all_positions:
        rows = BT
        rc = pgllm_layernorm_forward(x, p.t[PGLLM_P_LNFW], p.t[PGLLM_P_LNFB], xn, NULL, NULL,
                                     BT, C, cfg.eps, cancel)
    else:
        rows = B
        for b in range(B):
            rc = pgllm_layernorm_forward(x + (b * Tn + Tn - 1) * C, p.t[PGLLM_P_LNFW],
                                         p.t[PGLLM_P_LNFB], xn + b * C, NULL, NULL, 1, C,
                                         cfg.eps, cancel)
    if rc == PGLLM_OK:
        rc = pgllm_gemm(0, 1, rows, V, C, xn, C, p.t[PGLLM_P_WTE], C, logits, V, NULL, 0, cancel)
    return rc


cdef public int pgllm_gpt2_kv_reorder(const PgllmGPT2Config *cfg, float *kv, int64_t B,
                                      int64_t kv_cap, int64_t len, const int32_t *src,
                                      float *scratch) noexcept nogil:
    """Sequence b's cache becomes a copy of sequence src[b]'s (first len
    positions).  Sources are staged through scratch (B sequences' worth of
    len positions) so that a sequence can be both source and destination."""
    cdef int64_t C = cfg.n_embd, L = cfg.n_layer
    cdef int64_t seq = L * 2 * kv_cap * C
    cdef int64_t staged = L * 2 * len * C
    cdef int64_t b, blk
    cdef size_t nbytes = len * C * sizeof(float)
    for b in range(B):
        for blk in range(L * 2):
            memcpy(scratch + b * staged + blk * len * C, kv + b * seq + blk * kv_cap * C, nbytes)
    for b in range(B):
        for blk in range(L * 2):
            memcpy(kv + b * seq + blk * kv_cap * C, scratch + src[b] * staged + blk * len * C,
                   nbytes)
    return PGLLM_OK


# ---------------------------------------------------------------------------
# sampling
# ---------------------------------------------------------------------------
cdef struct ScoreIdx:
    float v
    int32_t i


cdef int _cmp_desc(const void *a, const void *b) noexcept nogil:
    cdef const ScoreIdx *x = <const ScoreIdx *> a
    cdef const ScoreIdx *y = <const ScoreIdx *> b
    if x.v > y.v:
        return -1
    if x.v < y.v:
        return 1
    return (x.i > y.i) - (x.i < y.i)


cdef inline int _worse(const ScoreIdx *a, const ScoreIdx *b) noexcept nogil:
    """a ranks below b: smaller value, or equal value and larger index."""
    return a.v < b.v or (a.v == b.v and a.i > b.i)


cdef void _sift_down(ScoreIdx *heap, int64_t n, int64_t i) noexcept nogil:
    cdef int64_t c
    cdef ScoreIdx tmp
    while True:
        c = 2 * i + 1
        if c >= n:
            return
        if c + 1 < n and _worse(&heap[c + 1], &heap[c]):
            c = c + 1
        if not _worse(&heap[c], &heap[i]):
            return
        tmp = heap[i]
        heap[i] = heap[c]
        heap[c] = tmp
        i = c


cdef int64_t _top_candidates(const float *x, int64_t n, int64_t k, ScoreIdx *out) noexcept nogil:
    """The k best (value, index) pairs of x, sorted best first; k >= n: all."""
    cdef int64_t i, m
    if k <= 0 or k >= n:
        for i in range(n):
            out[i].v = x[i]
            out[i].i = <int32_t> i
        m = n
    else:
        # min-heap of the k best seen so far: root is the worst kept
        for i in range(k):
            out[i].v = x[i]
            out[i].i = <int32_t> i
        i = k // 2
        while i > 0:
            i = i - 1
            _sift_down(out, k, i)
        for i in range(k, n):
            if x[i] > out[0].v:
                out[0].v = x[i]
                out[0].i = <int32_t> i
                _sift_down(out, k, 0)
        m = k
    qsort(out, m, sizeof(ScoreIdx), _cmp_desc)
    return m


cdef public int pgllm_topk(const float *x, int64_t n, int64_t k, int64_t *idx) noexcept nogil:
    cdef ScoreIdx *buf = <ScoreIdx *> malloc(max(n, <int64_t> 1) * sizeof(ScoreIdx))
    cdef int64_t i, m
    if buf == NULL:
        return PGLLM_ENOMEM
    m = _top_candidates(x, n, k, buf)
    for i in range(min(k, m)):
        idx[i] = buf[i].i
    free(buf)
    return PGLLM_OK


cdef public int pgllm_log_softmax(float *x, int64_t rows, int64_t cols,
                                  const int *cancel) noexcept nogil:
    cdef int64_t r, i
    cdef float lse
    cdef float *row
    for r in prange(rows, num_threads=_threads_for(rows * cols), schedule='static'):
        if PGLLM_CANCELLED(cancel):
            continue
        row = x + r * cols
        lse = _logsumexp_row(row, cols)
        for i in range(cols):
            row[i] = row[i] - lse
    return _status(cancel)


cdef public int32_t pgllm_sample_token(float *logits, int64_t V, const int32_t *history,
                                       int64_t nhist, float repetition_penalty,
                                       float temperature, int64_t topk, float topp,
                                       uint64_t seed, uint64_t step,
                                       float *work) noexcept nogil:
    """work: 2*V floats (as V ScoreIdx pairs).  Returns -1 on bad input."""
    cdef ScoreIdx *cand = <ScoreIdx *> work
    cdef uint8_t *seen
    cdef int64_t i, m, best
    cdef int32_t tok
    cdef float v, inv_t, mx
    cdef double total, cum, u
    if V <= 0:
        return -1
    # repetition penalty, once per distinct token (HuggingFace's gather/scatter)
    if repetition_penalty != 1 and nhist > 0:
        seen = <uint8_t *> work
        memset(seen, 0, V)
        for i in range(nhist):
            tok = history[i]
            if tok < 0 or tok >= V or seen[tok]:
                continue
            seen[tok] = 1
            v = logits[tok]
            logits[tok] = v * repetition_penalty if v < 0 else v / repetition_penalty
    if temperature <= 0:
        best = 0
        for i in range(1, V):
            if logits[i] > logits[best]:
                best = i
        return <int32_t> best
    inv_t = <float> 1.0 / temperature
    for i in range(V):
        logits[i] = logits[i] * inv_t
    m = _top_candidates(logits, V, topk, cand)
    # softmax over the candidates (best first), cut to the top-p nucleus
    mx = cand[0].v
    total = 0.0
    for i in range(m):
        cand[i].v = _exp(cand[i].v - mx)
        total = total + cand[i].v
    if topp < 1:
        cum = 0.0
        for i in range(m):
            cum = cum + cand[i].v
            if cum >= topp * total:
                m = i + 1
                break
        total = 0.0
        for i in range(m):
            total = total + cand[i].v
    u = _rand_uniform64(seed, step) * total
    cum = 0.0
    for i in range(m):
        cum = cum + cand[i].v
        if u < cum:
            return cand[i].i
    return cand[m - 1].i


# ---------------------------------------------------------------------------
# Python wrappers
# ---------------------------------------------------------------------------
def _config(int n_layer, int n_head, int n_embd, int n_positions, int vocab, float eps=1e-5):
    cdef PgllmGPT2Config c
    c.n_layer = n_layer
    c.n_head = n_head
    c.n_embd = n_embd
    c.n_positions = n_positions
    c.vocab = vocab
    c.eps = eps
    return c


def gpt2_param_sizes(int n_layer, int n_head, int n_embd, int n_positions, int vocab):
    """Floats of each parameter tensor (llm.c order) and the total."""
    cdef PgllmGPT2Config c = _config(n_layer, n_head, n_embd, n_positions, vocab)
    cdef int64_t sizes[16]
    total = pgllm_gpt2_param_sizes(&c, sizes)
    return [sizes[i] for i in range(PGLLM_NUM_PARAM_TENSORS)], total


def gpt2_init(float[::1] params, int n_layer, int n_head, int n_embd, int n_positions,
              int vocab, uint64_t seed):
    cdef PgllmGPT2Config c = _config(n_layer, n_head, n_embd, n_positions, vocab)
    cdef int64_t sizes[16]
    if params.shape[0] != pgllm_gpt2_param_sizes(&c, sizes):
        raise ValueError("gpt2_init: wrong parameter buffer size")
    with nogil:
        pgllm_gpt2_init(&c, &params[0], seed, NULL)


def gpt2_forward_cached(const float[::1] params, tuple config, const int[::1] tokens,
                        int64_t B, int64_t Tn, int64_t past, float[::1] kv, int64_t kv_cap,
                        float[::1] logits, bint all_positions=False):
    """One forward step over B*Tn new tokens with a KV cache (see the header)."""
    cdef PgllmGPT2Config c = _config(*config)
    cdef int64_t sizes[16]
    cdef float[::1] work
    cdef int rc
    cdef Py_ssize_t i
    import numpy as np
    if params.shape[0] != pgllm_gpt2_param_sizes(&c, sizes):
        raise ValueError("gpt2_forward_cached: wrong parameter buffer size")
    if tokens.shape[0] != B * Tn or past + Tn > kv_cap or kv_cap > c.n_positions:
        raise ValueError("gpt2_forward_cached: tokens / positions")
    if kv.shape[0] != B * c.n_layer * 2 * kv_cap * c.n_embd:
        raise ValueError("gpt2_forward_cached: kv cache size")
    if logits.shape[0] != (B * Tn if all_positions else B) * c.vocab:
        raise ValueError("gpt2_forward_cached: logits size")
    for i in range(tokens.shape[0]):
        if tokens[i] < 0 or tokens[i] >= c.vocab:
            raise ValueError("gpt2_forward_cached: token id out of range")
    work = np.empty(pgllm_gpt2_work_floats(&c, B, Tn), np.float32)
    with nogil:
        rc = pgllm_gpt2_forward_cached(&c, &params[0], <const int32_t *> &tokens[0], B, Tn,
                                       past, &kv[0], kv_cap, &work[0], &logits[0],
                                       all_positions, NULL)
    _check_status(rc)


def sample_token(float[::1] logits, const int[::1] history, float repetition_penalty,
                 float temperature, int64_t topk, float topp, uint64_t seed, uint64_t step):
    import numpy as np
    cdef float[::1] work = np.empty(2 * logits.shape[0], np.float32)
    cdef int32_t r
    with nogil:
        r = pgllm_sample_token(&logits[0], logits.shape[0],
                               <const int32_t *> (&history[0] if history.shape[0] else NULL),
                               history.shape[0], repetition_penalty, temperature, topk, topp,
                               seed, step, &work[0])
    return r
