# GPT-2's byte-level BPE, exactly as tiktoken encodes with GPT-2's files.
#
# 1. Pre-tokenisation: GPT-2's pattern
#       '(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
#    as a hand-written state machine over UTF-8 (alternatives tried in order,
#    as a backtracking regex does; see _piece_end).
# 2. Each piece that is itself a token is that token (tiktoken does this
#    before merging); otherwise its bytes are merged pairwise, always the
#    adjacent pair whose concatenation has the lowest rank, leftmost first.
#    tiktoken's ranks are GPT-2's token ids, and any pair whose bytes form a
#    token may merge -- not only the pairs listed in merges.txt -- so the pair
#    table is built from every split of every token into two tokens.
# 3. Pieces already seen are answered from a bounded cache.
#
# Not thread-safe: one tokenizer, one thread (the cache is mutated).

cdef extern from "pg_llm_kernels.h" nogil:
    ctypedef struct PgllmBPE:
        pass
    enum:
        PGLLM_BPE_MAX_TOKENS
        PGLLM_BPE_MAX_BYTES

cdef extern from "unicode_tables.h" nogil:
    const uint32_t pgllm_uni_L[1]
    const uint32_t pgllm_uni_N[1]
    const uint32_t pgllm_uni_WS[1]
    enum:
        PGLLM_UNI_L_N
        PGLLM_UNI_N_N
        PGLLM_UNI_WS_N

cdef extern from *:
    """
    static uint8_t pgllm__uclass[65536];    /* classes of the BMP, built once */
    static int pgllm__uclass_ready = 0;
    """
    uint8_t pgllm__uclass[65536]
    int pgllm__uclass_ready

cdef enum:
    CL_OTHER = 0
    CL_L = 1
    CL_N = 2
    CL_WS = 4
    MAX_RANK = 0x7FFFFFFF
    CACHE_PIECE_MAX = 64            # longer pieces are not cached
    CACHE_SLOTS = 1 << 17
    CACHE_BYTES = 1 << 23
    CACHE_IDS = 1 << 21


# ---------------------------------------------------------------------------
# Unicode classes and the pre-tokenizer
# ---------------------------------------------------------------------------
cdef int _in_ranges(const uint32_t *r, int64_t n, uint32_t cp) noexcept nogil:
    cdef int64_t lo = 0, hi = n - 1, mid
    while lo <= hi:
        mid = (lo + hi) // 2
        if cp < r[2 * mid]:
            hi = mid - 1
        elif cp > r[2 * mid + 1]:
            lo = mid + 1
        else:
            return 1
    return 0


cdef void _build_uclass() noexcept nogil:
    global pgllm__uclass_ready
    cdef int64_t i
    cdef uint32_t a, b, cp
    memset(pgllm__uclass, 0, 65536)
    for i in range(PGLLM_UNI_L_N):
        a = pgllm_uni_L[2 * i]
        b = pgllm_uni_L[2 * i + 1]
        cp = a
        while cp <= b and cp < 65536:
            pgllm__uclass[cp] |= CL_L
            cp = cp + 1
    for i in range(PGLLM_UNI_N_N):
        a = pgllm_uni_N[2 * i]
        b = pgllm_uni_N[2 * i + 1]
        cp = a
        while cp <= b and cp < 65536:
            pgllm__uclass[cp] |= CL_N
            cp = cp + 1
    for i in range(PGLLM_UNI_WS_N):
        a = pgllm_uni_WS[2 * i]
        b = pgllm_uni_WS[2 * i + 1]
        cp = a
        while cp <= b and cp < 65536:
            pgllm__uclass[cp] |= CL_WS
            cp = cp + 1
    pgllm__uclass_ready = 1


cdef inline int _uclass(uint32_t cp) noexcept nogil:
    if cp < 65536:
        return pgllm__uclass[cp]
    if cp == CP_INVALID:
        return CL_OTHER
    if _in_ranges(pgllm_uni_L, PGLLM_UNI_L_N, cp):
        return CL_L
    if _in_ranges(pgllm_uni_N, PGLLM_UNI_N_N, cp):
        return CL_N
    if _in_ranges(pgllm_uni_WS, PGLLM_UNI_WS_N, cp):
        return CL_WS
    return CL_OTHER


cdef inline int64_t _run(const uint8_t *s, int64_t n, int64_t i, int cls) noexcept nogil:
    """End of the run of code points of class cls starting at i."""
    cdef uint32_t c
    cdef int l
    while i < n:
        l = _utf8(s, n, i, &c)
        if _uclass(c) != cls:
            break
        i = i + l
    return i


cdef int64_t _piece_end(const uint8_t *s, int64_t n, int64_t i) noexcept nogil:
    """End of the pre-token starting at i (GPT-2's pattern, first matching
    alternative wins)."""
    cdef uint32_t c, c2
    cdef int l, l2, k, k2, count
    cdef int64_t j, last
    cdef uint8_t b1, b2
    l = _utf8(s, n, i, &c)
    k = _uclass(c)
    # '(?:[sdmt]|ll|ve|re)
    if c == 39 and i + 1 < n:
        b1 = s[i + 1]
        if b1 == 115 or b1 == 116 or b1 == 109 or b1 == 100:          # s t m d
            return i + 2
        if i + 2 < n:
            b2 = s[i + 2]
            if (b1 == 108 and b2 == 108) or (b1 == 118 and b2 == 101) or (b1 == 114 and b2 == 101):
                return i + 3                                            # ll ve re
    # ' ?\p{L}+', ' ?\p{N}+', ' ?[^\s\p{L}\p{N}]+' with the optional space
    if c == 32 and i + 1 < n:
        l2 = _utf8(s, n, i + 1, &c2)
        k2 = _uclass(c2)
        if k2 == CL_L or k2 == CL_N or k2 == CL_OTHER:
            return _run(s, n, i + 1, k2)
    # ... and without it
    if k == CL_L or k == CL_N or k == CL_OTHER:
        return _run(s, n, i, k)
    # whitespace: '\s+(?!\S)' keeps the last space for the next piece when
    # more follows; a single space before a non-space is '\s+' on its own
    j = i
    last = i
    count = 0
    while j < n:
        l2 = _utf8(s, n, j, &c2)
        if _uclass(c2) != CL_WS:
            break
        last = j
        j = j + l2
        count = count + 1
    if j >= n:
        return n
    if count >= 2:
        return last
    return j


# ---------------------------------------------------------------------------
# the tokenizer
# ---------------------------------------------------------------------------
cdef struct BPEState:
    int64_t n_tokens
    uint8_t *data               # token bytes, by id
    int64_t *offsets            # n_tokens + 1
    uint8_t *special
    int32_t byte_id[256]
    int32_t *tok_slots          # bytes -> id (open addressing, -1 empty)
    int64_t tok_mask
    uint64_t *pair_keys         # (left << 32 | right) -> merged id
    int32_t *pair_vals
    int64_t pair_mask
    # piece cache
    uint64_t *wc_hash
    int64_t *wc_off             # start of the piece in wc_bytes (-1: empty slot)
    int32_t *wc_len
    int64_t *wc_ids_off
    int32_t *wc_nids
    int64_t wc_used
    uint8_t *wc_bytes
    int64_t wc_bytes_used
    int32_t *wc_ids
    int64_t wc_ids_used
    # merge scratch
    int32_t *parts
    int32_t *ranks
    int64_t scratch_cap
    int borrowed                # the tables above the cache point into an image (not freed)


