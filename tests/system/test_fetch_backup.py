"""A backup made by `skyexport fetch` used as users use it: fetched from a handle and then
exported, described and imported by real subprocesses of the command line, against real
parts on loopback (tests/helpers/netparts.py says which is which: arroba as the PDS, its
blob methods ours; dnsmasq for the handle's TXT record; a hand-written PLC directory).
Also: what `--pds` still checks when a handle is given, and the backups whose blobs an
export with --media cannot have (no blobs/, an empty one, a symlink, a FIFO, a file)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

import skyexport
from skyexport.remote import http as rhttp
from skyexport.remote import resolve as rresolve
from skyexport.remote.errors import ResolveError

from helpers.cli import one_line_failure, run
from helpers.netparts import (
    ArrobaPDS,
    Dnsmasq,
    did_doc,
    fill_account,
    needs_dnsmasq,
    plc_directory,
    run_driver,
)

DID_G = "did:plc:" + "g" * 24   # gail.test: posts with images, likes, follows
DID_T = "did:plc:" + "t" * 24   # text.test: posts without any image
DID_M = "did:plc:" + "h" * 24   # DNS names it for mallory.test, its document does not
HANDLE = "gail.test"

pytestmark = needs_dnsmasq


@pytest.fixture(scope="module")
def pds() -> Iterator[ArrobaPDS]:
    p = ArrobaPDS()
    p.create_repo(DID_G, HANDLE)
    p.blobs = fill_account(p, DID_G, 12, 5)  # type: ignore[attr-defined]
    p.create_repo(DID_T, "text.test")
    fill_account(p, DID_T, 6, 0)
    yield p
    p.close()


@pytest.fixture(autouse=True)
def seams() -> Iterator[None]:
    """No test seam left set for the next test (the in-process fetches)."""
    yield
    rhttp._TEST.update(policy=None, cafile=None, hosts={})
    rresolve._TEST.update(nameserver=None, plc=None)


def _served(pds: ArrobaPDS, did: str, cid: str) -> bytes:
    """A blob's bytes as the PDS serves them (getBlob over HTTP)."""
    url = f"{pds.url}/xrpc/com.atproto.sync.getBlob?did={did}&cid={cid}"
    with urllib.request.urlopen(url, timeout=30) as r:
        return bytes(r.read())


def _last_line(text: str) -> Path:
    return Path(text.splitlines()[-1])


def _fetch_cli(pds: ArrobaPDS, tmp_path: Path, did: str, handle: str, *args: object,
               doc_handle: str | None = None) -> tuple[int, str, str]:
    """`skyexport fetch HANDLE ARGS` in a child: the handle in dnsmasq's TXT records, the
    DID's document (naming `doc_handle`, by default the handle) in a PLC directory."""
    dns = Dnsmasq({f"_atproto.{handle}": [f"did={did}"]}, tmp_path)
    plc = plc_directory({did: did_doc(did, doc_handle or handle, pds.url)})
    try:
        return run_driver(tmp_path, {"nameserver": list(dns.address), "plc": plc.url},
                          "fetch", handle, *args)
    finally:
        dns.close()
        plc.close()


