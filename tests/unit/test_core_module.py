"""The compiled core's contracts at its seams: one RowSource protocol for every
row source, the sink's view released after each call, a running step interrupted by
RowPipe.close."""

from __future__ import annotations

import threading
import time

import apsw
import pytest

from skyexport import _core

ROW = (b"at://did:plc:x/app.bsky.feed.post/1", b"cid", b"did:plc:x", b"hi",
       b"2024-01-15 10:30:00 +0000 UTC", b"2024-01-15 10:30:00 +0000 UTC", 0, 1, 2, 3, 4, 0,
       b"", b"", None, None, b"2024-02-01 00:00:00 +0000 UTC")


def _connection() -> apsw.Connection:
    conn = apsw.Connection(":memory:")
    conn.enable_load_extension(True)
    conn.load_extension(_core.__file__, _core.EXTENSION_ENTRY_POINT)
    conn.enable_load_extension(False)
    return conn


def _encode(source: object, fmt: str = "jsonl", batch: int = 1000) -> bytes:
    out: list[bytes] = []
    w = _core.Writer(lambda view: out.append(bytes(view)), fmt, on_bad=None)
    while not w.exhausted:
        if not w.encode(source, batch, 1 << 22):
            break
    w.finish()
    return b"".join(out)


SELECT = ("SELECT 'at://did:plc:x/app.bsky.feed.post/' || x, 'cid', 'did:plc:x', 'hi', "
          "'2024-01-15 10:30:00 +0000 UTC', '2024-01-15 10:30:00 +0000 UTC', 0, 1, 2, 3, 4, "
          "0, '', '', NULL, NULL, '2024-02-01 00:00:00 +0000 UTC' FROM (WITH RECURSIVE "
          "c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT {n}) SELECT x FROM c) "
          "ORDER BY x")


@pytest.mark.parametrize("batch", [1, 7, 1000])
def test_every_row_source_gives_the_same_bytes(batch: int) -> None:
    conn = _connection()
    sql = SELECT.format(n=700)
    tuples = _encode(iter([tuple(
        (v.encode() if isinstance(v, str) else v) for v in r) for r in conn.execute(sql)]),
        batch=batch)
    stmt = _core.Statement(conn, sql)
    direct = _encode(stmt, batch=batch)
    stmt2 = _core.Statement(conn, sql)
    pipe = _core.RowPipe(stmt2)
    pipe.start()
    try:
        piped = _encode(pipe, batch=batch)
    finally:
        pipe.close()
        stmt.close()
        stmt2.close()
    wrapped = _encode(_core.TupleRows(conn.execute(sql)), batch=batch)
    assert tuples.count(b"\n") == 700
    assert tuples == direct == piped == wrapped


def test_tuple_rows_keep_their_values_alive() -> None:
    # Each row's bytes must outlive the generator's reference to them.
    def rows():
        for i in range(300):
            yield tuple(bytes(v) + b"" if isinstance(v, bytes) else v for v in ROW[:3]) + \
                (b"x" * (i + 1000),) + ROW[4:]
    data = _encode(_core.TupleRows(rows()))
    lines = data.split(b"\n")[:-1]
    assert len(lines) == 300 and all(b'"text":"' + b"x" * (i + 1000) + b'"' in line
                                     for i, line in enumerate(lines))


def test_the_sink_view_is_released_after_each_call() -> None:
    kept: list[memoryview] = []
    w = _core.Writer(kept.append, "jsonl", on_bad=None, flush_size=64)
    w.encode(iter([ROW] * 5), 10, 1 << 20)
    w.finish()
    assert kept
    for view in kept:
        with pytest.raises(ValueError):
            bytes(view)   # a kept view fails loudly: never stale or freed bytes


def test_close_interrupts_a_long_step() -> None:
    # The first step counts a billion generated rows (minutes, in constant memory) before
    # it can return a row; close() must not wait for it.
    conn = _connection()
    sql = SELECT.replace("SELECT x FROM c", "SELECT count(*) AS x FROM c").format(
        n=1_000_000_000)
    stmt = _core.Statement(conn, sql)
    pipe = _core.RowPipe(stmt)
    pipe.start()
    time.sleep(0.5)       # let the producer enter the sort (not a timing assertion)
    done = threading.Event()

    def close() -> None:
        pipe.close()
        done.set()

    threading.Thread(target=close, daemon=True).start()
    # A hang check, not a speed test: the sort alone would take far longer than this.
    assert done.wait(15), "RowPipe.close() waited for the step to finish"
    stmt.close()


def test_the_core_reads_the_schema_s_columns() -> None:
    from skyexport.schema import POST_COLUMNS

    assert _core.COLUMN_NAMES == POST_COLUMNS


def test_only_the_cli_reads_the_environment() -> None:
    # The library takes its settings as arguments; the command line maps
    # SKYEXPORT_* variables onto them.
    from pathlib import Path

    import skyexport

    package = Path(skyexport.__file__).parent
    readers = sorted(p.relative_to(package).as_posix() for p in package.rglob("*.py")
                     if any(word in p.read_text() for word in ("os.environ", "getenv(")))
    assert readers and all(r.startswith("cli/") for r in readers), readers


def test_the_core_declares_its_production_names_in_one_list() -> None:
    # _core.__all__ is the one list of production names: every public attribute of the
    # module is in it (or is the `testing` namespace, or an imported module), the stub
    # types exactly these, and no test hook is among them.
    import ast
    import types
    from pathlib import Path

    import skyexport

    public = {n for n in dir(_core) if not n.startswith("_")
              and not isinstance(getattr(_core, n), types.ModuleType)}
    assert public - set(_core.__all__) == {"testing"}
    stub = ast.parse((Path(skyexport.__file__).parent / "_core.pyi").read_text())
    typed = {node.name for node in stub.body
             if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    typed |= {node.target.id for node in stub.body
              if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)}
    assert typed == set(_core.__all__)
    hooks = set(vars(_core.testing))
    assert hooks and not hooks & set(_core.__all__)
    assert all(not hasattr(_core, h) for h in hooks)


def test_car_json_strings_are_escaped_as_json_marshal_does() -> None:
    # Two JSON string escapers on purpose: a CAR record's embed JSON is written as Go's
    # json.Marshal writes it (HTML-safe, \b and \f as \u00XX), the export's text as
    # json.Encoder with SetEscapeHTML(false) does.  The same string, two byte forms.
    s = "<a & b>\b\f\u2028"
    raw = s.encode()
    block = bytes([0x60 + len(raw)]) + raw  # a CBOR text string (shorter than 24 bytes)
    assert _core.testing.cbor_to_json(block) == b'"\\u003ca \\u0026 b\\u003e\\u0008\\u000c\\u2028"'
    assert _core.json_string(raw) == b'"<a & b>\\b\\f\\u2028"'
