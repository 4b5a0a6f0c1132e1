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


# The one table of GPT-2's parameter tensors, in llm.c's order (PGLLM_P_*):
# HuggingFace's name (after "h.<layer>." for per-layer tensors), whether
# HuggingFace's Conv1D stores it transposed ((in, out)), and its shape in the
# kernels' layout ((out, in) for linear weights; cols 1 for vectors), as
# multiples of the configuration's sizes.  The shims (names, shapes, offsets
# of llm_param) and pg_llm_cy.gpt2 derive everything from it.
cdef extern from *:
    """
    enum { PGLLM__ONE, PGLLM__C, PGLLM__3C, PGLLM__4C, PGLLM__V, PGLLM__T };
    typedef struct { const char *suffix; int per_layer; int hf_transposed; int rows; int cols; } PgllmParamSpec;
    static const PgllmParamSpec pgllm__param_table[] = {
        {"wte.weight",          0, 0, PGLLM__V,  PGLLM__C},     /* token embedding, tied LM head */
        {"wpe.weight",          0, 0, PGLLM__T,  PGLLM__C},     /* position embedding */
        {"ln_1.weight",         1, 0, PGLLM__C,  PGLLM__ONE},
        {"ln_1.bias",           1, 0, PGLLM__C,  PGLLM__ONE},
        {"attn.c_attn.weight",  1, 1, PGLLM__3C, PGLLM__C},     /* q, k, v */
        {"attn.c_attn.bias",    1, 0, PGLLM__3C, PGLLM__ONE},
        {"attn.c_proj.weight",  1, 1, PGLLM__C,  PGLLM__C},
        {"attn.c_proj.bias",    1, 0, PGLLM__C,  PGLLM__ONE},
        {"ln_2.weight",         1, 0, PGLLM__C,  PGLLM__ONE},
        {"ln_2.bias",           1, 0, PGLLM__C,  PGLLM__ONE},
        {"mlp.c_fc.weight",     1, 1, PGLLM__4C, PGLLM__C},
        {"mlp.c_fc.bias",       1, 0, PGLLM__4C, PGLLM__ONE},
        {"mlp.c_proj.weight",   1, 1, PGLLM__C,  PGLLM__4C},
        {"mlp.c_proj.bias",     1, 0, PGLLM__C,  PGLLM__ONE},
        {"ln_f.weight",         0, 0, PGLLM__C,  PGLLM__ONE},
        {"ln_f.bias",           0, 0, PGLLM__C,  PGLLM__ONE},
    };
    static int64_t pgllm__dim(const PgllmGPT2Config *cfg, int d)
    {
        switch (d)
        {
            case PGLLM__C: return cfg->n_embd;
            case PGLLM__3C: return 3 * cfg->n_embd;
            case PGLLM__4C: return 4 * cfg->n_embd;
            case PGLLM__V: return cfg->vocab;
            case PGLLM__T: return cfg->n_positions;
            default: return 1;
        }
    }
    """
    ctypedef struct PgllmParamSpec:
        const char *suffix
        int per_layer
        int hf_transposed
        int rows
        int cols
    const PgllmParamSpec pgllm__param_table[PGLLM_NUM_PARAM_TENSORS]
    int64_t pgllm__dim(const PgllmGPT2Config *cfg, int d) nogil


cdef public int pgllm_gpt2_param_spec(const PgllmGPT2Config *cfg, int kind, const char **suffix,
                                      int *per_layer, int *hf_transposed, int64_t *rows,
                                      int64_t *cols) noexcept nogil:
    if kind < 0 or kind >= PGLLM_NUM_PARAM_TENSORS:
        return PGLLM_EINVAL
    suffix[0] = pgllm__param_table[kind].suffix
    per_layer[0] = pgllm__param_table[kind].per_layer
    hf_transposed[0] = pgllm__param_table[kind].hf_transposed
    rows[0] = pgllm__dim(cfg, pgllm__param_table[kind].rows)
    cols[0] = pgllm__dim(cfg, pgllm__param_table[kind].cols)
    return PGLLM_OK


