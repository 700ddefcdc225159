"""The compiled fast path against the reference exporter (helpers/reference.py), byte for byte,
on hypothesis-generated archives: any Unicode, invalid UTF-8, every timestamp form and
offset, odd stored JSON, NULLs, ties on created_at, filters, bad values, every batch size;
and on large archives (strategies.large_rows) that cross every size threshold of the core,
with every row source, several batch sizes and a tiny flush size.  Warnings are compared in
order."""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import skyexport
from skyexport.exporter.job import MAX_WARNINGS
from skyexport.exporter.options import tuning

from conftest import BATCH_SIZES, DATA_FILES, FORMATS, ROW_SOURCES
from helpers import strategies
from helpers.archives import make_archive
from helpers.reference import ReferenceBadValue, reference_export_with_warnings

SETTINGS = settings(max_examples=int(os.environ.get("SKYEXPORT_HYPOTHESIS_EXAMPLES", "40")),
                    deadline=None, suppress_health_check=[HealthCheck.too_slow])
_counter = itertools.count()


def _fresh(tmp: Path, name: str) -> Path:
    return tmp / f"{name}-{next(_counter)}"


def reference_outcome(archive: Path, fmt: str, **options: object):
    """("ok", bytes, the first MAX_WARNINGS (uri, column) warnings in order, their number)
    or ("bad", uri, column)."""
    ref_options = {k: v for k, v in options.items() if k in ("did", "since", "until",
                                                             "on_bad_value")}
    try:
        data, warnings = reference_export_with_warnings(archive, fmt, **ref_options)
    except ReferenceBadValue as exc:
        return ("bad", exc.uri, exc.column)
    return ("ok", data, warnings[:MAX_WARNINGS], len(warnings))


def fast_outcome(archive: Path, out: Path, fmt: str, **options: object):
    """The same for skyexport.export (the result keeps the first MAX_WARNINGS warnings)."""
    try:
        result = skyexport.export(archive, out, format=fmt, **options)
    except skyexport.BadValueError as exc:
        return ("bad", exc.uri, exc.column)
    return ("ok", result.data_file.read_bytes(),
            [(w.uri, w.column) for w in result.warnings], result.warnings_total)


def run_both(tmp: Path, rows: list[dict], fmt: str, *, not_null: bool = True,
             schema_version: int = 2, **options: object):
    """(fast path outcome, reference outcome) on an archive of `rows`."""
    archive = make_archive(_fresh(tmp, "a") .with_suffix(".db"), rows, not_null=not_null,
                           schema_version=schema_version)
    ref = reference_outcome(archive, fmt, **options)
    return fast_outcome(archive, _fresh(tmp, "out"), fmt, **options), ref


def assert_same(fast: tuple, ref: tuple, where: str) -> None:
    """fast == ref, saying where the bytes first differ (a plain assert would diff
    megabytes)."""
    if fast == ref:
        return
    if fast[0] == ref[0] == "ok" and fast[1] != ref[1]:
        a, b = fast[1], ref[1]
        lo, hi = 0, min(len(a), len(b))   # the longest common prefix, by bisection
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if a[:mid] == b[:mid] else (lo, mid - 1)
        at = lo
        raise AssertionError(f"{where}: data differs at byte {at} (fast {len(a)} bytes, "
                             f"reference {len(b)}): fast {a[max(0, at - 40):at + 40]!r} vs "
                             f"reference {b[max(0, at - 40):at + 40]!r}")
    shown = [(x if not isinstance(x, bytes) else f"<{len(x)} bytes>") for x in fast]
    wanted = [(x if not isinstance(x, bytes) else f"<{len(x)} bytes>") for x in ref]
    raise AssertionError(f"{where}: fast {shown} vs reference {wanted}")


@contextlib.contextmanager
def row_source(source: str) -> Iterator[None]:
    """Exports in this block read rows through `source` (the library's default)."""
    import skyexport.sources.archive

    old = skyexport.sources.archive.DEFAULT_ROW_SOURCE
    skyexport.sources.archive.DEFAULT_ROW_SOURCE = source
    try:
        yield
    finally:
        skyexport.sources.archive.DEFAULT_ROW_SOURCE = old


