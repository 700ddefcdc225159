# Repository CARs: a post record's fields, as the posts row holds them (docs/CAR.md).

cdef bint is_blob(const unsigned char* s, Py_ssize_t i, Py_ssize_t n) except -1:
    """A blob reference: {"$type": "blob", "ref": link, ...} or legacy {"cid", "mimeType"}."""
    if i < 0:
        return False
    if cb_text_is(s, cb_find(s, i, n, "$type"), n, "blob"):
        return True
    cdef const unsigned char* tp
    cdef Py_ssize_t tn
    return (cb_text_at(s, cb_find(s, i, n, "cid"), n, &tp, &tn)
            and cb_find(s, i, n, "mimeType") >= 0)


cdef bint is_media_embed(const unsigned char* s, Py_ssize_t e, Py_ssize_t n) except -1:
    cdef Py_ssize_t t = cb_find(s, e, n, "$type"), x
    if cb_text_is(s, t, n, "app.bsky.embed.images") or cb_text_is(s, t, n, "app.bsky.embed.video"):
        return True
    if cb_text_is(s, t, n, "app.bsky.embed.external"):
        x = cb_find(s, e, n, "external")
        return x >= 0 and is_blob(s, cb_find(s, x, n, "thumb"), n)
    return False


_EMBED_TYPES = {
    "app.bsky.embed.images": "images",
    "app.bsky.embed.external": "external",
    "app.bsky.embed.record": "record",
    "app.bsky.embed.recordWithMedia": "record_with_media",
    "app.bsky.embed.video": "video",
}


def post_fields(data):
    """A post record's posts-row fields (CAR.md's table):
    (text, created_at, has_media, is_reply, reply_parent, embed_type, embed_data, labels).
    Raises CarFormatError if the block is not valid atproto DAG-CBOR or not a map."""
    cdef bytes d = bytes(data)
    return post_fields_c(<const unsigned char*>PyBytes_AS_STRING(d), PyBytes_GET_SIZE(d))


cdef struct PostFields:
    # text fields point into the record (checked UTF-8); NULL: absent ('')
    const unsigned char* text
    Py_ssize_t text_n
    const unsigned char* created
    Py_ssize_t created_n
    const unsigned char* parent
    Py_ssize_t parent_n
    const char* etype                 # embed_type: _EMBED_TYPES' short name, or the $type
    Py_ssize_t etype_n
    bint has_media
    bint is_reply
    bint has_embed                    # embed_data, as JSON, in the `embed` OutBuf
    bint has_labels                   # labels, as JSON, in the `labels` OutBuf


cdef const char* embed_short(const unsigned char* tp, Py_ssize_t tn) noexcept:
    """_EMBED_TYPES' name for an embed $type, NULL for any other."""
    if tn == 21 and memcmp(tp, b"app.bsky.embed.images", 21) == 0:
        return "images"
    if tn == 23 and memcmp(tp, b"app.bsky.embed.external", 23) == 0:
        return "external"
    if tn == 21 and memcmp(tp, b"app.bsky.embed.record", 21) == 0:
        return "record"
    if tn == 30 and memcmp(tp, b"app.bsky.embed.recordWithMedia", 30) == 0:
        return "record_with_media"
    if tn == 20 and memcmp(tp, b"app.bsky.embed.video", 20) == 0:
        return "video"
    return NULL


cdef int post_fields_into(const unsigned char* s, Py_ssize_t n, PostFields* f,
                          OutBuf* embed, OutBuf* labels) except -1:
    """The posts-row fields of the post record s[:n] (CAR.md's table) into f; embed_data
    and labels as JSON appended to `embed` and `labels`."""
    cdef Py_ssize_t i, v = -1, c = -1, e = -1, r = -1, lb = -1, t, x
    cdef const unsigned char* tp
    cdef Py_ssize_t tn
    cdef const char* short
    cdef Item it
    cdef uint64_t j
    if cb_skip(s, 0, n, 0) != n:
        raise CarFormatError("has bytes after its value")
    cb_head(s, 0, n, &it)
    if it.major != 5:
        raise CarFormatError("is not a map")
    # one pass over the top-level keys (the first of a repeated key counts, as cb_find)
    i = it.head
    for j in range(it.arg):
        cb_head(s, i, n, &it)
        i += it.head
        x = <Py_ssize_t>it.arg
        tp = s + i
        i += x
        if x == 4 and memcmp(tp, b"text", 4) == 0:
            if v < 0:
                v = i
        elif x == 9 and memcmp(tp, b"createdAt", 9) == 0:
            if c < 0:
                c = i
        elif x == 5 and memcmp(tp, b"embed", 5) == 0:
            if e < 0:
                e = i
        elif x == 5 and memcmp(tp, b"reply", 5) == 0:
            if r < 0:
                r = i
        elif x == 6 and memcmp(tp, b"labels", 6) == 0:
            if lb < 0:
                lb = i
        i = cb_pass(s, i, n)
    f.text = f.created = f.parent = NULL
    f.text_n = f.created_n = f.parent_n = 0
    if v >= 0 and not cb_text_at(s, v, n, &f.text, &f.text_n):
        raise CarFormatError("has a `text` that is not a string")
    if c >= 0 and not cb_text_at(s, c, n, &f.created, &f.created_n):
        raise CarFormatError("has a `createdAt` that is not a string")
    f.has_media = False
    f.etype = NULL
    f.etype_n = 0
    f.has_embed = e >= 0
    if e >= 0:
        cb_json(embed, s, e, n, 0)
        t = cb_find(s, e, n, "$type")
        if cb_text_at(s, t, n, &tp, &tn):
            short = embed_short(tp, tn)
            if short != NULL:
                f.etype, f.etype_n = short, <Py_ssize_t>strlen(short)
            else:
                f.etype, f.etype_n = <const char*>tp, tn
        f.has_media = is_media_embed(s, e, n)
        if not f.has_media and cb_text_is(s, t, n, "app.bsky.embed.recordWithMedia"):
            f.has_media = is_media_embed(s, cb_find(s, e, n, "media"), n)
    f.is_reply = r >= 0
    if r >= 0:
        x = cb_find(s, r, n, "parent")
        if x >= 0 and not cb_text_at(s, cb_find(s, x, n, "uri"), n, &f.parent, &f.parent_n):
            f.parent = NULL
            f.parent_n = 0
    f.has_labels = lb >= 0
    if lb >= 0:
        cb_json(labels, s, lb, n, 0)
    return 0


cdef inline str utf8_str(const void* p, Py_ssize_t n):
    return PyUnicode_DecodeUTF8(<const char*>p, n, NULL) if n else ""


cdef tuple post_fields_c(const unsigned char* s, Py_ssize_t n):
    cdef PostFields f
    cdef OutBuf embed, labels
    ob_init(&embed, 256)
    try:
        ob_init(&labels, 64)
        try:
            post_fields_into(s, n, &f, &embed, &labels)
            return (utf8_str(f.text, f.text_n), utf8_str(f.created, f.created_n),
                    bool(f.has_media), bool(f.is_reply), utf8_str(f.parent, f.parent_n),
                    utf8_str(f.etype, f.etype_n),
                    utf8_str(embed.data, embed.len) if f.has_embed else None,
                    utf8_str(labels.data, labels.len) if f.has_labels else None)
        finally:
            ob_free(&labels)
    finally:
        ob_free(&embed)
