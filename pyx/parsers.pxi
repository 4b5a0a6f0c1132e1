# Checkpoint formats: .npz (a zip of .npy members, stored or deflated) and
# .safetensors.  These parse bytes from outside, so every read is checked
# against its buffer's length first; malformed input is PGLLM_EFORMAT.
# File I/O stays in the shim: these functions see buffers only (and can be
# fuzzed from Python through the same code).

cdef extern from "zlib.h" nogil:
    ctypedef struct z_stream:
        uint8_t *next_in
        unsigned int avail_in
        uint8_t *next_out
        unsigned int avail_out
        const char *msg
        void *zalloc
        void *zfree
        void *opaque
    int Z_OK
    int Z_STREAM_END
    int Z_NO_FLUSH
    int Z_BUF_ERROR
    int MAX_WBITS
    int inflateInit2(z_stream *strm, int windowBits)
    int inflate(z_stream *strm, int flush)
    int inflateEnd(z_stream *strm)
    unsigned long crc32(unsigned long crc, const uint8_t *buf, unsigned int len)

cdef extern from "pg_llm_kernels.h" nogil:
    ctypedef struct PgllmZipEntry:
        int64_t name_off
        int64_t name_len
        int32_t method
        uint32_t crc32
        int64_t csize
        int64_t usize
        int64_t local_offset

cdef inline uint32_t _le16(const uint8_t *p) noexcept nogil:
    return p[0] | (<uint32_t> p[1] << 8)

cdef inline uint32_t _le32(const uint8_t *p) noexcept nogil:
    return p[0] | (<uint32_t> p[1] << 8) | (<uint32_t> p[2] << 16) | (<uint32_t> p[3] << 24)

cdef inline uint64_t _le64(const uint8_t *p) noexcept nogil:
    return _le32(p) | (<uint64_t> _le32(p + 4) << 32)

cdef inline void _put16(uint8_t *p, uint32_t v) noexcept nogil:
    p[0] = v & 0xFF
    p[1] = (v >> 8) & 0xFF

cdef inline void _put32(uint8_t *p, uint32_t v) noexcept nogil:
    p[0] = v & 0xFF
    p[1] = (v >> 8) & 0xFF
    p[2] = (v >> 16) & 0xFF
    p[3] = (v >> 24) & 0xFF

cdef inline void _put64(uint8_t *p, uint64_t v) noexcept nogil:
    _put32(p, <uint32_t> (v & 0xFFFFFFFFU))
    _put32(p + 4, <uint32_t> (v >> 32))

cdef enum:
    ZIP_EOCD_SIG = 0x06054b50
    ZIP64_EOCD_SIG = 0x06064b50
    ZIP64_LOC_SIG = 0x07064b50
    ZIP_CD_SIG = 0x02014b50
    ZIP_LOCAL_SIG = 0x04034b50
    U16_MAX = 0xFFFF


