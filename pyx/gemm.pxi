# GEMM: C(M,N) [+]= op(A)(M,K) @ op(B)(K,N) [+ bias(N)], float32 row-major.
#
# Roles.  The micro-kernel computes an MR x NR tile of  Out = L @ R  where
# L(r, p) = L[r*l_rs + p*l_cs] is broadcast element by element and
# R(p, c) = R[p*r_rs + c] is loaded NR floats at a time.  Any stride works for
# L, so L is always read in place.  R is read in place when its rows are
# contiguous (r_cs == 1), else packed.  A transposed B (the tied-embedding
# logits x @ wte^T, every backward dX = dY @ W^T) swaps the roles, Out = C^T
# = B @ A^T, so that the big operand B is the in-place L and only the small
# A^T (rows = tokens) is packed; C^T tiles are scattered into C.
#
#   op(A) op(B) | L      (l_rs, l_cs) | R     (r_rs, r_cs) | Out
#   A     B     | A      (lda, 1)     | B     (ldb, 1)     | C   (ldc, 1)
#   A^T   B     | A^T    (1, lda)     | B     (ldb, 1)     | C   (ldc, 1)
#   A     B^T   | B      (ldb, 1)     | A^T   (1, lda) pk  | C^T (1, ldc)
#   A^T   B^T   | B      (ldb, 1)     | A     (lda, 1)     | C^T (1, ldc)
#
# Parallel strategy
#   The output is cut into contiguous slabs, one per thread: slabs of whole
#   NR-wide column panels when there are enough of them, otherwise of whole
#   MR-high row panels.  Each thread runs a serial loop nest on its slab with
#   private buffers, so threads never synchronise, and every output element
#   is reduced over K in the same order whatever the thread count (results
#   are bit-identical for 1 or N threads).
#
# Serial loop nest (per thread), after BLIS:
#   for jc in cols by NC:
#     for pc in K by KC:
#       pack R block (KC x NC) if R is not row-contiguous, or    -> L2
#       if Out has >= PACK_ROWS rows (many tiles reuse each panel)
#       for ic in rows by MC:           L block (MC x KC) stays   -> L2
#         for jr in NC by NR:           R micro-panel             -> L1
#           for ir in MC by MR:         micro-kernel: MR x NR register tile
#   KC = 768 makes one pass over the output for GPT-2's K = 768; an in-place
#   R panel is prefetched by the first tile of the panel before it.
#
# Micro-kernels: 8x32 on AVX-512 (16 zmm accumulators), 4x24 on AVX2 (12 ymm
# accumulators).  Both are plain loops that gcc turns into broadcast+FMA
# sequences; check the assembly (`make asm`) after touching them: gcc 12
# vectorises a 6x16 tile across rows with shuffles and spills (25x slower),
# and other shapes lose 2-15x the same way.  Measured on one core
# ((64x768)@(768x50257)): 65 GFLOP/s with B packed, 84 in place + prefetch.
#
# Few rows (M <= SMALL_M, e.g. one decoded token): memory-bound, so B is
# streamed once in its own order: the row-invariant dot products over B's
# rows when op(B)=B^T (also pgllm_gemm_rowinv, for batched decoding at any M),
# else fixed row chunks of B into partial sums added in chunk order.

ctypedef void (*micro_fn)(int64_t kc, const float *L, int64_t l_rs, int64_t l_cs,
                          const float *R, int64_t r_rs, const float *prefetch,
                          float *C, int64_t ldc, const float *bias, int overwrite) noexcept nogil

cdef extern from *:
    """
    #define pgllm_prefetch(p) __builtin_prefetch((const void *) (p), 0, 3)
    """
    void pgllm_prefetch(const float *p) nogil

cdef extern from *:
    # cache blocking (C macros so that a tuning build can pass -DPGLLM_KC=...)
    """
    #ifndef PGLLM_KC
    #define PGLLM_KC 768   /* k block: one pass over the output for K = 768 */
    #endif
    #ifndef PGLLM_KC_AVX2
    #define PGLLM_KC_AVX2 256  /* AVX2: keeps the 24-wide R panel in L1 */
    #endif
    #ifndef PGLLM_MC
    #define PGLLM_MC 192   /* L block MC x KC in L2 (multiple of every MR) */
    #endif
    #ifndef PGLLM_NC
    #define PGLLM_NC 480   /* packed R block KC x NC (multiple of every NR) */
    #endif
    #ifndef PGLLM_PACK_ROWS
    #define PGLLM_PACK_ROWS 256  /* from this many rows a row-contiguous R is packed too */
    #endif
    """
    enum:
        KC "PGLLM_KC"
        KC_AVX2 "PGLLM_KC_AVX2"
        MC "PGLLM_MC"
        NC "PGLLM_NC"
        PACK_ROWS "PGLLM_PACK_ROWS"

cdef enum:
    MR512 = 8
    NR512 = 32
    MR256 = 4
    NR256 = 24
    MAX_MR = 8
    MAX_TILE = 8 * 32
    SMALL_M = 4

