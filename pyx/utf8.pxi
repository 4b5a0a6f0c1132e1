# UTF-8: decoding one code point, encoding one, and sanitising any bytes
# into valid UTF-8 -- shared by the tokenizer (bpe.pxi), the JSON reader
# (json.pxi) and the shims (text PostgreSQL can hold).

cdef enum:
    CP_INVALID = 0xFFFFFFFF         # _utf8's answer for an invalid byte


cdef inline int _cont(uint8_t b) noexcept nogil:
    return (b & 0xC0) == 0x80


cdef inline int _utf8(const uint8_t *s, int64_t n, int64_t i, uint32_t *cp) noexcept nogil:
    """Code point at s[i] and its length in bytes; an invalid byte is
    CP_INVALID of length 1."""
    cdef uint8_t b = s[i]
    cdef uint32_t c
    if b < 0x80:
        cp[0] = b
        return 1
    if 0xC2 <= b <= 0xDF and i + 1 < n and _cont(s[i + 1]):
        cp[0] = ((b & 0x1F) << 6) | (s[i + 1] & 0x3F)
        return 2
    if 0xE0 <= b <= 0xEF and i + 2 < n and _cont(s[i + 1]) and _cont(s[i + 2]):
        c = ((b & 0x0F) << 12) | ((s[i + 1] & 0x3F) << 6) | (s[i + 2] & 0x3F)
        if c >= 0x800 and not (0xD800 <= c <= 0xDFFF):
            cp[0] = c
            return 3
    if 0xF0 <= b <= 0xF4 and i + 3 < n and _cont(s[i + 1]) and _cont(s[i + 2]) and _cont(s[i + 3]):
        c = (((b & 0x07) << 18) | ((s[i + 1] & 0x3F) << 12) | ((s[i + 2] & 0x3F) << 6)
             | (s[i + 3] & 0x3F))
        if 0x10000 <= c <= 0x10FFFF:
            cp[0] = c
            return 4
    cp[0] = CP_INVALID
    return 1


cdef inline int64_t _encode_utf8(uint32_t c, uint8_t *out) noexcept nogil:
    if c < 0x80:
        out[0] = <uint8_t> c
        return 1
    if c < 0x800:
        out[0] = <uint8_t> (0xC0 | (c >> 6))
        out[1] = <uint8_t> (0x80 | (c & 0x3F))
        return 2
    if c < 0x10000:
        out[0] = <uint8_t> (0xE0 | (c >> 12))
        out[1] = <uint8_t> (0x80 | ((c >> 6) & 0x3F))
        out[2] = <uint8_t> (0x80 | (c & 0x3F))
        return 3
    out[0] = <uint8_t> (0xF0 | (c >> 18))
    out[1] = <uint8_t> (0x80 | ((c >> 12) & 0x3F))
    out[2] = <uint8_t> (0x80 | ((c >> 6) & 0x3F))
    out[3] = <uint8_t> (0x80 | (c & 0x3F))
    return 4


cdef public int64_t pgllm_utf8_sanitize(const uint8_t *inp, int64_t len, uint8_t *out,
                                        int hold_incomplete, int64_t *held,
                                        int replace_nul) noexcept nogil:
    """Valid UTF-8 from any bytes, U+FFFD for each maximal invalid subpart;
    with replace_nul also for NUL, which PostgreSQL's text cannot hold (GPT-2
    has a token for byte 0, and a model may well sample it).  At most 3
    bytes out per byte in."""
    cdef int64_t i = 0, o = 0, k, need
    cdef uint8_t b, lo, hi
    if held != NULL:
        held[0] = 0
    while i < len:
        b = inp[i]
        if b < 0x80 and (b != 0 or not replace_nul):
            out[o] = b
            o = o + 1
            i = i + 1
            continue
        need = 0                           # NUL and stray bytes: k = 1 below
        lo = 0x80
        hi = 0xBF
        if 0xC2 <= b <= 0xDF:
            need = 1
        elif 0xE0 <= b <= 0xEF:
            need = 2
            if b == 0xE0:
                lo = 0xA0
            elif b == 0xED:
                hi = 0x9F
        elif 0xF0 <= b <= 0xF4:
            need = 3
            if b == 0xF0:
                lo = 0x90
            elif b == 0xF4:
                hi = 0x8F
        if need == 0:
            k = 1                          # not a lead byte
        else:
            k = 1
            while k <= need and i + k < len:
                if not (lo <= inp[i + k] <= hi):
                    break
                lo = 0x80
                hi = 0xBF
                k = k + 1
            if k == need + 1:
                memcpy(out + o, inp + i, k)
                o = o + k
                i = i + k
                continue
            if i + k >= len and hold_incomplete:
                if held != NULL:
                    held[0] = len - i     # may complete with more bytes
                return o
        out[o] = 0xEF
        out[o + 1] = 0xBF
        out[o + 2] = 0xBD
        o = o + 3
        i = i + k
    return o
