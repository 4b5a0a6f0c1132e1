# GEMM: C(M,N) [+]= op(A)(M,K) @ op(B)(K,N) [+ bias(N)], float32 row-major.
#
# Parallel strategy
#   The output is cut into contiguous slabs, one per thread: column slabs of
#   whole NR-wide panels when N has enough panels, otherwise row slabs of
#   whole MR-high panels.  Each thread then runs a serial BLIS-style loop nest
#   on its slab with private packing buffers, so threads never synchronise
#   and every C element is reduced over K in the same order whatever the
#   thread count (results are bit-identical for 1 or N threads).
#
# Serial loop nest (per thread), as BLIS:
#   for jc in N by NC:
#     for pc in K by KC:
#       pack B block (KC x NC), reading B's rows contiguously   -> L2
#       for ic in M by MC:
#         pack A block (MC x KC)                                -> L2
#         for jr in NC by NR:        B micro-panel              -> L1
#           for ir in MC by MR:      micro-kernel: MR x NR register tile
#
# Micro-kernels: 8x32 on AVX-512 (16 zmm accumulators), 4x24 on AVX2 (12 ymm
# accumulators).  Both are plain loops that gcc turns into broadcast+FMA
# sequences; check the assembly (`make asm`) after touching them: gcc 12
# vectorises a 6x16 tile across rows with shuffles and spills (25x slower),
# and other shapes lose 2-15x the same way.
#
# Few rows (M <= SMALL_M, e.g. one decoded token): packing B would read it
# twice; instead B is streamed once, row by row (op(B)=B) or as dot products
# (op(B)=B^T, the tied-embedding logits).

ctypedef void (*micro_fn)(int64_t kc, const float *Ap, const float *Bp, float *C,
                          int64_t ldc, const float *bias, int overwrite) noexcept nogil

cdef extern from *:
    # cache blocking (C macros so that a tuning build can pass -DPGLLM_KC=...)
    """
    #ifndef PGLLM_KC
    #define PGLLM_KC 256   /* k block: B micro-panel KC x NR */
    #endif
    #ifndef PGLLM_MC
    #define PGLLM_MC 384   /* A block MC x KC (multiple of every MR) */
    #endif
    #ifndef PGLLM_NC
    #define PGLLM_NC 480   /* B block KC x NC (multiple of every NR) */
    #endif
    """
    enum:
        KC "PGLLM_KC"
        MC "PGLLM_MC"
        NC "PGLLM_NC"

cdef enum:
    MR512 = 8
    NR512 = 32
    MR256 = 4
    NR256 = 24
    MAX_TILE = 8 * 32
    SMALL_M = 4
    SMALL_COLS = 1024   # column block of the small-M path (C rows stay in L1)

cdef struct GemmArgs:
    int transA
    int transB
    int64_t M
    int64_t N
    int64_t K
    const float *A
    int64_t lda
    const float *B
    int64_t ldb
    float *C
    int64_t ldc
    const float *bias
    int accumulate
    int mr
    int nr
    micro_fn micro


# ---------------------------------------------------------------------------
# micro-kernels (C tile = Ap panel (kc x MR) @ Bp panel (kc x NR))
# ---------------------------------------------------------------------------
cdef public void pgllm_micro_avx512(int64_t kc, const float *Ap, const float *Bp,
                                    float *C, int64_t ldc, const float *bias,
                                    int overwrite) noexcept nogil:
    cdef float acc[MR512 * NR512]
    cdef int64_t p
    cdef int i, j
    cdef float a
    cdef const float *ap
    cdef const float *bp
    cdef float *c
    for i in range(MR512 * NR512):
        acc[i] = 0.0
    for p in range(kc):
        ap = Ap + p * MR512
        bp = Bp + p * NR512
        for i in range(MR512):
            a = ap[i]
            for j in range(NR512):
                acc[i * NR512 + j] += a * bp[j]
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