cdef struct GemmArgs:
    int64_t rows            # of Out
    int64_t cols
    int64_t K
    const float *L
    int64_t l_rs
    int64_t l_cs
    const float *R
    int64_t r_rs
    int64_t r_cs
    float *C
    int64_t c_rs
    int64_t c_cs
    const float *bias       # per Out column (bias_per_row = 0) or per Out row
    int bias_per_row
    int accumulate
    int mr
    int nr
    int64_t kc
    int pack_r              # pack R into KC x NC blocks (else read it in place)
    micro_fn micro


# ---------------------------------------------------------------------------
# micro-kernels: C tile (MR x NR, row stride ldc) [+]= L panel @ R panel.
# `prefetch`, when not NULL, is the next R panel (row stride r_rs): its lines
# are requested while this tile computes, hiding DRAM latency of in-place R.
# ---------------------------------------------------------------------------
cdef public void pgllm_micro_avx512(int64_t kc, const float *L, int64_t l_rs, int64_t l_cs,
                                    const float *R, int64_t r_rs, const float *prefetch,
                                    float *C, int64_t ldc, const float *bias,
                                    int overwrite) noexcept nogil:
    cdef float acc[MR512 * NR512]
    cdef int64_t p
    cdef int i, j
    cdef float a
    cdef const float *lp
    cdef const float *rp
    cdef float *c
    for i in range(MR512 * NR512):
        acc[i] = 0.0
    for p in range(kc):
        lp = L + p * l_cs
        rp = R + p * r_rs
        if prefetch != NULL:
            pgllm_prefetch(prefetch + p * r_rs)
            pgllm_prefetch(prefetch + p * r_rs + 16)
        for i in range(MR512):
            a = lp[i * l_rs]
            for j in range(NR512):
                acc[i * NR512 + j] += a * rp[j]
    for i in range(MR512):
        c = C + i * ldc
        if overwrite:
            for j in range(NR512):
                c[j] = acc[i * NR512 + j]
        else:
            for j in range(NR512):
                c[j] += acc[i * NR512 + j]
        if bias != NULL:
            for j in range(NR512):
                c[j] += bias[j]


cdef public void pgllm_micro_avx2(int64_t kc, const float *L, int64_t l_rs, int64_t l_cs,
                                  const float *R, int64_t r_rs, const float *prefetch,
                                  float *C, int64_t ldc, const float *bias,
                                  int overwrite) noexcept nogil:
    cdef float acc[MR256 * NR256]
    cdef int64_t p
    cdef int i, j
    cdef float a
    cdef const float *lp
    cdef const float *rp
    cdef float *c
    for i in range(MR256 * NR256):
        acc[i] = 0.0
    for p in range(kc):
        lp = L + p * l_cs
        rp = R + p * r_rs
        if prefetch != NULL:
            pgllm_prefetch(prefetch + p * r_rs)
            pgllm_prefetch(prefetch + p * r_rs + 16)
        for i in range(MR256):
            a = lp[i * l_rs]
            for j in range(NR256):
                acc[i * NR256 + j] += a * rp[j]
    for i in range(MR256):
        c = C + i * ldc
        if overwrite:
            for j in range(NR256):
                c[j] = acc[i * NR256 + j]
        else:
            for j in range(NR256):
                c[j] += acc[i * NR256 + j]
        if bias != NULL:
            for j in range(NR256):
                c[j] += bias[j]


# ---------------------------------------------------------------------------
# packing
# ---------------------------------------------------------------------------
cdef void _pack_L_edge(const GemmArgs *g, int64_t r0, int64_t rows, int64_t p0, int64_t kc,
                       float *Lp) noexcept nogil:
    """L[r0:r0+rows, p0:p0+kc] (rows < MR) -> kc columns of MR, zero padded."""
    cdef int mr = g.mr
    cdef int64_t i, p
    cdef const float *src
    for p in range(kc):
        src = g.L + r0 * g.l_rs + (p0 + p) * g.l_cs
        for i in range(rows):
            Lp[p * mr + i] = src[i * g.l_rs]
        for i in range(rows, mr):
            Lp[p * mr + i] = 0.0


cdef inline void _copy_panel_row(float *dst, const float *src, int64_t cols, int nr) noexcept nogil:
    """dst[0:nr] = src[0:cols] then zeros; the full-width cases have constant
    trip counts so that gcc emits straight vector moves."""
    cdef int64_t j
    if cols == NR512 and nr == NR512:
        for j in range(NR512):
            dst[j] = src[j]
    elif cols == NR256 and nr == NR256:
        for j in range(NR256):
            dst[j] = src[j]
    else:
        for j in range(cols):
            dst[j] = src[j]
        for j in range(cols, nr):
            dst[j] = 0.0