cdef public int64_t pgllm_gpt2_param_sizes(const PgllmGPT2Config *cfg,
                                           int64_t *sizes) noexcept nogil:
    cdef int64_t total = 0
    cdef int k
    for k in range(PGLLM_NUM_PARAM_TENSORS):
        sizes[k] = ((cfg.n_layer if pgllm__param_table[k].per_layer else 1) *
                    pgllm__dim(cfg, pgllm__param_table[k].rows) * pgllm__dim(cfg, pgllm__param_table[k].cols))
        total = total + sizes[k]
    return total


def gpt2_param_table(int64_t n_layer, int64_t n_head, int64_t n_embd, int64_t n_positions, int64_t vocab):
    """The kernels' parameter table for a configuration: one tuple per tensor
    kind, in buffer order: (HuggingFace name suffix, per layer, stored
    transposed by HuggingFace, rows, cols) -- cols 1 for vectors."""
    cdef PgllmGPT2Config cfg
    cdef const char *suffix
    cdef int per_layer, hf_t, k
    cdef int64_t rows, cols
    cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.n_positions, cfg.vocab = n_layer, n_head, n_embd, n_positions, vocab
    out = []
    for k in range(PGLLM_NUM_PARAM_TENSORS):
        pgllm_gpt2_param_spec(&cfg, k, &suffix, &per_layer, &hf_t, &rows, &cols)
        out.append((suffix.decode(), bool(per_layer), bool(hf_t), rows, cols))
    return out


cdef struct Params:
    # pointers into the parameter buffer, one per tensor kind (all layers),
    # indexed by PGLLM_P_*
    float *t[PGLLM_NUM_PARAM_TENSORS]


cdef inline void _param_pointers(const PgllmGPT2Config *cfg, const float *params,
                                 Params *p) noexcept nogil:
    cdef int64_t sizes[PGLLM_NUM_PARAM_TENSORS]
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
    cdef int64_t sizes[PGLLM_NUM_PARAM_TENSORS]
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
    """out(hs) = softmax(q . k[t] / sqrt(hs), t < npos) @ v; k, v rows C apart.
    One query (decoding); _attend_block is the same for many."""
    _attend_scores(q, 0, 1, npos - 1, k, C, hs, <float> 1.0 / sqrtf(<float> hs), scores, 0)
    _softmax_weights(scores, npos)
    _attend_values(scores, 0, 1, npos - 1, v, C, hs, out, 0)


cdef void _attend_block(const float *q, int64_t nq, int64_t first, const float *k,
                        const float *v, int64_t C, int64_t hs, float *scores,
                        float *out) noexcept nogil:
    """_attend_cached for nq consecutive queries of one head and sequence at
    positions first .. first + nq - 1 (rows 3C apart in q, C apart in out),
    each element computed exactly as there, with the loops turned so that
    each tile of keys and block of value rows, read once from the cache,
    serves every query that sees it.  scores: nq * (first + nq)."""
    cdef int64_t span = first + nq
    cdef int64_t i
    _attend_scores(q, 3 * C, nq, first, k, C, hs, <float> 1.0 / sqrtf(<float> hs), scores, span)
    for i in range(nq):
        _softmax_weights(scores + i * span, first + i + 1)
    _attend_values(scores, span, nq, first, v, C, hs, out, C)


cdef inline int _linear(int rowinv, int64_t rows, int64_t N, int64_t K, const float *x,
                        const float *W, const float *bias, float *out, int accumulate,
                        const int *cancel) noexcept nogil:
    """out (rows, N) [+]= x (rows, K) @ W^T + bias; W (N, K).  rowinv: each row
    exactly as if it were alone (batched decoding)."""
    if rowinv:
        return pgllm_gemm_rowinv(rows, N, K, x, K, W, K, out, N, bias, accumulate, cancel)
    return pgllm_gemm(PGLLM_NO_TRANS, PGLLM_TRANS, rows, N, K, x, K, W, K, out, N, bias,
                      accumulate, cancel)


