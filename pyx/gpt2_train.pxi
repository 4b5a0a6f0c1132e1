# Training GPT-2, llm.c style: the forward keeps what the backward needs in
# one activation buffer; the backward walks the layers in reverse, each
# layer's pieces beside their forward counterparts in gpt2.pxi.
#
#   B: sequences, T: positions, BT = B*T, C: n_embd, NH: n_head, L: n_layer,
#   V: vocab.  Linear weights are (out, in): forward y = x W^T (gemm NT),
#   backward dx = dy W (NN) and dW += dy^T x (TN) -- the three GEMM shapes
#   of gemm.pxi's table.

cdef enum:
    # activation tensors, in buffer order
    A_ENCODED       # (BT, C)
    A_LN1           # (L, BT, C)
    A_LN1_MEAN      # (L, BT)
    A_LN1_RSTD      # (L, BT)
    A_QKV           # (L, BT, 3C)
    A_ATT           # (L, B, NH, T, T) softmax probabilities (before dropout)
    A_ATTY          # (L, BT, C)
    A_RESIDUAL2     # (L, BT, C)
    A_LN2           # (L, BT, C)
    A_LN2_MEAN      # (L, BT)
    A_LN2_RSTD      # (L, BT)
    A_FCH           # (L, BT, 4C) before GELU
    A_FCH_GELU      # (L, BT, 4C)
    A_RESIDUAL3     # (L, BT, C)
    A_LNF           # (BT, C)
    A_LNF_MEAN      # (BT)
    A_LNF_RSTD      # (BT)
    A_LOGITS        # (BT, V); the backward turns it into dlogits
    A_LOSSES        # (BT)
    # backward scratch
    A_DRES          # (BT, C) gradient of the residual stream
    A_DRES2         # (BT, C)
    A_DTMP          # (BT, C)
    A_DLN           # (BT, C)
    A_DATTY         # (BT, C)
    A_DQKV          # (BT, 3C)
    A_DBIG          # (BT, 4C)
    A_TMP           # (BT, C) forward scratch
    NUM_ACTS

cdef struct Acts:
    # pointers into the activation buffer, indexed by A_*
    float *t[NUM_ACTS]