cdef void _pack_R(const GemmArgs *g, int64_t p0, int64_t kc, int64_t j0, int64_t nc,
                  float *Rp) noexcept nogil:
    """R[p0:p0+kc, j0:j0+nc] -> ceil(nc/NR) panels of kc rows x NR, zero padded."""
    cdef int nr = g.nr
    cdef int64_t npan = (nc + nr - 1) // nr
    cdef int64_t jp, j, p, cols
    cdef const float *src
    cdef float *dst
    if g.r_cs == 1:
        for p in range(kc):
            src = g.R + (p0 + p) * g.r_rs + j0
            for jp in range(npan):
                _copy_panel_row(Rp + jp * kc * nr + p * nr, src + jp * nr,
                                min(<int64_t> nr, nc - jp * nr), nr)
    else:
        # column c of R is contiguous over p (r_rs == 1): a transposing copy,
        # walking p in blocks of 16 so that the NR source lines stay in L1
        for jp in range(npan):
            dst = Rp + jp * kc * nr
            cols = min(<int64_t> nr, nc - jp * nr)
            src = g.R + p0 * g.r_rs + (j0 + jp * nr) * g.r_cs
            p = 0
            while p < kc:
                _pack_rt_block(dst + p * nr, src + p * g.r_rs, g.r_cs,
                               min(<int64_t> 16, kc - p), cols, nr)
                p = p + 16


cdef inline void _pack_rt_block(float *dst, const float *src, int64_t ld, int64_t np,
                                int64_t cols, int nr) noexcept nogil:
    cdef int64_t p, j
    if cols == NR512 and nr == NR512:
        for p in range(np):
            for j in range(NR512):
                dst[p * NR512 + j] = src[j * ld + p]
    elif cols == NR256 and nr == NR256:
        for p in range(np):
            for j in range(NR256):
                dst[p * NR256 + j] = src[j * ld + p]
    else:
        for p in range(np):
            for j in range(cols):
                dst[p * nr + j] = src[j * ld + p]
            for j in range(cols, nr):
                dst[p * nr + j] = 0.0


cdef inline void _store_tile(const GemmArgs *g, const float *tile, int64_t r0, int64_t c0,
                             int64_t rows, int64_t cols, int overwrite,
                             int with_bias) noexcept nogil:
    """Edge or transposed tiles: tile (MR x NR) -> Out[r0:r0+rows, c0:c0+cols]."""
    cdef int nr = g.nr
    cdef int64_t i, j
    cdef float v
    cdef float *out
    for j in range(cols):
        for i in range(rows):
            v = tile[i * nr + j]
            if with_bias:
                v = v + (g.bias[r0 + i] if g.bias_per_row else g.bias[c0 + j])
            out = g.C + (r0 + i) * g.c_rs + (c0 + j) * g.c_cs
            if overwrite:
                out[0] = v
            else:
                out[0] = out[0] + v


cdef int _gemm_slab(const GemmArgs *g, int64_t r0, int64_t r1, int64_t c0, int64_t c1,
                    float *Rp, float *Lp, const int *cancel) noexcept nogil:
    """Serial loop nest on Out[r0:r1, c0:c1] (see the header of this file)."""
    cdef int mr = g.mr, nr = g.nr
    cdef int64_t jc, nc, pc, kc, ic, mc, jr, ir, rows, cols, rstride, lrs, lcs
    cdef int overwrite, first_k, direct
    cdef int in_place = not g.pack_r
    cdef int out_rows_contig = g.c_cs == 1
    cdef const float *bias
    cdef const float *rpanel
    cdef const float *lpanel
    cdef const float *prefetch
    cdef float tile[MAX_TILE]
    jc = c0
    while jc < c1:
        nc = min(<int64_t> NC, c1 - jc)
        pc = 0
        while pc < g.K:
            kc = min(g.kc, g.K - pc)
            first_k = pc == 0
            overwrite = first_k and not g.accumulate
            if PGLLM_CANCELLED(cancel):
                return PGLLM_INTERRUPTED
            if not in_place:
                _pack_R(g, pc, kc, jc, nc, Rp)
            ic = r0
            while ic < r1:
                mc = min(<int64_t> MC, r1 - ic)
                jr = 0
                while jr < nc:
                    cols = min(<int64_t> nr, nc - jr)
                    if not in_place:
                        rpanel = Rp + jr * kc
                        rstride = nr
                    elif cols == nr:
                        rpanel = g.R + pc * g.r_rs + jc + jr
                        rstride = g.r_rs
                    else:
                        _pack_R(g, pc, kc, jc + jr, cols, Rp)
                        rpanel = Rp
                        rstride = nr
                    # in place, the first tile of a panel prefetches the next one
                    prefetch = rpanel + nr if (in_place and rstride != nr
                                               and jr + 2 * nr <= nc) else NULL
                    bias = g.bias + jc + jr if (g.bias != NULL and first_k
                                                and not g.bias_per_row) else NULL
                    ir = 0
                    while ir < mc:
                        rows = min(<int64_t> mr, mc - ir)
                        if rows == mr:
                            lpanel = g.L + (ic + ir) * g.l_rs + pc * g.l_cs
                            lrs = g.l_rs
                            lcs = g.l_cs
                        else:
                            _pack_L_edge(g, ic + ir, rows, pc, kc, Lp)
                            lpanel = Lp
                            lrs = 1
                            lcs = mr
                        direct = rows == mr and cols == nr and out_rows_contig
                        if direct:
                            g.micro(kc, lpanel, lrs, lcs, rpanel, rstride, prefetch,
                                    g.C + (ic + ir) * g.c_rs + jc + jr, g.c_rs, bias, overwrite)
                        else:
                            g.micro(kc, lpanel, lrs, lcs, rpanel, rstride, prefetch,
                                    tile, nr, NULL, 1)
                            _store_tile(g, tile, ic + ir, jc + jr, rows, cols, overwrite,
                                        g.bias != NULL and first_k)
                        prefetch = NULL
                        ir = ir + mr
                    jr = jr + nr
                ic = ic + mc
            pc = pc + kc
        jc = jc + nc
    return PGLLM_OK