cdef inline uint64_t _hash_bytes(const uint8_t *p, int64_t n) noexcept nogil:
    cdef uint64_t h = <uint64_t> 1469598103934665603ULL ^ <uint64_t> n
    cdef int64_t i
    for i in range(n):
        h = (h ^ p[i]) * <uint64_t> 1099511628211ULL
    return _mix64(h)


cdef inline int64_t _tok_len(const BPEState *s, int32_t id) noexcept nogil:
    return s.offsets[id + 1] - s.offsets[id]


cdef int32_t _tok_lookup(const BPEState *s, const uint8_t *p, int64_t n) noexcept nogil:
    cdef uint64_t slot = _hash_bytes(p, n) & <uint64_t> s.tok_mask
    cdef int32_t id
    while True:
        id = s.tok_slots[slot]
        if id < 0:
            return -1
        if _tok_len(s, id) == n and memcmp(s.data + s.offsets[id], p, n) == 0:
            return id
        slot = (slot + 1) & <uint64_t> s.tok_mask


cdef inline int32_t _pair_lookup(const BPEState *s, int32_t a, int32_t b) noexcept nogil:
    cdef uint64_t key = (<uint64_t> <uint32_t> a << 32) | <uint32_t> b
    cdef uint64_t slot = _mix64(key) & <uint64_t> s.pair_mask
    cdef uint64_t k
    while True:
        k = s.pair_keys[slot]
        if k == key:
            return s.pair_vals[slot]
        if k == <uint64_t> 0xFFFFFFFFFFFFFFFFULL:
            return MAX_RANK
        slot = (slot + 1) & <uint64_t> s.pair_mask


cdef void _pair_insert(BPEState *s, int32_t a, int32_t b, int32_t merged) noexcept nogil:
    cdef uint64_t key = (<uint64_t> <uint32_t> a << 32) | <uint32_t> b
    cdef uint64_t slot = _mix64(key) & <uint64_t> s.pair_mask
    while s.pair_keys[slot] != <uint64_t> 0xFFFFFFFFFFFFFFFFULL:
        if s.pair_keys[slot] == key:
            return
        slot = (slot + 1) & <uint64_t> s.pair_mask
    s.pair_keys[slot] = key
    s.pair_vals[slot] = merged


cdef void _bpe_free_state(BPEState *s) noexcept nogil:
    if s == NULL:
        return
    if not s.borrowed:
        free(s.data)
        free(s.offsets)
        free(s.special)
        free(s.tok_slots)
        free(s.pair_keys)
        free(s.pair_vals)
    free(s.wc_hash)
    free(s.wc_off)
    free(s.wc_len)
    free(s.wc_ids_off)
    free(s.wc_nids)
    free(s.wc_bytes)
    free(s.wc_ids)
    free(s.parts)
    free(s.ranks)
    free(s)


cdef public void pgllm_bpe_free(PgllmBPE *bpe) noexcept nogil:
    _bpe_free_state(<BPEState *> bpe)


cdef int64_t _pow2_at_least(int64_t n) noexcept nogil:
    cdef int64_t p = 1
    while p < n:
        p = p * 2
    return p


cdef void _cache_clear(BPEState *s) noexcept nogil:
    cdef int64_t i
    for i in range(CACHE_SLOTS):
        s.wc_off[i] = -1
    s.wc_used = 0
    s.wc_bytes_used = 0
    s.wc_ids_used = 0


cdef int _alloc_private(BPEState *s) noexcept nogil:
    """The piece cache, which every tokenizer keeps to itself (even one whose
    tables are shared); 0 if out of memory."""
    s.wc_hash = <uint64_t *> malloc(CACHE_SLOTS * sizeof(uint64_t))
    s.wc_off = <int64_t *> malloc(CACHE_SLOTS * sizeof(int64_t))
    s.wc_len = <int32_t *> malloc(CACHE_SLOTS * sizeof(int32_t))
    s.wc_ids_off = <int64_t *> malloc(CACHE_SLOTS * sizeof(int64_t))
    s.wc_nids = <int32_t *> malloc(CACHE_SLOTS * sizeof(int32_t))
    s.wc_bytes = <uint8_t *> malloc(CACHE_BYTES)
    s.wc_ids = <int32_t *> malloc(CACHE_IDS * sizeof(int32_t))
    if (s.wc_hash == NULL or s.wc_off == NULL or s.wc_len == NULL or s.wc_ids_off == NULL or
            s.wc_nids == NULL or s.wc_bytes == NULL or s.wc_ids == NULL):
        return 0
    _cache_clear(s)
    return 1


# Building a tokenizer from any vocabulary -- a file, or rows an admin wrote
# into llm_vocab -- is bounded: every table is sized from a count made first
# (at most half full, so every probe loop ends), time and memory are linear
# in the vocabulary, and the cancel flag is polled every CANCEL_EVERY tokens
# and every CANCEL_EVERY_BYTES bytes of a long one.
#
# The pair table needs every split of every token into two tokens.  Hashing
# each prefix and suffix from scratch would cost O(L^2) for a token of L
# bytes (an adversarial "a", "aa", ..., "a" * 20000 takes hours), so prefixes
# and suffixes get rolling fingerprints: two polynomial hashes modulo the
# prime 2^61 - 1 (suffixes through the inverse of the base), looked up with
# the length in a table of the tokens' fingerprints -- O(1) per split.
# Splits of tokens of up to VERIFY_MAX bytes (every token of the vocabularies
# in use) are also compared byte by byte; beyond that two 61-bit hashes and
# the length decide (a false match has probability below 2^-100).
DEF CANCEL_EVERY = 4096
DEF CANCEL_EVERY_BYTES = 1 << 20
DEF VERIFY_MAX = 256

cdef extern from *:
    """
    #define PGLLM_P61 ((((uint64_t) 1) << 61) - 1)
    static inline uint64_t pgllm_mulmod61(uint64_t a, uint64_t b)
    {
        unsigned __int128 m = (unsigned __int128) a * b;
        uint64_t r = (uint64_t) (m & PGLLM_P61) + (uint64_t) (m >> 61);

        r = (r & PGLLM_P61) + (r >> 61);
        return r >= PGLLM_P61 ? r - PGLLM_P61 : r;
    }
    static inline uint64_t pgllm_addmod61(uint64_t a, uint64_t b)
    {
        uint64_t r = a + b;

        return r >= PGLLM_P61 ? r - PGLLM_P61 : r;
    }
    """
    uint64_t PGLLM_P61
    uint64_t pgllm_mulmod61(uint64_t a, uint64_t b) nogil
    uint64_t pgllm_addmod61(uint64_t a, uint64_t b) nogil

cdef enum:
    FP_BASE1 = 0x1F3D5B79A3C1E5
    FP_BASE2 = 0x0B7E151628AED2


cdef uint64_t _powmod61(uint64_t b, uint64_t e) noexcept nogil:
    cdef uint64_t r = 1
    while e:
        if e & 1:
            r = pgllm_mulmod61(r, b)
        b = pgllm_mulmod61(b, b)
        e = e >> 1
    return r


cdef struct Prints:
    uint64_t *h1                # fingerprint + 1 (0: empty slot)
    uint64_t *h2
    int64_t *len
    int32_t *id
    int64_t mask
    uint64_t *seen              # a bit per (fingerprint, length) class: most
    int64_t seen_mask           # prefixes are no token, and this says so from cache


cdef void _fp_whole(const uint8_t *p, int64_t n, uint64_t *h1, uint64_t *h2,
                    uint64_t *b1n, uint64_t *b2n) noexcept nogil:
    """Fingerprints of p, and base^n."""
    cdef int64_t k
    cdef uint64_t a = 0, b = 0, pa = 1, pb = 1
    for k in range(n):
        a = pgllm_addmod61(pgllm_mulmod61(a, FP_BASE1), p[k] + 1)
        b = pgllm_addmod61(pgllm_mulmod61(b, FP_BASE2), p[k] + 1)
        pa = pgllm_mulmod61(pa, FP_BASE1)
        pb = pgllm_mulmod61(pb, FP_BASE2)
    h1[0] = a
    h2[0] = b
    b1n[0] = pa
    b2n[0] = pb


