# Choosing the next token from the model's logits (the decoding step).
#
#   V: vocab, W: beam width, maxN: tokens a hypothesis may hold
#
# Sampling (repetition penalty, temperature, top-k, top-p, a draw from the
# counter-based stream) and beam search, whose step kernel keeps the whole
# search state: summed log-probabilities, the top-2W continuations, parents
# for the caller's KV-cache reorder, and the best W finished hypotheses.  The
# shims only loop: forward, step, reorder.
#
# Parallel strategy: row-wise log-sum-exp splits rows (prange); selection and
# bookkeeping are serial (2W candidates, W <= 64).

# ---------------------------------------------------------------------------
# top-k selection and log-softmax
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


# ---------------------------------------------------------------------------
# sampling one token
# ---------------------------------------------------------------------------
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
# beam search
# ---------------------------------------------------------------------------
cdef extern from "pg_llm_kernels.h" nogil:
    ctypedef struct PgllmBeams:
        int64_t width
        int64_t max_tokens
        int64_t vocab
        int32_t eos
        double length_penalty
        int64_t live
        int64_t len
        int64_t n_done
        int32_t *tokens
        int32_t *next_tokens
        double *logprob
        double *next_logprob
        int32_t *parent
        int32_t *last
        float *lse
        void *cand
        int32_t *done_tokens
        int64_t *done_len
        double *done_logprob
        double *done_score
        int32_t *done_rank


cdef inline int64_t _align8(int64_t n) noexcept nogil:
    return (n + 7) & ~(<int64_t> 7)


cdef public int64_t pgllm_beams_bytes(int64_t width, int64_t max_tokens) noexcept nogil:
    cdef int64_t rows = _align8(width * max_tokens * sizeof(int32_t))
    return (3 * rows                                      # tokens, next_tokens, done_tokens
            + 4 * _align8(width * sizeof(double))         # logprob, next_logprob, done_logprob, done_score
            + _align8(width * sizeof(int64_t))            # done_len
            + 3 * _align8(width * sizeof(int32_t))        # parent, last, done_rank
            + _align8(width * sizeof(float))              # lse
            + _align8(2 * width * sizeof(ScoreIdx)))      # cand


cdef public int pgllm_beams_init(PgllmBeams *s, void *buf, int64_t width, int64_t max_tokens,
                                 int64_t vocab, int32_t eos, double length_penalty) noexcept nogil:
    """The state in buf (pgllm_beams_bytes), holding one live, empty beam: the
    prompt, whose logits the first step expands."""
    cdef char *p = <char *> buf
    cdef int64_t rows = _align8(width * max_tokens * sizeof(int32_t))
    if width < 1 or max_tokens < 1 or vocab < 1 or width * vocab > 2147483647:
        return PGLLM_EINVAL
    s.width, s.max_tokens, s.vocab = width, max_tokens, vocab
    s.eos, s.length_penalty = eos, length_penalty
    s.tokens = <int32_t *> p;        p += rows
    s.next_tokens = <int32_t *> p;   p += rows
    s.done_tokens = <int32_t *> p;   p += rows
    s.logprob = <double *> p;        p += _align8(width * sizeof(double))
    s.next_logprob = <double *> p;   p += _align8(width * sizeof(double))
    s.done_logprob = <double *> p;   p += _align8(width * sizeof(double))
    s.done_score = <double *> p;     p += _align8(width * sizeof(double))
    s.done_len = <int64_t *> p;      p += _align8(width * sizeof(int64_t))
    s.parent = <int32_t *> p;        p += _align8(width * sizeof(int32_t))
    s.last = <int32_t *> p;          p += _align8(width * sizeof(int32_t))
    s.done_rank = <int32_t *> p;     p += _align8(width * sizeof(int32_t))
    s.lse = <float *> p;             p += _align8(width * sizeof(float))
    s.cand = <void *> p
    s.live, s.len, s.n_done = 1, 0, 0
    s.logprob[0] = 0.0
    s.parent[0] = 0
    return PGLLM_OK


cdef inline double _hyp_score(const PgllmBeams *s, double logprob, int64_t n) noexcept nogil:
    """Summed log-probability over length^length_penalty (HuggingFace's rule)."""
    return logprob / pow(<double> max(n, <int64_t> 1), s.length_penalty)


cdef void _beam_keep(PgllmBeams *s, const int32_t *ids, int64_t n, double logprob) noexcept nogil:
    """Rank a finished hypothesis among the best `width` (ties: the earlier first)."""
    cdef double score = _hyp_score(s, logprob, n)
    cdef int64_t pos, slot
    if s.n_done < s.width:
        slot = s.n_done
        pos = s.n_done
        s.n_done = s.n_done + 1
    else:
        slot = s.done_rank[s.width - 1]
        if not (score > s.done_score[slot]):
            return
        pos = s.width - 1
    memcpy(s.done_tokens + slot * s.max_tokens, ids, n * sizeof(int32_t))
    s.done_len[slot] = n
    s.done_logprob[slot] = logprob
    s.done_score[slot] = score
    while pos > 0 and s.done_score[s.done_rank[pos - 1]] < score:
        s.done_rank[pos] = s.done_rank[pos - 1]
        pos = pos - 1
    s.done_rank[pos] = <int32_t> slot