cdef enum:
    KCHUNK = 64         # rows of B per partial sum in the few-rows path
    COLBLK = 2048       # columns per task there (a partial row stays in L1)


cdef inline void _store_few(float *c, float v, const float *bias, int64_t j,
                            int accumulate) noexcept nogil:
    if bias != NULL:
        v = v + bias[j]
    if accumulate:
        c[0] = c[0] + v
    else:
        c[0] = v


# ---------------------------------------------------------------------------
# Row-invariant A @ B^T (decoding: one row per sequence)
#
# Every output element is the same 8-lane dot product, whatever M, the row's
# place in A and the thread count: lanes l = 0..7 sum x[k] * w[k] over
# k = l (mod 8) in k order, the lanes are then added in lane order, and the
# K % 8 tail last.  So a sequence decoded beside others (llm_generate_batch)
# gets bit-identical logits to the same sequence decoded alone (M = 1).
#
# Tiles: 3 rows of A x 4 rows of B (12 vector accumulators, 7 loads per 12
# FMAs) while 3 rows remain, then 1 x 4; B's rows past N are clamped to the
# last one and their results dropped, so edges use the same arithmetic.
# Parallel strategy: tasks of ROWS_BLOCK consecutive rows of B (output
# columns); each streams its slab of B once per 3 rows of A.
# ---------------------------------------------------------------------------
cdef enum:
    DOT_LANES = 8
    TILE_A = 3          # rows of A per tile
    TILE_B = 4          # rows of B (output columns) per tile
    ROWS_BLOCK = 64     # rows of B per parallel task
    ROWINV_MAX_ROWS = 64  # up to this many rows the inference forward uses it on AVX2:
                          # measured faster than the packed GEMM from 8 to 64 rows


cdef inline float _dot_lanes_finish(const float *acc, const float *x, const float *w,
                                    int64_t k0, int64_t K) noexcept nogil:
    cdef float s = 0.0
    cdef int l
    cdef int64_t k
    for l in range(DOT_LANES):
        s = s + acc[l]
    for k in range(k0, K):
        s = s + x[k] * w[k]
    return s


cdef float pgllm_dot_rowinv_reference(const float *x, const float *w, int64_t K) noexcept nogil:
    """The element every row-invariant kernel computes, written plainly."""
    cdef float acc[DOT_LANES]
    cdef int64_t k
    cdef int64_t kv = K - K % DOT_LANES
    cdef int l
    for l in range(DOT_LANES):
        acc[l] = 0.0
    for k in range(kv):
        acc[k % DOT_LANES] = acc[k % DOT_LANES] + x[k] * w[k]
    return _dot_lanes_finish(acc, x, w, kv, K)