cdef int32_t _fp_find(const Prints *f, uint64_t h1, uint64_t h2, int64_t n, int insert_id) noexcept nogil:
    """The id of the token with these fingerprints and length, or -1; with
    insert_id >= 0, insert it if absent (the first, lowest id stays)."""
    cdef uint64_t key = _mix64(h1 ^ (h2 << 3) ^ <uint64_t> n)
    cdef uint64_t bit = (key >> 20) & <uint64_t> f.seen_mask
    cdef uint64_t slot = key & <uint64_t> f.mask
    if insert_id < 0 and not (f.seen[bit >> 6] >> (bit & 63)) & 1:
        return -1
    f.seen[bit >> 6] |= <uint64_t> 1 << (bit & 63)
    while f.h1[slot] != 0:
        if f.h1[slot] == h1 + 1 and f.h2[slot] == h2 and f.len[slot] == n:
            return f.id[slot]
        slot = (slot + 1) & <uint64_t> f.mask
    if insert_id >= 0:
        f.h1[slot] = h1 + 1
        f.h2[slot] = h2
        f.len[slot] = n
        f.id[slot] = insert_id
        return insert_id
    return -1


cdef void _fp_free(Prints *f) noexcept nogil:
    free(f.h1)
    free(f.h2)
    free(f.len)
    free(f.id)
    free(f.seen)
    memset(f, 0, sizeof(Prints))


cdef int _token_splits(BPEState *s, const Prints *f, int32_t id, int insert, int64_t *n_pairs,
                       uint64_t inv1, uint64_t inv2, const int *cancel) noexcept nogil:
    """Every split of token id into two tokens: counted into n_pairs, or
    inserted into the pair table."""
    cdef int64_t n = _tok_len(s, id), k
    cdef const uint8_t *t = s.data + s.offsets[id]
    cdef uint64_t h1, h2, b1n, b2n, p1 = 0, p2 = 0, q1, q2, i1 = 1, i2 = 1, s1, s2
    cdef int32_t a, b
    _fp_whole(t, n, &h1, &h2, &b1n, &b2n)
    for k in range(1, n):
        if (k % CANCEL_EVERY_BYTES) == 0 and PGLLM_CANCELLED(cancel):
            return PGLLM_INTERRUPTED
        # t[:k] = p, and t[k:] = h - p * base^(n-k) = h - p * base^n * base^-k
        p1 = pgllm_addmod61(pgllm_mulmod61(p1, FP_BASE1), t[k - 1] + 1)
        p2 = pgllm_addmod61(pgllm_mulmod61(p2, FP_BASE2), t[k - 1] + 1)
        i1 = pgllm_mulmod61(i1, inv1)
        i2 = pgllm_mulmod61(i2, inv2)
        a = _fp_find(f, p1, p2, k, -1)
        if a < 0:
            continue
        q1 = pgllm_mulmod61(pgllm_mulmod61(p1, b1n), i1)
        q2 = pgllm_mulmod61(pgllm_mulmod61(p2, b2n), i2)
        s1 = pgllm_addmod61(h1, PGLLM_P61 - q1)
        s2 = pgllm_addmod61(h2, PGLLM_P61 - q2)
        b = _fp_find(f, s1, s2, n - k, -1)
        if b < 0:
            continue
        if n <= VERIFY_MAX and (memcmp(s.data + s.offsets[a], t, k) != 0 or
                                memcmp(s.data + s.offsets[b], t + k, n - k) != 0):
            continue
        if insert:
            _pair_insert(s, a, b, id)
        else:
            n_pairs[0] = n_pairs[0] + 1
    return PGLLM_OK