cdef public void pgllm_micro_avx2(int64_t kc, const float *Ap, const float *Bp,
                                  float *C, int64_t ldc, const float *bias,
                                  int overwrite) noexcept nogil:
    cdef float acc[MR256 * NR256]
    cdef int64_t p
    cdef int i, j
    cdef float a
    cdef const float *ap
    cdef const float *bp
    cdef float *c
    for i in range(MR256 * NR256):
        acc[i] = 0.0
    for p in range(kc):
        ap = Ap + p * MR256
        bp = Bp + p * NR256
        for i in range(MR256):
            a = ap[i]
            for j in range(NR256):
                acc[i * NR256 + j] += a * bp[j]
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
# packing: op(A)[i0:i0+mc, p0:p0+kc] -> MR-high panels, each kc columns of MR
#          op(B)[p0:p0+kc, j0:j0+nc] -> NR-wide panels, each kc rows of NR
# Missing rows/columns are zero, so edge tiles run the full micro-kernel.
# ---------------------------------------------------------------------------
cdef void _pack_A(const GemmArgs *g, int64_t i0, int64_t mc, int64_t p0, int64_t kc,
                  float *Ap) noexcept nogil:
    cdef int mr = g.mr
    cdef int64_t ir, i, p, rows
    cdef float *dst
    cdef const float *src
    ir = 0
    while ir < mc:
        dst = Ap + ir * kc
        rows = min(mr, mc - ir)
        if not g.transA:
            for i in range(rows):
                src = g.A + (i0 + ir + i) * g.lda + p0
                for p in range(kc):
                    dst[p * mr + i] = src[p]
        else:
            for p in range(kc):
                src = g.A + (p0 + p) * g.lda + i0 + ir
                for i in range(rows):
                    dst[p * mr + i] = src[i]
        if rows < mr:
            for p in range(kc):
                for i in range(rows, mr):
                    dst[p * mr + i] = 0.0
        ir = ir + mr


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


cdef void _pack_B(const GemmArgs *g, int64_t p0, int64_t kc, int64_t j0, int64_t nc,
                  float *Bp) noexcept nogil:
    """op(B)[p0:p0+kc, j0:j0+nc] -> ceil(nc/NR) panels of kc rows x NR, zero padded.
    B's memory is read in its own row order (contiguous runs)."""
    cdef int nr = g.nr
    cdef int64_t npan = (nc + nr - 1) // nr
    cdef int64_t jp, j, p, cols
    cdef const float *src
    cdef float *dst
    if not g.transB:
        for p in range(kc):
            src = g.B + (p0 + p) * g.ldb + j0
            for jp in range(npan):
                _copy_panel_row(Bp + jp * kc * nr + p * nr, src + jp * nr,
                                min(<int64_t> nr, nc - jp * nr), nr)
    else:
        # B^T: panel row p gathers element p of NR consecutive rows of B;
        # walking p in blocks of 16 keeps those NR source lines in L1
        for jp in range(npan):
            dst = Bp + jp * kc * nr
            cols = min(<int64_t> nr, nc - jp * nr)
            src = g.B + (j0 + jp * nr) * g.ldb + p0
            p = 0
            while p < kc:
                _pack_bt_block(dst + p * nr, src + p, g.ldb, min(<int64_t> 16, kc - p), cols, nr)
                p = p + 16


cdef inline void _pack_bt_block(float *dst, const float *src, int64_t ldb, int64_t np,
                                int64_t cols, int nr) noexcept nogil:
    cdef int64_t p, j
    if cols == NR512 and nr == NR512:
        for p in range(np):
            for j in range(NR512):
                dst[p * NR512 + j] = src[j * ldb + p]
    elif cols == NR256 and nr == NR256:
        for p in range(np):
            for j in range(NR256):
                dst[p * NR256 + j] = src[j * ldb + p]
    else:
        for p in range(np):
            for j in range(cols):
                dst[p * nr + j] = src[j * ldb + p]
            for j in range(cols, nr):
                dst[p * nr + j] = 0.0