cdef extern from *:
    # The tiles' k loops, with GCC's vector extension: one 8-float vector
    # accumulator per element is exactly the 8 lanes of the element's
    # definition (plain loops over the lanes vectorised poorly here, 5 GFLOP/s).
    """
    typedef float pgllm_v8 __attribute__((vector_size(32)));
    /* unaligned, may alias float: how GCC loads and stores a vector anywhere */
    typedef float pgllm_v8u __attribute__((vector_size(32), aligned(4), may_alias));
    #define pgllm_v8_load(p) (*(const pgllm_v8u *) (p))
    #define pgllm_v8_store(p, v) (*(pgllm_v8u *) (p) = (v))

    /* acc[(i*4 + j)*8 + l] = sum of x_i[k] * w_j[k] over k < kv, k = l (mod 8) */
    static inline void pgllm_rowinv_lanes3(const float *x0, const float *x1, const float *x2,
                                           const float *const *w, int64_t kv, float *acc)
    {
        pgllm_v8 a00 = {0}, a01 = {0}, a02 = {0}, a03 = {0};
        pgllm_v8 a10 = {0}, a11 = {0}, a12 = {0}, a13 = {0};
        pgllm_v8 a20 = {0}, a21 = {0}, a22 = {0}, a23 = {0};
        const float *w0 = w[0], *w1 = w[1], *w2 = w[2], *w3 = w[3];
        for (int64_t p = 0; p < kv; p += 8)
        {
            pgllm_v8 v0 = pgllm_v8_load(x0 + p), v1 = pgllm_v8_load(x1 + p),
                     v2 = pgllm_v8_load(x2 + p), u;
            u = pgllm_v8_load(w0 + p); a00 += v0 * u; a10 += v1 * u; a20 += v2 * u;
            u = pgllm_v8_load(w1 + p); a01 += v0 * u; a11 += v1 * u; a21 += v2 * u;
            u = pgllm_v8_load(w2 + p); a02 += v0 * u; a12 += v1 * u; a22 += v2 * u;
            u = pgllm_v8_load(w3 + p); a03 += v0 * u; a13 += v1 * u; a23 += v2 * u;
        }
        pgllm_v8_store(acc + 0, a00); pgllm_v8_store(acc + 8, a01);
        pgllm_v8_store(acc + 16, a02); pgllm_v8_store(acc + 24, a03);
        pgllm_v8_store(acc + 32, a10); pgllm_v8_store(acc + 40, a11);
        pgllm_v8_store(acc + 48, a12); pgllm_v8_store(acc + 56, a13);
        pgllm_v8_store(acc + 64, a20); pgllm_v8_store(acc + 72, a21);
        pgllm_v8_store(acc + 80, a22); pgllm_v8_store(acc + 88, a23);
    }

    /* acc[j*8 + l], one row of A (M = 1: the decode GEMV) */
    static inline void pgllm_rowinv_lanes1(const float *x, const float *const *w, int64_t kv,
                                           float *acc)
    {
        pgllm_v8 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
        const float *w0 = w[0], *w1 = w[1], *w2 = w[2], *w3 = w[3];
        for (int64_t p = 0; p < kv; p += 8)
        {
            pgllm_v8 v = pgllm_v8_load(x + p);
            a0 += v * pgllm_v8_load(w0 + p);
            a1 += v * pgllm_v8_load(w1 + p);
            a2 += v * pgllm_v8_load(w2 + p);
            a3 += v * pgllm_v8_load(w3 + p);
        }
        pgllm_v8_store(acc + 0, a0); pgllm_v8_store(acc + 8, a1);
        pgllm_v8_store(acc + 16, a2); pgllm_v8_store(acc + 24, a3);
    }
    """
    void pgllm_rowinv_lanes3(const float *x0, const float *x1, const float *x2,
                             const float **w, int64_t kv, float *acc) nogil
    void pgllm_rowinv_lanes1(const float *x, const float **w, int64_t kv, float *acc) nogil


cdef void _rowinv_tile3(const float *x0, const float *x1, const float *x2,
                        const float **w, int64_t K, float *out) noexcept nogil:
    """out[i * TILE_B + j] = dot(x_i, w[j]) for 3 rows x 4 columns."""
    cdef float acc[TILE_A * TILE_B * DOT_LANES]
    cdef const float *xs[TILE_A]
    cdef int64_t kv = K - K % DOT_LANES
    cdef int i, j
    xs[0] = x0
    xs[1] = x1
    xs[2] = x2
    pgllm_rowinv_lanes3(x0, x1, x2, w, kv, acc)
    for i in range(TILE_A):
        for j in range(TILE_B):
            out[i * TILE_B + j] = _dot_lanes_finish(acc + (i * TILE_B + j) * DOT_LANES,
                                                    xs[i], w[j], kv, K)


cdef void _rowinv_tile1(const float *x, const float **w, int64_t K, float *out) noexcept nogil:
    """out[j] = dot(x, w[j]) for 1 row x 4 columns."""
    cdef float acc[TILE_B * DOT_LANES]
    cdef int64_t kv = K - K % DOT_LANES
    cdef int j
    pgllm_rowinv_lanes1(x, w, kv, acc)
    for j in range(TILE_B):
        out[j] = _dot_lanes_finish(acc + j * DOT_LANES, x, w[j], kv, K)


cdef void _rowinv_block(int64_t M, int64_t K, const float *A, const float *B, int64_t ldb,
                        float *C, int64_t ldc, const float *bias, int accumulate,
                        int64_t j0, int64_t j1) noexcept nogil:
    cdef const float *w[TILE_B]
    cdef float out[TILE_A * TILE_B]
    cdef int64_t i, j, jj, ncols
    cdef int t, r
    j = j0
    while j < j1:
        ncols = min(<int64_t> TILE_B, j1 - j)
        for t in range(TILE_B):
            w[t] = B + min(j + t, j1 - 1) * ldb
        i = 0
        while i + TILE_A <= M:
            _rowinv_tile3(A + i * K, A + (i + 1) * K, A + (i + 2) * K, w, K, out)
            for r in range(TILE_A):
                for jj in range(ncols):
                    _store_few(C + (i + r) * ldc + j + jj, out[r * TILE_B + jj], bias, j + jj,
                               accumulate)
            i = i + TILE_A
        while i < M:
            _rowinv_tile1(A + i * K, w, K, out)
            for jj in range(ncols):
                _store_few(C + i * ldc + j + jj, out[jj], bias, j + jj, accumulate)
            i = i + 1
        j = j + TILE_B