@pytest.fixture(scope="module")
def backup(pds: ArrobaPDS, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """gail.test fetched by the command line, from its handle."""
    tmp = tmp_path_factory.mktemp("fetched")
    code, out, err = _fetch_cli(pds, tmp, DID_G, HANDLE, "-o", tmp / "backups")
    assert code == 0, err
    assert out.splitlines()[0] == f"account: {HANDLE} ({DID_G})"
    b = _last_line(out)
    assert b == tmp / "backups" / DID_G
    return b


def test_fetch_a_handle_then_export_its_media(pds: ArrobaPDS, backup: Path,
                                              tmp_path: Path) -> None:
    """`fetch HANDLE` then `export BACKUP --media`: media/ holds every image the posts
    reference, each byte for byte the blob the PDS serves; media.sha256 and the manifest
    list them; `verify` passes; each post's embed in posts.json names its file."""
    blobs: dict[str, bytes] = pds.blobs  # type: ignore[attr-defined]
    assert len(blobs) == 5
    r = run("export", backup, "--media", "-o", tmp_path / "exports")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    exp = _last_line(r.stdout)
    assert "media files: 5" in r.stdout.splitlines()
    media = exp / "media"
    assert sorted(os.listdir(media)) == sorted(blobs)
    for cid in blobs:
        assert (media / cid).read_bytes() == blobs[cid] == _served(pds, DID_G, cid)
    sums = (exp / "media.sha256").read_text()
    assert sorted(sums.splitlines()) == sorted(
        f"{hashlib.sha256(data).hexdigest()}  media/{cid}" for cid, data in blobs.items())
    m = json.loads((exp / "manifest.json").read_text())
    assert m["media_count"] == 5 and m["post_count"] == 12
    assert m["checksums"]["media.sha256"]["sha256"] == hashlib.sha256(
        sums.encode()).hexdigest()
    assert m["files"] == ["posts.json", "media/ (5 files)"] and m["media_rows"] == 5
    assert m["warnings_total"] == 0
    fetched = json.loads((backup / "fetch.json").read_text())
    assert (m["source_car"]["did"], m["source_car"]["sha256"]) == (
        DID_G, fetched["repo"]["sha256"])
    ok = run("verify", exp)
    assert ok.returncode == 0 and ok.stdout.startswith("ok: "), ok.stderr
    posts = json.loads((exp / "posts.json").read_text())
    with_media = [p for p in posts if p["has_media"]]
    assert len(with_media) == 5
    for p in with_media:   # each post's embed names exactly one image: its own
        assert sum(cid in json.dumps(p["embed_data"]) for cid in blobs) == 1
    assert {cid for p in with_media for cid in blobs
            if cid in json.dumps(p["embed_data"])} == set(blobs)


def test_info_and_import_of_the_fetched_backup(pds: ArrobaPDS, backup: Path,
                                               tmp_path: Path) -> None:
    """`info BACKUP` describes its repo.car; `import BACKUP` makes an archive whose media
    rows point at the backup's blobs/ files, one per image, with their sizes."""
    blobs: dict[str, bytes] = pds.blobs  # type: ignore[attr-defined]
    r = run("info", backup)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert f"did: {DID_G}" in lines and "posts: 12" in lines
    assert "records: 21" in lines   # 12 posts, 6 likes, 3 follows
    assert ["app.bsky.feed.post", "12"] in [line.split() for line in lines]
    archive = tmp_path / "archive.db"
    r = run("import", backup, "--archive", archive)
    assert r.returncode == 0, r.stderr
    rev = json.loads((backup / "fetch.json").read_text())["rev"]
    assert r.stdout.splitlines() == [
        f"posts: 12 in the CAR ({DID_G}, rev {rev})",
        f"media: 5 rows from {backup / 'blobs'}", str(archive)]
    con = sqlite3.connect(archive)
    try:
        rows = con.execute("SELECT hash, file_path, size_bytes FROM media").fetchall()
    finally:
        con.close()
    assert sorted(rows) == sorted(
        (cid, os.path.relpath(backup / "blobs" / cid, tmp_path), len(data))
        for cid, data in blobs.items())


def test_pds_given_still_checks_the_handle(pds: ArrobaPDS, tmp_path: Path) -> None:
    """--pds replaces only the PDS: a handle whose DID document does not name it back is
    refused all the same (nothing written), by the command line and by fetch()."""
    fill_account(pds, _repo(pds, DID_M, "mallory.test"), 2, 0)
    code, out, err = _fetch_cli(pds, tmp_path, DID_M, "eve.test", "--pds", pds.url,
                                "-o", tmp_path / "out", doc_handle="mallory.test")
    one_line_failure((code, out, err), "handle eve.test resolves to did:plc:h",
                     "names mallory.test, not at://eve.test", quiet_stdout=True)
    assert not (tmp_path / "out").exists()
    dns = Dnsmasq({"_atproto.eve.test": [f"did={DID_M}"]}, tmp_path)
    plc = plc_directory({DID_M: did_doc(DID_M, "mallory.test", pds.url)})
    try:
        rresolve._TEST.update(nameserver=dns.address, plc=plc.url)
        with pytest.raises(ResolveError, match="names mallory.test, not at://eve.test"):
            skyexport.fetch("eve.test", tmp_path / "api", pds=pds.url)
        assert not (tmp_path / "api").exists()
        # the document out of reach: refused too, saying how to go without the check
        rresolve._TEST["plc"] = "http://127.0.0.1:9"
        rhttp._TEST["policy"] = _one_try()
        with pytest.raises(ResolveError, match=r"DID document of did:plc:h{24}.*with "
                           r"--pds too, a handle is checked against its DID's document; "
                           r"pass the DID instead of the handle to skip it"):
            skyexport.fetch("eve.test", tmp_path / "api", pds=pds.url)
        # the DID itself with --pds: no document asked for (the directory is down now)
        r = skyexport.fetch(DID_M, tmp_path / "api", pds=pds.url, blobs=False)
        assert (r.did, r.handle, r.pds, r.pds_from) == (DID_M, None, pds.url, "--pds")
    finally:
        dns.close()
        plc.close()


def _repo(pds: ArrobaPDS, did: str, handle: str) -> str:
    pds.create_repo(did, handle)
    return did


def _one_try() -> rhttp.Policy:
    p = rhttp.Policy()
    p.attempts = 1
    p.connect_timeout_s = 2.0
    return p


def test_pds_given_with_a_verified_handle_is_said(pds: ArrobaPDS, tmp_path: Path) -> None:
    """A handle that checks out, with --pds: the lines printed and fetch.json say which
    PDS was used and that it came from --pds; without --pds, -v says it came from the
    DID document and fetch.json records that."""
    code, out, err = _fetch_cli(pds, tmp_path, DID_T, "text.test", "--pds", pds.url + "/",
                                "-o", tmp_path / "a", "--no-blobs")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[:2] == [f"account: text.test ({DID_T})", f"pds: {pds.url} (from --pds)"]
    meta = json.loads((tmp_path / "a" / DID_T / "fetch.json").read_text())
    assert (meta["pds"], meta["pds_from"], meta["handle"], meta["handle_verified"]) == \
        (pds.url, "--pds", "text.test", True)
    code, out, err = _fetch_cli(pds, tmp_path, DID_T, "text.test", "-o", tmp_path / "b",
                                "--no-blobs", "-v")
    assert code == 0, err
    assert out.splitlines()[1] == f"pds: {pds.url} (from the DID document)"
    meta = json.loads((tmp_path / "b" / DID_T / "fetch.json").read_text())
    assert (meta["pds"], meta["pds_from"], meta["handle_verified"]) == \
        (pds.url, "did-document", True)


# --- backups whose blobs an export with --media cannot have ------------------------------

def _copy_backup(backup: Path, where: Path) -> Path:
    """The fetched backup's repo.car and fetch.json in a directory of the test's own."""
    b = where / DID_G
    b.mkdir(parents=True)
    shutil.copyfile(backup / "repo.car", b / "repo.car")
    shutil.copyfile(backup / "fetch.json", b / "fetch.json")
    return b


def _nothing_published(out: Path) -> None:
    assert not out.exists() or [n for n in os.listdir(out) if not n.startswith(".")] == []


def test_a_backup_fetched_without_blobs_is_refused_with_media(
        pds: ArrobaPDS, tmp_path: Path) -> None:
    """`fetch --no-blobs` then `export --media`: one line saying the backup has no blobs
    and to fetch without --no-blobs, exit 1, nothing published; the same with blobs/
    removed.  Without --media, or for an account whose posts reference no blob, the
    export goes ahead."""
    code, out, err = _fetch_cli(pds, tmp_path, DID_G, HANDLE, "-o", tmp_path / "backups",
                                "--no-blobs")
    assert code == 0, err
    b = _last_line(out)
    exports = tmp_path / "exports"
    line = one_line_failure(run("export", b, "--media", "-o", exports), quiet_stdout=True)
    assert line == (f"skyexport: error: {b}: 5 post(s) reference blobs, but the backup "
                    f"holds none (blobs/ is empty: fetched with --no-blobs); run `skyexport "
                    f"fetch {DID_G} -o {b.parent}` without --no-blobs to download them, or "
                    "leave --media out")
    _nothing_published(exports)
    os.rmdir(b / "blobs")
    line = one_line_failure(run("export", b, "--media", "-o", exports), quiet_stdout=True)
    assert "(no blobs/ directory: fetched with --no-blobs);" in line, line
    _nothing_published(exports)
    r = run("export", b, "-o", exports, "-q")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    code, out, err = _fetch_cli(pds, tmp_path, DID_T, "text.test", "-o", tmp_path / "t",
                                "--no-blobs")
    assert code == 0, err
    r = run("export", _last_line(out), "--media", "-o", tmp_path / "texp")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert "media files: 0" in r.stdout.splitlines()


def test_an_empty_blobs_is_refused_only_when_fetch_json_does_not_say_it_was_fetched(
        backup: Path, tmp_path: Path) -> None:
    """An empty blobs/ whose fetch.json says fetch did download blobs (the PDS served
    none of them) exports with --media: each post's missing blob is a warning, nothing
    refused.  The same empty blobs/ with no fetch.json (or one that is a symlink, or not
    fetch's JSON) is refused, with a question, not a claim, about --no-blobs."""
    b = _copy_backup(backup, tmp_path / "b")
    (b / "blobs").mkdir()
    r = run("export", b, "--media", "-o", tmp_path / "e1")
    assert r.returncode == 0, r.stderr
    assert "media files: 0" in r.stdout.splitlines()
    lines = r.stdout.splitlines()
    manifest = json.loads((Path(lines[-1]) / "manifest.json").read_text())
    warned = manifest["warnings"]
    assert f"warnings: {len(warned)} (listed in manifest.json)" in lines
    per_post = [w for w in warned if str(w.get("uri", "")).startswith("at://")]
    assert len(per_post) >= 1 and all(" is not in " in w["message"] for w in per_post), warned
    for meta in ("absent", "symlink", "garbage"):
        real = (b / "fetch.json").read_bytes()
        (b / "fetch.json").unlink()
        if meta == "symlink":
            (tmp_path / "elsewhere.json").write_bytes(real)
            (b / "fetch.json").symlink_to(tmp_path / "elsewhere.json")
        elif meta == "garbage":
            (b / "fetch.json").write_bytes(b"[not fetch's]")
        line = one_line_failure(run("export", b, "--media", "-o", tmp_path / "e2"),
                                quiet_stdout=True)
        assert "(blobs/ is empty: fetched with --no-blobs?)" in line, (meta, line)
        _nothing_published(tmp_path / "e2")
        if (b / "fetch.json").is_symlink() or (b / "fetch.json").exists():
            (b / "fetch.json").unlink()
        (b / "fetch.json").write_bytes(real)


@pytest.mark.parametrize("kind", ["symlink", "fifo", "file"])
def test_a_blobs_that_is_not_a_directory_is_refused(backup: Path, tmp_path: Path,
                                                    kind: str) -> None:
    """blobs/ a symlink (to the real blobs: still not followed), a FIFO or a file: export
    --media, info and import each refuse in one line that says what it is and what to
    do, exit 1, nothing published or imported, nothing opened (the FIFO does not hang)."""
    b = _copy_backup(backup, tmp_path / "b")
    blobs = b / "blobs"
    if kind == "symlink":
        blobs.symlink_to(backup / "blobs")
        what = "a symbolic link (never followed)"
    elif kind == "fifo":
        os.mkfifo(blobs)
        what = "a FIFO"
    else:
        blobs.write_bytes(b"not a directory")
        what = "a file"
    needle = f"{blobs}: not a directory but {what}; a backup's blobs/ is a directory"
    for args in (("export", b, "--media", "-o", tmp_path / "exports"),
                 ("import", b, "--archive", tmp_path / "a.db")):
        one_line_failure(run(*args), needle, quiet_stdout=True)
    _nothing_published(tmp_path / "exports")
    assert not (tmp_path / "a.db").exists()
    # what does not use the blobs goes ahead: info, and an export without --media
    r = run("info", b)
    assert r.returncode == 0 and f"did: {DID_G}" in r.stdout.splitlines(), r.stderr
    r = run("export", b, "-o", tmp_path / "e1", "-q")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    # --blobs given names the blobs: the backup's own blobs/ is not looked at
    r = run("export", b, "--media", "--blobs", backup / "blobs", "-o", tmp_path / "e2", "-q")
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(_last_line(r.stdout) / "media")) == sorted(
        os.listdir(backup / "blobs"))