cdef int _gemm_slab(const GemmArgs *g, int64_t m0, int64_t m1, int64_t n0, int64_t n1,
                    float *Ap, float *Bp, const int *cancel) noexcept nogil:
    """Serial BLIS loop nest on C[m0:m1, n0:n1]."""
    cdef int mr = g.mr, nr = g.nr
    cdef int64_t jc, nc, pc, kc, ic, mc, jr, ir, rows, cols, i, j
    cdef int overwrite
    cdef const float *bias
    cdef const float *bpanel
    cdef float *cptr
    cdef float tile[MAX_TILE]
    jc = n0
    while jc < n1:
        nc = min(<int64_t> NC, n1 - jc)
        pc = 0
        while pc < g.K:
            kc = min(<int64_t> KC, g.K - pc)
            overwrite = pc == 0 and not g.accumulate
            if PGLLM_CANCELLED(cancel):
                return PGLLM_INTERRUPTED
            _pack_B(g, pc, kc, jc, nc, Bp)
            ic = m0
            while ic < m1:
                mc = min(<int64_t> MC, m1 - ic)
                _pack_A(g, ic, mc, pc, kc, Ap)
                jr = 0
                while jr < nc:
                    cols = min(<int64_t> nr, nc - jr)
                    bpanel = Bp + jr * kc
                    bias = g.bias + jc + jr if (g.bias != NULL and pc == 0) else NULL
                    ir = 0
                    while ir < mc:
                        rows = min(<int64_t> mr, mc - ir)
                        cptr = g.C + (ic + ir) * g.ldc + jc + jr
                        if rows == mr and cols == nr:
                            g.micro(kc, Ap + ir * kc, bpanel, cptr, g.ldc, bias, overwrite)
                        else:
                            g.micro(kc, Ap + ir * kc, bpanel, tile, nr, NULL, 1)
                            for i in range(rows):
                                for j in range(cols):
                                    if overwrite:
                                        cptr[i * g.ldc + j] = tile[i * nr + j]
                                    else:
                                        cptr[i * g.ldc + j] += tile[i * nr + j]
                                    if bias != NULL:
                                        cptr[i * g.ldc + j] += bias[j]
                        ir = ir + mr
                    jr = jr + nr
                ic = ic + mc
            pc = pc + kc
        jc = jc + nc
    return PGLLM_OK


cdef int _gemm_small_m(const GemmArgs *g, const float *Arows, int64_t n0, int64_t n1,
                       const int *cancel) noexcept nogil:
    """C[:, n0:n1] for M <= SMALL_M; Arows is op(A) as contiguous (M, K)."""
    cdef int64_t M = g.M, K = g.K
    cdef int64_t i, j, k, jb, je, k4
    cdef float a0, a1, a2, a3, s
    cdef float *crow
    cdef const float *arow
    cdef const float *b0
    cdef const float *b1
    cdef const float *b2
    cdef const float *b3
    if g.transB:
        # C[i, j] = dot(op(A)[i, :], B[j, :]): B rows are contiguous
        for j in range(n0, n1):
            if (j & 255) == 0 and PGLLM_CANCELLED(cancel):
                return PGLLM_INTERRUPTED
            b0 = g.B + j * g.ldb
            for i in range(M):
                s = _dot(Arows + i * K, b0, K)
                if g.bias != NULL:
                    s = s + g.bias[j]
                if g.accumulate:
                    g.C[i * g.ldc + j] += s
                else:
                    g.C[i * g.ldc + j] = s
        return PGLLM_OK
    # op(B) = B: stream B once, four rows at a time, into L1-resident C rows
    k4 = K - K % 4
    jb = n0
    while jb < n1:
        je = min(jb + SMALL_COLS, n1)
        if PGLLM_CANCELLED(cancel):
            return PGLLM_INTERRUPTED
        for i in range(M):
            crow = g.C + i * g.ldc
            if not g.accumulate:
                for j in range(jb, je):
                    crow[j] = 0.0
            if g.bias != NULL:
                for j in range(jb, je):
                    crow[j] += g.bias[j]
        k = 0
        while k < k4:
            b0 = g.B + k * g.ldb
            b1 = b0 + g.ldb
            b2 = b1 + g.ldb
            b3 = b2 + g.ldb
            for i in range(M):
                arow = Arows + i * K + k
                a0 = arow[0]
                a1 = arow[1]
                a2 = arow[2]
                a3 = arow[3]
                crow = g.C + i * g.ldc
                for j in range(jb, je):
                    crow[j] += a0 * b0[j] + a1 * b1[j] + a2 * b2[j] + a3 * b3[j]
            k = k + 4
        while k < K:
            b0 = g.B + k * g.ldb
            for i in range(M):
                a0 = Arows[i * K + k]
                crow = g.C + i * g.ldc
                for j in range(jb, je):
                    crow[j] += a0 * b0[j]
            k = k + 1
        jb = je
    return PGLLM_OK


