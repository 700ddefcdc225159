# CSV fields as Go's encoding/csv Writer writes them (Comma ',', UseCRLF false), and the
# MediaFiles column.

cdef bint starts_with_space(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    """unicode.IsSpace of the first rune (an invalid first byte decodes to U+FFFD)."""
    cdef unsigned char c = s[0]
    if c < 0x80:
        return c == 32 or 9 <= c <= 13
    cdef int k = utf8_seq_len(s, n)
    cdef uint32_t r
    if k == 2:
        r = ((c & 0x1F) << 6) | (s[1] & 0x3F)
    elif k == 3:
        r = ((c & 0x0F) << 12) | ((s[1] & 0x3F) << 6) | (s[2] & 0x3F)
    else:
        return False
    return (r == 0x85 or r == 0xA0 or r == 0x1680 or 0x2000 <= r <= 0x200A
            or r == 0x2028 or r == 0x2029 or r == 0x202F or r == 0x205F or r == 0x3000)


cdef bint csv_needs_quotes(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    if n == 0:
        return False
    if n == 2 and s[0] == b'\\' and s[1] == b'.':
        return True
    if sx_csv_plain(s, n) < n:
        return True
    return starts_with_space(s, n)


cdef int ob_csv_field(OutBuf* b, const unsigned char* s, Py_ssize_t n) except -1 nogil:
    """One field, quoted iff Go would; bytes otherwise unchanged."""
    cdef Py_ssize_t i, start
    cdef const unsigned char* q
    if not csv_needs_quotes(s, n):
        return ob_write(b, <const char*>s, n)
    ob_byte(b, b'"')
    start = 0
    while start < n:
        q = <const unsigned char*>memchr(s + start, b'"', n - start)
        if q == NULL:
            break
        i = q - s
        ob_write(b, <const char*>s + start, i + 1 - start)
        ob_byte(b, b'"')  # doubled
        start = i + 1
    ob_write(b, <const char*>s + start, n - start)
    ob_byte(b, b'"')
    return 0


# --- MediaFiles -------------------------------------------------------------------------

cdef object _apsw_exception_for = None  # apsw.exception_for, bound at import


cdef bytes go_sanitize_utf8(bytes raw):
    """Each byte Go's decoder rejects becomes U+FFFD (EF BF BD), as Go's json.Unmarshal
    reads invalid UTF-8 inside strings."""
    cdef const unsigned char* s = <const unsigned char*>PyBytes_AS_STRING(raw)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(raw), i = 0
    cdef int k
    cdef OutBuf b
    while i < n:
        if s[i] >= 0x80 and utf8_seq_len(s + i, n - i) == 0:
            break
        i += 1 if s[i] < 0x80 else utf8_seq_len(s + i, n - i)
    if i == n:
        return raw
    ob_init(&b, n + 64)
    try:
        ob_write(&b, <const char*>s, i)
        while i < n:
            if s[i] < 0x80:
                ob_byte(&b, <char>s[i])
                i += 1
                continue
            k = utf8_seq_len(s + i, n - i)
            if k == 0:
                ob_write(&b, b"\xef\xbf\xbd", 3)
                i += 1
            else:
                ob_write(&b, <const char*>s + i, k)
                i += k
        return PyBytes_FromStringAndSize(b.data, b.len)
    finally:
        ob_free(&b)


cdef bint may_overflow(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    """A number that may not fit a float64: an exponent, or 309+ digits (outside strings).
    Go's json.Unmarshal fails on such a number anywhere in the text."""
    cdef Py_ssize_t i = 0, run = 0
    cdef bint in_string = False
    while i < n:
        if in_string:
            if s[i] == b'\\':
                i += 1
            elif s[i] == b'"':
                in_string = False
        elif s[i] == b'"':
            in_string = True
            run = 0
        elif is_digit(s[i]):
            run += 1
            if run >= 309:
                return True
        elif s[i] == b'e' or s[i] == b'E':
            if run:                  # an exponent (after a digit; `true`/`false` have none)
                return True
        else:
            run = 0
        i += 1
    return False


def _finite_float(text):
    v = float(text)
    if v - v != 0.0:
        raise ValueError("number out of float64 range")
    return v


def _finite_int(text):
    return _finite_float(text)


cdef object _embed_decoder = None       # msgspec decoder into _Embed, made on first use


cdef object _load_embed_decoder():
    """A msgspec decoder that reads only the fields MediaFiles needs (images[].fullsize,
    media.images[].fullsize, external.thumb) and skips the rest without building it."""
    global _embed_decoder
    # Imported on first use: only CSV exports of posts with media need it, and its import
    # costs more than a whole small export takes.
    import typing

    import msgspec
    any_ = typing.Any
    # `image` and `video` are records' blob references (CAR.md, MediaFiles for records)
    image = msgspec.defstruct("_Image", [("fullsize", any_, None), ("image", any_, None)])
    images = typing.Optional[list[image]]
    external = msgspec.defstruct("_External", [("thumb", any_, None)])
    opt_external = typing.Optional[external]
    media = msgspec.defstruct("_Media", [("images", images, None), ("video", any_, None),
                                         ("external", opt_external, None)])
    embed = msgspec.defstruct("_Embed", [("type_", any_, None), ("images", images, None),
                                         ("media", typing.Optional[media], None),
                                         ("external", opt_external, None),
                                         ("video", any_, None)],
                              rename={"type_": "$type"})
    _embed_decoder = msgspec.json.Decoder(embed)
    return _embed_decoder


# Containers opened this deep or deeper cannot hold a field MediaFiles reads (the deepest,
# a record's media.images[i].image.ref.$link, is a value inside six): only whether they are a
# string matters, and they are not.  Embeds nested at least PRUNE_FROM deep are decoded with
# every such container replaced by `null`, so no decoder recurses deeper than that, however
# deep the value (Go reads up to JSON_MAX_DEPTH levels; Python's decoders stop near 1000).
DEF MEDIA_FIELDS_DEPTH = 6
DEF PRUNE_FROM = 64


cdef bint _number_overflows(const unsigned char* s, Py_ssize_t n):
    """Some number outside a string is beyond float64's range (Go's Unmarshal fails on it).
    Exact: each number with an exponent or 309+ digits is parsed."""
    cdef Py_ssize_t i = 0, start
    cdef bint in_string = False, suspect
    cdef unsigned char c
    while i < n:
        c = s[i]
        if in_string:
            if c == b'\\':
                i += 1
            elif c == b'"':
                in_string = False
            i += 1
        elif c == b'"':
            in_string = True
            i += 1
        elif c == b'-' or is_digit(c):
            start = i
            suspect = False
            while i < n and (is_digit(s[i]) or s[i] == b'+' or s[i] == b'-'
                             or s[i] == b'.' or s[i] == b'e' or s[i] == b'E'):
                if s[i] == b'e' or s[i] == b'E':
                    suspect = True
                i += 1
            if suspect or i - start >= 309:
                v = float(PyBytes_FromStringAndSize(<const char*>s + start, i - start))
                if v - v != 0.0:
                    return True
        else:
            i += 1
    return False


@cython.cdivision(True)   # audited: C division, as written
cdef object _prune_deep(bytes raw):
    """`raw` (valid JSON) with every container that opens inside MEDIA_FIELDS_DEPTH others
    replaced by `null`, or None when it nests less than PRUNE_FROM deep (nothing to do)."""
    cdef const unsigned char* s = <const unsigned char*>PyBytes_AS_STRING(raw)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(raw), i, start
    cdef int depth = 0, deepest = 0, skip
    cdef bint in_string = False
    cdef unsigned char c
    for i in range(n):
        if in_string:
            if s[i] == b'"':
                # A quote ends the string unless an odd run of backslashes precedes it.
                start = i
                while start > 0 and s[start - 1] == b'\\':
                    start -= 1
                if (i - start) % 2 == 0:
                    in_string = False
        elif s[i] == b'"':
            in_string = True
        elif s[i] == b'{' or s[i] == b'[':
            depth += 1
            if depth > deepest:
                deepest = depth
        elif s[i] == b'}' or s[i] == b']':
            depth -= 1
    if deepest < PRUNE_FROM:
        return None
    cdef OutBuf b
    ob_init(&b, 4096)
    try:
        i = 0
        depth = 0
        in_string = False
        start = 0   # the first byte not yet copied
        while i < n:
            c = s[i]
            if in_string:
                if c == b'\\':
                    i += 1
                elif c == b'"':
                    in_string = False
            elif c == b'"':
                in_string = True
            elif c == b'{' or c == b'[':
                if depth < MEDIA_FIELDS_DEPTH:
                    depth += 1
                else:
                    ob_write(&b, <const char*>s + start, i - start)
                    ob_write(&b, b"null", 4)
                    skip = 1
                    i += 1
                    while skip:   # to the matching close, strings skipped whole
                        c = s[i]
                        if c == b'"':
                            i += 1
                            while s[i] != b'"':
                                i += 2 if s[i] == b'\\' else 1
                        elif c == b'{' or c == b'[':
                            skip += 1
                        elif c == b'}' or c == b']':
                            skip -= 1
                        i += 1
                    start = i
                    continue
            elif c == b'}' or c == b']':
                depth -= 1
            i += 1
        ob_write(&b, <const char*>s + start, n - start)
        return PyBytes_FromStringAndSize(b.data, b.len)
    finally:
        ob_free(&b)


cdef object _decode_embed(bytes raw):
    """embed_data as Go's json.Unmarshal into a map would read it - as a _Embed struct
    where the shape is the usual one, else as plain dicts and lists - or None where Go
    fails (invalid JSON, a number beyond float64's range, nesting deeper than
    JSON_MAX_DEPTH)."""
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(raw)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(raw)
    if ob_raw_json(NULL, p, n, 0, False):
        return None
    pruned = _prune_deep(raw)
    if pruned is not None:
        if may_overflow(p, n) and _number_overflows(p, n):
            return None       # a number Go cannot read, perhaps in a pruned part
        raw = <bytes>pruned
        p = <const unsigned char*>PyBytes_AS_STRING(raw)
        n = PyBytes_GET_SIZE(raw)
    raw = go_sanitize_utf8(raw)
    decoder = _embed_decoder if _embed_decoder is not None else _load_embed_decoder()
    if not may_overflow(p, n):
        try:
            return decoder.decode(raw)
        except Exception:
            pass
    # The slow, exact path: another shape (msgspec refuses it), lone surrogate escapes
    # (Go reads U+FFFD; the stdlib gives surrogates, mapped in media_files), numbers that
    # may be out of range (Go fails; so do the hooks below).
    import json
    try:
        return json.loads(raw, parse_float=_finite_float, parse_int=_finite_int)
    except (ValueError, RecursionError, OverflowError):
        return None


cdef inline bint _is_str(object v):
    return type(v) is str


cdef int _add_hash(list out, object url) except -1:
    if not _is_str(url):
        return 0
    cdef str u = <str>url
    cdef Py_ssize_t slash = u.rfind("/")
    if slash < 0:
        return 0
    cdef str h = u[slash + 1:]
    cdef Py_ssize_t at = h.find("@")
    if at >= 0:
        h = h[:at]
    if h:
        out.append(h)
    return 0


cdef int _add_images(list out, object images) except -1:
    if type(images) is not list:
        return 0
    for img in <list>images:
        _add_hash(out, _field(img, "fullsize"))
    return 0


cdef object _field(object obj, str name):
    """obj[name] for a decoded dict, obj.name for a _Embed-family struct, else None (a
    list, string, number, bool or null has no fields)."""
    if type(obj) is dict:
        return (<dict>obj).get(name)
    if obj is None or type(obj) in (list, str, int, float, bool):
        return None
    return getattr(obj, name, None)


# Top-level $type of a *record* embed (what a CAR import stores), as opposed to the
# AppView's `...#view` that bskyarchive stores: its MediaFiles are blob CIDs (CAR.md).
_RECORD_EMBEDS = frozenset(("app.bsky.embed.images", "app.bsky.embed.external",
                           "app.bsky.embed.video", "app.bsky.embed.recordWithMedia"))


cdef object _type_of(object obj):
    if type(obj) is dict:
        return (<dict>obj).get("$type")
    if obj is None or type(obj) in (list, str, int, float, bool):
        return None
    return getattr(obj, "type_", None)


cdef int _add_blob(list out, object blob) except -1:
    """A blob reference's CID: `ref.$link`, or a legacy blob's `cid`."""
    if type(blob) is not dict:
        return 0
    ref = (<dict>blob).get("ref")
    link = (<dict>ref).get("$link") if type(ref) is dict else None
    if not (_is_str(link) and link):
        link = (<dict>blob).get("cid")
    if _is_str(link) and link:
        out.append(link)
    return 0


cdef int _add_blob_images(list out, object images) except -1:
    if type(images) is not list:
        return 0
    for img in <list>images:
        _add_blob(out, _field(img, "image"))
    return 0


cdef bint _utf8_clean(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    """No byte that Go's decoder would replace (go_sanitize_utf8 would return it as is)."""
    cdef Py_ssize_t i = 0
    cdef int k
    while i < n:
        if s[i] < 0x80:
            i += 1
            continue
        k = utf8_seq_len(s + i, n - i)
        if k == 0:
            return False
        i += k
    return True


cdef int _max_depth(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    """How deep valid JSON nests (strings skipped)."""
    cdef Py_ssize_t i = 0
    cdef int depth = 0, deepest = 0
    while i < n:
        if s[i] == b'"':
            i += 1
            while i < n and s[i] != b'"':
                i += 2 if s[i] == b'\\' else 1
        elif s[i] == b'{' or s[i] == b'[':
            depth += 1
            if depth > deepest:
                deepest = depth
        elif s[i] == b'}' or s[i] == b']':
            depth -= 1
        i += 1
    return deepest


cdef object _decode_embed_at(const unsigned char* p, Py_ssize_t n):
    """_decode_embed of the n bytes at p, read in place where it can be: the usual embed
    (valid UTF-8, no number out of range, not deeply nested) is decoded from a view of the
    cell's memory, so a 200 MB embed is never copied; the exact slow paths copy it."""
    if ob_raw_json(NULL, p, n, 0, False):
        return None
    decoder = _embed_decoder if _embed_decoder is not None else _load_embed_decoder()
    if _utf8_clean(p, n) and not may_overflow(p, n) and _max_depth(p, n) < PRUNE_FROM:
        view = PyMemoryView_FromMemory(<char*>p, n, PyBUF_READ)
        try:
            return decoder.decode(view)
        except Exception:
            pass
        finally:
            view.release()
    return _decode_embed(PyBytes_FromStringAndSize(<const char*>p, n))


cdef bytes media_files(object embed):
    """The MediaFiles column for a post whose has_media is true (FORMAT.md, posts.csv;
    CAR.md for record embeds)."""
    if type(embed) is not bytes:
        return b""
    return media_files_at(<const unsigned char*>PyBytes_AS_STRING(embed),
                          PyBytes_GET_SIZE(embed))


cdef bytes media_files_at(const unsigned char* p, Py_ssize_t n):
    """media_files of the n bytes at p (a cell's, valid for this row)."""
    obj = _decode_embed_at(p, n)
    cdef list out = []
    t = _type_of(obj)
    if _is_str(t) and t in _RECORD_EMBEDS:
        media = _field(obj, "media")
        _add_blob_images(out, _field(obj, "images"))
        _add_blob_images(out, _field(media, "images"))
        _add_blob(out, _field(media, "video"))
        _add_blob(out, _field(obj, "video"))
        _add_blob(out, _field(_field(obj, "external"), "thumb"))
        _add_blob(out, _field(_field(media, "external"), "thumb"))
    else:
        _add_images(out, _field(obj, "images"))
        _add_images(out, _field(_field(obj, "media"), "images"))
        _add_hash(out, _field(_field(obj, "external"), "thumb"))
    if not out:
        return b""
    cdef str joined = ";".join(out)
    try:
        return joined.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate from a \uD8xx escape: Go decodes each one to U+FFFD.
        return "".join(["\ufffd" if 0xD800 <= ord(ch) <= 0xDFFF else ch
                        for ch in joined]).encode("utf-8")


# --- MediaFiles without Python --------------------------------------------------------
# The usual embed is read in one pass over the cell's bytes, without the GIL, giving the
# same column as media_files_at.  Whatever that pass cannot be sure of - an escape in an
# object key or in a value it reads, invalid UTF-8 in a value it reads, a number that may
# not fit a float64 (anywhere: Go then fails on the whole text), nesting PRUNE_FROM deep -
# makes it answer MF_SLOW, and the exact path above decides.  The text is valid JSON
# (ob_raw_json said so), so the scanner need not check the grammar again.

cdef enum:
    MF_SLOW = -1
    MF_KEYS = 5    # the most names one object lookup asks for


cdef Py_ssize_t mf_string_end(const unsigned char* s, Py_ssize_t i, Py_ssize_t n,
                              bint* escaped) noexcept nogil:
    """s[i] is '"' of a valid string: the index past its closing quote."""
    cdef const unsigned char* q
    cdef Py_ssize_t j, k
    i += 1
    while True:
        q = <const unsigned char*>memchr(s + i, b'"', n - i)
        if q == NULL:
            return n            # cannot happen in valid JSON
        j = q - s
        # a quote preceded by an odd run of backslashes is escaped
        k = j
        while k > i and s[k - 1] == b'\\':
            k -= 1
        if k != j:
            escaped[0] = True
        elif memchr(s + i, b'\\', j - i) != NULL:
            escaped[0] = True
        if (j - k) % 2 == 0:
            return j + 1
        i = j + 1


cdef Py_ssize_t mf_skip(const unsigned char* s, Py_ssize_t i, Py_ssize_t n,
                        int depth) noexcept nogil:
    """s[i] starts a value (valid JSON) at nesting `depth`: the index past it, or MF_SLOW
    (a number that may overflow, nesting PRUNE_FROM deep)."""
    cdef unsigned char c
    cdef int d = 0
    cdef Py_ssize_t run
    cdef bint esc = False
    while i < n:
        c = s[i]
        if c == b'"':
            i = mf_string_end(s, i, n, &esc)
            if d == 0:
                return i
            continue
        if c == b'{' or c == b'[':
            d += 1
            if depth + d >= PRUNE_FROM:
                return MF_SLOW
        elif c == b'}' or c == b']':
            d -= 1
            if d == 0:
                return i + 1
        elif c == b'-' or is_digit(c):
            run = 0
            while i < n and (is_digit(s[i]) or s[i] == b'-' or s[i] == b'.' or s[i] == b'+'):
                if is_digit(s[i]):
                    run += 1
                i += 1
            if run >= 309 or (i < n and (s[i] == b'e' or s[i] == b'E')):
                return MF_SLOW       # may not fit a float64: the exact path checks
            if d == 0:
                return i
            continue
        elif c == b't' or c == b'n':
            if d == 0:
                return i + 4
            i += 4
            continue
        elif c == b'f':
            if d == 0:
                return i + 5
            i += 5
            continue
        i += 1
    return i


cdef Py_ssize_t mf_object(const unsigned char* s, Py_ssize_t i, Py_ssize_t n, int depth,
                          const char** names, int count, Py_ssize_t* found) noexcept nogil:
    """s[i] is '{' at nesting `depth` - 1: found[j] = where the value of key names[j]
    starts (the last one, as a Go map keeps it), -1 when absent.  The index past the
    object, or MF_SLOW (an escaped key, or mf_skip's reasons)."""
    cdef Py_ssize_t k0, k1, j
    cdef int m
    cdef bint esc
    for m in range(count):
        found[m] = -1
    if depth >= PRUNE_FROM:
        return MF_SLOW
    i = skip_ws(s, i + 1, n)
    if i < n and s[i] == b'}':
        return i + 1
    while i < n:
        esc = False
        k0 = i + 1
        i = mf_string_end(s, i, n, &esc)
        if esc:
            return MF_SLOW
        k1 = i - 1
        i = skip_ws(s, i, n) + 1           # past ':'
        i = skip_ws(s, i, n)
        for m in range(count):
            j = <Py_ssize_t>strlen(names[m])
            if k1 - k0 == j and memcmp(s + k0, names[m], j) == 0:
                found[m] = i
        i = mf_skip(s, i, n, depth)
        if i < 0:
            return MF_SLOW
        i = skip_ws(s, i, n)
        if i >= n or s[i] == b'}':
            return i + 1
        i = skip_ws(s, i + 1, n)          # past ','
    return i


cdef int mf_string(const unsigned char* s, Py_ssize_t i, Py_ssize_t n,
                   const unsigned char** p, Py_ssize_t* length) noexcept nogil:
    """The value at i as raw string bytes: 1, or 0 when it is not a string, or MF_SLOW
    when it has an escape or invalid UTF-8 (Go would decode or replace them)."""
    cdef bint esc = False
    cdef Py_ssize_t end
    if i < 0 or s[i] != b'"':
        return 0
    end = mf_string_end(s, i, n, &esc)
    if esc or not _utf8_clean(s + i + 1, end - i - 2):
        return MF_SLOW
    p[0] = s + i + 1
    length[0] = end - i - 2
    return 1


cdef int mf_add(OutBuf* out, const unsigned char* p, Py_ssize_t n) except -1 nogil:
    if out.len:
        ob_byte(out, b';')
    return ob_write(out, <const char*>p, n)


cdef int mf_hash(OutBuf* out, const unsigned char* s, Py_ssize_t i, Py_ssize_t n) except -2 nogil:
    """_add_hash of the value at i: the URL's last path segment up to its '@'."""
    cdef const unsigned char* p
    cdef const unsigned char* at
    cdef Py_ssize_t m, slash
    cdef int r = mf_string(s, i, n, &p, &m)
    if r != 1:
        return r
    slash = m - 1
    while slash >= 0 and p[slash] != b'/':
        slash -= 1
    if slash < 0:
        return 0
    p += slash + 1
    m -= slash + 1
    at = <const unsigned char*>memchr(p, b'@', m)
    if at != NULL:
        m = at - p
    if m:
        mf_add(out, p, m)
    return 0


cdef const char* MF_FULLSIZE[1]
cdef const char* MF_IMAGE[1]
cdef const char* MF_THUMB[1]
cdef const char* MF_BLOB[2]
cdef const char* MF_LINK[1]
cdef const char* MF_TOP[5]
cdef const char* MF_MEDIA[3]
MF_FULLSIZE[0] = b"fullsize"
MF_IMAGE[0] = b"image"
MF_THUMB[0] = b"thumb"
MF_BLOB[0] = b"ref"
MF_BLOB[1] = b"cid"
MF_LINK[0] = b"$link"
MF_TOP[0] = b"$type"
MF_TOP[1] = b"images"
MF_TOP[2] = b"media"
MF_TOP[3] = b"external"
MF_TOP[4] = b"video"
MF_MEDIA[0] = b"images"
MF_MEDIA[1] = b"video"
MF_MEDIA[2] = b"external"


cdef int mf_blob(OutBuf* out, const unsigned char* s, Py_ssize_t i, Py_ssize_t n,
                 int depth) except -2 nogil:
    """_add_blob of the value at i: `ref.$link`, else a legacy blob's `cid`."""
    cdef Py_ssize_t f[2]
    cdef Py_ssize_t link[1]
    cdef const unsigned char* p
    cdef Py_ssize_t m
    cdef int r
    if i < 0 or s[i] != b'{':
        return 0
    if mf_object(s, i, n, depth + 1, MF_BLOB, 2, f) < 0:
        return MF_SLOW
    if f[0] >= 0 and s[f[0]] == b'{':
        if mf_object(s, f[0], n, depth + 2, MF_LINK, 1, link) < 0:
            return MF_SLOW
        r = mf_string(s, link[0], n, &p, &m)
        if r == MF_SLOW:
            return MF_SLOW
        if r == 1 and m:
            return mf_add(out, p, m)
    r = mf_string(s, f[1], n, &p, &m)
    if r == MF_SLOW:
        return MF_SLOW
    if r == 1 and m:
        mf_add(out, p, m)
    return 0


cdef int mf_images(OutBuf* out, const unsigned char* s, Py_ssize_t i, Py_ssize_t n,
                   int depth, bint blobs) except -2 nogil:
    """Each image of the array at i: its `image` blob (blobs) or its `fullsize` URL."""
    cdef Py_ssize_t f[1]
    if i < 0 or s[i] != b'[':
        return 0
    i = skip_ws(s, i + 1, n)
    while i < n and s[i] != b']':
        if s[i] == b'{':
            if mf_object(s, i, n, depth + 2, &MF_IMAGE[0] if blobs else &MF_FULLSIZE[0], 1,
                         f) < 0:
                return MF_SLOW
            if (mf_blob(out, s, f[0], n, depth + 2) if blobs
                    else mf_hash(out, s, f[0], n)) == MF_SLOW:
                return MF_SLOW
        i = mf_skip(s, i, n, depth + 1)
        if i < 0:
            return MF_SLOW
        i = skip_ws(s, i, n)
        if i < n and s[i] == b',':
            i = skip_ws(s, i + 1, n)
    return 0


cdef int mf_thumb(OutBuf* out, const unsigned char* s, Py_ssize_t i, Py_ssize_t n,
                  int depth, bint blobs) except -2 nogil:
    """The `thumb` of the external at i: a blob, or a URL."""
    cdef Py_ssize_t f[1]
    if i < 0 or s[i] != b'{':
        return 0
    if mf_object(s, i, n, depth + 1, MF_THUMB, 1, f) < 0:
        return MF_SLOW
    return mf_blob(out, s, f[0], n, depth + 1) if blobs else mf_hash(out, s, f[0], n)


cdef bint mf_record_type(const unsigned char* p, Py_ssize_t m) noexcept nogil:
    """One of _RECORD_EMBEDS."""
    return ((m == 21 and memcmp(p, b"app.bsky.embed.images", 21) == 0)
            or (m == 23 and memcmp(p, b"app.bsky.embed.external", 23) == 0)
            or (m == 20 and memcmp(p, b"app.bsky.embed.video", 20) == 0)
            or (m == 30 and memcmp(p, b"app.bsky.embed.recordWithMedia", 30) == 0))


cdef int media_files_fast(OutBuf* out, const unsigned char* s, Py_ssize_t n) except -2 nogil:
    """media_files_at of the valid JSON text at s, appended to `out`: 0, or MF_SLOW (out
    then holds a partial answer the caller drops)."""
    cdef Py_ssize_t top[5]
    cdef Py_ssize_t med[3]
    cdef Py_ssize_t i = skip_ws(s, 0, n)
    cdef const unsigned char* t
    cdef Py_ssize_t tn
    cdef int r
    cdef bint blobs
    if i >= n:
        return 0
    if s[i] != b'{':
        return 0        # not an object: no fields (and no MediaFiles if Go fails on it)
    if mf_object(s, i, n, 1, MF_TOP, 5, top) < 0:
        return MF_SLOW
    r = mf_string(s, top[0], n, &t, &tn)
    if r == MF_SLOW:
        return MF_SLOW
    blobs = r == 1 and mf_record_type(t, tn)
    med[0] = med[1] = med[2] = -1
    if top[2] >= 0 and s[top[2]] == b'{':
        if mf_object(s, top[2], n, 2, MF_MEDIA, 3, med) < 0:
            return MF_SLOW
    if blobs:
        if (mf_images(out, s, top[1], n, 1, True) == MF_SLOW
                or mf_images(out, s, med[0], n, 2, True) == MF_SLOW
                or mf_blob(out, s, med[1], n, 2) == MF_SLOW
                or mf_blob(out, s, top[4], n, 1) == MF_SLOW
                or mf_thumb(out, s, top[3], n, 1, True) == MF_SLOW
                or mf_thumb(out, s, med[2], n, 2, True) == MF_SLOW):
            return MF_SLOW
    elif (mf_images(out, s, top[1], n, 1, False) == MF_SLOW
          or mf_images(out, s, med[0], n, 2, False) == MF_SLOW
          or mf_thumb(out, s, top[3], n, 1, False) == MF_SLOW):
        return MF_SLOW
    return 0


cdef int media_files_into(OutBuf* m, const unsigned char* p, Py_ssize_t n) except -1 nogil:
    """The MediaFiles of the embed_data at p into `m` (emptied first): 0, or 1 when only
    the exact path (media_files_at, with the GIL) can tell.  Invalid JSON has none."""
    m.len = 0
    if ob_raw_json(NULL, p, n, 0, False):
        return 0
    if media_files_fast(m, p, n) == 0:
        return 0
    m.len = 0
    return 1
