# A JSON reader over byte buffers, for the files pg_llm parses: GPT-2's
# vocab.json (bpe.pxi) and .safetensors headers (parsers.pxi).  Bytes come
# from outside, so every read is checked against the buffer's length; each
# function returns the index after what it read, or -1 - (position of the
# error).  Nesting is bounded (64) so a hostile file cannot exhaust the stack.

cdef inline int64_t _skip_ws(const uint8_t *s, int64_t n, int64_t i) noexcept nogil:
    while i < n and (s[i] == 32 or s[i] == 9 or s[i] == 10 or s[i] == 13):
        i = i + 1
    return i


cdef inline int _hexval(uint8_t c) noexcept nogil:
    if 48 <= c <= 57:
        return c - 48
    if 97 <= c <= 102:
        return c - 87
    if 65 <= c <= 70:
        return c - 55
    return -1


cdef int64_t _json_string(const uint8_t *s, int64_t n, int64_t i, uint32_t *cps,
                          int64_t cap, int64_t *ncp) noexcept nogil:
    """Decode the JSON string starting at s[i] == '"' into code points (up to
    cap kept, all counted in *ncp).  Returns the index after the closing
    quote, or -1 - (position of the error)."""
    cdef int64_t k = 0, j
    cdef uint32_t c, lo
    cdef int l, h, d
    if i >= n or s[i] != 34:
        return -1 - i
    i = i + 1
    while True:
        if i >= n:
            return -1 - i
        if s[i] == 34:
            ncp[0] = k
            return i + 1
        if s[i] < 0x20:
            return -1 - i                 # control characters must be escaped
        if s[i] == 92:
            if i + 1 >= n:
                return -1 - i
            d = s[i + 1]
            i = i + 2
            if d == 34 or d == 92 or d == 47:
                c = d
            elif d == 98:
                c = 8
            elif d == 102:
                c = 12
            elif d == 110:
                c = 10
            elif d == 114:
                c = 13
            elif d == 116:
                c = 9
            elif d == 117:
                if i + 4 > n:
                    return -1 - i
                c = 0
                for j in range(4):
                    h = _hexval(s[i + j])
                    if h < 0:
                        return -1 - (i + j)
                    c = c * 16 + <uint32_t> h
                i = i + 4
                if 0xD800 <= c <= 0xDBFF:
                    # a surrogate pair: \\uD83D\\uDE00
                    if i + 6 > n or s[i] != 92 or s[i + 1] != 117:
                        return -1 - i
                    lo = 0
                    for j in range(4):
                        h = _hexval(s[i + 2 + j])
                        if h < 0:
                            return -1 - (i + 2 + j)
                        lo = lo * 16 + <uint32_t> h
                    if not (0xDC00 <= lo <= 0xDFFF):
                        return -1 - i
                    c = 0x10000 + ((c - 0xD800) << 10) + (lo - 0xDC00)
                    i = i + 6
                elif 0xDC00 <= c <= 0xDFFF:
                    return -1 - i
            else:
                return -1 - (i - 1)
        else:
            l = _utf8(s, n, i, &c)
            if c == CP_INVALID:
                return -1 - i
            i = i + l
        if k < cap:
            cps[k] = c
        k = k + 1


cdef int64_t _json_skip(const uint8_t *s, int64_t n, int64_t i, int depth) noexcept nogil:
    """Skip one JSON value; returns the index after it, or -1 - error pos."""
    cdef int64_t ncp
    cdef uint32_t dummy
    i = _skip_ws(s, n, i)
    if i >= n or depth > 64:
        return -1 - i
    if s[i] == 34:
        return _json_string(s, n, i, &dummy, 0, &ncp)
    if s[i] == 123 or s[i] == 91:
        if s[i] == 123:
            i = _skip_ws(s, n, i + 1)
            if i < n and s[i] == 125:
                return i + 1
            while True:
                i = _json_string(s, n, i, &dummy, 0, &ncp)
                if i < 0:
                    return i
                i = _skip_ws(s, n, i)
                if i >= n or s[i] != 58:
                    return -1 - i
                i = _json_skip(s, n, i + 1, depth + 1)
                if i < 0:
                    return i
                i = _skip_ws(s, n, i)
                if i < n and s[i] == 44:
                    i = _skip_ws(s, n, i + 1)
                    continue
                if i < n and s[i] == 125:
                    return i + 1
                return -1 - i
        i = _skip_ws(s, n, i + 1)
        if i < n and s[i] == 93:
            return i + 1
        while True:
            i = _json_skip(s, n, i, depth + 1)
            if i < 0:
                return i
            i = _skip_ws(s, n, i)
            if i < n and s[i] == 44:
                i = i + 1
                continue
            if i < n and s[i] == 93:
                return i + 1
            return -1 - i
    # number, true, false, null
    while i < n and s[i] != 44 and s[i] != 125 and s[i] != 93 and s[i] != 32 and s[i] != 10 and s[i] != 13 and s[i] != 9:
        if not (48 <= s[i] <= 57 or s[i] == 45 or s[i] == 43 or s[i] == 46 or s[i] == 101 or
                s[i] == 69 or 97 <= s[i] <= 122):
            return -1 - i
        i = i + 1
    return i


cdef int64_t _json_uint(const uint8_t *s, int64_t n, int64_t i, int64_t *v) noexcept nogil:
    cdef int64_t x = 0
    cdef int digits = 0
    i = _skip_ws(s, n, i)
    while i < n and 48 <= s[i] <= 57:
        if digits >= 16:
            return -1 - i
        x = x * 10 + (s[i] - 48)
        i = i + 1
        digits = digits + 1
    if digits == 0 or (i < n and (s[i] == 46 or s[i] == 101 or s[i] == 69)):
        return -1 - i
    v[0] = x
    return i


cdef int64_t _json_uint_array(const uint8_t *s, int64_t n, int64_t i, int64_t *vals,
                              int cap, int *count) noexcept nogil:
    cdef int k = 0
    i = _skip_ws(s, n, i)
    if i >= n or s[i] != 91:
        return -1 - i
    i = _skip_ws(s, n, i + 1)
    if i < n and s[i] == 93:
        count[0] = 0
        return i + 1
    while True:
        if k >= cap:
            return -1 - i
        i = _json_uint(s, n, i, &vals[k])
        if i < 0:
            return i
        k = k + 1
        i = _skip_ws(s, n, i)
        if i < n and s[i] == 44:
            i = i + 1
            continue
        if i < n and s[i] == 93:
            count[0] = k
            return i + 1
        return -1 - i