@pytest.mark.parametrize("fmt", ["json", "csv", "jsonl"])
@SETTINGS
@given(rows=strategies.rows(), batch_size=st.sampled_from(BATCH_SIZES))
def test_matches_reference(fmt: str, rows: list[dict], batch_size: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        fast, ref = run_both(Path(d), rows, fmt, batch_size=batch_size)
    assert fast == ref


@pytest.mark.parametrize("fmt", ["json", "csv", "jsonl"])
@SETTINGS
@given(rows=strategies.rows(not_null=False), batch_size=st.sampled_from(BATCH_SIZES),
       schema_version=st.sampled_from([1, 2]))
def test_nulls_and_v1_match_reference(fmt: str, rows: list[dict], batch_size: int,
                                      schema_version: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        fast, ref = run_both(Path(d), rows, fmt, not_null=False,
                             schema_version=schema_version, batch_size=batch_size)
    assert fast == ref


@pytest.mark.parametrize("fmt", ["json", "csv", "jsonl"])
@SETTINGS
@given(rows=strategies.rows(), bounds=strategies.bounds(),
       did=st.sampled_from([None, *strategies.DIDS]), batch_size=st.sampled_from(BATCH_SIZES))
def test_filters_match_reference(fmt: str, rows: list[dict], bounds, did, batch_size) -> None:
    since, until = bounds
    with tempfile.TemporaryDirectory() as d:
        archive = make_archive(Path(d) / "a.db", rows)
        ref = reference_outcome(archive, fmt, did=did, since=since, until=until)
        try:
            fast = fast_outcome(archive, Path(d) / "out", fmt, did=did, since=since,
                                until=until, batch_size=batch_size)
        except skyexport.OptionError:
            # since after until: both sides reject it (the reference has no option check).
            assert since is not None and until is not None
            return
        except skyexport.SelectionError:
            # A DID the archive holds no post of is refused, where the reference
            # writes an empty export: only then.
            con = sqlite3.connect(archive)
            try:
                held = con.execute("SELECT count(*) FROM posts WHERE did = ?", (did,))
                assert did is not None and held.fetchone()[0] == 0
            finally:
                con.close()
            return
    assert fast == ref


@pytest.mark.parametrize("fmt", ["json", "csv", "jsonl"])
@pytest.mark.parametrize("policy", ["error", "keep"])
@SETTINGS
@given(rows=strategies.rows(allow_bad=True), batch_size=st.sampled_from(BATCH_SIZES))
def test_bad_values_match_reference(fmt: str, policy: str, rows: list[dict],
                                    batch_size: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        fast, ref = run_both(Path(d), rows, fmt, on_bad_value=policy, batch_size=batch_size)
    assert fast == ref


@pytest.mark.parametrize("source", ["direct", "cursor"])
@pytest.mark.parametrize("fmt", ["json", "csv", "jsonl"])
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=strategies.rows(allow_bad=True, not_null=False), policy=st.sampled_from(
    ["error", "keep"]), batch_size=st.sampled_from(BATCH_SIZES))
def test_other_row_sources_match_reference(source: str, fmt: str, rows: list[dict],
                                           policy: str, batch_size: int) -> None:
    """The single-thread path and the APSW-cursor fallback feed the same encoders as the
    default pipe: they must agree with the reference too."""
    with row_source(source), tempfile.TemporaryDirectory() as d:
        fast, ref = run_both(Path(d), rows, fmt, not_null=False, on_bad_value=policy,
                             batch_size=batch_size)
    assert fast == ref


#: Batch sizes for the large archives: the usual ones plus the arena's row count around.
LARGE_BATCH_SIZES = (*BATCH_SIZES, 255, 256, 257)
#: Writer flush sizes: tiny ones (a flush after every row, and mid-row inside any value
#: over a few KiB), one just past an escape chunk, the default (None).
TINY_FLUSH_SIZES = (1, 7, 4097)
OTHER_FLUSH_SIZES = (16385, None)
LARGE_SETTINGS = settings(
    max_examples=int(os.environ.get("SKYEXPORT_LARGE_EXAMPLES", "6")), deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.mark.parametrize("fmt", FORMATS)
@LARGE_SETTINGS
@given(case=st.sampled_from([(False, "error"), (False, "error"), (True, "keep"),
                             (True, "error")]).flatmap(
           lambda c: st.tuples(strategies.large_rows(allow_bad=c[0]), st.just(c[1]))),
       batches=st.lists(st.sampled_from(LARGE_BATCH_SIZES), min_size=2, max_size=2),
       flushes=st.tuples(st.sampled_from(TINY_FLUSH_SIZES), st.sampled_from(OTHER_FLUSH_SIZES)))
def test_large_archives_match_reference(fmt: str, case: tuple, batches: list[int],
                                        flushes: tuple) -> None:
    """Values across 1 KiB, 16 KiB, 512 KiB, 1 MiB, 2 MiB and 4 MiB and runs of up to 700
    rows (bad values in half the archives), through every row source, each with a tiny
    flush size and another one, at two batch sizes: the same bytes and the same warnings,
    in order, as the reference."""
    rows, policy = case
    with tempfile.TemporaryDirectory() as d:
        archive = make_archive(Path(d) / "a.db", rows)
        ref = reference_outcome(archive, fmt, on_bad_value=policy)
        for source in ROW_SOURCES:
            for batch_size, flush_size in zip(batches, flushes, strict=True):
                out = _fresh(Path(d), "out")
                with row_source(source), tuning(flush_size=flush_size):
                    fast = fast_outcome(archive, out, fmt, on_bad_value=policy,
                                        batch_size=batch_size)
                shutil.rmtree(out, ignore_errors=True)
                assert_same(fast, ref, f"{source=} {batch_size=} {flush_size=}")


def test_data_file_names() -> None:
    assert DATA_FILES == {"json": "posts.json", "csv": "posts.csv", "jsonl": "posts.jsonl"}


def _deep(depth: int, where: str) -> bytes:
    """embed_data with image hashes beside (or around) `depth` levels of nesting in all."""
    if where == "beside":       # an unrelated key holds the nesting
        inner = b"[" * (depth - 1) + b"1" + b"]" * (depth - 1)
        return (b'{"images":[{"fullsize":"https://c/x/deep1@jpeg"}],"n":1e30,"d":' + inner
                + b',"external":{"thumb":"https://c/x/th2@jpeg"}}')
    if where == "inside":       # the nesting is inside an image, next to its fullsize
        inner = b'{"a":' * (depth - 4) + b'"\\"]}\\\\' + b'"' + b"}" * (depth - 4)
        return (b'{"media":{"images":[{"fullsize":"a/m1","alt":' + inner + b'}]},'
                b'"images":[{"fullsize":"a/i1"}]}')
    # the nesting is the fullsize itself: not a string, so no hash from it
    inner = b"[" * (depth - 3) + b"]" * (depth - 3)
    return b'{"images":[{"fullsize":' + inner + b'},{"fullsize":"a/i2@png"}]}'


@pytest.mark.parametrize("depth", [998, 999, 1000, 9999, 10000, 10001])
@pytest.mark.parametrize("where", ["beside", "inside", "fullsize"])
def test_media_files_at_any_depth_match_reference(tmp_path: Path, depth: int,
                                                  where: str) -> None:
    # MediaFiles went empty from 999 levels (a RecursionError read as "no
    # hashes"); Go, and the reference, read up to 10,000 levels and fail beyond.
    rows = [{"uri": "at://did:plc:d/app.bsky.feed.post/1", "has_media": 1,
             "embed_data": _deep(depth, where)}]
    fast, ref = run_both(tmp_path, rows, "csv", on_bad_value="keep")
    assert fast == ref
    field = fast[1].split(b"\n")[1].split(b",")[12]
    expected = {"beside": b"deep1;th2", "inside": b"i1;m1", "fullsize": b"i2"}[where]
    assert field == (expected if depth <= 10000 else b""), field


def test_media_files_deep_with_an_out_of_range_number(tmp_path: Path) -> None:
    # Go fails on a number beyond float64 anywhere, however deep: no hashes.
    deep = b"[" * 2000 + b"1e400" + b"]" * 2000
    rows = [{"uri": "at://did:plc:d/app.bsky.feed.post/1", "has_media": 1,
             "embed_data": b'{"images":[{"fullsize":"a/x"}],"d":' + deep + b"}"}]
    fast, ref = run_both(tmp_path, rows, "csv")
    assert fast == ref and fast[1].split(b"\n")[1].split(b",")[12] == b""


_EDGE_STAMPS = ["2024-03-10 23:30:00 -1000 HST", "2024-03-11 00:30:00 +1400 LINT",
                "2024-03-12T12:00:00Z", "2024-03-20 12:00:00 +0000 UTC",
                "2024-03-28 23:59:59.999999999 -1200 BIT", "2024-03-29 00:00:01 +1300 NZDT",
                "2024-03-30 12:00:00 +0000 UTC"]


@pytest.mark.parametrize("odd", [None, "null", 20240315, " 2024-03-15 10:00:00 +0000 UTC",
                                 "not a date", b"2024-03-15 10:00:00 +0000 UTC",
                                 "2024-03-15 junk", "2024-13-45T00:00:00Z"])
@pytest.mark.parametrize(("since", "until"), [
    ("2024-03-11", "2024-03-29"), ("2024-03-09", "2024-03-31"), ("2024-03-08", "2024-04-01"),
    ("2024-03-12", None), (None, "2024-03-28"), ("1970-01-01", "2100-12-31")])
def test_a_range_around_every_date_matches_reference(tmp_path: Path, odd: object,
                                                     since: str | None,
                                                     until: str | None) -> None:
    # The filter is left out when every date is readable and two days inside the range
    # (Snapshot._dates_cover_all); around those margins, and with one odd value (NULL, a
    # number, leading space, unreadable text, a BLOB), the posts must be the reference's.
    from helpers.archives import Blob

    stamps: list[object] = list(_EDGE_STAMPS)
    if odd is not None:
        stamps.append(None if odd == "null" else Blob(odd) if isinstance(odd, bytes) else odd)
    rows = [{"uri": f"at://did:plc:e/app.bsky.feed.post/{i}", "created_at": c}
            for i, c in enumerate(stamps)]
    fast, ref = run_both(tmp_path, rows, "jsonl", not_null=False, since=since, until=until,
                         on_bad_value="keep")
    assert fast == ref


def test_unreadable_dates_inside_a_range_that_holds_every_date(tmp_path: Path) -> None:
    """A range around every stored date leaves the SQL filter out (no test per row, a
    plain count: Snapshot.drop_unreadable) and the writer leaves out the unreadable dates
    it meets: the same posts and the same warnings, in the same order (export order,
    interleaved with bad values), as the reference; the totals say what was exported."""
    from skyexport.sources.archive import Archive, Selection

    stamps = ["2024-03-20T12:00:00Z", "2024-03-15 junk", "2024-03-12T12:00:00Z",
              "2024-13-45T00:00:00Z", "2024-03-10T00:00:00Z", "2024-03-14T00:00:00Z"]
    rows = [{"uri": f"at://did:plc:e/app.bsky.feed.post/{i}", "created_at": c,
             "indexed_at": "yesterday" if i == 2 else c if i % 2 == 0 else "2024-03-01T00:00:00Z"}
            for i, c in enumerate(stamps)]
    archive = make_archive(tmp_path / "a.db", rows)
    with Archive(archive) as arc:
        snap = arc.snapshot(Selection(None, (0, 0), (4133980799, 0)))
        assert snap.drop_unreadable and not snap.dates_filter
    events: list[skyexport.ExportProgress] = []
    for fmt in ("json", "csv", "jsonl"):
        ref = reference_outcome(archive, fmt, since="1970-01-01", until="2100-12-31",
                                on_bad_value="keep")
        out = _fresh(tmp_path, fmt)
        result = skyexport.export(archive, out, format=fmt, since="1970-01-01",
                                  until="2100-12-31", on_bad_value="keep",
                                  on_progress=events.append)
        fast = ("ok", result.data_file.read_bytes(),
                [(w.uri, w.column) for w in result.warnings], result.warnings_total)
        assert fast == ref
        assert result.post_count == 4 and result.manifest["post_count"] == 4
        assert [w.message for w in result.warnings if w.column == "created_at"
                and "left out" in w.message] == [
            "created_at '2024-13-45T00:00:00Z' cannot be read; left out by the date filter",
            "created_at '2024-03-15 junk' cannot be read; left out by the date filter"]
        last = events[-1]
        assert last.status == "completed"
        assert last.posts_processed == last.posts_total == 4
        # A narrower range takes the SQL filter: the same posts.
        narrow = skyexport.export(archive, _fresh(tmp_path, fmt), format=fmt,
                                  since="2024-03-10", until="2024-03-20", on_bad_value="keep")
        assert narrow.data_file.read_bytes() == ref[1]


def _decompress(codec: str, data: bytes) -> bytes:
    if codec == "gzip":
        import gzip
        return gzip.decompress(data)
    import zstandard
    return zstandard.ZstdDecompressor().decompressobj().decompress(data)


@pytest.mark.parametrize("codec", ["gzip", "zstd"])
@pytest.mark.parametrize("fmt", ["json", "csv", "jsonl"])
@settings(SETTINGS, max_examples=max(SETTINGS.max_examples // 4, 5))
@given(rows=strategies.rows(), level=st.sampled_from([None, 1, 9]))
def test_compressed_and_streamed_match_reference(fmt: str, codec: str, rows: list[dict],
                                                 level: int | None) -> None:
    """--compress (decompressed) and -o - (a stream) give the reference's bytes."""
    if codec == "zstd":
        pytest.importorskip("zstandard")
    import io
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        archive = make_archive(_fresh(tmp, "a").with_suffix(".db"), rows)
        ref, _ = reference_export_with_warnings(archive, fmt, on_bad_value="keep")
        r = skyexport.export(archive, _fresh(tmp, "out"), format=fmt, compress=codec,
                             compress_level=level, on_bad_value="keep")
        assert r.data_file is not None
        assert r.data_file.name == DATA_FILES[fmt] + {"gzip": ".gz", "zstd": ".zst"}[codec]
        assert _decompress(codec, r.data_file.read_bytes()) == ref
        assert r.uncompressed_bytes == len(ref)
        assert skyexport.verify(r.directory).ok          # type: ignore[arg-type]
        plain, packed = io.BytesIO(), io.BytesIO()
        skyexport.export(archive, plain, format=fmt, on_bad_value="keep")
        skyexport.export(archive, packed, format=fmt, compress=codec, compress_level=level,
                         on_bad_value="keep")
        assert plain.getvalue() == ref
        assert _decompress(codec, packed.getvalue()) == ref