# ---------------------------------------------------------------------------
# zip
# ---------------------------------------------------------------------------
cdef public int pgllm_zip_find_cd(const uint8_t *tail, int64_t tail_len, int64_t file_size,
                                  int64_t *cd_offset, int64_t *cd_size,
                                  int64_t *n_entries) noexcept nogil:
    cdef int64_t i, lo, base, rel
    cdef uint64_t entries, size, offset
    cdef const uint8_t *e
    cdef const uint8_t *z
    if tail_len < 22 or tail_len > file_size:
        return PGLLM_EFORMAT
    base = file_size - tail_len             # file offset of tail[0]
    lo = max(<int64_t> 0, tail_len - 22 - 65535)
    i = tail_len - 22
    while i >= lo:
        if _le32(tail + i) == ZIP_EOCD_SIG and i + 22 + <int64_t> _le16(tail + i + 20) == tail_len:
            break
        i = i - 1
    if i < lo:
        return PGLLM_EFORMAT                # no end of central directory
    e = tail + i
    entries = _le16(e + 10)
    size = _le32(e + 12)
    offset = _le32(e + 16)
    if entries == U16_MAX or size == 0xFFFFFFFFU or offset == 0xFFFFFFFFU:
        # zip64: a locator just before the end record points at the zip64 record
        if i < 20 or _le32(tail + i - 20) != ZIP64_LOC_SIG:
            return PGLLM_EFORMAT
        rel = <int64_t> _le64(tail + i - 20 + 8) - base
        if rel < 0 or rel + 56 > i - 20:
            return PGLLM_EFORMAT
        z = tail + rel
        if _le32(z) != ZIP64_EOCD_SIG:
            return PGLLM_EFORMAT
        entries = _le64(z + 32)
        size = _le64(z + 40)
        offset = _le64(z + 48)
    if offset > <uint64_t> file_size or size > <uint64_t> file_size or offset + size > <uint64_t> file_size:
        return PGLLM_EFORMAT
    if entries > <uint64_t> (size // 46):
        return PGLLM_EFORMAT                # each entry takes at least 46 bytes
    cd_offset[0] = <int64_t> offset
    cd_size[0] = <int64_t> size
    n_entries[0] = <int64_t> entries
    return PGLLM_OK


cdef public int pgllm_zip_next_entry(const uint8_t *cd, int64_t cd_len, int64_t *pos,
                                     PgllmZipEntry *e) noexcept nogil:
    cdef int64_t p = pos[0], name_len, extra_len, comment_len, x, xend, xlen
    cdef uint32_t flags, id
    cdef uint64_t usize, csize, offset
    cdef int need_u, need_c, need_o
    if p < 0 or p + 46 > cd_len or _le32(cd + p) != ZIP_CD_SIG:
        return PGLLM_EFORMAT
    flags = _le16(cd + p + 8)
    if flags & 1:
        return PGLLM_EFORMAT                # encrypted
    e.method = <int32_t> _le16(cd + p + 10)
    e.crc32 = _le32(cd + p + 16)
    csize = _le32(cd + p + 20)
    usize = _le32(cd + p + 24)
    name_len = _le16(cd + p + 28)
    extra_len = _le16(cd + p + 30)
    comment_len = _le16(cd + p + 32)
    offset = _le32(cd + p + 42)
    if p + 46 + name_len + extra_len + comment_len > cd_len:
        return PGLLM_EFORMAT
    e.name_off = p + 46
    e.name_len = name_len
    need_u = usize == 0xFFFFFFFFU
    need_c = csize == 0xFFFFFFFFU
    need_o = offset == 0xFFFFFFFFU
    x = p + 46 + name_len
    xend = x + extra_len
    while x + 4 <= xend:
        id = _le16(cd + x)
        xlen = _le16(cd + x + 2)
        if x + 4 + xlen > xend:
            return PGLLM_EFORMAT
        if id == 1:                         # zip64 extended information
            xlen = x + 4 + xlen
            x = x + 4
            if need_u:
                if x + 8 > xlen:
                    return PGLLM_EFORMAT
                usize = _le64(cd + x)
                x = x + 8
            if need_c:
                if x + 8 > xlen:
                    return PGLLM_EFORMAT
                csize = _le64(cd + x)
                x = x + 8
            if need_o:
                if x + 8 > xlen:
                    return PGLLM_EFORMAT
                offset = _le64(cd + x)
                x = x + 8
            need_u = 0
            need_c = 0
            need_o = 0
            x = xlen
        else:
            x = x + 4 + xlen
    if need_u or need_c or need_o:
        return PGLLM_EFORMAT
    if usize > <uint64_t> 0x7FFFFFFFFFFFFFFFULL or csize > <uint64_t> 0x7FFFFFFFFFFFFFFFULL or offset > <uint64_t> 0x7FFFFFFFFFFFFFFFULL:
        return PGLLM_EFORMAT
    e.usize = <int64_t> usize
    e.csize = <int64_t> csize
    e.local_offset = <int64_t> offset
    pos[0] = p + 46 + name_len + extra_len + comment_len
    return PGLLM_OK


cdef public int pgllm_zip_local_header_len(const uint8_t *hdr, int64_t len,
                                           int64_t *data_skip) noexcept nogil:
    if len < 30 or _le32(hdr) != ZIP_LOCAL_SIG:
        return PGLLM_EFORMAT
    data_skip[0] = 30 + <int64_t> _le16(hdr + 26) + <int64_t> _le16(hdr + 28)
    return PGLLM_OK


cdef public uint32_t pgllm_crc32(uint32_t crc, const uint8_t *buf, int64_t len) noexcept nogil:
    cdef int64_t chunk
    while len > 0:
        chunk = min(len, <int64_t> 1 << 30)
        crc = <uint32_t> crc32(crc, buf, <unsigned int> chunk)
        buf = buf + chunk
        len = len - chunk
    return crc


DEF INFLATE_SLICE = 8 << 20


cdef int _inflate(const uint8_t *inp, int64_t in_len, uint8_t *out, int64_t out_len, int whole,
                  int64_t *got, const int *cancel) noexcept nogil:
    """Output in slices of INFLATE_SLICE bytes, the cancel flag polled
    between them (a 1 GB member takes seconds); restartable.  whole: the
    stream must end exactly at out_len bytes; else up to out_len bytes of
    its start (*got of them)."""
    cdef z_stream z
    cdef int rc
    cdef int64_t in_left = in_len, out_left = out_len
    memset(&z, 0, sizeof(z))
    got[0] = 0
    if inflateInit2(&z, -MAX_WBITS) != Z_OK:
        return PGLLM_ENOMEM
    z.next_in = <uint8_t *> inp       # zlib without ZLIB_CONST: not const, only read
    z.next_out = out
    rc = Z_OK
    while rc == Z_OK:
        if PGLLM_CANCELLED(cancel):
            inflateEnd(&z)
            return PGLLM_INTERRUPTED
        if z.avail_in == 0 and in_left > 0:
            z.avail_in = <unsigned int> min(in_left, <int64_t> 1 << 30)
            in_left = in_left - z.avail_in
        if z.avail_out == 0 and out_left > 0:
            z.avail_out = <unsigned int> min(out_left, <int64_t> INFLATE_SLICE)
            out_left = out_left - z.avail_out
        if not whole and z.avail_out == 0 and out_left == 0:
            break                       # the head is all there
        rc = inflate(&z, Z_NO_FLUSH)
        if rc == Z_BUF_ERROR and (z.avail_in == 0 and in_left == 0 or
                                  z.avail_out == 0 and out_left == 0):
            break
    got[0] = out_len - out_left - z.avail_out
    inflateEnd(&z)
    if not whole:
        return PGLLM_OK if rc == Z_OK or rc == Z_STREAM_END or rc == Z_BUF_ERROR else PGLLM_EFORMAT
    # the stream must end exactly where the output does
    if rc != Z_STREAM_END or z.avail_out != 0 or out_left != 0:
        return PGLLM_EFORMAT
    return PGLLM_OK


cdef public int pgllm_inflate(const uint8_t *inp, int64_t in_len, uint8_t *out,
                              int64_t out_len, const int *cancel) noexcept nogil:
    cdef int64_t got
    return _inflate(inp, in_len, out, out_len, 1, &got, cancel)


cdef public int pgllm_inflate_head(const uint8_t *inp, int64_t in_len, uint8_t *out,
                                   int64_t out_len, int64_t *got, const int *cancel) noexcept nogil:
    return _inflate(inp, in_len, out, out_len, 0, got, cancel)


cdef public int64_t pgllm_zip_local_header(const uint8_t *name, int64_t name_len, uint32_t crc,
                                           int64_t size, uint8_t *out) noexcept nogil:
    cdef int z64 = size >= 0xFFFFFFFFU
    _put32(out, ZIP_LOCAL_SIG)
    _put16(out + 4, 45 if z64 else 20)
    _put16(out + 6, 0)
    _put16(out + 8, 0)                      # stored
    _put16(out + 10, 0)
    _put16(out + 12, 0x21)                  # 1980-01-01
    _put32(out + 14, crc)
    _put32(out + 18, 0xFFFFFFFFU if z64 else <uint32_t> size)
    _put32(out + 22, 0xFFFFFFFFU if z64 else <uint32_t> size)
    _put16(out + 26, <uint32_t> name_len)
    _put16(out + 28, 20 if z64 else 0)
    memcpy(out + 30, name, name_len)
    if z64:
        _put16(out + 30 + name_len, 1)
        _put16(out + 32 + name_len, 16)
        _put64(out + 34 + name_len, <uint64_t> size)
        _put64(out + 42 + name_len, <uint64_t> size)
        return 50 + name_len
    return 30 + name_len


cdef public int64_t pgllm_zip_central_header(const uint8_t *name, int64_t name_len, uint32_t crc,
                                             int64_t size, int64_t local_offset,
                                             uint8_t *out) noexcept nogil:
    cdef int zs = size >= 0xFFFFFFFFU
    cdef int zo = local_offset >= 0xFFFFFFFFU
    cdef int64_t xlen = (16 if zs else 0) + (8 if zo else 0)
    cdef int64_t x
    _put32(out, ZIP_CD_SIG)
    _put16(out + 4, 45 if (zs or zo) else 20)
    _put16(out + 6, 45 if (zs or zo) else 20)
    _put16(out + 8, 0)
    _put16(out + 10, 0)
    _put16(out + 12, 0)
    _put16(out + 14, 0x21)
    _put32(out + 16, crc)
    _put32(out + 20, 0xFFFFFFFFU if zs else <uint32_t> size)
    _put32(out + 24, 0xFFFFFFFFU if zs else <uint32_t> size)
    _put16(out + 28, <uint32_t> name_len)
    _put16(out + 30, <uint32_t> (xlen + 4 if xlen else 0))
    _put16(out + 32, 0)
    _put16(out + 34, 0)
    _put16(out + 36, 0)
    _put32(out + 38, 0)
    _put32(out + 42, 0xFFFFFFFFU if zo else <uint32_t> local_offset)
    memcpy(out + 46, name, name_len)
    if not xlen:
        return 46 + name_len
    x = 46 + name_len
    _put16(out + x, 1)
    _put16(out + x + 2, <uint32_t> xlen)
    x = x + 4
    if zs:
        _put64(out + x, <uint64_t> size)
        _put64(out + x + 8, <uint64_t> size)
        x = x + 16
    if zo:
        _put64(out + x, <uint64_t> local_offset)
        x = x + 8
    return x


cdef public int64_t pgllm_zip_end_records(int64_t n_entries, int64_t cd_offset, int64_t cd_size,
                                          uint8_t *out) noexcept nogil:
    cdef int z64 = n_entries >= U16_MAX or cd_offset >= 0xFFFFFFFFU or cd_size >= 0xFFFFFFFFU
    cdef int64_t o = 0
    if z64:
        _put32(out, ZIP64_EOCD_SIG)
        _put64(out + 4, 44)
        _put16(out + 12, 45)
        _put16(out + 14, 45)
        _put32(out + 16, 0)
        _put32(out + 20, 0)
        _put64(out + 24, <uint64_t> n_entries)
        _put64(out + 32, <uint64_t> n_entries)
        _put64(out + 40, <uint64_t> cd_size)
        _put64(out + 48, <uint64_t> cd_offset)
        _put32(out + 56, ZIP64_LOC_SIG)
        _put32(out + 60, 0)
        _put64(out + 64, <uint64_t> (cd_offset + cd_size))
        _put32(out + 72, 1)
        o = 76
    _put32(out + o, ZIP_EOCD_SIG)
    _put16(out + o + 4, 0)
    _put16(out + o + 6, 0)
    _put16(out + o + 8, U16_MAX if z64 else <uint32_t> n_entries)
    _put16(out + o + 10, U16_MAX if z64 else <uint32_t> n_entries)
    _put32(out + o + 12, 0xFFFFFFFFU if z64 else <uint32_t> cd_size)
    _put32(out + o + 16, 0xFFFFFFFFU if z64 else <uint32_t> cd_offset)
    _put16(out + o + 20, 0)
    return o + 22


# ---------------------------------------------------------------------------
# .npy
# ---------------------------------------------------------------------------
cdef inline int64_t _skip_py_ws(const uint8_t *s, int64_t n, int64_t i) noexcept nogil:
    while i < n and (s[i] == 32 or s[i] == 9 or s[i] == 10 or s[i] == 13):
        i = i + 1
    return i


cdef int64_t _py_str(const uint8_t *s, int64_t n, int64_t i, int64_t *start,
                     int64_t *slen) noexcept nogil:
    """A quoted Python string without escapes; returns the index after it."""
    cdef uint8_t q
    cdef int64_t j
    if i >= n or (s[i] != 39 and s[i] != 34):
        return -1
    q = s[i]
    j = i + 1
    while j < n and s[j] != q:
        if s[j] == 92:
            return -1
        j = j + 1
    if j >= n:
        return -1
    start[0] = i + 1
    slen[0] = j - i - 1
    return j + 1


cdef public int pgllm_npy_parse_header(const uint8_t *buf, int64_t len, int64_t *data_offset,
                                       int *is_f32, int *fortran, int64_t *shape,
                                       int *ndim) noexcept nogil:
    cdef int64_t hlen, hstart, i, n, ks, kl, vs, vl
    cdef uint64_t v
    cdef int major, got_descr = 0, got_fortran = 0, got_shape = 0, digits
    if len < 10 or buf[0] != 0x93 or memcmp(buf + 1, <const char *> "NUMPY", 5) != 0:
        return PGLLM_EFORMAT
    major = buf[6]
    if major == 1:
        hlen = _le16(buf + 8)
        hstart = 10
    elif major == 2 or major == 3:
        if len < 12:
            return PGLLM_EFORMAT
        hlen = _le32(buf + 8)
        hstart = 12
    else:
        return PGLLM_EFORMAT
    n = hstart + hlen
    if n > len:
        return PGLLM_EFORMAT
    data_offset[0] = n
    is_f32[0] = 0
    fortran[0] = 0
    ndim[0] = 0
    i = _skip_py_ws(buf, n, hstart)
    if i >= n or buf[i] != 123:
        return PGLLM_EFORMAT
    i = _skip_py_ws(buf, n, i + 1)
    while i < n and buf[i] != 125:
        i = _py_str(buf, n, i, &ks, &kl)
        if i < 0:
            return PGLLM_EFORMAT
        i = _skip_py_ws(buf, n, i)
        if i >= n or buf[i] != 58:
            return PGLLM_EFORMAT
        i = _skip_py_ws(buf, n, i + 1)
        if kl == 5 and memcmp(buf + ks, <const char *> "descr", 5) == 0:
            i = _py_str(buf, n, i, &vs, &vl)
            if i < 0:
                return PGLLM_EFORMAT
            is_f32[0] = vl == 3 and (buf[vs] == 60 or buf[vs] == 61) and buf[vs + 1] == 102 and buf[vs + 2] == 52
            got_descr = 1
        elif kl == 13 and memcmp(buf + ks, <const char *> "fortran_order", 13) == 0:
            if i + 4 <= n and memcmp(buf + i, <const char *> "True", 4) == 0:
                fortran[0] = 1
                i = i + 4
            elif i + 5 <= n and memcmp(buf + i, <const char *> "False", 5) == 0:
                i = i + 5
            else:
                return PGLLM_EFORMAT
            got_fortran = 1
        elif kl == 5 and memcmp(buf + ks, <const char *> "shape", 5) == 0:
            if i >= n or (buf[i] != 40 and buf[i] != 91):
                return PGLLM_EFORMAT
            i = _skip_py_ws(buf, n, i + 1)
            while i < n and buf[i] != 41 and buf[i] != 93:
                v = 0
                digits = 0
                while i < n and 48 <= buf[i] <= 57:
                    if digits >= 15:
                        return PGLLM_EFORMAT
                    v = v * 10 + (buf[i] - 48)
                    i = i + 1
                    digits = digits + 1
                if digits == 0 or ndim[0] >= 8:
                    return PGLLM_EFORMAT
                shape[ndim[0]] = <int64_t> v
                ndim[0] = ndim[0] + 1
                i = _skip_py_ws(buf, n, i)
                if i < n and buf[i] == 44:
                    i = _skip_py_ws(buf, n, i + 1)
                elif i < n and (buf[i] == 41 or buf[i] == 93):
                    pass
                else:
                    return PGLLM_EFORMAT
            if i >= n:
                return PGLLM_EFORMAT
            i = i + 1
            got_shape = 1
        else:
            return PGLLM_EFORMAT            # an unknown key
        i = _skip_py_ws(buf, n, i)
        if i < n and buf[i] == 44:
            i = _skip_py_ws(buf, n, i + 1)
        elif i < n and buf[i] == 125:
            pass
        else:
            return PGLLM_EFORMAT
    if i >= n or not (got_descr and got_fortran and got_shape):
        return PGLLM_EFORMAT
    return PGLLM_OK


cdef int64_t _put_text(uint8_t *out, int64_t o, const char *t) noexcept nogil:
    cdef int64_t k = 0
    while t[k] != 0:
        if out != NULL:
            out[o + k] = <uint8_t> t[k]
        k = k + 1
    return o + k


cdef int64_t _put_int(uint8_t *out, int64_t o, int64_t v) noexcept nogil:
    cdef char tmp[24]
    cdef int k = 0, j
    if v == 0:
        tmp[0] = 48
        k = 1
    while v > 0:
        tmp[k] = <char> (48 + v % 10)
        v = v // 10
        k = k + 1
    for j in range(k):
        if out != NULL:
            out[o + j] = <uint8_t> tmp[k - 1 - j]
    return o + k


cdef public int64_t pgllm_npy_build_header(const int64_t *shape, int ndim,
                                           uint8_t *out) noexcept nogil:
    """Format 1.0 header, padded so that the data starts at a multiple of 64."""
    cdef int64_t o = 10, total
    cdef int d
    o = _put_text(out, o, "{'descr': '<f4', 'fortran_order': False, 'shape': (")
    for d in range(ndim):
        o = _put_int(out, o, shape[d])
        if ndim == 1 or d < ndim - 1:
            o = _put_text(out, o, ",")
        if d < ndim - 1:
            o = _put_text(out, o, " ")
    o = _put_text(out, o, "), }")
    total = ((o + 1 + 63) // 64) * 64
    while o < total - 1:
        out[o] = 32
        o = o + 1
    out[o] = 10
    o = o + 1
    out[0] = 0x93
    memcpy(out + 1, <const char *> "NUMPY", 5)
    out[6] = 1
    out[7] = 0
    _put16(out + 8, <uint32_t> (o - 10))
    return o


# ---------------------------------------------------------------------------
# .safetensors
# ---------------------------------------------------------------------------
cdef public int pgllm_safetensors_parse(const uint8_t *json, int64_t len, int64_t *n_entries,
                                        int64_t *names_len, uint8_t *names, int64_t *name_off,
                                        int64_t *name_len, int32_t *dtype, int32_t *ndim,
                                        int64_t *shapes, int64_t *begin, int64_t *end,
                                        int64_t *err_pos) noexcept nogil:
    cdef uint32_t *cps = <uint32_t *> malloc(MAX_KEY_CPS * sizeof(uint32_t))
    cdef uint32_t dummy
    cdef int64_t i, ncp, k, e = 0, nbytes = 0, vs, fields
    cdef int64_t offs[2]
    cdef int64_t shp[8]
    cdef int count, nd, got_dtype, got_shape, got_offs
    cdef int rc = PGLLM_OK
    cdef int64_t key_start, key_ncp
    err_pos[0] = 0
    if cps == NULL:
        return PGLLM_ENOMEM
    i = _skip_ws(json, len, 0)
    if i >= len or json[i] != 123:
        free(cps)
        return PGLLM_EFORMAT
    i = _skip_ws(json, len, i + 1)
    if i < len and json[i] == 125:
        i = i + 1
    else:
        while True:
            key_start = i
            i = _json_string(json, len, i, cps, MAX_KEY_CPS, &ncp)
            if i < 0 or ncp == 0 or ncp > MAX_KEY_CPS:
                i = -1 - i if i < 0 else key_start
                rc = PGLLM_EFORMAT
                break
            i = _skip_ws(json, len, i)
            if i >= len or json[i] != 58:
                rc = PGLLM_EFORMAT
                break
            i = i + 1
            if ncp == 12 and cps[0] == 95 and cps[1] == 95 and cps[2] == 109:   # "__metadata__"
                i = _json_skip(json, len, i, 0)
                if i < 0:
                    i = -1 - i
                    rc = PGLLM_EFORMAT
                    break
            else:
                # a tensor: {"dtype": "...", "shape": [...], "data_offsets": [b, e]}
                got_dtype = 0
                got_shape = 0
                got_offs = 0
                i = _skip_ws(json, len, i)
                if i >= len or json[i] != 123:
                    rc = PGLLM_EFORMAT
                    break
                i = _skip_ws(json, len, i + 1)
                while i < len and json[i] != 125:
                    vs = i
                    i = _json_string(json, len, i, cps + 0, 0, &key_ncp)
                    if i < 0:
                        i = -1 - i
                        rc = PGLLM_EFORMAT
                        break
                    k = i
                    i = _skip_ws(json, len, i)
                    if i >= len or json[i] != 58:
                        rc = PGLLM_EFORMAT
                        break
                    i = _skip_ws(json, len, i + 1)
                    if k - vs == 7 and memcmp(json + vs, <const char *> '"dtype"', 7) == 0:
                        if names != NULL:
                            dtype[e] = 1 if (i + 5 <= len and memcmp(json + i, <const char *> '"F32"', 5) == 0) else 0
                        i = _json_string(json, len, i, &dummy, 0, &key_ncp)
                        got_dtype = 1
                    elif k - vs == 7 and memcmp(json + vs, <const char *> '"shape"', 7) == 0:
                        i = _json_uint_array(json, len, i, shp, 8, &nd)
                        if names != NULL and i >= 0:
                            ndim[e] = nd
                            memcpy(shapes + 8 * e, shp, 8 * sizeof(int64_t))
                        got_shape = 1
                    elif k - vs == 14 and memcmp(json + vs, <const char *> '"data_offsets"', 14) == 0:
                        i = _json_uint_array(json, len, i, offs, 2, &nd)
                        if i >= 0 and nd != 2:
                            i = -1 - i
                        if names != NULL and i >= 0:
                            begin[e] = offs[0]
                            end[e] = offs[1]
                        got_offs = 1
                    else:
                        i = _json_skip(json, len, i, 0)
                    if i < 0:
                        i = -1 - i
                        rc = PGLLM_EFORMAT
                        break
                    i = _skip_ws(json, len, i)
                    if i < len and json[i] == 44:
                        i = _skip_ws(json, len, i + 1)
                    elif not (i < len and json[i] == 125):
                        rc = PGLLM_EFORMAT
                        break
                if rc != PGLLM_OK:
                    break
                if i >= len or not (got_dtype and got_shape and got_offs):
                    rc = PGLLM_EFORMAT
                    break
                i = i + 1
                # the tensor's name, as UTF-8
                if names != NULL:
                    name_off[e] = nbytes
                for k in range(ncp):
                    if names != NULL:
                        nbytes = nbytes + _encode_utf8(cps[k], names + nbytes)
                    else:
                        nbytes = nbytes + (1 if cps[k] < 0x80 else 2 if cps[k] < 0x800 else 3 if cps[k] < 0x10000 else 4)
                if names != NULL:
                    name_len[e] = nbytes - name_off[e]
                e = e + 1
            i = _skip_ws(json, len, i)
            if i < len and json[i] == 44:
                i = _skip_ws(json, len, i + 1)
                continue
            if i < len and json[i] == 125:
                i = i + 1
                break
            rc = PGLLM_EFORMAT
            break
    if rc == PGLLM_OK:
        i = _skip_ws(json, len, i)
        if i != len:
            rc = PGLLM_EFORMAT
    err_pos[0] = i
    if rc == PGLLM_OK and names == NULL:
        n_entries[0] = e
        names_len[0] = nbytes
    free(cps)
    return rc


cdef int64_t _put_json_string(uint8_t *out, int64_t o, const uint8_t *s, int64_t n) noexcept nogil:
    cdef int64_t k
    cdef uint8_t c
    cdef const char *hexd = "0123456789abcdef"
    if out != NULL:
        out[o] = 34
    o = o + 1
    for k in range(n):
        c = s[k]
        if c == 34 or c == 92:
            if out != NULL:
                out[o] = 92
                out[o + 1] = c
            o = o + 2
        elif c < 0x20:
            if out != NULL:
                memcpy(out + o, <const char *> "\\u00", 4)
                out[o + 4] = <uint8_t> hexd[c >> 4]
                out[o + 5] = <uint8_t> hexd[c & 15]
            o = o + 6
        else:
            if out != NULL:
                out[o] = c
            o = o + 1
    if out != NULL:
        out[o] = 34
    return o + 1


cdef public int64_t pgllm_safetensors_build_header(int64_t n, const uint8_t *const *names,
                                                   const int64_t *name_len, const int32_t *ndim,
                                                   const int64_t *shapes, const int64_t *begin,
                                                   const int64_t *end, uint8_t *out) noexcept nogil:
    cdef int64_t o = 0, e, total
    cdef int d
    o = _put_text(out, o, "{")
    for e in range(n):
        if e > 0:
            o = _put_text(out, o, ",")
        o = _put_json_string(out, o, names[e], name_len[e])
        o = _put_text(out, o, ":{\"dtype\":\"F32\",\"shape\":[")
        for d in range(ndim[e]):
            if d > 0:
                o = _put_text(out, o, ",")
            o = _put_int(out, o, shapes[8 * e + d])
        o = _put_text(out, o, "],\"data_offsets\":[")
        o = _put_int(out, o, begin[e])
        o = _put_text(out, o, ",")
        o = _put_int(out, o, end[e])
        o = _put_text(out, o, "]}")
    o = _put_text(out, o, "}")
    total = ((o + 7) // 8) * 8
    while o < total:
        if out != NULL:
            out[o] = 32
        o = o + 1
    return o


# ---------------------------------------------------------------------------
# Python wrappers (tests and fuzzing reach the parsers through these)
# ---------------------------------------------------------------------------
def npy_parse_header(const unsigned char[::1] buf):
    """-> (data_offset, is_f32, fortran_order, shape) or ValueError."""
    cdef int64_t off = 0
    cdef int f32 = 0, fortran = 0, nd = 0
    cdef int64_t shape[8]
    if buf.shape[0] == 0:
        raise ValueError("npy: malformed header")
    if pgllm_npy_parse_header(&buf[0], buf.shape[0], &off, &f32, &fortran, shape, &nd) != PGLLM_OK:
        raise ValueError("npy: malformed header")
    return off, bool(f32), bool(fortran), tuple(shape[i] for i in range(nd))


def npy_build_header(shape):
    cdef int64_t s[8]
    cdef int nd = len(shape), i
    out = bytearray(512)
    cdef unsigned char[::1] ov = out
    if nd > 8:
        raise ValueError("npy: at most 8 dimensions")
    for i in range(nd):
        s[i] = shape[i]
    cdef int64_t n = pgllm_npy_build_header(s, nd, &ov[0])
    return bytes(out[:n])


def zip_entries(const unsigned char[::1] data):
    """Parse a whole zip file in memory -> list of (name, method, crc, csize,
    usize, data_offset); ValueError if malformed."""
    cdef int64_t n = data.shape[0], cd_off = 0, cd_size = 0, count = 0, pos, skip, i
    cdef PgllmZipEntry e
    if n == 0 or pgllm_zip_find_cd(&data[0], n, n, &cd_off, &cd_size, &count) != PGLLM_OK:
        raise ValueError("zip: no central directory")
    out = []
    pos = 0
    for i in range(count):
        if pgllm_zip_next_entry(&data[cd_off], cd_size, &pos, &e) != PGLLM_OK:
            raise ValueError("zip: malformed central directory")
        if e.local_offset >= n or pgllm_zip_local_header_len(&data[e.local_offset], n - e.local_offset, &skip) != PGLLM_OK:
            raise ValueError("zip: malformed local header")
        name = bytes(data[cd_off + e.name_off: cd_off + e.name_off + e.name_len])
        out.append((name, e.method, e.crc32, e.csize, e.usize, e.local_offset + skip))
    return out


def inflate_raw(const unsigned char[::1] data, int64_t out_len):
    out = bytearray(max(out_len, 1))
    cdef unsigned char[::1] ov = out
    cdef int rc = pgllm_inflate(&data[0] if data.shape[0] else <const uint8_t *> b"", data.shape[0],
                                &ov[0], out_len, NULL)
    if rc != PGLLM_OK:
        raise ValueError("deflate: malformed stream")
    return bytes(out[:out_len])


def safetensors_parse(const unsigned char[::1] header):
    """JSON header bytes -> list of (name, is_f32, shape, begin, end)."""
    import numpy as np
    cdef int64_t n = 0, nb = 0, pos = 0
    cdef const uint8_t *p = &header[0] if header.shape[0] else <const uint8_t *> b""
    if pgllm_safetensors_parse(p, header.shape[0], &n, &nb, NULL, NULL, NULL, NULL, NULL, NULL,
                               NULL, NULL, &pos) != PGLLM_OK:
        raise ValueError(f"safetensors: malformed header at byte {pos}")
    names = np.zeros(max(nb, 1), np.uint8)
    name_off = np.zeros(max(n, 1), np.int64)
    name_len = np.zeros(max(n, 1), np.int64)
    dtype = np.zeros(max(n, 1), np.int32)
    ndim = np.zeros(max(n, 1), np.int32)
    shapes = np.zeros(max(8 * n, 1), np.int64)
    begin = np.zeros(max(n, 1), np.int64)
    end = np.zeros(max(n, 1), np.int64)
    cdef uint8_t[::1] a = names
    cdef int64_t[::1] b = name_off, c = name_len, g = shapes, h = begin, k = end
    cdef int[::1] d = dtype, f = ndim
    if pgllm_safetensors_parse(p, header.shape[0], &n, &nb, &a[0], &b[0], &c[0], <int32_t *> &d[0],
                               <int32_t *> &f[0], &g[0], &h[0], &k[0], &pos) != PGLLM_OK:
        raise ValueError(f"safetensors: malformed header at byte {pos}")
    return [(bytes(names[name_off[i]:name_off[i] + name_len[i]]).decode("utf-8"), bool(dtype[i]),
             tuple(int(x) for x in shapes[8 * i: 8 * i + ndim[i]]), int(begin[i]), int(end[i]))
            for i in range(n)]