cdef public int pgllm_gemm(int transA, int transB, int64_t M, int64_t N, int64_t K,
                           const float *A, int64_t lda, const float *B, int64_t ldb,
                           float *C, int64_t ldc, const float *bias, int accumulate,
                           const int *cancel) noexcept nogil:
    cdef GemmArgs g
    cdef int nt, split_n, small
    cdef int tid = 0
    cdef int64_t npan_n, npan_m, i, k
    cdef int64_t lo = 0, hi = 0, m0 = 0, m1 = 0, n0 = 0, n1 = 0
    cdef float *Ap = NULL
    cdef float *Bp = NULL
    cdef float *Acopy = NULL
    cdef const float *Arows = NULL
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
    g.transA = transA
    g.transB = transB
    g.M = M
    g.N = N
    g.K = K
    g.A = A
    g.lda = lda
    g.B = B
    g.ldb = ldb
    g.C = C
    g.ldc = ldc
    g.bias = bias
    g.accumulate = accumulate
    if pgllm_cpu_has_avx512():
        g.mr = MR512
        g.nr = NR512
        g.micro = pgllm_micro_avx512
    else:
        g.mr = MR256
        g.nr = NR256
        g.micro = pgllm_micro_avx2

    small = M <= SMALL_M
    if small:
        Arows = A
        if transA:
            Acopy = _alloc_floats(M * K)
            if Acopy == NULL:
                return PGLLM_ENOMEM
            for i in range(M):
                for k in range(K):
                    Acopy[i * K + k] = A[k * lda + i]
            Arows = Acopy
        elif lda != K:
            Acopy = _alloc_floats(M * K)
            if Acopy == NULL:
                return PGLLM_ENOMEM
            for i in range(M):
                memcpy(&Acopy[i * K], &A[i * lda], K * sizeof(float))
            Arows = Acopy

    nt = _threads_for(M * N * K // 64)
    npan_n = (N + g.nr - 1) // g.nr
    npan_m = (M + g.mr - 1) // g.mr
    split_n = small or npan_n >= 4 * nt or npan_n >= npan_m
    if split_n:
        nt = <int> min(<int64_t> nt, npan_n)
    else:
        nt = <int> min(<int64_t> nt, npan_m)

    with parallel(num_threads=nt):
        tid = threadid()
        m0 = 0
        m1 = M
        n0 = 0
        n1 = N
        if split_n:
            lo = npan_n * tid // nt
            hi = npan_n * (tid + 1) // nt
            n0 = lo * g.nr
            n1 = min(hi * g.nr, N)
        else:
            lo = npan_m * tid // nt
            hi = npan_m * (tid + 1) // nt
            m0 = lo * g.mr
            m1 = min(hi * g.mr, M)
        if small:
            if n0 < n1:
                if _gemm_small_m(&g, Arows, n0, n1, cancel) != PGLLM_OK:
                    pstatus[0] = PGLLM_INTERRUPTED
        else:
            Ap = _alloc_floats(<int64_t> MC * KC)
            Bp = _alloc_floats(<int64_t> KC * NC)
            if Ap == NULL or Bp == NULL:
                pstatus[0] = PGLLM_ENOMEM
            elif m0 < m1 and n0 < n1:
                if _gemm_slab(&g, m0, m1, n0, n1, Ap, Bp, cancel) != PGLLM_OK:
                    if pstatus[0] == PGLLM_OK:
                        pstatus[0] = PGLLM_INTERRUPTED
            free(Ap)
            free(Bp)
    free(Acopy)
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