cdef int64_t _act_sizes(const PgllmGPT2Config *cfg, int64_t B, int64_t T,
                        int64_t *sz) noexcept nogil:
    cdef int64_t C = cfg.n_embd, L = cfg.n_layer, NH = cfg.n_head, BT = B * T
    cdef int64_t total = 0
    cdef int i
    sz[A_ENCODED] = BT * C
    sz[A_LN1] = L * BT * C
    sz[A_LN1_MEAN] = L * BT
    sz[A_LN1_RSTD] = L * BT
    sz[A_QKV] = L * BT * 3 * C
    sz[A_ATT] = L * B * NH * T * T
    sz[A_ATTY] = L * BT * C
    sz[A_RESIDUAL2] = L * BT * C
    sz[A_LN2] = L * BT * C
    sz[A_LN2_MEAN] = L * BT
    sz[A_LN2_RSTD] = L * BT
    sz[A_FCH] = L * BT * 4 * C
    sz[A_FCH_GELU] = L * BT * 4 * C
    sz[A_RESIDUAL3] = L * BT * C
    sz[A_LNF] = BT * C
    sz[A_LNF_MEAN] = BT
    sz[A_LNF_RSTD] = BT
    sz[A_LOGITS] = BT * cfg.vocab
    sz[A_LOSSES] = BT
    sz[A_DRES] = BT * C
    sz[A_DRES2] = BT * C
    sz[A_DTMP] = BT * C
    sz[A_DLN] = BT * C
    sz[A_DATTY] = BT * C
    sz[A_DQKV] = BT * 3 * C
    sz[A_DBIG] = BT * 4 * C
    sz[A_TMP] = BT * C
    for i in range(NUM_ACTS):
        # 16-float (64-byte) aligned starts
        total = total + ((sz[i] + 15) // 16) * 16
    return total


cdef void _act_pointers(const PgllmGPT2Config *cfg, int64_t B, int64_t T, float *buf,
                        Acts *a) noexcept nogil:
    cdef int64_t sz[NUM_ACTS]
    cdef int i
    _act_sizes(cfg, B, T, sz)
    for i in range(NUM_ACTS):
        a.t[i] = buf
        buf = buf + ((sz[i] + 15) // 16) * 16


cdef public int64_t pgllm_gpt2_train_floats(const PgllmGPT2Config *cfg, int64_t B,
                                            int64_t T) noexcept nogil:
    cdef int64_t sz[NUM_ACTS]
    return _act_sizes(cfg, B, T, sz)


# dropout sites: the embeddings, then per layer the attention probabilities
# and the two residual branches; each site has its own counter stream
cdef inline uint64_t _site(uint64_t seed, int64_t site) noexcept nogil:
    return _mix64(seed ^ (<uint64_t> (site + 1) * <uint64_t> 0x9e3779b97f4a7c15ULL))

cdef inline int64_t _site_attn(int64_t l) noexcept nogil:
    return 1 + 3 * l

cdef inline int64_t _site_resid_attn(int64_t l) noexcept nogil:
    return 2 + 3 * l

cdef inline int64_t _site_resid_mlp(int64_t l) noexcept nogil:
    return 3 + 3 * l


cdef int _dropout_inplace(float *x, int64_t n, float p, uint64_t stream,
                          const int *cancel) noexcept nogil:
    if p <= 0:
        return PGLLM_OK
    return pgllm_dropout_forward(x, x, n, p, stream, cancel)


cdef public int pgllm_gpt2_train_forward(const PgllmGPT2Config *cfg, const float *params,
                                         const int32_t *tokens, const int32_t *targets,
                                         int64_t B, int64_t T, float dropout, uint64_t seed,
                                         float *acts, double *loss,
                                         const int *cancel) noexcept nogil:
    cdef int64_t C = cfg.n_embd, V = cfg.vocab, L = cfg.n_layer, NH = cfg.n_head
    cdef int64_t BT = B * T
    cdef int64_t b, t, i, l
    cdef Params p
    cdef Acts a
    cdef const float *inp
    cdef const float *e
    cdef const float *pe
    cdef float *xr
    cdef float *ln1
    cdef float *qkv
    cdef float *att
    cdef float *atty
    cdef float *res2
    cdef float *ln2
    cdef float *fch
    cdef float *fchg
    cdef float *res3
    cdef float *tmp
    cdef int rc = PGLLM_OK
    _param_pointers(cfg, params, &p)
    _act_pointers(cfg, B, T, acts, &a)
    tmp = a.t[A_TMP]

    # encoded = dropout(wte[token] + wpe[position])
    for b in range(B):
        for t in range(T):
            e = p.t[PGLLM_P_WTE] + tokens[b * T + t] * C
            pe = p.t[PGLLM_P_WPE] + t * C
            xr = a.t[A_ENCODED] + (b * T + t) * C
            for i in range(C):
                xr[i] = e[i] + pe[i]
    rc = _dropout_inplace(a.t[A_ENCODED], BT * C, dropout, _site(seed, 0), cancel)

    for l in range(L):
        if rc != PGLLM_OK:
            return rc
        inp = a.t[A_ENCODED] if l == 0 else a.t[A_RESIDUAL3] + (l - 1) * BT * C
        ln1 = a.t[A_LN1] + l * BT * C
        qkv = a.t[A_QKV] + l * BT * 3 * C
        att = a.t[A_ATT] + l * B * NH * T * T
        atty = a.t[A_ATTY] + l * BT * C
        res2 = a.t[A_RESIDUAL2] + l * BT * C
        ln2 = a.t[A_LN2] + l * BT * C
        fch = a.t[A_FCH] + l * BT * 4 * C
        fchg = a.t[A_FCH_GELU] + l * BT * 4 * C
        res3 = a.t[A_RESIDUAL3] + l * BT * C
        # attention: res2 = inp + dropout(attn(ln_1(inp)) W_proj^T + b)
        rc = pgllm_layernorm_forward(inp, p.t[PGLLM_P_LN1W] + l * C, p.t[PGLLM_P_LN1B] + l * C,
                                     ln1, a.t[A_LN1_MEAN] + l * BT, a.t[A_LN1_RSTD] + l * BT,
                                     BT, C, cfg.eps, cancel)
        if rc == PGLLM_OK:
            rc = pgllm_gemm(PGLLM_NO_TRANS, PGLLM_TRANS,
                            BT, 3 * C, C, ln1, C, p.t[PGLLM_P_QKVW] + l * 3 * C * C, C,
                            qkv, 3 * C, p.t[PGLLM_P_QKVB] + l * 3 * C, PGLLM_OVERWRITE, cancel)
        if rc == PGLLM_OK:
            rc = _attention_fwd(qkv, att, atty, B, T, C, NH, dropout,
                                _site(seed, _site_attn(l)), cancel)
        if rc == PGLLM_OK:
            rc = pgllm_gemm(PGLLM_NO_TRANS, PGLLM_TRANS,
                            BT, C, C, atty, C, p.t[PGLLM_P_ATTPROJW] + l * C * C, C,
                            tmp, C, p.t[PGLLM_P_ATTPROJB] + l * C, PGLLM_OVERWRITE, cancel)
        if rc == PGLLM_OK:
            rc = _dropout_inplace(tmp, BT * C, dropout, _site(seed, _site_resid_attn(l)), cancel)
        if rc == PGLLM_OK:
            rc = pgllm_add(inp, tmp, res2, BT * C)
        # MLP: res3 = res2 + dropout(gelu(ln_2(res2) W_fc^T + b) W_proj^T + b)
        if rc == PGLLM_OK:
            rc = pgllm_layernorm_forward(res2, p.t[PGLLM_P_LN2W] + l * C, p.t[PGLLM_P_LN2B] + l * C,
                                         ln2, a.t[A_LN2_MEAN] + l * BT, a.t[A_LN2_RSTD] + l * BT,
                                         BT, C, cfg.eps, cancel)
        if rc == PGLLM_OK:
            rc = pgllm_gemm(PGLLM_NO_TRANS, PGLLM_TRANS,
                            BT, 4 * C, C, ln2, C, p.t[PGLLM_P_FCW] + l * 4 * C * C, C,
                            fch, 4 * C, p.t[PGLLM_P_FCB] + l * 4 * C, PGLLM_OVERWRITE, cancel)
        if rc == PGLLM_OK:
            rc = pgllm_gelu_forward(fch, fchg, BT * 4 * C, cancel)
        if rc == PGLLM_OK:
            rc = pgllm_gemm(PGLLM_NO_TRANS, PGLLM_TRANS,
                            BT, C, 4 * C, fchg, 4 * C, p.t[PGLLM_P_FCPROJW] + l * 4 * C * C,
                            4 * C, tmp, C, p.t[PGLLM_P_FCPROJB] + l * C, PGLLM_OVERWRITE, cancel)
        if rc == PGLLM_OK:
            rc = _dropout_inplace(tmp, BT * C, dropout, _site(seed, _site_resid_mlp(l)), cancel)
        if rc == PGLLM_OK:
            rc = pgllm_add(res2, tmp, res3, BT * C)
    if rc != PGLLM_OK:
        return rc

    rc = pgllm_layernorm_forward(a.t[A_RESIDUAL3] + (L - 1) * BT * C, p.t[PGLLM_P_LNFW],
                                 p.t[PGLLM_P_LNFB], a.t[A_LNF], a.t[A_LNF_MEAN], a.t[A_LNF_RSTD],
                                 BT, C, cfg.eps, cancel)
    if rc == PGLLM_OK:
        rc = pgllm_gemm(PGLLM_NO_TRANS, PGLLM_TRANS,
                        BT, V, C, a.t[A_LNF], C, p.t[PGLLM_P_WTE], C, a.t[A_LOGITS], V,
                        NULL, PGLLM_OVERWRITE, cancel)
    if rc == PGLLM_OK and targets != NULL:
        rc = pgllm_cross_entropy_forward(a.t[A_LOGITS], targets, a.t[A_LOSSES], BT, V, cancel)
        if rc == PGLLM_OK and loss != NULL:
            loss[0] = pgllm_mean(a.t[A_LOSSES], BT)
    return rc


cdef int _embedding_backward(const int32_t *tokens, const float *dencoded, float *dwte,
                             float *dwpe, int64_t B, int64_t T, int64_t C,
                             const int *cancel) noexcept nogil:
    """dwte[token] += d, dwpe[t] += d; columns split among threads, so that
    repeated tokens are summed in the same order whatever the thread count."""
    cdef int64_t nblocks = (C + COL_BLOCK - 1) // COL_BLOCK
    cdef int64_t cb, j0, j1, bt, j
    cdef const float *d
    cdef float *w
    cdef float *pw
    for cb in prange(nblocks, num_threads=_threads_for(B * T * C), schedule='static'):
        j0 = cb * COL_BLOCK
        j1 = min(j0 + COL_BLOCK, C)
        for bt in range(B * T):
            d = dencoded + bt * C
            w = dwte + tokens[bt] * C
            pw = dwpe + (bt % T) * C
            for j in range(j0, j1):
                w[j] = w[j] + d[j]
                pw[j] = pw[j] + d[j]
    return _status(cancel)


cdef public int pgllm_gpt2_train_backward(const PgllmGPT2Config *cfg, const float *params,
                                          float *grads, const int32_t *tokens,
                                          const int32_t *targets, int64_t B, int64_t T,
                                          float dropout, uint64_t seed, float *acts,
                                          float loss_scale, const int *cancel) noexcept nogil:
    cdef int64_t C = cfg.n_embd, V = cfg.vocab, L = cfg.n_layer, NH = cfg.n_head
    cdef int64_t BT = B * T
    cdef int64_t l
    cdef Params p
    cdef Params g
    cdef Acts a
    cdef const float *inp
    cdef float *dres
    cdef float *dres2
    cdef float *dtmp
    cdef float *dln
    cdef float *datty
    cdef float *dqkv
    cdef float *dbig
    cdef int rc = PGLLM_OK
    _param_pointers(cfg, params, &p)
    _param_pointers(cfg, grads, &g)
    _act_pointers(cfg, B, T, acts, &a)
    dres = a.t[A_DRES]
    dres2 = a.t[A_DRES2]
    dtmp = a.t[A_DTMP]
    dln = a.t[A_DLN]
    datty = a.t[A_DATTY]
    dqkv = a.t[A_DQKV]
    dbig = a.t[A_DBIG]

    # loss -> logits (in place) -> tied embedding and the final layernorm
    rc = pgllm_cross_entropy_backward(a.t[A_LOGITS], targets, a.t[A_LOGITS], BT, V, loss_scale,
                                      cancel)
    if rc == PGLLM_OK:
        rc = pgllm_gemm(PGLLM_TRANS, PGLLM_NO_TRANS,
                        V, C, BT, a.t[A_LOGITS], V, a.t[A_LNF], C, g.t[PGLLM_P_WTE], C,
                        NULL, PGLLM_ACCUMULATE, cancel)
    if rc == PGLLM_OK:
        rc = pgllm_gemm(PGLLM_NO_TRANS, PGLLM_NO_TRANS,
                        BT, C, V, a.t[A_LOGITS], V, p.t[PGLLM_P_WTE], C, dln, C, NULL, PGLLM_OVERWRITE,
                        cancel)
    if rc == PGLLM_OK:
        rc = _layernorm_backward(a.t[A_RESIDUAL3] + (L - 1) * BT * C, dln, p.t[PGLLM_P_LNFW],
                                 a.t[A_LNF_MEAN], a.t[A_LNF_RSTD], cfg.eps, dres,
                                 g.t[PGLLM_P_LNFW], g.t[PGLLM_P_LNFB], BT, C, 0, 1, cancel)
    l = L - 1
    while l >= 0 and rc == PGLLM_OK:
        inp = a.t[A_ENCODED] if l == 0 else a.t[A_RESIDUAL3] + (l - 1) * BT * C
        # res3 = res2 + dropout(fch_gelu W_fcproj^T + b)
        memcpy(dtmp, dres, BT * C * sizeof(float))
        rc = _dropout_inplace(dtmp, BT * C, dropout, _site(seed, _site_resid_mlp(l)), cancel)
        if rc == PGLLM_OK:
            rc = pgllm_gemm(PGLLM_TRANS, PGLLM_NO_TRANS,
                            C, 4 * C, BT, dtmp, C, a.t[A_FCH_GELU] + l * BT * 4 * C, 4 * C,
                            g.t[PGLLM_P_FCPROJW] + l * 4 * C * C, 4 * C, NULL, PGLLM_ACCUMULATE, cancel)
        if rc == PGLLM_OK:
            rc = _colsum(dtmp, g.t[PGLLM_P_FCPROJB] + l * C, BT, C, 1, cancel)
        if rc == PGLLM_OK:
            rc = pgllm_gemm(PGLLM_NO_TRANS, PGLLM_NO_TRANS,
                            BT, 4 * C, C, dtmp, C, p.t[PGLLM_P_FCPROJW] + l * 4 * C * C,
                            4 * C, dbig, 4 * C, NULL, PGLLM_OVERWRITE, cancel)
        if rc == PGLLM_OK:
            rc = pgllm_gelu_backward(a.t[A_FCH] + l * BT * 4 * C, dbig, dbig, BT * 4 * C, cancel)
        if rc == PGLLM_OK:
            rc = pgllm_gemm(PGLLM_TRANS, PGLLM_NO_TRANS,
                            4 * C, C, BT, dbig, 4 * C, a.t[A_LN2] + l * BT * C, C,
                            g.t[PGLLM_P_FCW] + l * 4 * C * C, C, NULL, PGLLM_ACCUMULATE, cancel)
        if rc == PGLLM_OK:
            rc = _colsum(dbig, g.t[PGLLM_P_FCB] + l * 4 * C, BT, 4 * C, 1, cancel)
        if rc == PGLLM_OK:
            rc = pgllm_gemm(PGLLM_NO_TRANS, PGLLM_NO_TRANS,
                            BT, C, 4 * C, dbig, 4 * C, p.t[PGLLM_P_FCW] + l * 4 * C * C, C,
                            dln, C, NULL, PGLLM_OVERWRITE, cancel)
        # res2 -> ln_2: dres2 = dres + layernorm'(dln)
        if rc == PGLLM_OK:
            memcpy(dres2, dres, BT * C * sizeof(float))
            rc = _layernorm_backward(a.t[A_RESIDUAL2] + l * BT * C, dln, p.t[PGLLM_P_LN2W] + l * C,
                                     a.t[A_LN2_MEAN] + l * BT, a.t[A_LN2_RSTD] + l * BT, cfg.eps,
                                     dres2, g.t[PGLLM_P_LN2W] + l * C, g.t[PGLLM_P_LN2B] + l * C,
                                     BT, C, 1, 1, cancel)
        # res2 = inp + dropout(atty W_proj^T + b)
        if rc == PGLLM_OK:
            memcpy(dtmp, dres2, BT * C * sizeof(float))
            rc = _dropout_inplace(dtmp, BT * C, dropout, _site(seed, _site_resid_attn(l)), cancel)
        if rc == PGLLM_OK:
            rc = pgllm_gemm(PGLLM_TRANS, PGLLM_NO_TRANS,
                            C, C, BT, dtmp, C, a.t[A_ATTY] + l * BT * C, C,
                            g.t[PGLLM_P_ATTPROJW] + l * C * C, C, NULL, PGLLM_ACCUMULATE, cancel)
        if rc == PGLLM_OK:
            rc = _colsum(dtmp, g.t[PGLLM_P_ATTPROJB] + l * C, BT, C, 1, cancel)
        if rc == PGLLM_OK:
            rc = pgllm_gemm(PGLLM_NO_TRANS, PGLLM_NO_TRANS,
                            BT, C, C, dtmp, C, p.t[PGLLM_P_ATTPROJW] + l * C * C, C,
                            datty, C, NULL, PGLLM_OVERWRITE, cancel)
        if rc == PGLLM_OK:
            rc = _attention_bwd(a.t[A_QKV] + l * BT * 3 * C, a.t[A_ATT] + l * B * NH * T * T,
                                datty, dqkv, B, T, C, NH, dropout,
                                _site(seed, _site_attn(l)), cancel)
        if rc == PGLLM_OK:
            rc = pgllm_gemm(PGLLM_TRANS, PGLLM_NO_TRANS,
                            3 * C, C, BT, dqkv, 3 * C, a.t[A_LN1] + l * BT * C, C,
                            g.t[PGLLM_P_QKVW] + l * 3 * C * C, C, NULL, PGLLM_ACCUMULATE, cancel)
        if rc == PGLLM_OK:
            rc = _colsum(dqkv, g.t[PGLLM_P_QKVB] + l * 3 * C, BT, 3 * C, 1, cancel)
        if rc == PGLLM_OK:
            rc = pgllm_gemm(PGLLM_NO_TRANS, PGLLM_NO_TRANS,
                            BT, C, 3 * C, dqkv, 3 * C, p.t[PGLLM_P_QKVW] + l * 3 * C * C, C,
                            dln, C, NULL, PGLLM_OVERWRITE, cancel)
        # inp -> ln_1: dres = dres2 + layernorm'(dln)
        if rc == PGLLM_OK:
            memcpy(dres, dres2, BT * C * sizeof(float))
            rc = _layernorm_backward(inp, dln, p.t[PGLLM_P_LN1W] + l * C, a.t[A_LN1_MEAN] + l * BT,
                                     a.t[A_LN1_RSTD] + l * BT, cfg.eps, dres,
                                     g.t[PGLLM_P_LN1W] + l * C, g.t[PGLLM_P_LN1B] + l * C,
                                     BT, C, 1, 1, cancel)
        l = l - 1
    if rc == PGLLM_OK:
        rc = _dropout_inplace(dres, BT * C, dropout, _site(seed, 0), cancel)
    if rc == PGLLM_OK:
        rc = _embedding_backward(tokens, dres, g.t[PGLLM_P_WTE], g.t[PGLLM_P_WPE], B, T, C, cancel)
    return rc


cdef public int pgllm_gpt2_adamw(const PgllmGPT2Config *cfg, float *params, const float *grads,
                                 float *m, float *v, float lr, float beta1, float beta2,
                                 float eps, float weight_decay, int64_t step,
                                 float grad_scale) noexcept nogil:
    cdef int64_t sizes[PGLLM_NUM_PARAM_TENSORS]
    cdef int64_t off = 0
    cdef int k, decays
    pgllm_gpt2_param_sizes(cfg, sizes)
    for k in range(PGLLM_NUM_PARAM_TENSORS):
        decays = (k == PGLLM_P_WTE or k == PGLLM_P_WPE or k == PGLLM_P_QKVW or
                  k == PGLLM_P_ATTPROJW or k == PGLLM_P_FCW or k == PGLLM_P_FCPROJW)
        pgllm_adamw_step(params + off, grads + off, m + off, v + off, sizes[k], lr, beta1, beta2,
                         eps, weight_decay if decays else <float> 0.0, step, grad_scale)
        off = off + sizes[k]
    return PGLLM_OK


# ---------------------------------------------------------------------------
# Python wrappers
# ---------------------------------------------------------------------------
def gpt2_train_floats(tuple config, int64_t B, int64_t T):
    cdef PgllmGPT2Config c = _config(*config)
    return pgllm_gpt2_train_floats(&c, B, T)


def gpt2_forward_backward(const float[::1] params, tuple config, const int[::1] tokens,
                          const int[::1] targets, int64_t B, int64_t T, float[::1] grads,
                          float dropout=0.0, uint64_t seed=0, float loss_scale=-1.0,
                          bint backward=True):
    """One forward (and backward, adding into grads) on a (B, T) batch;
    returns the mean loss.  loss_scale defaults to 1/(B*T): the gradient of
    the mean loss."""
    import numpy as np
    cdef PgllmGPT2Config c = _config(*config)
    cdef int64_t sizes[PGLLM_NUM_PARAM_TENSORS]
    cdef float[::1] acts
    cdef double loss = 0.0
    cdef int rc
    cdef Py_ssize_t i
    if params.shape[0] != pgllm_gpt2_param_sizes(&c, sizes) or grads.shape[0] != params.shape[0]:
        raise ValueError("gpt2_forward_backward: parameter / gradient buffer sizes")
    if tokens.shape[0] != B * T or targets.shape[0] != B * T or T > c.n_positions:
        raise ValueError("gpt2_forward_backward: batch shape")
    for i in range(B * T):
        if tokens[i] < 0 or tokens[i] >= c.vocab or targets[i] < 0 or targets[i] >= c.vocab:
            raise ValueError("gpt2_forward_backward: token id out of range")
    if loss_scale < 0:
        loss_scale = 1.0 / (B * T)
    acts = np.empty(pgllm_gpt2_train_floats(&c, B, T), np.float32)
    with nogil:
        rc = pgllm_gpt2_train_forward(&c, &params[0], <const int32_t *> &tokens[0],
                                      <const int32_t *> &targets[0], B, T, dropout, seed,
                                      &acts[0], &loss, NULL)
        if rc == PGLLM_OK and backward:
            rc = pgllm_gpt2_train_backward(&c, &params[0], &grads[0], <const int32_t *> &tokens[0],
                                           <const int32_t *> &targets[0], B, T, dropout, seed,
                                           &acts[0], loss_scale, NULL)
    _check_status(rc)
    return loss


def gpt2_adamw(float[::1] params, const float[::1] grads, float[::1] m, float[::1] v,
               tuple config, float lr, float beta1=0.9, float beta2=0.95, float eps=1e-8,
               float weight_decay=0.1, int64_t step=1, float grad_scale=1.0):
    cdef PgllmGPT2Config c = _config(*config)
    cdef int64_t sizes[PGLLM_NUM_PARAM_TENSORS]
    cdef int64_t n = pgllm_gpt2_param_sizes(&c, sizes)
    if params.shape[0] != n or grads.shape[0] != n or m.shape[0] != n or v.shape[0] != n:
        raise ValueError("gpt2_adamw: buffer sizes")
    with nogil:
        pgllm_gpt2_adamw(&c, &params[0], &grads[0], &m[0], &v[0], lr, beta1, beta2, eps,
                         weight_decay, step, grad_scale)