cdef int _rowinv_bt(int64_t M, int64_t N, int64_t K, const float *A, const float *B,
                    int64_t ldb, float *C, int64_t ldc, const float *bias, int accumulate,
                    const int *cancel) noexcept nogil:
    cdef int64_t nq = (N + ROWS_BLOCK - 1) // ROWS_BLOCK
    cdef int64_t q
    for q in prange(nq, num_threads=_threads_for(N * K // 4), schedule='static'):
        if PGLLM_CANCELLED(cancel):
            continue
        _rowinv_block(M, K, A, B, ldb, C, ldc, bias, accumulate, q * ROWS_BLOCK,
                      min(q * ROWS_BLOCK + ROWS_BLOCK, N))
    return _status(cancel)


cdef public int pgllm_gemm_rowinv(int64_t M, int64_t N, int64_t K, const float *A,
                                  int64_t lda, const float *B, int64_t ldb, float *C,
                                  int64_t ldc, const float *bias, int accumulate,
                                  const int *cancel) noexcept nogil:
    """C[i, j] [+]= dot(A[i], B[j]) (+ bias[j]) for any M, each element as
    pgllm_dot_rowinv_reference computes it.  pgllm_gemm takes this path for
    A @ B^T with M <= SMALL_M, so a batch of decoded rows equals its rows
    decoded one by one."""
    if M <= 0 or N <= 0:
        return PGLLM_OK
    return _gemm_few_rows(PGLLM_NO_TRANS, PGLLM_TRANS, M, N, K, A, lda, B, ldb, C, ldc, bias,
                          accumulate, cancel)


cdef void _few_rows_task(int64_t M, int64_t N, int64_t K, const float *A, const float *B,
                         int64_t ldb, float *part, int64_t k0, int64_t k1,
                         int64_t j0, int64_t j1) noexcept nogil:
    """part[i, j0:j1] = sum over k in [k0, k1) of A[i, k] * B[k, j0:j1]."""
    cdef int64_t i, j, k
    cdef float a0, a1, a2, a3
    cdef float *y
    cdef const float *b0
    cdef const float *b1
    cdef const float *b2
    cdef const float *b3
    for i in range(M):
        y = part + i * N
        for j in range(j0, j1):
            y[j] = 0.0
    k = k0
    while k + 4 <= k1:
        b0 = B + k * ldb
        b1 = b0 + ldb
        b2 = b1 + ldb
        b3 = b2 + ldb
        for i in range(M):
            a0 = A[i * K + k]
            a1 = A[i * K + k + 1]
            a2 = A[i * K + k + 2]
            a3 = A[i * K + k + 3]
            y = part + i * N
            for j in range(j0, j1):
                y[j] = y[j] + a0 * b0[j] + a1 * b1[j] + a2 * b2[j] + a3 * b3[j]
        k = k + 4
    while k < k1:
        b0 = B + k * ldb
        for i in range(M):
            a0 = A[i * K + k]
            y = part + i * N
            for j in range(j0, j1):
                y[j] = y[j] + a0 * b0[j]
        k = k + 1


cdef int _few_rows_nn(int64_t M, int64_t N, int64_t K, const float *A, const float *B,
                      int64_t ldb, float *C, int64_t ldc, const float *bias, int accumulate,
                      const int *cancel) noexcept nogil:
    """C = A @ B for few rows.  B is streamed in its own order: tasks of KCHUNK
    consecutive rows (x COLBLK columns) write partial sums, which are then
    added in chunk order -- so the result does not depend on the threads."""
    cdef int64_t nchunks = (K + KCHUNK - 1) // KCHUNK
    cdef int64_t ncb = (N + COLBLK - 1) // COLBLK
    cdef int64_t t, c, cb, i, j, j0, j1, nb
    cdef float *partial = _alloc_floats(nchunks * M * N)
    cdef float v
    cdef int nt = _threads_for(M * N * K // 4)
    if partial == NULL:
        return PGLLM_ENOMEM
    for t in prange(nchunks * ncb, num_threads=nt, schedule='static'):
        if PGLLM_CANCELLED(cancel):
            continue
        c = t // ncb
        cb = t % ncb
        _few_rows_task(M, N, K, A, B, ldb, partial + c * M * N, c * KCHUNK,
                       min((c + 1) * KCHUNK, K), cb * COLBLK, min((cb + 1) * COLBLK, N))
    nb = (N + 255) // 256
    for t in prange(nb, num_threads=nt, schedule='static'):
        if PGLLM_CANCELLED(cancel):
            continue
        j0 = t * 256
        j1 = min(j0 + 256, N)
        for i in range(M):
            for j in range(j0, j1):
                v = 0.0
                for c in range(nchunks):
                    v = v + partial[(c * M + i) * N + j]
                _store_few(C + i * ldc + j, v, bias, j, accumulate)
    free(partial)
    return _status(cancel)


cdef int _gemm_few_rows(int transA, int transB, int64_t M, int64_t N, int64_t K,
                        const float *A, int64_t lda, const float *B, int64_t ldb,
                        float *C, int64_t ldc, const float *bias, int accumulate,
                        const int *cancel) noexcept nogil:
    """M <= SMALL_M (decoding): B is streamed once, in its own memory order."""
    cdef float *Acopy = NULL
    cdef const float *Arows = A
    cdef int64_t i, k
    cdef int rc
    if transA or lda != K:
        Acopy = _alloc_floats(M * K)
        if Acopy == NULL:
            return PGLLM_ENOMEM
        for i in range(M):
            for k in range(K):
                Acopy[i * K + k] = A[k * lda + i] if transA else A[i * lda + k]
        Arows = Acopy
    if transB:
        rc = _rowinv_bt(M, N, K, Arows, B, ldb, C, ldc, bias, accumulate, cancel)
    else:
        rc = _few_rows_nn(M, N, K, Arows, B, ldb, C, ldc, bias, accumulate, cancel)
    free(Acopy)
    return rc


cdef public int pgllm_gemm(int transA, int transB, int64_t M, int64_t N, int64_t K,
                           const float *A, int64_t lda, const float *B, int64_t ldb,
                           float *C, int64_t ldc, const float *bias, int accumulate,
                           const int *cancel) noexcept nogil:
    cdef GemmArgs g
    cdef int nt, split_cols
    cdef int tid = 0
    cdef int64_t npan_c, npan_r, i, k
    cdef int64_t lo = 0, hi = 0, r0 = 0, r1 = 0, c0 = 0, c1 = 0
    cdef float *Rp = NULL
    cdef float *Lp = NULL
    cdef int status = PGLLM_OK
    cdef int *pstatus = &status
    if M <= 0 or N <= 0:
        return PGLLM_OK
    if K <= 0:
        # empty sum: C = bias (or unchanged when accumulating)
        for i in range(M):
            for k in range(N):
                if not accumulate:
                    C[i * ldc + k] = 0.0
                if bias != NULL:
                    C[i * ldc + k] += bias[k]
        return PGLLM_OK
    if M <= SMALL_M:
        return _gemm_few_rows(transA, transB, M, N, K, A, lda, B, ldb, C, ldc, bias,
                              accumulate, cancel)

    # roles (table at the top of this file)
    g.K = K
    g.accumulate = accumulate
    g.bias = bias
    if not transB:
        g.rows = M
        g.cols = N
        g.L = A
        g.l_rs = 1 if transA else lda
        g.l_cs = lda if transA else 1
        g.R = B
        g.r_rs = ldb
        g.r_cs = 1
        g.C = C
        g.c_rs = ldc
        g.c_cs = 1
        g.bias_per_row = 0
    else:
        g.rows = N
        g.cols = M
        g.L = B
        g.l_rs = ldb
        g.l_cs = 1
        g.R = A
        g.r_rs = lda if transA else 1
        g.r_cs = 1 if transA else lda
        g.C = C
        g.c_rs = 1
        g.c_cs = ldc
        g.bias_per_row = 1
    if pgllm_cpu_has_avx512():
        g.mr = MR512
        g.nr = NR512
        g.kc = KC
        g.micro = pgllm_micro_avx512
    else:
        g.mr = MR256
        g.nr = NR256
        g.kc = KC_AVX2
        g.micro = pgllm_micro_avx2

    # many rows reuse each R panel: packed, it streams from L1/L2 in order
    g.pack_r = g.r_cs != 1 or g.rows >= PACK_ROWS
    nt = _threads_for(M * N * K // 64)
    npan_c = (g.cols + g.nr - 1) // g.nr
    npan_r = (g.rows + g.mr - 1) // g.mr
    split_cols = npan_c >= 4 * nt or npan_c >= npan_r
    nt = <int> min(<int64_t> nt, npan_c if split_cols else npan_r)

    with parallel(num_threads=nt):
        tid = threadid()
        r0 = 0
        r1 = g.rows
        c0 = 0
        c1 = g.cols
        if split_cols:
            lo = npan_c * tid // nt
            hi = npan_c * (tid + 1) // nt
            c0 = lo * g.nr
            c1 = min(hi * g.nr, g.cols)
        else:
            lo = npan_r * tid // nt
            hi = npan_r * (tid + 1) // nt
            r0 = lo * g.mr
            r1 = min(hi * g.mr, g.rows)
        Rp = _alloc_floats(<int64_t> KC * (NC if g.pack_r else NR512))
        Lp = _alloc_floats(<int64_t> KC * MAX_MR)
        if Rp == NULL or Lp == NULL:
            pstatus[0] = PGLLM_ENOMEM
        elif r0 < r1 and c0 < c1:
            if _gemm_slab(&g, r0, r1, c0, c1, Rp, Lp, cancel) != PGLLM_OK:
                if pstatus[0] == PGLLM_OK:
                    pstatus[0] = PGLLM_INTERRUPTED
        free(Rp)
        free(Lp)
    return status


cdef public int pgllm_gemm_reference(int transA, int transB, int64_t M, int64_t N, int64_t K,
                                     const float *A, int64_t lda, const float *B, int64_t ldb,
                                     float *C, int64_t ldc, const float *bias, int accumulate,
                                     const int *cancel) noexcept nogil:
    """The plain triple loop, one thread: what pgllm_gemm must equal."""
    cdef int64_t i, j, k
    cdef float s, a, b
    for i in range(M):
        if PGLLM_CANCELLED(cancel):
            return PGLLM_INTERRUPTED
        for j in range(N):
            s = 0.0
            for k in range(K):
                a = A[k * lda + i] if transA else A[i * lda + k]
                b = B[j * ldb + k] if transB else B[k * ldb + j]
                s = s + a * b
            if bias != NULL:
                s = s + bias[j]
            if accumulate:
                C[i * ldc + j] += s
            else:
                C[i * ldc + j] = s
    return PGLLM_OK


# ---------------------------------------------------------------------------
# Python wrappers
# ---------------------------------------------------------------------------
def _check_status(int rc):
    if rc == PGLLM_ENOMEM:
        raise MemoryError("pg_llm kernel: out of memory")
    if rc == PGLLM_INTERRUPTED:
        raise KeyboardInterrupt("pg_llm kernel interrupted")
    if rc == PGLLM_EINVAL:
        raise ValueError("pg_llm kernel: invalid input")
    if rc == PGLLM_EFORMAT:
        raise ValueError("pg_llm kernel: malformed data")
    if rc != PGLLM_OK:
        raise RuntimeError(f"pg_llm kernel failed with status {rc}")


def gemm(const float[:, ::1] A, const float[:, ::1] B, float[:, ::1] C,
         bint transA=False, bint transB=False, const float[::1] bias=None,
         bint accumulate=False, bint reference=False):
    """C [+]= op(A) @ op(B) [+ bias] in place; op(X) = X.T when transX."""
    cdef int64_t M = A.shape[1] if transA else A.shape[0]
    cdef int64_t K = A.shape[0] if transA else A.shape[1]
    cdef int64_t KB = B.shape[1] if transB else B.shape[0]
    cdef int64_t N = B.shape[0] if transB else B.shape[1]
    cdef const float *pbias = NULL
    cdef int rc
    if K != KB or C.shape[0] != M or C.shape[1] != N:
        raise ValueError(f"gemm shapes: op(A) ({M},{K}) @ op(B) ({KB},{N}) -> C {C.shape[0], C.shape[1]}")
    if bias is not None:
        if bias.shape[0] != N:
            raise ValueError("gemm: bias length must equal N")
        pbias = &bias[0] if N > 0 else NULL
    if M == 0 or N == 0:
        return
    with nogil:
        if reference:
            rc = pgllm_gemm_reference(transA, transB, M, N, K,
                                      &A[0, 0] if A.shape[0] * A.shape[1] else NULL, A.shape[1],
                                      &B[0, 0] if B.shape[0] * B.shape[1] else NULL, B.shape[1],
                                      &C[0, 0], C.shape[1], pbias, accumulate, NULL)
        else:
            rc = pgllm_gemm(transA, transB, M, N, K,
                            &A[0, 0] if A.shape[0] * A.shape[1] else NULL, A.shape[1],
                            &B[0, 0] if B.shape[0] * B.shape[1] else NULL, B.shape[1],
                            &C[0, 0], C.shape[1], pbias, accumulate, NULL)
    _check_status(rc)


def gemm_rowinv(const float[:, ::1] A, const float[:, ::1] B, float[:, ::1] C,
                const float[::1] bias=None, bint accumulate=False, bint reference=False):
    """C [+]= A @ B.T [+ bias], each element the row-invariant dot product
    (equal for any number of rows); reference: the plain per-element loop."""
    cdef int64_t M = A.shape[0], K = A.shape[1], N = B.shape[0]
    cdef const float *pbias = NULL
    cdef int64_t i, j
    cdef float v
    cdef int rc = PGLLM_OK
    if B.shape[1] != K or C.shape[0] != M or C.shape[1] != N:
        raise ValueError(f"gemm_rowinv shapes: A ({M},{K}) @ B.T ({B.shape[1]},{N}) -> C {C.shape[0], C.shape[1]}")
    if bias is not None:
        if bias.shape[0] != N:
            raise ValueError("gemm_rowinv: bias length must equal N")
        pbias = &bias[0] if N > 0 else NULL
    if M == 0 or N == 0 or K == 0:
        raise ValueError("gemm_rowinv: empty operands")
    with nogil:
        if reference:
            for i in range(M):
                for j in range(N):
                    v = pgllm_dot_rowinv_reference(&A[i, 0], &B[j, 0], K)
                    _store_few(&C[i, j], v, pbias, j, accumulate)
        else:
            rc = pgllm_gemm_rowinv(M, N, K, &A[0, 0], K, &B[0, 0], K, &C[0, 0], N, pbias,
                                   accumulate, NULL)
    _check_status(rc)