cdef int _block_qkv(const PgllmGPT2Config *cfg, const Params *p, int64_t l, int64_t rows,
                    const float *x, float *xn, float *qkv, int rowinv,
                    const int *cancel) noexcept nogil:
    """qkv (rows, 3C) = ln_1(x) @ W_qkv^T + b: the attention block's input."""
    cdef int64_t C = cfg.n_embd
    cdef int rc = pgllm_layernorm_forward(x, p.t[PGLLM_P_LN1W] + l * C, p.t[PGLLM_P_LN1B] + l * C,
                                          xn, NULL, NULL, rows, C, cfg.eps, cancel)
    if rc == PGLLM_OK:
        rc = _linear(rowinv, rows, 3 * C, C, xn, p.t[PGLLM_P_QKVW] + l * 3 * C * C,
                     p.t[PGLLM_P_QKVB] + l * 3 * C, qkv, PGLLM_OVERWRITE, cancel)
    return rc


cdef int _block_rest(const PgllmGPT2Config *cfg, const Params *p, int64_t l, int64_t rows,
                     float *x, float *xn, const float *att, float *hmlp, int rowinv,
                     const int *cancel) noexcept nogil:
    """x += proj(att); x += mlp(ln_2(x)): the block after attention."""
    cdef int64_t C = cfg.n_embd
    cdef int rc = _linear(rowinv, rows, C, C, att, p.t[PGLLM_P_ATTPROJW] + l * C * C,
                          p.t[PGLLM_P_ATTPROJB] + l * C, x, PGLLM_ACCUMULATE, cancel)
    if rc == PGLLM_OK:
        rc = pgllm_layernorm_forward(x, p.t[PGLLM_P_LN2W] + l * C, p.t[PGLLM_P_LN2B] + l * C,
                                     xn, NULL, NULL, rows, C, cfg.eps, cancel)
    if rc == PGLLM_OK:
        rc = _linear(rowinv, rows, 4 * C, C, xn, p.t[PGLLM_P_FCW] + l * 4 * C * C,
                     p.t[PGLLM_P_FCB] + l * 4 * C, hmlp, PGLLM_OVERWRITE, cancel)
    if rc == PGLLM_OK:
        rc = pgllm_gelu_forward(hmlp, hmlp, rows * 4 * C, cancel)
    if rc == PGLLM_OK:
        rc = _linear(rowinv, rows, C, 4 * C, hmlp, p.t[PGLLM_P_FCPROJW] + l * 4 * C * C,
                     p.t[PGLLM_P_FCPROJB] + l * C, x, PGLLM_ACCUMULATE, cancel)
    return rc


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
    # few rows (a short prompt's prefill, a decoding step) on AVX2: the
    # row-invariant product is the faster one there (AVX-512's 8x32 packed
    # tiles are faster still; M <= SMALL_M takes the row-invariant path anyway)
    cdef int rowinv = BT <= ROWINV_MAX_ROWS and not pgllm_cpu_has_avx512()
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
        rc = _block_qkv(cfg, &p, l, BT, x, xn, qkv, rowinv, cancel)
        if rc != PGLLM_OK:
            return rc
        for b in range(B):
            for t in range(Tn):
                kdst = kv_l + b * layer_stride + (past + t) * C
                vdst = kdst + kv_cap * C
                memcpy(kdst, qkv + (b * Tn + t) * 3 * C + C, C * sizeof(float))
                memcpy(vdst, qkv + (b * Tn + t) * 3 * C + 2 * C, C * sizeof(float))
        rc = _attention_rows(cfg, qkv, kv_l, BT, Tn, past, NULL, NULL, kv_cap, layer_stride, att,
                             cancel)
        if rc == PGLLM_OK:
            rc = _block_rest(cfg, &p, l, BT, x, xn, att, hmlp, rowinv, cancel)
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
        rc = _linear(rowinv, rows, V, C, xn, p.t[PGLLM_P_WTE], NULL, logits, PGLLM_OVERWRITE, cancel)
    return rc


