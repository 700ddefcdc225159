# Test hooks: the core's inner encoders one value at a time, for the tests to compare with
# references.  _core.pyx gathers them (with the CAR parts' own) into `_core.testing`; none
# is a production name.

def reformat_json(bytes value, bint pretty=True, int level=2):
    """stored JSON re-formatted as the embed_data/labels fields are, or None
    when it is not valid JSON."""
    cdef OutBuf b
    ob_init(&b, 64)
    try:
        if ob_raw_json(&b, <const unsigned char*>PyBytes_AS_STRING(value),
                       PyBytes_GET_SIZE(value), level, pretty):
            return None
        return PyBytes_FromStringAndSize(b.data, b.len)
    finally:
        ob_free(&b)


def csv_field(bytes value):
    """`value` as one CSV field."""
    cdef OutBuf b
    ob_init(&b, 64)
    try:
        ob_csv_field(&b, <const unsigned char*>PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value))
        return PyBytes_FromStringAndSize(b.data, b.len)
    finally:
        ob_free(&b)


def media_files_of(embed_data):
    """the MediaFiles column for a has_media post with this embed_data, as the
    CSV writer computes it (media_files_fast where it can, else the exact path)."""
    if type(embed_data) is not bytes:
        return b""
    cdef OutBuf m
    ob_init(&m, 64)
    try:
        if media_files_into(&m, <const unsigned char*>PyBytes_AS_STRING(embed_data),
                            PyBytes_GET_SIZE(embed_data)) == 0:
            return PyBytes_FromStringAndSize(m.data, m.len)
    finally:
        ob_free(&m)
    return media_files(embed_data)


def media_files_exact(bytes embed_data):
    """MediaFiles by the exact path alone (Go's decoder as msgspec/json)."""
    return media_files(embed_data)


def media_files_fast_of(bytes embed_data):
    """MediaFiles by media_files_fast alone (valid JSON only), or None where it
    leaves the answer to the exact path."""
    cdef OutBuf m
    ob_init(&m, 64)
    try:
        if media_files_fast(&m, <const unsigned char*>PyBytes_AS_STRING(embed_data),
                            PyBytes_GET_SIZE(embed_data)) == 0:
            return PyBytes_FromStringAndSize(m.data, m.len)
        return None
    finally:
        ob_free(&m)


def format_real(double value):
    """a REAL stored in a JSON column, as it is written."""
    return go_format_float(value)