cdef public int pgllm_bpe_create(int64_t n_tokens, const uint8_t *data, const int64_t *offsets,
                                 const uint8_t *special, PgllmBPE **out,
                                 const int *cancel) noexcept nogil:
    cdef BPEState *s = NULL
    cdef Prints f
    cdef int64_t i, n, slot_count, total, n_pairs = 0, n_merge = 0, pass_
    cdef int32_t id
    cdef uint64_t slot, h1, h2, b1n, b2n, inv1, inv2
    cdef const uint8_t *t
    cdef int rc = PGLLM_OK
    out[0] = NULL
    memset(&f, 0, sizeof(Prints))
    if not pgllm__uclass_ready:
        _build_uclass()
    if n_tokens <= 0 or n_tokens > PGLLM_BPE_MAX_TOKENS or offsets[0] != 0:
        return PGLLM_EINVAL
    for i in range(n_tokens):
        if offsets[i + 1] < offsets[i]:
            return PGLLM_EINVAL
    total = offsets[n_tokens]
    if total > PGLLM_BPE_MAX_BYTES:
        return PGLLM_EINVAL
    s = <BPEState *> calloc(1, sizeof(BPEState))
    if s == NULL:
        return PGLLM_ENOMEM
    s.n_tokens = n_tokens
    s.data = <uint8_t *> malloc(max(total, <int64_t> 1))
    s.offsets = <int64_t *> malloc((n_tokens + 1) * sizeof(int64_t))
    s.special = <uint8_t *> malloc(n_tokens)
    slot_count = _pow2_at_least(2 * n_tokens + 16)
    s.tok_mask = slot_count - 1
    s.tok_slots = <int32_t *> malloc(slot_count * sizeof(int32_t))
    f.mask = slot_count - 1
    f.h1 = <uint64_t *> calloc(slot_count, sizeof(uint64_t))
    f.h2 = <uint64_t *> malloc(slot_count * sizeof(uint64_t))
    f.len = <int64_t *> malloc(slot_count * sizeof(int64_t))
    f.id = <int32_t *> malloc(slot_count * sizeof(int32_t))
    f.seen_mask = 8 * slot_count - 1        # 16 bits per token
    f.seen = <uint64_t *> calloc(slot_count // 8, sizeof(uint64_t))
    if (s.data == NULL or s.offsets == NULL or s.special == NULL or s.tok_slots == NULL or
            not _alloc_private(s) or f.h1 == NULL or
            f.h2 == NULL or f.len == NULL or f.id == NULL or f.seen == NULL):
        rc = PGLLM_ENOMEM
    if rc == PGLLM_OK:
        memcpy(s.data, data, total)
        memcpy(s.offsets, offsets, (n_tokens + 1) * sizeof(int64_t))
        memcpy(s.special, special, n_tokens)
        # bytes -> id for the mergeable (non-special) tokens, and their prints
        for i in range(slot_count):
            s.tok_slots[i] = -1
        for id in range(n_tokens):
            if (id % CANCEL_EVERY) == 0 and PGLLM_CANCELLED(cancel):
                rc = PGLLM_INTERRUPTED
                break
            n = _tok_len(s, id)
            if n <= 0 or s.special[id]:
                continue
            t = s.data + s.offsets[id]
            slot = _hash_bytes(t, n) & <uint64_t> s.tok_mask
            while s.tok_slots[slot] >= 0:
                if _tok_len(s, s.tok_slots[slot]) == n and memcmp(s.data + s.offsets[s.tok_slots[slot]], t, n) == 0:
                    break               # duplicate bytes: the lower id wins
                slot = (slot + 1) & <uint64_t> s.tok_mask
            if s.tok_slots[slot] < 0:
                s.tok_slots[slot] = id
            _fp_whole(t, n, &h1, &h2, &b1n, &b2n)
            _fp_find(&f, h1, h2, n, id)
            if n >= 2:
                n_merge = n_merge + 1
    if rc == PGLLM_OK:
        _fill_byte_ids(s)
        for i in range(256):
            if s.byte_id[i] < 0:
                rc = PGLLM_EINVAL       # byte-level BPE needs all 256 bytes
                break
    # every split of every token into two tokens: counted, then inserted
    # into a table twice that size
    inv1 = _powmod61(FP_BASE1, PGLLM_P61 - 2)
    inv2 = _powmod61(FP_BASE2, PGLLM_P61 - 2)
    for pass_ in range(2):
        if rc != PGLLM_OK:
            break
        if pass_ == 1:
            s.pair_mask = _pow2_at_least(2 * n_pairs + 16) - 1
            s.pair_keys = <uint64_t *> malloc((s.pair_mask + 1) * sizeof(uint64_t))
            s.pair_vals = <int32_t *> malloc((s.pair_mask + 1) * sizeof(int32_t))
            if s.pair_keys == NULL or s.pair_vals == NULL:
                rc = PGLLM_ENOMEM
                break
            for i in range(s.pair_mask + 1):
                s.pair_keys[i] = <uint64_t> 0xFFFFFFFFFFFFFFFFULL
                s.pair_vals[i] = 0      # (never read; set, so an image is the same each build)
        for id in range(n_tokens):
            if (id % CANCEL_EVERY) == 0 and PGLLM_CANCELLED(cancel):
                rc = PGLLM_INTERRUPTED
                break
            if _tok_len(s, id) < 2 or s.special[id]:
                continue
            rc = _token_splits(s, &f, id, pass_, &n_pairs, inv1, inv2, cancel)
            if rc != PGLLM_OK:
                break
    _fp_free(&f)
    if rc != PGLLM_OK:
        _bpe_free_state(s)
        return rc
    out[0] = <PgllmBPE *> s
    return PGLLM_OK


cdef void _fill_byte_ids(BPEState *s) noexcept nogil:
    cdef uint8_t one[1]
    cdef int i
    for i in range(256):
        one[0] = <uint8_t> i
        s.byte_id[i] = _tok_lookup(s, one, 1)


# ---------------------------------------------------------------------------
# The image: a built tokenizer's tables in one flat, position-independent
# block, so that a server builds them once and every backend maps them
# (the shim's shared cache).  Layout: BPEImageHeader, then offsets,
# tok_slots, pair_keys, pair_vals, special and data, each at a multiple of
# 64 bytes; padding is zero, so the same tokenizer gives the same bytes.
# A tokenizer made from an image points into it and keeps only its piece
# cache and merge scratch to itself.
# ---------------------------------------------------------------------------
cdef extern from *:
    # the number changes with any change to the layout or to the hashing the
    # tables were built with (_hash_bytes, _mix64): cache files outlive a build
    """
    static const char PGLLM_BPE_IMAGE_MAGIC[16] = "pg_llm bpe 1\\n";
    """
    const char PGLLM_BPE_IMAGE_MAGIC[16]

cdef struct BPEImageHeader:
    char magic[16]
    int64_t n_tokens
    int64_t data_bytes
    int64_t tok_mask
    int64_t pair_mask
    int32_t byte_id[256]

cdef enum:
    IMAGE_SECTIONS = 6
    IMAGE_MAX_MASK = 0xFFFFFFFF     # pairs <= token bytes <= 2^30, so tables < 2^32 slots


cdef inline int64_t _align64(int64_t n) noexcept nogil:
    return (n + 63) & ~(<int64_t> 63)


cdef int64_t _image_layout(int64_t n_tokens, int64_t data_bytes, int64_t tok_mask,
                           int64_t pair_mask, int64_t *at) noexcept nogil:
    """Start of each section (offsets, tok_slots, pair_keys, pair_vals,
    special, data) in at[]; returns the image's size.  Arguments within the
    bounds pgllm_bpe_from_image checks cannot overflow."""
    at[0] = _align64(sizeof(BPEImageHeader))
    at[1] = _align64(at[0] + (n_tokens + 1) * <int64_t> sizeof(int64_t))
    at[2] = _align64(at[1] + (tok_mask + 1) * <int64_t> sizeof(int32_t))
    at[3] = _align64(at[2] + (pair_mask + 1) * <int64_t> sizeof(uint64_t))
    at[4] = _align64(at[3] + (pair_mask + 1) * <int64_t> sizeof(int32_t))
    at[5] = _align64(at[4] + n_tokens)
    return _align64(at[5] + data_bytes)


cdef public int64_t pgllm_bpe_image_size(const PgllmBPE *bpe) noexcept nogil:
    cdef const BPEState *s = <const BPEState *> bpe
    cdef int64_t at[IMAGE_SECTIONS]
    return _image_layout(s.n_tokens, s.offsets[s.n_tokens], s.tok_mask, s.pair_mask, at)


cdef public int pgllm_bpe_image_write(const PgllmBPE *bpe, void *out, int64_t size) noexcept nogil:
    cdef const BPEState *s = <const BPEState *> bpe
    cdef int64_t at[IMAGE_SECTIONS]
    cdef BPEImageHeader *h = <BPEImageHeader *> out
    cdef char *base = <char *> out
    cdef int64_t n = s.n_tokens, total = s.offsets[s.n_tokens]
    if _image_layout(n, total, s.tok_mask, s.pair_mask, at) != size:
        return PGLLM_EINVAL
    memset(out, 0, size)
    memcpy(h.magic, PGLLM_BPE_IMAGE_MAGIC, sizeof(h.magic))
    h.n_tokens = n
    h.data_bytes = total
    h.tok_mask = s.tok_mask
    h.pair_mask = s.pair_mask
    memcpy(h.byte_id, s.byte_id, sizeof(s.byte_id))
    memcpy(base + at[0], s.offsets, (n + 1) * sizeof(int64_t))
    memcpy(base + at[1], s.tok_slots, (s.tok_mask + 1) * sizeof(int32_t))
    memcpy(base + at[2], s.pair_keys, (s.pair_mask + 1) * sizeof(uint64_t))
    memcpy(base + at[3], s.pair_vals, (s.pair_mask + 1) * sizeof(int32_t))
    memcpy(base + at[4], s.special, n)
    memcpy(base + at[5], s.data, total)
    return PGLLM_OK


cdef int _image_tables_valid(const BPEState *s) noexcept nogil:
    """Every id in range and every probe sequence ends: what the encoder and
    decoder rely on to stay inside the image."""
    cdef int64_t i, n = s.n_tokens, empty = 0
    cdef uint64_t k
    if s.offsets[0] != 0:
        return 0
    for i in range(n):
        if s.offsets[i + 1] < s.offsets[i]:
            return 0
    for i in range(256):
        if s.byte_id[i] < 0 or s.byte_id[i] >= n:
            return 0
    for i in range(s.tok_mask + 1):
        if s.tok_slots[i] == -1:
            empty = empty + 1
        elif s.tok_slots[i] < 0 or s.tok_slots[i] >= n:
            return 0
    if empty == 0:
        return 0
    empty = 0
    for i in range(s.pair_mask + 1):
        k = s.pair_keys[i]
        if k == <uint64_t> 0xFFFFFFFFFFFFFFFFULL:
            empty = empty + 1
        elif (k >> 32) >= <uint64_t> n or <uint64_t> <uint32_t> k >= <uint64_t> n or \
                s.pair_vals[i] < 0 or s.pair_vals[i] >= n:
            return 0
    return empty > 0


cdef public int pgllm_bpe_from_image(const void *image, int64_t size, PgllmBPE **out) noexcept nogil:
    cdef const BPEImageHeader *h = <const BPEImageHeader *> image
    cdef const char *base = <const char *> image
    cdef int64_t at[IMAGE_SECTIONS]
    cdef BPEState *s
    out[0] = NULL
    if (size < <int64_t> sizeof(BPEImageHeader) or
            memcmp(h.magic, PGLLM_BPE_IMAGE_MAGIC, sizeof(h.magic)) != 0 or
            h.n_tokens <= 0 or h.n_tokens > PGLLM_BPE_MAX_TOKENS or
            h.data_bytes < 0 or h.data_bytes > PGLLM_BPE_MAX_BYTES or
            h.tok_mask < 0 or h.tok_mask > IMAGE_MAX_MASK or (h.tok_mask & (h.tok_mask + 1)) != 0 or
            h.pair_mask < 0 or h.pair_mask > IMAGE_MAX_MASK or (h.pair_mask & (h.pair_mask + 1)) != 0 or
            _image_layout(h.n_tokens, h.data_bytes, h.tok_mask, h.pair_mask, at) != size):
        return PGLLM_EINVAL
    if not pgllm__uclass_ready:
        _build_uclass()
    s = <BPEState *> calloc(1, sizeof(BPEState))
    if s == NULL:
        return PGLLM_ENOMEM
    s.borrowed = 1
    s.n_tokens = h.n_tokens
    s.tok_mask = h.tok_mask
    s.pair_mask = h.pair_mask
    memcpy(s.byte_id, h.byte_id, sizeof(s.byte_id))
    s.offsets = <int64_t *> (base + at[0])
    s.tok_slots = <int32_t *> (base + at[1])
    s.pair_keys = <uint64_t *> (base + at[2])
    s.pair_vals = <int32_t *> (base + at[3])
    s.special = <uint8_t *> (base + at[4])
    s.data = <uint8_t *> (base + at[5])
    if not _image_tables_valid(s) or s.offsets[s.n_tokens] != h.data_bytes:
        _bpe_free_state(s)
        return PGLLM_EINVAL
    if not _alloc_private(s):
        _bpe_free_state(s)
        return PGLLM_ENOMEM
    out[0] = <PgllmBPE *> s
    return PGLLM_OK


cdef public int64_t pgllm_bpe_n_tokens(const PgllmBPE *bpe) noexcept nogil:
    return (<const BPEState *> bpe).n_tokens


cdef public int32_t pgllm_bpe_token_id(const PgllmBPE *bpe, const uint8_t *bytes,
                                       int64_t len) noexcept nogil:
    return _tok_lookup(<const BPEState *> bpe, bytes, len)


cdef public int32_t pgllm_bpe_special_id(const PgllmBPE *bpe, const uint8_t *bytes,
                                         int64_t len) noexcept nogil:
    """id of the special token with these bytes (<|endoftext|>), or -1"""
    cdef const BPEState *s = <const BPEState *> bpe
    cdef int64_t i
    for i in range(s.n_tokens):
        if s.special[i] and _tok_len(s, <int32_t> i) == len and memcmp(s.data + s.offsets[i], bytes, len) == 0:
            return <int32_t> i
    return -1


cdef int _ensure_scratch(BPEState *s, int64_t n) noexcept nogil:
    cdef int32_t *p
    cdef int32_t *r
    cdef int64_t cap
    if n <= s.scratch_cap:
        return 1
    cap = max(n, 2 * s.scratch_cap, <int64_t> 256)
    p = <int32_t *> realloc(s.parts, cap * sizeof(int32_t))
    if p == NULL:
        return 0
    s.parts = p
    r = <int32_t *> realloc(s.ranks, cap * sizeof(int32_t))
    if r == NULL:
        return 0
    s.ranks = r
    s.scratch_cap = cap
    return 1


cdef int64_t _merge_piece(BPEState *s, const uint8_t *p, int64_t n) noexcept nogil:
    """tiktoken's byte_pair_merge of piece p into s.parts; returns its count."""
    cdef int32_t *parts = s.parts
    cdef int32_t *ranks = s.ranks
    cdef int64_t m = n, k, best
    cdef int32_t r
    for k in range(n):
        parts[k] = s.byte_id[p[k]]
    for k in range(n - 1):
        ranks[k] = _pair_lookup(s, parts[k], parts[k + 1])
    while m > 1:
        best = 0
        r = ranks[0]
        for k in range(1, m - 1):
            if ranks[k] < r:
                r = ranks[k]
                best = k
        if r == MAX_RANK:
            break
        parts[best] = r                # the merged token (rank == id)
        for k in range(best + 1, m - 1):
            parts[k] = parts[k + 1]
            ranks[k] = ranks[k + 1]
        m = m - 1
        if best + 1 < m:
            ranks[best] = _pair_lookup(s, parts[best], parts[best + 1])
        else:
            ranks[best] = MAX_RANK
        if best > 0:
            ranks[best - 1] = _pair_lookup(s, parts[best - 1], parts[best])
    return m


# Long pieces (a run of 100,000 letters is one pre-token) would make the
# quadratic loop above take seconds: beyond LONG_PIECE bytes the same merges
# are made with a min-heap of (rank, position) over a linked list of parts,
# O(n log n).  The heap pops the lowest rank and, among equal ranks, the
# leftmost pair, exactly the choice of the loop above; stale entries (a part
# merged away, a pair whose rank changed) are skipped when popped.
DEF LONG_PIECE = 256


cdef inline void _heap_push(uint64_t *heap, int64_t *size, uint64_t key) noexcept nogil:
    cdef int64_t i = size[0], parent
    size[0] = i + 1
    while i > 0:
        parent = (i - 1) >> 1
        if heap[parent] <= key:
            break
        heap[i] = heap[parent]
        i = parent
    heap[i] = key


cdef inline uint64_t _heap_pop(uint64_t *heap, int64_t *size) noexcept nogil:
    cdef uint64_t top = heap[0], last
    cdef int64_t n = size[0] - 1, i = 0, child
    size[0] = n
    if n == 0:
        return top
    last = heap[n]
    while True:
        child = 2 * i + 1
        if child >= n:
            break
        if child + 1 < n and heap[child + 1] < heap[child]:
            child = child + 1
        if last <= heap[child]:
            break
        heap[i] = heap[child]
        i = child
    heap[i] = last
    return top


cdef int64_t _merge_piece_long(BPEState *s, const uint8_t *p, int64_t n,
                               const int *cancel) noexcept nogil:
    """_merge_piece for long pieces; -1: out of memory, -2: cancelled."""
    cdef int32_t *parts = s.parts           # token of each node (nodes never move)
    cdef int32_t *ranks = s.ranks           # rank of the pair a node starts
    cdef int64_t *nxt = <int64_t *> malloc(n * sizeof(int64_t))
    cdef int64_t *prv = <int64_t *> malloc(n * sizeof(int64_t))
    cdef uint64_t *heap = <uint64_t *> malloc(3 * n * sizeof(uint64_t))
    cdef int64_t size = 0, k, a, b, m = 0, pops = 0
    cdef int32_t r
    cdef uint64_t key
    if nxt == NULL or prv == NULL or heap == NULL:
        free(nxt)
        free(prv)
        free(heap)
        return -1
    for k in range(n):
        parts[k] = s.byte_id[p[k]]
        nxt[k] = k + 1 if k + 1 < n else -1
        prv[k] = k - 1
    for k in range(n - 1):
        ranks[k] = _pair_lookup(s, parts[k], parts[k + 1])
        if ranks[k] != MAX_RANK:
            _heap_push(heap, &size, (<uint64_t> ranks[k] << 32) | <uint64_t> k)
    ranks[n - 1] = MAX_RANK
    while size > 0:
        pops = pops + 1
        if (pops & 65535) == 0 and PGLLM_CANCELLED(cancel):
            free(nxt)
            free(prv)
            free(heap)
            return -2
        key = _heap_pop(heap, &size)
        r = <int32_t> (key >> 32)
        a = <int64_t> (key & 0xFFFFFFFFULL)
        if ranks[a] != r:                   # merged away or changed since
            continue
        b = nxt[a]
        parts[a] = r                        # the merged token (rank == id)
        ranks[b] = MAX_RANK                 # node b is gone
        nxt[a] = nxt[b]
        if nxt[a] >= 0:
            prv[nxt[a]] = a
            ranks[a] = _pair_lookup(s, parts[a], parts[nxt[a]])
            if ranks[a] != MAX_RANK:
                _heap_push(heap, &size, (<uint64_t> ranks[a] << 32) | <uint64_t> a)
        else:
            ranks[a] = MAX_RANK
        if prv[a] >= 0:
            ranks[prv[a]] = _pair_lookup(s, parts[prv[a]], parts[a])
            if ranks[prv[a]] != MAX_RANK:
                _heap_push(heap, &size, (<uint64_t> ranks[prv[a]] << 32) | <uint64_t> prv[a])
    k = 0
    while k >= 0:                           # compact the survivors in order
        parts[m] = parts[k]
        m = m + 1
        k = nxt[k]
    free(nxt)
    free(prv)
    free(heap)
    return m


cdef int64_t _cache_find(const BPEState *s, const uint8_t *p, int64_t n, uint64_t h) noexcept nogil:
    cdef uint64_t slot = h & <uint64_t> (CACHE_SLOTS - 1)
    while s.wc_off[slot] >= 0:
        if s.wc_hash[slot] == h and s.wc_len[slot] == n and memcmp(s.wc_bytes + s.wc_off[slot], p, n) == 0:
            return <int64_t> slot
        slot = (slot + 1) & <uint64_t> (CACHE_SLOTS - 1)
    return -1 - <int64_t> slot


cdef void _cache_put(BPEState *s, const uint8_t *p, int64_t n, uint64_t h,
                     const int32_t *ids, int64_t nids) noexcept nogil:
    cdef int64_t slot
    if (s.wc_used * 2 >= CACHE_SLOTS or s.wc_bytes_used + n > CACHE_BYTES or
            s.wc_ids_used + nids > CACHE_IDS):
        _cache_clear(s)
    slot = _cache_find(s, p, n, h)
    if slot >= 0:
        return
    slot = -1 - slot
    memcpy(s.wc_bytes + s.wc_bytes_used, p, n)
    memcpy(s.wc_ids + s.wc_ids_used, ids, nids * sizeof(int32_t))
    s.wc_hash[slot] = h
    s.wc_off[slot] = s.wc_bytes_used
    s.wc_len[slot] = <int32_t> n
    s.wc_ids_off[slot] = s.wc_ids_used
    s.wc_nids[slot] = <int32_t> nids
    s.wc_bytes_used = s.wc_bytes_used + n
    s.wc_ids_used = s.wc_ids_used + nids
    s.wc_used = s.wc_used + 1


cdef public int pgllm_bpe_encode(PgllmBPE *bpe, const uint8_t *text, int64_t len,
                                 int32_t *ids, int64_t cap, int64_t *n_ids,
                                 const int *cancel) noexcept nogil:
    cdef BPEState *s = <BPEState *> bpe
    cdef int64_t i = 0, e, n, count = 0, m, slot, k, pieces = 0
    cdef int32_t tok
    cdef uint64_t h
    cdef const int32_t *src
    n_ids[0] = 0
    while i < len:
        pieces = pieces + 1
        if (pieces & 4095) == 0 and PGLLM_CANCELLED(cancel):
            return PGLLM_INTERRUPTED
        e = _piece_end(text, len, i)
        n = e - i
        h = 0
        slot = -1
        if n <= CACHE_PIECE_MAX:
            h = _hash_bytes(text + i, n)
            slot = _cache_find(s, text + i, n, h)
        if slot >= 0:
            m = s.wc_nids[slot]
            src = s.wc_ids + s.wc_ids_off[slot]
        else:
            if not _ensure_scratch(s, n + 1):
                return PGLLM_ENOMEM
            tok = _tok_lookup(s, text + i, n)
            if tok >= 0:
                s.parts[0] = tok
                m = 1
            elif n > LONG_PIECE:
                m = _merge_piece_long(s, text + i, n, cancel)
                if m < 0:
                    return PGLLM_ENOMEM if m == -1 else PGLLM_INTERRUPTED
            else:
                m = _merge_piece(s, text + i, n)
            src = s.parts
            if n <= CACHE_PIECE_MAX:
                _cache_put(s, text + i, n, h, src, m)
        if count + m > cap:
            return PGLLM_EINVAL             # more ids than cap
        for k in range(m):
            ids[count + k] = src[k]
        count = count + m
        n_ids[0] = count
        i = e
    return PGLLM_OK


cdef public int64_t pgllm_bpe_decoded_len(const PgllmBPE *bpe, const int32_t *ids,
                                          int64_t n) noexcept nogil:
    cdef const BPEState *s = <const BPEState *> bpe
    cdef int64_t i, total = 0
    for i in range(n):
        if ids[i] < 0 or ids[i] >= s.n_tokens:
            return -1
        total = total + _tok_len(s, ids[i])
    return total


cdef public int64_t pgllm_bpe_decode(const PgllmBPE *bpe, const int32_t *ids, int64_t n,
                                     uint8_t *out) noexcept nogil:
    cdef const BPEState *s = <const BPEState *> bpe
    cdef int64_t i, o = 0, l
    for i in range(n):
        l = _tok_len(s, ids[i])
        memcpy(out + o, s.data + s.offsets[ids[i]], l)
        o = o + l
    return o


# ---------------------------------------------------------------------------
# vocab.json and merges.txt
# ---------------------------------------------------------------------------
cdef public uint32_t pgllm_gpt2_byte_char(uint8_t b) noexcept nogil:
    """The character GPT-2's vocab.json and merges.txt write byte b as
    (bytes_to_unicode): printable Latin-1 stands for itself, the other 68
    bytes for U+0100.. in byte order."""
    cdef int k, n = 0
    if (33 <= b <= 126) or (161 <= b <= 172) or (174 <= b <= 255):
        return b
    for k in range(b):
        if not ((33 <= k <= 126) or (161 <= k <= 172) or (174 <= k <= 255)):
            n = n + 1
    return 256 + n


cdef inline int _byte_of_cp(uint32_t cp) noexcept nogil:
    """GPT-2's byte alphabet (bytes_to_unicode, inverted): printable Latin-1
    characters stand for themselves, the other 68 bytes for U+0100.. in
    byte order; -1 outside the alphabet."""
    cdef int b, n = 0
    if (33 <= cp <= 126) or (161 <= cp <= 172) or (174 <= cp <= 255):
        return <int> cp
    if 256 <= cp < 256 + 68:
        for b in range(256):
            if (33 <= b <= 126) or (161 <= b <= 172) or (174 <= b <= 255):
                continue
            if n == <int> (cp - 256):
                return b
            n = n + 1
    return -1


cdef int64_t _token_bytes(const uint32_t *cps, int64_t ncp, uint8_t *out,
                          int *is_special) noexcept nogil:
    """A vocabulary key's bytes: GPT-2's byte alphabet decoded; a key with
    characters outside it (an added token) keeps its UTF-8.  <|...|> keys are
    special (never merged), as tiktoken treats <|endoftext|>."""
    cdef int64_t k, o = 0
    cdef int b, outside = 0
    for k in range(ncp):
        if _byte_of_cp(cps[k]) < 0:
            outside = 1
    for k in range(ncp):
        if outside:
            o = o + _encode_utf8(cps[k], out + o)
        else:
            b = _byte_of_cp(cps[k])
            out[o] = <uint8_t> b
            o = o + 1
    is_special[0] = outside or (o >= 4 and out[0] == 60 and out[1] == 124 and
                                out[o - 2] == 124 and out[o - 1] == 62)
    return o


cdef enum:
    MAX_KEY_CPS = 4096


cdef public int pgllm_parse_vocab_json(const uint8_t *json, int64_t len, int64_t *n_tokens,
                                       int64_t *n_bytes, uint8_t *data, int64_t *offsets,
                                       uint8_t *special, int64_t *err_pos) noexcept nogil:
    cdef uint32_t *cps = <uint32_t *> malloc(MAX_KEY_CPS * sizeof(uint32_t))
    cdef uint8_t *kb = <uint8_t *> malloc(MAX_KEY_CPS * 4)
    cdef int64_t i, ncp, nb, id, count = 0, total = 0, start, fill_pos = 0
    cdef int neg, sp, digits
    cdef int rc = PGLLM_OK
    cdef int64_t *lens = NULL
    err_pos[0] = 0
    if cps == NULL or kb == NULL:
        free(cps)
        free(kb)
        return PGLLM_ENOMEM
    if data != NULL:
        # pass 2: token lengths by id first, so that offsets can be set
        lens = <int64_t *> calloc(n_tokens[0] + 1, sizeof(int64_t))
        if lens == NULL:
            free(cps)
            free(kb)
            return PGLLM_ENOMEM
        for id in range(n_tokens[0]):
            lens[id] = -1
    # two scans in pass 2: lengths, then bytes
    for start in range(2 if data != NULL else 1):
        count = 0
        total = 0
        i = _skip_ws(json, len, 0)
        if i >= len or json[i] != 123:
            rc = PGLLM_EFORMAT
            break
        i = _skip_ws(json, len, i + 1)
        if i < len and json[i] == 125:
            i = i + 1
        else:
            while True:
                i = _json_string(json, len, i, cps, MAX_KEY_CPS, &ncp)
                if i < 0:
                    i = -1 - i
                    rc = PGLLM_EFORMAT
                    break
                if ncp == 0 or ncp > MAX_KEY_CPS:
                    rc = PGLLM_EFORMAT
                    break
                nb = _token_bytes(cps, ncp, kb, &sp)
                i = _skip_ws(json, len, i)
                if i >= len or json[i] != 58:
                    rc = PGLLM_EFORMAT
                    break
                i = _skip_ws(json, len, i + 1)
                neg = i < len and json[i] == 45
                if neg:
                    i = i + 1
                id = 0
                digits = 0
                while i < len and 48 <= json[i] <= 57 and digits < 10:
                    id = id * 10 + (json[i] - 48)
                    i = i + 1
                    digits = digits + 1
                if digits == 0 or neg or (i < len and (48 <= json[i] <= 57 or json[i] == 46 or
                                                        json[i] == 101 or json[i] == 69)):
                    rc = PGLLM_EFORMAT        # ids are plain non-negative integers
                    break
                if data != NULL:
                    if id >= n_tokens[0]:
                        rc = PGLLM_EINVAL     # ids must be 0 .. n-1
                        break
                    if start == 0:
                        if lens[id] >= 0:
                            rc = PGLLM_EINVAL     # duplicate id
                            break
                        lens[id] = nb
                        special[id] = <uint8_t> sp
                    else:
                        memcpy(data + offsets[id], kb, nb)
                count = count + 1
                total = total + nb
                i = _skip_ws(json, len, i)
                if i < len and json[i] == 44:
                    i = _skip_ws(json, len, i + 1)
                    continue
                if i < len and json[i] == 125:
                    i = i + 1
                    break
                rc = PGLLM_EFORMAT
                break
        if rc != PGLLM_OK:
            break
        i = _skip_ws(json, len, i)
        if i != len:
            rc = PGLLM_EFORMAT
            break
        if data != NULL and start == 0:
            if count != n_tokens[0]:
                rc = PGLLM_EINVAL
                break
            offsets[0] = 0
            for id in range(n_tokens[0]):
                if lens[id] < 0:
                    rc = PGLLM_EINVAL
                    break
                offsets[id + 1] = offsets[id] + lens[id]
            if rc != PGLLM_OK:
                break
    if rc == PGLLM_OK and data == NULL:
        n_tokens[0] = count
        n_bytes[0] = total
    err_pos[0] = i
    free(lens)
    free(cps)
    free(kb)
    return rc


cdef int _merge_token(const uint8_t *s, int64_t a, int64_t b, uint8_t *out,
                      int64_t *nout) noexcept nogil:
    """A merges.txt token (UTF-8 text in GPT-2's byte alphabet) -> bytes."""
    cdef uint32_t c
    cdef int l, byte
    cdef int64_t o = 0
    while a < b:
        l = _utf8(s, b, a, &c)
        byte = _byte_of_cp(c)
        if byte < 0:
            return 0
        out[o] = <uint8_t> byte
        o = o + 1
        a = a + l
    nout[0] = o
    return 1


cdef public int pgllm_parse_merges(const PgllmBPE *bpe, const uint8_t *text, int64_t len,
                                   int32_t *left, int32_t *right, int32_t *merged,
                                   int64_t cap, int64_t *count,
                                   int64_t *err_line) noexcept nogil:
    cdef int64_t i = 0, eol, sp, end, line = 0, n = 0, la, lb, longest = 0, start = 0
    cdef uint8_t *buf
    cdef int32_t a, b, m
    cdef int rc = PGLLM_OK
    count[0] = 0
    err_line[0] = 0
    for i in range(len + 1):            # a line's two tokens decode into buf
        if i == len or text[i] == 10:
            longest = max(longest, i - start)
            start = i + 1
    buf = <uint8_t *> malloc(longest + 1)
    if buf == NULL:
        return PGLLM_ENOMEM
    i = 0
    while i < len:
        line = line + 1
        eol = i
        while eol < len and text[eol] != 10:
            eol = eol + 1
        end = eol
        if end > i and text[end - 1] == 13:
            end = end - 1
        if end == i or (line == 1 and text[i] == 35):       # "#version: 0.2"
            i = eol + 1
            continue
        sp = i
        while sp < end and text[sp] != 32:
            sp = sp + 1
        if sp == i or sp >= end - 1 or memchr(text + sp + 1, 32, end - sp - 1) != NULL:
            rc = PGLLM_EFORMAT         # exactly two tokens separated by one space
            break
        if not _merge_token(text, i, sp, buf, &la) or not _merge_token(text, sp + 1, end, buf + la, &lb):
            rc = PGLLM_EFORMAT
            break
        a = pgllm_bpe_token_id(bpe, buf, la)
        b = pgllm_bpe_token_id(bpe, buf + la, lb)
        m = pgllm_bpe_token_id(bpe, buf, la + lb)
        if a < 0 or b < 0 or m < 0:
            rc = PGLLM_EINVAL          # a token the vocabulary does not have
            break
        if n >= cap:
            rc = PGLLM_EINVAL
            break
        left[n] = a
        right[n] = b
        merged[n] = m
        n = n + 1
        i = eol + 1
    free(buf)
    count[0] = n
    err_line[0] = line
    return rc


# ---------------------------------------------------------------------------
# Python: a tokenizer object over the same code
# ---------------------------------------------------------------------------
def _raise_parse(int rc, what, pos):
    if rc == PGLLM_EFORMAT:
        raise ValueError(f"{what}: malformed at {pos}")
    if rc == PGLLM_EINVAL:
        raise ValueError(f"{what}: inconsistent content at {pos}")
    _check_status(rc)


def parse_vocab_json(const unsigned char[::1] content):
    """vocab.json bytes -> (list of token bytes by id, list of special flags)."""
    import numpy as np
    cdef int64_t n = 0, nb = 0, pos = 0
    cdef int rc
    cdef const uint8_t *p = &content[0] if content.shape[0] else <const uint8_t *> b""
    rc = pgllm_parse_vocab_json(p, content.shape[0], &n, &nb, NULL, NULL, NULL, &pos)
    if rc != PGLLM_OK:
        _raise_parse(rc, "vocab.json", f"byte {pos}")
    data = np.empty(max(nb, 1), np.uint8)
    offsets = np.empty(n + 1, np.int64)
    special = np.zeros(max(n, 1), np.uint8)
    cdef uint8_t[::1] dv = data
    cdef int64_t[::1] ov = offsets
    cdef uint8_t[::1] sv = special
    rc = pgllm_parse_vocab_json(p, content.shape[0], &n, &nb, &dv[0], &ov[0], &sv[0], &pos)
    if rc != PGLLM_OK:
        _raise_parse(rc, "vocab.json", f"byte {pos}")
    return data[:nb], offsets, special[:n]


cdef class Tokenizer:
    """GPT-2's byte-level BPE (the code llm_encode / llm_decode run)."""
    cdef PgllmBPE *bpe
    cdef readonly int64_t n_tokens
    cdef object _image              # the bytes a tokenizer from_image reads

    def __cinit__(self, const uint8_t[::1] data=None, const int64_t[::1] offsets=None,
                  const uint8_t[::1] special=None, *, image=None):
        cdef int status = 0
        cdef int64_t n, i
        cdef const uint8_t[::1] iv
        if image is not None:
            self._image = bytes(image)
            iv = self._image
            status = pgllm_bpe_from_image(&iv[0] if iv.shape[0] else NULL, iv.shape[0], &self.bpe)
            if status == PGLLM_EINVAL:
                raise ValueError("Tokenizer: not a tokenizer image, or a damaged one")
            _check_status(status)
            self.n_tokens = pgllm_bpe_n_tokens(self.bpe)
            return
        if data is None or offsets is None or special is None:
            raise TypeError("Tokenizer(data, offsets, special) or Tokenizer(image=...)")
        n = offsets.shape[0] - 1
        if n <= 0 or special.shape[0] != n or offsets[0] != 0 or offsets[n] > data.shape[0]:
            raise ValueError("Tokenizer: inconsistent vocabulary arrays")
        for i in range(n):
            if offsets[i + 1] < offsets[i]:
                raise ValueError("Tokenizer: inconsistent vocabulary arrays")
        with nogil:
            status = pgllm_bpe_create(n, &data[0], &offsets[0], &special[0], &self.bpe, NULL)
        if status == PGLLM_EINVAL:
            raise ValueError("Tokenizer: the vocabulary lacks a single-byte token, or exceeds "
                             "16777216 tokens or 1 GB")
        _check_status(status)
        self.n_tokens = n

    def __dealloc__(self):
        if self.bpe != NULL:
            pgllm_bpe_free(self.bpe)

    def image(self):
        """The tokenizer's tables as bytes (what the server's cache file holds);
        Tokenizer(image=...) uses them without building anything."""
        cdef int64_t size = pgllm_bpe_image_size(self.bpe)
        out = bytearray(size)
        cdef unsigned char[::1] ov = out
        _check_status(pgllm_bpe_image_write(self.bpe, &ov[0], size))
        return bytes(out)

    @classmethod
    def from_files(cls, vocab_path, merges_path=None):
        with open(vocab_path, "rb") as f:
            data, offsets, special = parse_vocab_json(f.read())
        tok = cls(data, offsets, special)
        if merges_path is not None:
            with open(merges_path, "rb") as f:
                tok.parse_merges(f.read())
        return tok

    def parse_merges(self, const unsigned char[::1] content):
        """merges.txt bytes -> (left, right, merged) id arrays, checked against
        this vocabulary."""
        import numpy as np
        cdef int64_t n = content.shape[0] // 3 + 1, count = 0, line = 0
        left = np.empty(n, np.int32)
        right = np.empty(n, np.int32)
        merged = np.empty(n, np.int32)
        cdef int[::1] lv = left, rv = right, mv = merged
        cdef int rc = pgllm_parse_merges(self.bpe, &content[0] if content.shape[0] else <const uint8_t *> b"",
                                         content.shape[0], <int32_t *> &lv[0], <int32_t *> &rv[0],
                                         <int32_t *> &mv[0], n, &count, &line)
        if rc != PGLLM_OK:
            _raise_parse(rc, "merges.txt", f"line {line}")
        return left[:count], right[:count], merged[:count]

    def encode(self, text):
        """str or UTF-8 bytes -> numpy int32 ids (GPT-2 pre-tokenisation + BPE)."""
        import numpy as np
        cdef bytes b = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        cdef int64_t n = len(b)
        out = np.empty(max(n, 1), np.int32)
        cdef int[::1] ov = out
        cdef int64_t count = 0
        _check_status(pgllm_bpe_encode(self.bpe, <const uint8_t *> <char *> b, n,
                                       <int32_t *> &ov[0], n, &count, NULL))
        return out[:count]

    def decode_bytes(self, ids):
        import numpy as np
        a = np.ascontiguousarray(ids, dtype=np.int32).reshape(-1)
        cdef int[::1] iv = a
        cdef int64_t n = a.shape[0]
        cdef int64_t total = pgllm_bpe_decoded_len(self.bpe, <const int32_t *> (&iv[0] if n else NULL), n)
        if total < 0:
            raise ValueError("decode: token id out of range")
        out = bytearray(total)
        cdef unsigned char[::1] ov = out
        if total:
            pgllm_bpe_decode(self.bpe, <const int32_t *> &iv[0], n, &ov[0])
        return bytes(out)

    def decode(self, ids):
        """ids -> str (invalid UTF-8, e.g. half a character, becomes U+FFFD)."""
        return sanitize_utf8(self.decode_bytes(ids)).decode("utf-8")


def sanitize_utf8(const unsigned char[::1] data, bint hold_incomplete=False, bint replace_nul=False):
    """Bytes -> valid UTF-8 bytes (U+FFFD per maximal invalid subpart, and
    per NUL with replace_nul, as the server does)."""
    cdef int64_t n = data.shape[0], held = 0
    out = bytearray(3 * n + 1)
    cdef unsigned char[::1] ov = out
    cdef int64_t m = pgllm_utf8_sanitize(&data[0] if n else <const uint8_t *> b"", n, &ov[0],
                                         hold_incomplete, &held, replace_nul)
    if hold_incomplete:
        return bytes(out[:m]), held
    return bytes(out[:m])


def pre_tokenize(text):
    """GPT-2's pre-tokens of text (list of bytes), for tests."""
    cdef bytes b = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    cdef const uint8_t *p = <const uint8_t *> <char *> b
    cdef int64_t n = len(b), i = 0, e
    if not pgllm__uclass_ready:
        _build_uclass()
    out = []
    while i < n:
        e = _piece_end(p, n, i)
        out.append(b[i:e])
        i = e
    return out