cdef int _attention_blocks(const PgllmGPT2Config *cfg, const float *qkv, const float *kv_l,
                           int64_t B, int64_t Tn, int64_t past, int64_t kv_cap,
                           int64_t layer_stride, float *out, const int *cancel) noexcept nogil:
    """_attention_rows for B sequences of Tn > 1 new tokens (a prompt, a
    scored text): blocks of ATTN_BLOCK queries of one head (_attend_block),
    the longest (last) blocks handed out first."""
    cdef int64_t C = cfg.n_embd, NH = cfg.n_head
    cdef int64_t hs = C // NH
    cdef int64_t nblk = (Tn + ATTN_BLOCK - 1) // ATTN_BLOCK
    cdef int64_t nunits = B * NH * nblk
    cdef int64_t span = past + Tn
    cdef int64_t u, b, h, blk, r0, nq
    cdef float *scores = NULL
    cdef const float *kb
    cdef int failed = 0
    cdef int *pfailed = &failed
    cdef int nt = <int> min(<int64_t> _threads_for(B * NH * Tn * span * hs * 2), nunits)
    with parallel(num_threads=nt):
        scores = _alloc_floats(min(Tn, <int64_t> ATTN_BLOCK) * span)
        for u in prange(nunits, schedule='dynamic'):
            if scores == NULL:
                pfailed[0] = 1
                continue
            if PGLLM_CANCELLED(cancel):
                continue
            blk = nblk - 1 - u // (B * NH)
            b = (u // NH) % B
            h = u % NH
            r0 = blk * ATTN_BLOCK
            nq = min(Tn - r0, <int64_t> ATTN_BLOCK)
            kb = kv_l + b * layer_stride
            _attend_block(qkv + (b * Tn + r0) * 3 * C + h * hs, nq, past + r0, kb + h * hs,
                          kb + kv_cap * C + h * hs, C, hs, scores, out + (b * Tn + r0) * C + h * hs)
        free(scores)
    if failed:
        return PGLLM_ENOMEM
    return _status(cancel)


cdef int _attention_rows(const PgllmGPT2Config *cfg, const float *qkv, const float *kv_l,
                         int64_t n, int64_t Tn, int64_t past, const int64_t *slots,
                         const int64_t *positions, int64_t kv_cap, int64_t layer_stride,
                         float *out, const int *cancel) noexcept nogil:
    """Row r of qkv (n, 3C), one new token, attends over its sequence's cache
    (this layer's, keys then values, (kv_cap, C) each, sequences layer_stride
    apart from kv_l), positions 0 .. its own; out (n, C).  The sequence and
    position of row r: slots[r] and positions[r], or without slots (B
    sequences of Tn new tokens after `past`) r // Tn and past + r % Tn."""
    cdef int64_t C = cfg.n_embd, NH = cfg.n_head
    cdef int64_t hs = C // NH
    cdef int64_t nunits = n * NH
    cdef int64_t u, r, h, slot, pos, span = past + Tn
    cdef float *scores = NULL
    cdef const float *kb
    cdef int failed = 0
    cdef int *pfailed = &failed
    cdef int nt
    if slots == NULL and Tn > 1:
        return _attention_blocks(cfg, qkv, kv_l, n // Tn, Tn, past, kv_cap, layer_stride, out,
                                 cancel)
    if slots != NULL:
        span = 0
        for r in range(n):
            span = max(span, positions[r] + 1)
    nt = <int> min(<int64_t> _threads_for(nunits * span * hs * 4), nunits)
    with parallel(num_threads=nt):
        scores = _alloc_floats(span)
        for u in prange(nunits, schedule='static'):
            if scores == NULL:
                pfailed[0] = 1
                continue
            if PGLLM_CANCELLED(cancel):
                continue
            r = u // NH
            h = u % NH
            if slots != NULL:
                slot = slots[r]
                pos = positions[r]
            else:
                slot = r // Tn
                pos = past + r % Tn
            kb = kv_l + slot * layer_stride
            _attend_cached(qkv + r * 3 * C + h * hs, kb + h * hs, kb + kv_cap * C + h * hs,
                           pos + 1, C, hs, scores, out + r * C + h * hs)
        free(scores)
    if failed:
        return PGLLM_ENOMEM
    return _status(cancel)


cdef public int pgllm_gpt2_forward_rows(const PgllmGPT2Config *cfg, const float *params,
                                        const int32_t *tokens, const int64_t *slots,
                                        const int64_t *positions, int64_t n, float *kv,
                                        int64_t kv_cap, float *work, float *logits,
                                        const int *cancel) noexcept nogil:
    """One decoding step of a batch: row r is token tokens[r] of the sequence
    in KV slot slots[r] (slots distinct, L*2*kv_cap*C floats apart in kv) at
    position positions[r] < kv_cap; that slot's cache holds the positions
    before it.  logits (n, V).  Every operation is per row and the GEMMs are
    row-invariant, so row r's logits are bit-identical to those of
    pgllm_gpt2_forward_cached over the same sequence alone (B = 1, Tn = 1).
    work: pgllm_gpt2_work_floats(cfg, n, 1) floats."""
    cdef int64_t C = cfg.n_embd, V = cfg.vocab, L = cfg.n_layer
    cdef int64_t layer_stride = L * 2 * kv_cap * C
    cdef int64_t r, l, i
    cdef Params p
    cdef float *x = work                # (n, C) residual stream
    cdef float *xn = x + n * C          # (n, C) layernorm output
    cdef float *att = xn + n * C        # (n, C) attention output
    cdef float *qkv = att + n * C       # (n, 3C)
    cdef float *hmlp = qkv + n * 3 * C  # (n, 4C)
    cdef float *kv_l
    cdef const float *e
    cdef const float *pe
    cdef float *xr
    cdef float *kdst
    cdef int rc = PGLLM_OK
    _param_pointers(cfg, params, &p)

    for r in range(n):
        e = p.t[PGLLM_P_WTE] + tokens[r] * C
        pe = p.t[PGLLM_P_WPE] + positions[r] * C
        xr = x + r * C
        for i in range(C):
            xr[i] = e[i] + pe[i]

    for l in range(L):
        if PGLLM_CANCELLED(cancel):
            return PGLLM_INTERRUPTED
        kv_l = kv + l * 2 * kv_cap * C
        rc = _block_qkv(cfg, &p, l, n, x, xn, qkv, 1, cancel)
        if rc != PGLLM_OK:
            return rc
        for r in range(n):
            kdst = kv_l + slots[r] * layer_stride + positions[r] * C
            memcpy(kdst, qkv + r * 3 * C + C, C * sizeof(float))
            memcpy(kdst + kv_cap * C, qkv + r * 3 * C + 2 * C, C * sizeof(float))
        rc = _attention_rows(cfg, qkv, kv_l, n, 1, 0, slots, positions, kv_cap, layer_stride,
                             att, cancel)
        if rc == PGLLM_OK:
            rc = _block_rest(cfg, &p, l, n, x, xn, att, hmlp, 1, cancel)
        if rc != PGLLM_OK:
            return rc

    rc = pgllm_layernorm_forward(x, p.t[PGLLM_P_LNFW], p.t[PGLLM_P_LNFB], xn, NULL, NULL, n, C,
                                 cfg.eps, cancel)
    if rc == PGLLM_OK:
        rc = _linear(1, n, V, C, xn, p.t[PGLLM_P_WTE], NULL, logits, PGLLM_OVERWRITE, cancel)
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
    cdef int64_t sizes[PGLLM_NUM_PARAM_TENSORS]
    total = pgllm_gpt2_param_sizes(&c, sizes)
    return [sizes[i] for i in range(PGLLM_NUM_PARAM_TENSORS)], total


def gpt2_init(float[::1] params, int n_layer, int n_head, int n_embd, int n_positions,
              int vocab, uint64_t seed):
    cdef PgllmGPT2Config c = _config(n_layer, n_head, n_embd, n_positions, vocab)
    cdef int64_t sizes[PGLLM_NUM_PARAM_TENSORS]
    if params.shape[0] != pgllm_gpt2_param_sizes(&c, sizes):
        raise ValueError("gpt2_init: wrong parameter buffer size")
    with nogil:
        pgllm_gpt2_init(&c, &params[0], seed, NULL)


def gpt2_forward_cached(const float[::1] params, tuple config, const int[::1] tokens,
                        int64_t B, int64_t Tn, int64_t past, float[::1] kv, int64_t kv_cap,
                        float[::1] logits, bint all_positions=False):
    """One forward step over B*Tn new tokens with a KV cache (see the header)."""
    cdef PgllmGPT2Config c = _config(*config)
    cdef int64_t sizes[PGLLM_NUM_PARAM_TENSORS]
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


def gpt2_forward_rows(const float[::1] params, tuple config, const int[::1] tokens,
                      const int64_t[::1] slots, const int64_t[::1] positions, float[::1] kv,
                      int64_t kv_cap, float[::1] logits):
    """One batched decoding step (see pgllm_gpt2_forward_rows): kv holds
    kv.shape[0] // (n_layer*2*kv_cap*n_embd) slots; logits (n, vocab)."""
    cdef PgllmGPT2Config c = _config(*config)
    cdef int64_t sizes[PGLLM_NUM_PARAM_TENSORS]
    cdef int64_t n = tokens.shape[0], per_slot, nslots
    cdef float[::1] work
    cdef int rc
    cdef Py_ssize_t r, q
    import numpy as np
    if params.shape[0] != pgllm_gpt2_param_sizes(&c, sizes):
        raise ValueError("gpt2_forward_rows: wrong parameter buffer size")
    if n < 1 or slots.shape[0] != n or positions.shape[0] != n or not 1 <= kv_cap <= c.n_positions:
        raise ValueError("gpt2_forward_rows: tokens / slots / positions / kv_cap")
    per_slot = c.n_layer * 2 * kv_cap * c.n_embd
    if kv.shape[0] == 0 or kv.shape[0] % per_slot != 0:
        raise ValueError("gpt2_forward_rows: kv cache size")
    nslots = kv.shape[0] // per_slot
    if logits.shape[0] != n * c.vocab:
        raise ValueError("gpt2_forward_rows: logits size")
    for r in range(n):
        if tokens[r] < 0 or tokens[r] >= c.vocab:
            raise ValueError("gpt2_forward_rows: token id out of range")
        if slots[r] < 0 or slots[r] >= nslots or positions[r] < 0 or positions[r] >= kv_cap:
            raise ValueError("gpt2_forward_rows: slot or position out of range")
        for q in range(r):
            if slots[q] == slots[r]:
                raise ValueError("gpt2_forward_rows: slots must be distinct")
    work = np.empty(pgllm_gpt2_work_floats(&c, n, 1), np.float32)
    with nogil:
        rc = pgllm_gpt2_forward_rows(&c, &params[0], <const int32_t *> &tokens[0], &slots[0],
                                     &positions[0], n, &kv[0], kv_cap, &work[0], &logits[0], NULL)
    _check_status(rc)
