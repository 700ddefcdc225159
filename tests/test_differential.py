"""The compiled fast path against the reference exporter (tests/reference.py), byte for byte,
on hypothesis-generated archives: any Unicode, invalid UTF-8, every timestamp form and
offset, odd stored JSON, NULLs, ties on created_at, filters, bad values, every batch size."""

from __future__ import annotations

import itertools
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import skyexport

import strategies
from archives import default_row, make_archive
from conftest import BATCH_SIZES, DATA_FILES
from reference import ReferenceBadValue, reference_export_with_warnings

SETTINGS = settings(max_examples=int(os.environ.get("SKYEXPORT_HYPOTHESIS_EXAMPLES", "40")),
                    deadline=None, suppress_health_check=[HealthCheck.too_slow])
_counter = itertools.count()


def _fresh(tmp: Path, name: str) -> Path:
    return tmp / f"{name}-{next(_counter)}"


def run_both(tmp: Path, rows: list[dict], fmt: str, *, not_null: bool = True,
             schema_version: int = 2, **options: object):
    """(fast path outcome, reference outcome); an outcome is ("ok", bytes, warnings) or
    ("bad", uri, column)."""
    archive = make_archive(_fresh(tmp, "a") .with_suffix(".db"), rows, not_null=not_null,
                           schema_version=schema_version)
    ref_options = {k: v for k, v in options.items() if k in ("did", "since", "until",
                                                             "on_bad_value")}
    try:
        data, warnings = reference_export_with_warnings(archive, fmt, **ref_options)
        ref = ("ok", data, sorted(set(warnings)))
    except ReferenceBadValue as exc:
        ref = ("bad", exc.uri, exc.column)
    try:
        result = skyexport.export(archive, _fresh(tmp, "out"), format=fmt, **options)
        fast = ("ok", result.data_file.read_bytes(),
                sorted({(w.uri, w.column) for w in result.warnings}))
    except skyexport.BadValueError as exc:
        fast = ("bad", exc.uri, exc.column)
    return fast, ref


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
        try:
            fast, ref = run_both(Path(d), rows, fmt, did=did, since=since, until=until,
                                 batch_size=batch_size)
        except skyexport.OptionError:
            # since after until: both sides reject it (the reference has no option check).
            assert since is not None and until is not None
            return
        except skyexport.SelectionError:
            # A DID the archive holds no post of is an error, not an empty export (issue
            # 10.4); the reference, which has no such check, exports nothing.
            held = {r.get("did", default_row(i)["did"]) for i, r in enumerate(rows)}
            assert did is not None and did not in held
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
    old = os.environ.get("SKYEXPORT_ROW_SOURCE")
    os.environ["SKYEXPORT_ROW_SOURCE"] = source
    try:
        with tempfile.TemporaryDirectory() as d:
            fast, ref = run_both(Path(d), rows, fmt, not_null=False, on_bad_value=policy,
                                 batch_size=batch_size)
    finally:
        if old is None:
            del os.environ["SKYEXPORT_ROW_SOURCE"]
        else:
            os.environ["SKYEXPORT_ROW_SOURCE"] = old
    assert fast == ref


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
    # Issue 13.1: MediaFiles went empty from 999 levels (a RecursionError read as "no
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
    """Issue 10: --compress (decompressed) and -o - (a stream) give the reference's bytes."""
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