cdef public int pgllm_beam_step(PgllmBeams *s, float *logits, int *finished,
                                const int *cancel) noexcept nogil:
    """One step of the search; see pg_llm_kernels.h.  logits: (live, V), each
    live beam's next-token logits (modified).  Restartable: nothing changes
    before the cancellable pass ends."""
    cdef int64_t V = s.vocab, live = s.live, n, k, m, i, j, b, pb, nlive = 0
    cdef int32_t tok
    cdef int32_t *swap_ids
    cdef double *swap_lp
    cdef double base
    cdef float lse
    cdef float *row
    cdef ScoreIdx *cand = <ScoreIdx *> s.cand
    if live < 1 or s.len >= s.max_tokens:
        return PGLLM_EINVAL
    n = live * V
    for b in prange(live, num_threads=_threads_for(n), schedule='static'):
        if PGLLM_CANCELLED(cancel):
            continue
        s.lse[b] = _logsumexp_row(logits + b * V, V)
    if PGLLM_CANCELLED(cancel):
        return PGLLM_INTERRUPTED
    # each continuation's summed log-probability, in place
    for b in range(live):
        row = logits + b * V
        lse = s.lse[b]
        base = s.logprob[b]
        for j in range(V):
            row[j] = <float> (<double> (row[j] - lse) + base)
    k = min(2 * s.width, n)
    m = _top_candidates(logits, n, k, cand)
    for i in range(m):
        if nlive >= s.width:
            break
        pb = cand[i].i // V
        tok = <int32_t> (cand[i].i % V)
        if tok == s.eos:
            _beam_keep(s, s.tokens + pb * s.max_tokens, s.len, cand[i].v)
            continue
        memcpy(s.next_tokens + nlive * s.max_tokens, s.tokens + pb * s.max_tokens,
               s.len * sizeof(int32_t))
        s.next_tokens[nlive * s.max_tokens + s.len] = tok
        s.next_logprob[nlive] = cand[i].v
        s.parent[nlive] = <int32_t> pb
        nlive = nlive + 1
    swap_ids = s.tokens
    s.tokens = s.next_tokens
    s.next_tokens = swap_ids
    swap_lp = s.logprob
    s.logprob = s.next_logprob
    s.next_logprob = swap_lp
    for b in range(nlive):
        s.last[b] = s.tokens[b * s.max_tokens + s.len]
    s.live = nlive
    s.len = s.len + 1
    # live beams are ranked best first: done when the best cannot beat the
    # width-th finished hypothesis
    finished[0] = (s.live == 0 or s.len >= s.max_tokens or
                   (s.n_done >= s.width and
                    _hyp_score(s, s.logprob[0], s.len) < s.done_score[s.done_rank[s.width - 1]]))
    return PGLLM_OK


cdef public int64_t pgllm_beams_finish(PgllmBeams *s) noexcept nogil:
    """Live beams become hypotheses of their length; returns the ranked count."""
    cdef int64_t b
    for b in range(s.live):
        _beam_keep(s, s.tokens + b * s.max_tokens, s.len, s.logprob[b])
    s.live = 0
    return s.n_done


cdef class BeamSearch:
    """The beam-search kernels for Python: feed each step the live beams'
    logits (live, V); reorder your own caches with `parent` and feed `last`.

        bs = BeamSearch(width, max_tokens, vocab, eos, length_penalty)
        logits = model(prompt)[-1:]
        while not bs.step(logits):
            logits = model_step(bs.parent, bs.last)
        for score, logprob, ids in bs.finish(): ...
    """
    cdef PgllmBeams s
    cdef object buf

    def __init__(self, int64_t width, int64_t max_tokens, int64_t vocab, int32_t eos=-1,
                 double length_penalty=1.0):
        import numpy as np
        cdef unsigned char[::1] mem
        self.buf = np.zeros(max(pgllm_beams_bytes(max(width, 1), max(max_tokens, 1)), 8), np.uint8)
        mem = self.buf
        if pgllm_beams_init(&self.s, &mem[0], width, max_tokens, vocab, eos, length_penalty) != PGLLM_OK:
            raise ValueError("BeamSearch: width, max_tokens and vocab must be positive, "
                             "width * vocab below 2**31")

    @property
    def live(self):
        return self.s.live

    @property
    def parent(self):
        return [self.s.parent[b] for b in range(self.s.live)]

    @property
    def last(self):
        return [self.s.last[b] for b in range(self.s.live)]

    @property
    def beams(self):
        """The live beams: (summed log-probability, tokens), best first."""
        return [(self.s.logprob[b], [self.s.tokens[b * self.s.max_tokens + j] for j in range(self.s.len)])
                for b in range(self.s.live)]

    def step(self, float[:, ::1] logits):
        """One step; True when the search is done.  logits is modified."""
        cdef int finished = 0, rc
        if logits.shape[0] != self.s.live or logits.shape[1] != self.s.vocab:
            raise ValueError(f"BeamSearch.step: logits must be ({self.s.live}, {self.s.vocab})")
        with nogil:
            rc = pgllm_beam_step(&self.s, &logits[0, 0], &finished, NULL)
        _check_status(rc)
        return bool(finished)

    def finish(self):
        """The best hypotheses: (score, summed log-probability, tokens), best first."""
        cdef int64_t n = pgllm_beams_finish(&self.s), r, slot
        out = []
        for r in range(n):
            slot = self.s.done_rank[r]
            out.append((self.s.done_score[slot], self.s.done_logprob[slot],
                        [self.s.done_tokens[slot * self.s.max_tokens + j] for j in range(self.s.done_len[slot])]))
        return out


# ---------------------------------------------------------------------------
# Python wrappers
# ---------------------------------------------------------------------------
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
