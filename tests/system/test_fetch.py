"""`skyexport fetch`: backing up an account from the network, against real parts on
loopback (tests/helpers/netparts.py says which is which): arroba as the PDS (getRepo of
repositories written through its own XRPC API), dnsmasq for handles in DNS, an HTTPS server
with a test CA for /.well-known/atproto-did and did:web, and a hand-written XRPC server for
the faults a real PDS does not produce on demand.  Nothing reaches the internet."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import skyexport
from skyexport.remote import http as rhttp
from skyexport.remote import resolve as rresolve
from skyexport.remote.errors import AccountError, FetchError, ResolveError

from helpers.netparts import (
    ArrobaPDS,
    Dnsmasq,
    XrpcServer,
    _Req,
    blob_cid,
    fast_policy,
    fill_account,
    image_post,
    make_ca,
    needs_dnsmasq,
    xrpc_server,
)
from helpers.netparts import did_doc as _did_doc
from helpers.netparts import plc_directory as _plc
from helpers.netparts import run_driver as _run
from helpers.netparts import start_driver as _driver

PY = sys.executable
DID = "did:plc:" + "a" * 24
DID2 = "did:plc:" + "b" * 24
DID_A = "did:plc:" + "e" * 24  # alice.test on arroba, with images
HANDLE = "alice.test"

pytestmark = needs_dnsmasq


# --- fixtures -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pds() -> Iterator[ArrobaPDS]:
    p = ArrobaPDS()
    p.create_repo(DID, "plain.test")
    fill_account(p, DID, 30, 0)  # no images: replayed by the fault tests
    p.create_repo(DID_A, HANDLE)
    p.blobs = fill_account(p, DID_A, 30, 6)  # type: ignore[attr-defined]
    # a post whose image the PDS serves but listBlobs leaves out, one whose image is gone
    hidden = b"not listed" * 100
    cid = p.store.add(DID_A, hidden)
    p.store.hidden.add(cid)
    p.blobs[cid] = hidden  # type: ignore[attr-defined]
    p.create(DID_A, "app.bsky.feed.post", image_post(cid, len(hidden)))
    p.gone = blob_cid(b"deleted")  # type: ignore[attr-defined]
    p.gone_rkey = p.create(DID_A, "app.bsky.feed.post",  # type: ignore[attr-defined]
                           image_post(p.gone, 7))["uri"].rsplit("/", 1)[1]  # type: ignore[attr-defined]
    yield p
    p.close()


@pytest.fixture(autouse=True)
def seams() -> Iterator[None]:
    """Short pauses, and no test seam left set for the next test."""
    rhttp._TEST.update(policy=fast_policy(4, read_timeout_s=1.0), cafile=None, hosts={})
    rresolve._TEST.update(nameserver=None, plc=None)
    yield
    rhttp._TEST.update(policy=None, cafile=None, hosts={})
    rresolve._TEST.update(nameserver=None, plc=None)


def _raw(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as r:
        return bytes(r.read())


def _tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def _visible(backup: Path) -> list[str]:
    """Every file a user sees in the backup (not the hidden work directory)."""
    return [n for n in _tree(backup) if not n.startswith(".fetch-work")]


# --- end to end: handle -> DNS -> PLC -> arroba --------------------------------------

def test_backup_from_a_handle_in_dns(pds: ArrobaPDS, tmp_path: Path) -> None:
    """A handle published in DNS (dnsmasq), its did:plc document from a PLC directory,
    arroba as the PDS: repo.car is byte for byte what arroba's getRepo serves, every
    listed blob is in blobs/ under its CID with its bytes, and so is a blob a post
    references that listBlobs leaves out; a referenced blob the PDS no longer has is
    reported with its record; fetch.json says what was done, and the backup exports like
    any repository CAR."""
    dns = Dnsmasq({f"_atproto.{HANDLE}": [f"did={DID_A}"]}, tmp_path)
    plc = _plc({DID_A: _did_doc(DID_A, HANDLE, pds.url)})
    try:
        rresolve._TEST.update(nameserver=dns.address, plc=plc.url)
        r = skyexport.fetch(HANDLE, tmp_path / "out")
    finally:
        dns.close()
        plc.close()
    backup = tmp_path / "out" / DID_A
    assert r.directory == backup and r.handle == HANDLE and r.did == DID_A and r.pds == pds.url
    car = _raw(f"{pds.url}/xrpc/com.atproto.sync.getRepo?did={DID_A}")
    assert (backup / "repo.car").read_bytes() == car
    blobs: dict[str, bytes] = pds.blobs  # type: ignore[attr-defined]
    assert sorted(os.listdir(backup / "blobs")) == sorted(blobs)
    for cid, data in blobs.items():
        assert (backup / "blobs" / cid).read_bytes() == data
    assert r.records == 32 + 15 + 7 and r.records_added == r.records
    assert (r.blobs_listed, r.blobs_downloaded, r.blobs_present) == (8, 7, 0)
    gone: str = pds.gone  # type: ignore[attr-defined]
    assert r.blobs_missing == (
        f"blob {gone}, referenced by app.bsky.feed.post/{pds.gone_rkey}, is not "  # type: ignore[attr-defined]
        "served by the PDS (HTTP 400 BlobNotFound: no such blob)",)
    meta = json.loads((backup / "fetch.json").read_text())
    assert meta["handle"] == HANDLE and meta["did"] == DID_A and meta["pds"] == pds.url
    assert meta["repo"]["sha256"] == r.repo_sha256 and meta["repo"]["bytes"] == len(car)
    assert meta["repo"]["collections"] == {"app.bsky.feed.like": 15,
                                           "app.bsky.feed.post": 32,
                                           "app.bsky.graph.follow": 7}
    assert meta["this_run"]["blobs_downloaded"] == 7 and meta["rev"] == r.rev
    assert sorted(meta["blobs"]["referenced_unlisted"]) == sorted(
        [gone, *(c for c in blobs if c in pds.store.hidden)])
    assert _visible(backup) == sorted(["blobs", "fetch.json", "repo.car"]
                                      + [f"blobs/{c}" for c in blobs])
    out = subprocess.run([PY, "-m", "skyexport", "export", backup / "repo.car", "-o",
                          tmp_path / "exp", "--format", "jsonl"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and "posts: 32" in out.stdout, out.stderr


def test_rerun_is_incremental(tmp_path: Path) -> None:
    """A second run downloads neither the repository (the PDS reports the same rev) nor a
    blob already there; after new records and blobs, and a deleted record, it downloads
    the new repository and only the new blobs, and counts what changed."""
    p = ArrobaPDS()
    try:
        p.create_repo(DID2, "bob.test")
        fill_account(p, DID2, 4, 2)
        first = skyexport.fetch(DID2, tmp_path, pds=p.url)
        assert first.blobs_downloaded == 2
        p.store.gets.clear()
        again = skyexport.fetch(DID2, tmp_path, pds=p.url)
        assert not again.repo_changed and again.blobs_present == 2
        assert again.blobs_downloaded == 0 and p.store.gets == []
        posts = json.loads(_raw(f"{p.url}/xrpc/com.atproto.repo.listRecords?repo={DID2}"
                                "&collection=app.bsky.feed.post"))["records"]
        p.delete(DID2, "app.bsky.feed.post", posts[0]["uri"].rsplit("/", 1)[1])
        new = fill_account(p, DID2, 3, 1)
        third = skyexport.fetch(DID2, tmp_path, pds=p.url)
        assert third.repo_changed
        assert (third.records_added, third.records_removed) == (3 + 1 + 1, 1)
        assert third.blobs_downloaded == 1 and p.store.gets == list(new)
        assert (tmp_path / DID2 / "repo.car").read_bytes() == _raw(
            f"{p.url}/xrpc/com.atproto.sync.getRepo?did={DID2}")
    finally:
        p.close()


# --- resolution -----------------------------------------------------------------------

def _tls_parts(tmp_path: Path, names: list[str]) -> tuple[Path, tuple[Path, Path]]:
    ca, cert, key = make_ca(tmp_path, names)
    return ca, (cert, key)


def test_handle_over_https_and_did_web(pds: ArrobaPDS, tmp_path: Path) -> None:
    """No TXT record: the handle resolves through https://HANDLE/.well-known/atproto-did
    on a TLS server whose certificate a test CA signed (trusted through the test seam
    only); the DID is a did:web whose document comes from /.well-known/did.json."""
    did_web = "did:web:web.test"
    doc = _did_doc(did_web, "carol.test", pds.url)

    def handler(req: _Req) -> None:
        host = req.headers.get("Host", "")
        if req.route == "/.well-known/atproto-did" and host == "carol.test":
            req.send(200, f"{did_web}\n".encode(), {"Content-Type": "text/plain"})
        elif req.route == "/.well-known/did.json" and host == "web.test":
            req.json(doc)
        else:
            req.send(404, b"not here")
    ca, tls = _tls_parts(tmp_path, ["carol.test", "web.test"])
    dns = Dnsmasq({}, tmp_path)
    web = XrpcServer(handler, tls=tls)
    try:
        port = web.http.server_port
        rresolve._TEST["nameserver"] = dns.address
        rhttp._TEST["hosts"] = {"carol.test": ("127.0.0.1", port),
                                "web.test": ("127.0.0.1", port)}
        with pytest.raises(ResolveError, match=r"handle carol.test: no DID found.*"
                                               r"CERTIFICATE_VERIFY_FAILED"):
            skyexport.fetch("carol.test", tmp_path / "out", blobs=False)
        rhttp._TEST["cafile"] = str(ca)
        # a did:web account whose repo arroba does not hold: the PDS says RepoNotFound
        with pytest.raises(AccountError, match="is not hosted on this PDS .RepoNotFound."):
            skyexport.fetch("carol.test", tmp_path / "out", blobs=False)
        pds.create_repo(did_web, "carol.test")
        r = skyexport.fetch("carol.test", tmp_path / "out", blobs=False)
        assert (r.handle, r.did, r.pds) == ("carol.test", did_web, pds.url)
        assert (tmp_path / "out" / did_web / "repo.car").is_file()
    finally:
        dns.close()
        web.close()


def test_handle_whose_document_does_not_name_it_back(tmp_path: Path) -> None:
    """DNS says alice.test is DID, but DID's document claims another handle: refused
    before anything is downloaded, the step named."""
    dns = Dnsmasq({f"_atproto.{HANDLE}": [f"did={DID}"]}, tmp_path)
    plc = _plc({DID: _did_doc(DID, "mallory.test", "http://127.0.0.1:9")})
    try:
        rresolve._TEST.update(nameserver=dns.address, plc=plc.url)
        with pytest.raises(ResolveError, match=r"handle alice.test resolves to "
                           r"did:plc:a{24}, but that DID's document names mallory.test, "
                           r"not at://alice.test"):
            skyexport.fetch(HANDLE, tmp_path / "out")
    finally:
        dns.close()
        plc.close()
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("records", "error"), [
    ([], r"no TXT record.*https://nobody.test/.well-known/atproto-did"),
    ([f"did={DID}", f"did={DID2}"], r"2 different did= records \(ambiguous\)"),
    (["did=../../etc"], r"the record holds '../../etc', not a DID"),
])
def test_bad_dns_answers(tmp_path: Path, records: list[str], error: str) -> None:
    """Missing, ambiguous or malformed TXT answers are each named; nothing is written."""
    dns = Dnsmasq({"_atproto.nobody.test": records} if records else {}, tmp_path)
    try:
        rresolve._TEST["nameserver"] = dns.address
        rhttp._TEST["hosts"] = {"nobody.test": ("127.0.0.1", 9)}  # nothing listens
        with pytest.raises(ResolveError, match=error):
            skyexport.fetch("nobody.test", tmp_path / "out")
    finally:
        dns.close()
    assert not (tmp_path / "out").exists()


def test_did_document_problems(tmp_path: Path) -> None:
    """An unknown did:plc, a document for another DID, one without a PDS: each named."""
    docs = {DID: {"id": DID2, "alsoKnownAs": []},
            DID2: {"id": DID2, "alsoKnownAs": ["at://bob.test"], "service": []}}
    plc = _plc(docs)
    try:
        rresolve._TEST["plc"] = plc.url
        with pytest.raises(ResolveError, match="it is not the document of"):
            skyexport.fetch(DID, tmp_path)
        with pytest.raises(ResolveError, match=r"no #atproto_pds service"):
            skyexport.fetch(DID2, tmp_path)
        with pytest.raises(ResolveError, match=r"DID document of did:plc:c{24}.*HTTP 404"):
            skyexport.fetch("did:plc:" + "c" * 24, tmp_path)
    finally:
        plc.close()


# --- account states -------------------------------------------------------------------

@pytest.mark.parametrize(("name", "words"), [
    ("RepoDeactivated", "is deactivated"), ("RepoTakendown", "was taken down by its PDS"),
    ("RepoSuspended", "is suspended"), ("RepoNotFound", "is not hosted on this PDS")])
def test_account_errors_are_named(tmp_path: Path, name: str, words: str) -> None:
    """The XRPC error of getRepo (and getLatestCommit) becomes one line naming it."""
    with xrpc_server(lambda req: req.xrpc_error(400, name, "nope")) as s:
        with pytest.raises(AccountError, match=f"the account {words} .{name}.") as e:
            skyexport.fetch(DID, tmp_path, pds=s.url)
    assert e.value.xrpc == name
    assert os.listdir(tmp_path) == []


def test_deactivated_on_arroba(tmp_path: Path) -> None:
    """A repository deactivated on arroba: the PDS's own RepoDeactivated is reported."""
    p = ArrobaPDS()
    try:
        did = "did:plc:" + "d" * 24
        repo = p.create_repo(did, "dave.test")
        p.server_mod.storage.deactivate_repo(repo)
        with pytest.raises(AccountError, match="is deactivated .RepoDeactivated."):
            skyexport.fetch(did, tmp_path, pds=p.url)
    finally:
        p.close()


# --- faults of the repository download (the hand-written XRPC server) -----------------

@pytest.fixture(scope="module")
def car(pds: ArrobaPDS) -> bytes:
    """The repository arroba serves for DID (real bytes, replayed by the fault server)."""
    return _raw(f"{pds.url}/xrpc/com.atproto.sync.getRepo?did={DID}")


def _repo_server(car: bytes, get_repo: Any) -> XrpcServer:
    """getRepo by `get_repo(req, n)` (n: the how-manyth call), an empty blob list."""
    count = [0]
    lock = threading.Lock()

    def handler(req: _Req) -> None:
        if req.route == "/xrpc/com.atproto.sync.getRepo":
            with lock:
                count[0] += 1
                n = count[0]
            get_repo(req, n)
        elif req.route == "/xrpc/com.atproto.sync.listBlobs":
            req.json({"cids": []})
        else:
            req.xrpc_error(501, "MethodNotImplemented")
    return XrpcServer(handler)


def _drop_after(req: _Req, body: bytes, sent: int) -> None:
    """Promise all of `body`, send `sent` bytes of it, and close the connection."""
    req.send_response(200)
    req.send_header("Content-Length", str(len(body)))
    req.end_headers()
    req.wfile.write(body[:sent])
    req.wfile.flush()
    req.close_connection = True
    req.connection.shutdown(2)


def _fetch_repo(url: str, out: Path, **kw: Any) -> skyexport.FetchResult:
    return skyexport.fetch(DID, out, pds=url, **kw)


def test_a_failure_before_the_check_leaves_no_scan_behind(
        car: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Anything failing between the download and the check (here the check itself, before
    it takes the pass that read the bytes as they arrived) stops that pass: its thread
    ends and its scratch descriptors (the block index, the good CIDs) are closed, not left
    open until the process ends; the partial repository is removed."""
    import skyexport.remote.backup as backup_mod

    def check_car(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("stopped before the check")

    with contextlib_closing(_repo_server(car, lambda req, n: req.send(200, car))) as s:
        _fetch_repo(s.url, tmp_path / "warm", blobs=False)  # the server's own descriptors
        monkeypatch.setattr(backup_mod, "check_car", check_car)
        fds = set(os.listdir("/proc/self/fd"))
        with pytest.raises(RuntimeError, match="stopped before the check"):
            _fetch_repo(s.url, tmp_path / "out", blobs=False)
        left = []
        for fd in set(os.listdir("/proc/self/fd")) - fds:
            try:
                left.append(os.readlink(f"/proc/self/fd/{fd}"))
            except FileNotFoundError:
                pass  # closed since (listdir's own descriptor, among others)
        assert not [p for p in left if "car-index" in p or "repo.car" in p], left
        assert not [t for t in threading.enumerate() if t.name == "skyexport-repo-scan"]
    assert not [n for _, _, names in os.walk(tmp_path / "out") for n in names
                if "repo.car" in n]


def test_connection_dropped_mid_body_is_retried(car: bytes, tmp_path: Path) -> None:
    """The first answer stops half-way (the connection closed): the partial body is
    thrown away and the request made again; repo.car is the whole repository."""
    def get_repo(req: _Req, n: int) -> None:
        if n == 1:
            _drop_after(req, car, len(car) // 2)
        else:
            req.send(200, car)
    with contextlib_closing(_repo_server(car, get_repo)) as s:
        r = _fetch_repo(s.url, tmp_path)
        assert len(s.calls("com.atproto.sync.getRepo")) == 2
    assert (tmp_path / DID / "repo.car").read_bytes() == car and r.retries == 1


def test_body_longer_than_its_content_length(car: bytes, tmp_path: Path) -> None:
    """Bytes past the promised Content-Length are not part of the body: repo.car is the
    promised bytes exactly, checked (a reader that reads to the end of the connection
    would store the garbage too)."""
    def get_repo(req: _Req, n: int) -> None:
        req.send(200, car + b"\x00garbage" * 1000, length=len(car),
                 headers={"Connection": "close"})
    with contextlib_closing(_repo_server(car, get_repo)) as s:
        _fetch_repo(s.url, tmp_path)
    assert (tmp_path / DID / "repo.car").read_bytes() == car


def test_500_then_success(car: bytes, tmp_path: Path) -> None:
    def get_repo(req: _Req, n: int) -> None:
        if n < 3:
            req.xrpc_error(500 if n == 1 else 502, "InternalServerError")
        else:
            req.send(200, car)
    with contextlib_closing(_repo_server(car, get_repo)) as s:
        r = _fetch_repo(s.url, tmp_path)
        assert len(s.calls("com.atproto.sync.getRepo")) == 3
    assert r.retries == 2 and (tmp_path / DID / "repo.car").read_bytes() == car


@pytest.mark.parametrize("header", ["Retry-After", "RateLimit-Reset"])
def test_429_waits_as_told(car: bytes, tmp_path: Path, header: str) -> None:
    """429 with Retry-After (seconds) or RateLimit-Reset (atproto's Unix time): the next
    try comes no sooner than the server asked (the policy's own pause is 10 ms here)."""
    times: list[float] = []

    def get_repo(req: _Req, n: int) -> None:
        times.append(time.monotonic())
        if n == 1:
            value = "1" if header == "Retry-After" else str(int(time.time()) + 2)
            req.xrpc_error(429, "RateLimitExceeded") if False else req.send(
                429, b'{"error":"RateLimitExceeded"}', {header: value})
        else:
            req.send(200, car)
    with contextlib_closing(_repo_server(car, get_repo)) as s:
        _fetch_repo(s.url, tmp_path)
    assert len(times) == 2 and times[1] - times[0] >= 0.9


def test_429_asking_too_long_gives_up_at_once(car: bytes, tmp_path: Path) -> None:
    with contextlib_closing(_repo_server(
            car, lambda req, n: req.send(429, b"{}", {"Retry-After": "86400"}))) as s:
        with pytest.raises(FetchError, match=r"asks to wait 86400 s \(HTTP 429\); try again "
                                             "later"):
            _fetch_repo(s.url, tmp_path)
        assert len(s.calls("com.atproto.sync.getRepo")) == 1


def test_endless_body_is_cut_at_the_cap(car: bytes, tmp_path: Path) -> None:
    """A body with no Content-Length that never ends is cut at --max-repo-size; the
    previous repo.car stays as it was and no temporary file is left."""
    with contextlib_closing(_repo_server(car, lambda req, n: req.send(200, car))) as s:
        _fetch_repo(s.url, tmp_path, blobs=False)
    before = (tmp_path / DID / "repo.car").read_bytes()

    def endless(req: _Req, n: int) -> None:
        req.send_response(200)
        req.send_header("Connection", "close")
        req.end_headers()
        chunk = b"\xa5" * 65536
        for _ in range(10_000):  # 640 MB at most: bounded, the client stops long before
            req.wfile.write(chunk)
    with contextlib_closing(_repo_server(car, endless)) as s:
        with pytest.raises(FetchError, match=r"the body grew past the cap of 1,000,000 "
                                             r"bytes and was cut \(--max-repo-size\)"):
            _fetch_repo(s.url, tmp_path, max_repo_size=1_000_000)
    assert (tmp_path / DID / "repo.car").read_bytes() == before
    assert _tree(tmp_path / DID) == ["blobs", "fetch.json", "repo.car"]


def test_announced_length_over_the_cap_is_refused_unread(car: bytes, tmp_path: Path) -> None:
    with contextlib_closing(_repo_server(car, lambda req, n: req.send(200, car))) as s:
        with pytest.raises(FetchError, match=f"announces {len(car):,} bytes, more than "
                                             "the cap of 100"):
            _fetch_repo(s.url, tmp_path, max_repo_size=100)
    assert os.listdir(tmp_path) == []


def test_stalled_body_times_out(car: bytes, tmp_path: Path) -> None:
    """Headers, a few bytes, then silence: the read timeout (1 s here) ends each try."""
    stop = threading.Event()

    def stall(req: _Req, n: int) -> None:
        req.send_response(200)
        req.send_header("Content-Length", str(len(car)))
        req.end_headers()
        req.wfile.write(car[:10])
        req.wfile.flush()
        stop.wait(30)
    with contextlib_closing(_repo_server(car, stall)) as s:
        t0 = time.monotonic()
        with pytest.raises(FetchError, match=r"getRepo for .*: failed 4 times .last: "
                                             r"(The read operation )?timed out"):
            _fetch_repo(s.url, tmp_path)
        stop.set()
    assert time.monotonic() - t0 < 20
    assert os.listdir(tmp_path) == []


def test_damaged_or_foreign_repository_is_refused(car: bytes, tmp_path: Path) -> None:
    """A repository whose block does not match its CID, or the repository of another
    account: refused, the previous repo.car kept, nothing temporary left."""
    with contextlib_closing(_repo_server(car, lambda req, n: req.send(200, car))) as s:
        _fetch_repo(s.url, tmp_path, blobs=False)
    good = (tmp_path / DID / "repo.car").read_bytes()
    bad = bytearray(car)
    i = bad.index(b"post 7")
    bad[i:i + 6] = b"post 8"
    with contextlib_closing(_repo_server(car, lambda req, n: req.send(200, bytes(bad)))) as s:
        with pytest.raises(FetchError, match=r"the repository from the PDS is not sound: .*"
                                             r"does not match its CID"):
            _fetch_repo(s.url, tmp_path, blobs=False)
    assert (tmp_path / DID / "repo.car").read_bytes() == good
    with contextlib_closing(_repo_server(car, lambda req, n: req.send(200, car))) as s:
        with pytest.raises(FetchError, match=f"the PDS sent the repository of {DID}, not "
                                             f"of {DID2}"):
            skyexport.fetch(DID2, tmp_path, pds=s.url)
    assert _tree(tmp_path / DID) == ["blobs", "fetch.json", "repo.car"]
    assert not (tmp_path / DID2).exists()


def contextlib_closing(s: XrpcServer) -> Any:
    import contextlib
    return contextlib.closing(s)


# --- faults of the blobs --------------------------------------------------------------

GOOD = [os.urandom(3000 + i) for i in range(5)]
GOOD_CIDS = [blob_cid(b) for b in GOOD]


def _blob_server(car: bytes, pages: list[list[str]], get_blob: Any) -> XrpcServer:
    """listBlobs serves `pages` (cursor = the page number), getBlob by get_blob(req, cid)."""
    def handler(req: _Req) -> None:
        if req.route == "/xrpc/com.atproto.sync.getRepo":
            req.send(200, car)
        elif req.route == "/xrpc/com.atproto.sync.listBlobs":
            i = int(req.query.get("cursor", "0"))
            out: dict[str, Any] = {"cids": pages[i] if i < len(pages) else []}
            if i + 1 < len(pages):
                out["cursor"] = str(i + 1)
            req.json(out)
        elif req.route == "/xrpc/com.atproto.sync.getBlob":
            get_blob(req, req.query["cid"])
        else:
            req.xrpc_error(501, "MethodNotImplemented")
    return XrpcServer(handler)


def _serve_good(req: _Req, cid: str) -> None:
    if cid in GOOD_CIDS:
        req.send(200, GOOD[GOOD_CIDS.index(cid)])
    else:
        req.xrpc_error(400, "BlobNotFound", "Blob not found")


def test_blobs_paged_by_cursor(car: bytes, tmp_path: Path) -> None:
    pages = [GOOD_CIDS[:2], GOOD_CIDS[2:4], GOOD_CIDS[4:]]
    with contextlib_closing(_blob_server(car, pages, _serve_good)) as s:
        r = _fetch_repo(s.url, tmp_path)
        assert [q.get("cursor") for q in s.calls("com.atproto.sync.listBlobs")] == \
            [None, "1", "2"]
    assert r.blobs_downloaded == 5
    for cid, data in zip(GOOD_CIDS, GOOD, strict=False):
        assert (tmp_path / DID / "blobs" / cid).read_bytes() == data


def test_hostile_cids_never_become_file_names(car: bytes, tmp_path: Path) -> None:
    """listBlobs naming `../../etc/passwd`, an absolute path, a CID of another codec or
    an upper-case one: refused (listed as such), nothing requested or written for them."""
    hostile = ["../../etc/passwd", "/etc/passwd", "bafkrei" + "a" * 52 + "/..",
               "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm",
               GOOD_CIDS[0].upper(), ".."]
    with contextlib_closing(_blob_server(car, [hostile + GOOD_CIDS[:1]], _serve_good)) as s:
        r = _fetch_repo(s.url, tmp_path / "out")
        asked = [q["cid"] for q in s.calls("com.atproto.sync.getBlob")]
    assert asked == GOOD_CIDS[:1]
    assert r.blobs_refused == tuple(hostile)
    assert _tree(tmp_path) == ["out", f"out/{DID}", f"out/{DID}/blobs",
                               f"out/{DID}/blobs/{GOOD_CIDS[0]}", f"out/{DID}/fetch.json",
                               f"out/{DID}/repo.car"]
    meta = json.loads((tmp_path / "out" / DID / "fetch.json").read_text())
    assert meta["blobs"]["not_cids"] == hostile


def test_blob_with_wrong_bytes_is_discarded(car: bytes, tmp_path: Path) -> None:
    """A blob whose bytes do not hash to its CID is not kept (and is reported); a blob
    not served (BlobNotFound) is reported; neither is fatal."""
    missing = blob_cid(b"never served")

    def serve(req: _Req, cid: str) -> None:
        if cid == GOOD_CIDS[1]:
            req.send(200, GOOD[1][:-1] + b"X")
        else:
            _serve_good(req, cid)
    with contextlib_closing(_blob_server(car, [GOOD_CIDS[:3] + [missing]], serve)) as s:
        r = _fetch_repo(s.url, tmp_path)
    assert sorted(os.listdir(tmp_path / DID / "blobs")) == sorted([GOOD_CIDS[0],
                                                                   GOOD_CIDS[2]])
    assert r.blobs_bad == (f"blob {GOOD_CIDS[1]}: its 3,001 bytes do not match its CID "
                           "(SHA-256); discarded",)
    assert r.blobs_missing == (f"blob {missing} is not served by the PDS (HTTP 400 "
                               "BlobNotFound: Blob not found)",)
    assert _visible(tmp_path / DID) == sorted(
        ["blobs", "fetch.json", "repo.car", f"blobs/{GOOD_CIDS[0]}", f"blobs/{GOOD_CIDS[2]}"])


def test_redirects_only_to_http(car: bytes, tmp_path: Path) -> None:
    """A redirect to another http URL is followed; one to file:// is refused (the blob
    is reported failed, and since a rerun meets the same redirect, the error does not
    suggest one)."""
    def serve(req: _Req, cid: str) -> None:
        if cid == GOOD_CIDS[0]:
            req.send(302, b"", {"Location": "file:///etc/passwd"})
        elif cid == GOOD_CIDS[1] and "moved" not in req.path:
            req.send(307, b"", {"Location": f"/xrpc/com.atproto.sync.getBlob?cid={cid}"
                                            "&moved=1"})
        else:
            _serve_good(req, cid)
    with contextlib_closing(_blob_server(car, [GOOD_CIDS[:3]], serve)) as s:
        with pytest.raises(FetchError, match=r"1 blob\(s\) could not be downloaded "
                           r"\(first: blob b\w+: the server redirected to a file: URL "
                           r"\(file:///etc/passwd\); only http and https redirects are "
                           r"followed\): the PDS redirects them where skyexport does not "
                           r"follow, so running again will not fetch them; fetch.json "
                           r"lists them \(ask the PDS's operator\)$"):
            _fetch_repo(s.url, tmp_path)
    assert sorted(os.listdir(tmp_path / DID / "blobs")) == sorted(GOOD_CIDS[1:3])
    meta = json.loads((tmp_path / DID / "fetch.json").read_text())
    assert len(meta["blobs"]["failed"]) == 1


def test_a_rerun_is_suggested_only_for_what_a_rerun_can_fetch(car: bytes,
                                                              tmp_path: Path) -> None:
    """One blob redirected to file:// (refused: a rerun meets it again), one whose
    server fails every attempt with a 503 (a rerun may get it): the error suggests running
    again, and says how many of the failures it will not help."""
    def serve(req: _Req, cid: str) -> None:
        if cid == GOOD_CIDS[0]:
            req.send(302, b"", {"Location": "file:///etc/passwd"})
        elif cid == GOOD_CIDS[1]:
            req.xrpc_error(503, "Unavailable")
        else:
            _serve_good(req, cid)
    with contextlib_closing(_blob_server(car, [GOOD_CIDS[:3]], serve)) as s:
        with pytest.raises(FetchError, match=r"^2 blob\(s\) could not be downloaded "
                           r"\(first: blob b\w+: .*503.*\); run the same command again to "
                           r"fetch the rest \(1 of them redirected where skyexport does "
                           r"not follow: fetch.json lists them\)$"):
            _fetch_repo(s.url, tmp_path)
    assert sorted(os.listdir(tmp_path / DID / "blobs")) == [GOOD_CIDS[2]]
    assert len(json.loads((tmp_path / DID / "fetch.json").read_text())["blobs"]["failed"]) == 2


def test_blob_faults_are_retried(car: bytes, tmp_path: Path) -> None:
    """Per blob: a dropped connection, a 503, a 429 with Retry-After: each retried."""
    seen: dict[str, int] = {}
    lock = threading.Lock()

    def serve(req: _Req, cid: str) -> None:
        with lock:
            seen[cid] = seen.get(cid, 0) + 1
            n = seen[cid]
        data = GOOD[GOOD_CIDS.index(cid)]
        if n == 1 and cid == GOOD_CIDS[0]:
            _drop_after(req, data, 100)
        elif n == 1 and cid == GOOD_CIDS[1]:
            req.xrpc_error(503, "Unavailable")
        elif n == 1 and cid == GOOD_CIDS[2]:
            req.send(429, b"{}", {"Retry-After": "0"})
        else:
            req.send(200, data)
    with contextlib_closing(_blob_server(car, [GOOD_CIDS], serve)) as s:
        r = _fetch_repo(s.url, tmp_path)
    assert r.blobs_downloaded == 5 and r.retries == 3
    assert seen == {c: 2 if i < 3 else 1 for i, c in enumerate(GOOD_CIDS)}
    for cid, data in zip(GOOD_CIDS, GOOD, strict=False):
        assert (tmp_path / DID / "blobs" / cid).read_bytes() == data


def test_blob_over_its_cap_is_skipped(car: bytes, tmp_path: Path) -> None:
    with contextlib_closing(_blob_server(car, [GOOD_CIDS[:2]], _serve_good)) as s:
        r = _fetch_repo(s.url, tmp_path, max_blob_size=3000)
    assert os.listdir(tmp_path / DID / "blobs") == [GOOD_CIDS[0]]
    assert "announces 3,001 bytes, more than the cap of 3,000 (--max-blob-size)" in \
        r.blobs_bad[0]


def test_a_corrupt_blob_on_disk_is_downloaded_again(car: bytes, tmp_path: Path) -> None:
    """A file in blobs/ whose bytes do not match its name (a crash, a disk fault) is
    replaced; a symlink there is never followed."""
    blobs = tmp_path / DID / "blobs"
    blobs.mkdir(parents=True)
    (blobs / GOOD_CIDS[0]).write_bytes(b"torn")
    secret = tmp_path / "secret"
    secret.write_bytes(GOOD[1])
    (blobs / GOOD_CIDS[1]).symlink_to(secret)
    with contextlib_closing(_blob_server(car, [GOOD_CIDS[:3]], _serve_good)) as s:
        r = _fetch_repo(s.url, tmp_path)
        asked = sorted(q["cid"] for q in s.calls("com.atproto.sync.getBlob"))
    assert asked == sorted(GOOD_CIDS[:3]) and r.blobs_downloaded == 3
    for cid, data in zip(GOOD_CIDS[:3], GOOD, strict=False):
        assert not (blobs / cid).is_symlink() and (blobs / cid).read_bytes() == data
    assert secret.read_bytes() == GOOD[1]


# --- the command, signals and memory (subprocesses) ------------------------------------

def _rev(car: bytes, tmp_path: Path) -> str:
    from skyexport.sources.car.info import car_info
    f = tmp_path / "rev.car"
    f.write_bytes(car)
    rev = car_info(f)["rev"]
    f.unlink()
    assert isinstance(rev, str)
    return rev


@pytest.mark.parametrize(("signum", "code", "word"), [(signal.SIGINT, 130, "interrupted"),
                                                      (signal.SIGTERM, 143, "terminated")])
def test_signal_mid_download_then_rerun(car: bytes, tmp_path: Path, signum: int, code: int,
                                        word: str) -> None:
    """SIGINT (or SIGTERM) while blobs download (slowly): exit 130 (143) with one line,
    only whole files visible (repo.car, fetch.json, blobs that hash to their names), no
    temporary file anywhere; the rerun completes, downloading neither the repository nor
    any blob that was already whole."""
    blobs = [os.urandom(50_000 + i) for i in range(16)]
    cids = [blob_cid(b) for b in blobs]
    rev = _rev(car, tmp_path)
    slow = threading.Event()
    slow.set()
    log: list[str] = []

    def handler(req: _Req) -> None:
        if req.route == "/xrpc/com.atproto.sync.getLatestCommit":
            req.json({"cid": "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm",
                      "rev": rev})
        elif req.route == "/xrpc/com.atproto.sync.getRepo":
            req.send(200, car)
        elif req.route == "/xrpc/com.atproto.sync.listBlobs":
            req.json({"cids": cids})
        elif req.route == "/xrpc/com.atproto.sync.getBlob":
            data = blobs[cids.index(req.query["cid"])]
            req.send_response(200)
            req.send_header("Content-Length", str(len(data)))
            req.end_headers()
            for i in range(0, len(data), 10_000):
                req.wfile.write(data[i:i + 10_000])
                req.wfile.flush()
                if slow.is_set():
                    time.sleep(0.05)
        else:
            req.xrpc_error(501, "MethodNotImplemented")
    with contextlib_closing(XrpcServer(handler)) as s:
        out = tmp_path / "out"
        p = _driver(tmp_path, {}, "fetch", DID, "--pds", s.url, "-o", out, "--jobs", "2",
                    "--progress", "jsonl")
        blobs_dir = out / DID / "blobs"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if blobs_dir.is_dir() and len(os.listdir(blobs_dir)) >= 3:
                break
            time.sleep(0.02)
        p.send_signal(signum)
        _, err = p.communicate(timeout=60)
        assert p.returncode == code, err
        assert err.splitlines()[-1] == (
            f"skyexport: {word}; the backup keeps its previous repo.car and every blob "
            "downloaded whole; run the same command again to resume"), err
        assert json.loads(err.splitlines()[-2])["status"] == "failed"
        kept = sorted(os.listdir(blobs_dir))
        assert 3 <= len(kept) < 16
        for cid in kept:
            assert (blobs_dir / cid).read_bytes() == blobs[cids.index(cid)]
        assert _tree(out / DID) == sorted(["blobs", "fetch.json", "repo.car"]
                                          + [f"blobs/{c}" for c in kept])
        assert (out / DID / "repo.car").read_bytes() == car
        log[:] = [q["cid"] for q in s.calls("com.atproto.sync.getBlob")]
        slow.clear()
        code, stdout, err = _run(tmp_path, {}, "fetch", DID, "--pds", s.url, "-o", out)
        assert code == 0, err
        again = [q["cid"] for q in s.calls("com.atproto.sync.getBlob")][len(log):]
        assert not set(again) & set(kept)
        assert sorted(set(again) | set(kept)) == sorted(cids)
        assert len(s.calls("com.atproto.sync.getRepo")) == 1
        assert "repo.car: unchanged" in stdout and stdout.splitlines()[-1] == str(out / DID)
    for cid, data in zip(cids, blobs, strict=False):
        assert (blobs_dir / cid).read_bytes() == data


def test_peak_rss_with_a_big_repository_and_many_blobs(tmp_path: Path) -> None:
    """The real peak RSS of `skyexport fetch` (the whole process) stays under 64 MB for a
    50 MB repository (skyexport's synthetic CAR, 50k posts and 150k other records, served
    from its file) and 2,000 blobs."""
    from skyexport.testing.carwrite import synth_car

    car_file = tmp_path / "big.car"
    synth_car(car_file, 50_000, seed=3)
    from skyexport.sources.car.info import car_info
    did = str(car_info(car_file)["did"])
    blobs = {blob_cid(d): d for d in (os.urandom(2000) + i.to_bytes(4, "big")
                                      for i in range(2000))}
    order = sorted(blobs)

    def handler(req: _Req) -> None:
        if req.route == "/xrpc/com.atproto.sync.getRepo":
            req.send_response(200)
            req.send_header("Content-Length", str(car_file.stat().st_size))
            req.end_headers()
            with open(car_file, "rb") as f:
                shutil.copyfileobj(f, req.wfile, 1 << 20)
        elif req.route == "/xrpc/com.atproto.sync.listBlobs":
            i = int(req.query.get("cursor", "0"))
            page: dict[str, Any] = {"cids": order[i:i + 1000]}
            if i + 1000 < len(order):
                page["cursor"] = str(i + 1000)
            req.json(page)
        elif req.route == "/xrpc/com.atproto.sync.getBlob" and req.query["cid"] in blobs:
            req.send(200, blobs[req.query["cid"]])
        elif req.route == "/xrpc/com.atproto.sync.getBlob":
            req.xrpc_error(400, "BlobNotFound")  # the synthetic posts' images
        else:
            req.xrpc_error(501, "MethodNotImplemented")
    with contextlib_closing(XrpcServer(handler)) as s:
        code, out, err = _run(tmp_path, {}, "fetch", did, "--pds", s.url, "-o",
                              tmp_path / "out", "-q")
    assert code == 0, err
    assert len(os.listdir(tmp_path / "out" / did / "blobs")) == 2000
    peak = int((tmp_path / "peak").read_text())
    assert peak <= 64 * 1024 * 1024, f"peak RSS {peak / 2**20:.1f} MB"


def test_cli_lines_and_exit_codes(car: bytes, tmp_path: Path) -> None:
    """What the command prints: the backup directory last (alone with -q), warnings on
    stderr; usage errors exit 2, failures 1 with one line and no traceback."""
    with contextlib_closing(_blob_server(car, [GOOD_CIDS[:2] + ["../x"]], _serve_good)) as s:
        code, out, err = _run(tmp_path, {}, "fetch", DID, "--pds", s.url, "-o",
                              tmp_path / "o")
        assert code == 0, err
        lines = out.splitlines()
        assert lines[0] == f"account: {DID}" and lines[-1] == str(tmp_path / "o" / DID)
        assert lines[1] == f"pds: {s.url} (from --pds)"
        assert lines[3] == "blobs: 2 listed, 2 downloaded (6,001 bytes), 0 already there"
        assert err == ("skyexport: warning: 1 blob(s) refused (not a blob CID); first: "
                       "../x\n")
        code, out, err = _run(tmp_path, {}, "fetch", DID, "--pds", s.url, "-o",
                              tmp_path / "o", "-q")
        assert (code, out) == (0, f"{tmp_path / 'o' / DID}\n")
    code, out, err = _run(tmp_path, {}, "fetch", DID, "--jobs", "0")
    assert code == 2 and "argument --jobs/-j: '0': give 1 to 64" in err
    code, out, err = _run(tmp_path, {}, "fetch", DID, "--max-repo-size", "lots")
    assert code == 2 and "'lots' is not a size" in err
    code, out, err = _run(tmp_path, {}, "fetch", "not a handle!", "-o", tmp_path / "o")
    assert code == 1 and out == ""
    assert err == ("skyexport: error: 'not a handle!' is neither a handle (like "
                   "alice.bsky.social) nor a DID (did:plc:... or did:web:...)\n")
    code, out, err = _run(tmp_path, {}, "fetch", DID, "--pds", "http://127.0.0.1:9", "-o",
                          tmp_path / "o")
    assert code == 1 and "Traceback" not in err and len(err.splitlines()) == 1
    assert err.startswith(f"skyexport: error: getLatestCommit for {DID}: failed 4 times")


def test_open_backup(tmp_path: Path) -> None:
    """A backup directory as a source: repo.car and blobs/, never through a symlink, a
    FIFO or a directory in their place."""
    from skyexport import ArchiveError, open_backup

    b = tmp_path / "b"
    (b / "blobs").mkdir(parents=True)
    (b / "repo.car").write_bytes(b"x")
    assert open_backup(b) == (b / "repo.car", b / "blobs")
    (tmp_path / "link").symlink_to(b)
    with pytest.raises(ArchiveError, match="not a backup directory"):
        open_backup(tmp_path / "link")
    (b / "blobs").rmdir()
    assert open_backup(b) == (b / "repo.car", None)
    (b / "blobs").symlink_to(tmp_path)
    with pytest.raises(ArchiveError, match="blobs: not a directory"):
        open_backup(b)
    (b / "blobs").unlink()
    (b / "repo.car").unlink()
    os.mkfifo(b / "repo.car")
    with pytest.raises(ArchiveError, match="repo.car: not a regular file"):
        open_backup(b)
    (b / "repo.car").unlink()
    (b / "repo.car").symlink_to(tmp_path / "elsewhere.car")
    with pytest.raises(ArchiveError, match="repo.car: not a regular file"):
        open_backup(b)
    (b / "repo.car").unlink()
    with pytest.raises(ArchiveError, match=r"no repo.car\); make one with `skyexport fetch"):
        open_backup(b)


def test_progress_events(car: bytes, tmp_path: Path) -> None:
    """on_progress: queued first, completed last, counts never going backwards, the
    repository's bytes and the blobs counted."""
    events: list[Any] = []
    with contextlib_closing(_blob_server(car, [GOOD_CIDS], _serve_good)) as s:
        skyexport.fetch(DID, tmp_path, pds=s.url, on_progress=events.append)
    assert events[0].status == "queued" and events[-1].status == "completed"
    assert all(e.status == "running" for e in events[1:-1])
    last = events[-1]
    assert (last.repo_bytes, last.blobs_done, last.blobs_total, last.blob_bytes) == \
        (len(car), 5, 5, sum(map(len, GOOD)))
    for a, b in zip(events, events[1:], strict=False):
        assert b.repo_bytes >= a.repo_bytes and b.blobs_done >= a.blobs_done
        assert b.elapsed_s >= a.elapsed_s
    assert {e.phase for e in events} >= {"repo", "check", "blobs", "done"}
    assert last.to_dict()["blobs_done"] == 5


def test_a_full_disk_is_one_line(car: bytes, tmp_path: Path) -> None:
    """On a real, small filesystem (a 256 KiB tmpfs) the blobs fill the disk: one line
    naming the backup and the cause, exit 1, and no partial file left: only repo.car,
    fetch.json and whole blobs."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
                       capture_output=True, text=True, check=False)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode})")
    try:
        big = [os.urandom(60_000 + i) for i in range(8)]
        cids = [blob_cid(b) for b in big]

        def serve(req: _Req, cid: str) -> None:
            req.send(200, big[cids.index(cid)])
        with contextlib_closing(_blob_server(car, [cids], serve)) as s:
            code, out, err = _run(tmp_path, {}, "fetch", DID, "--pds", s.url, "-o", mnt,
                                  "--jobs", "1")
        assert code == 1 and out == "", err
        assert err == (f"skyexport: error: cannot write the backup in {mnt}: No space left "
                       "on device; free some space or choose another --output (what was "
                       "backed up before is as it was)\n")
        backup = mnt / DID
        kept = os.listdir(backup / "blobs")
        assert 0 < len(kept) < 8
        for cid in kept:
            assert (backup / "blobs" / cid).read_bytes() == big[cids.index(cid)]
        assert _tree(backup) == sorted(["blobs", "fetch.json", "repo.car"]
                                       + [f"blobs/{c}" for c in kept])
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)


def test_mst_diff_matches_a_full_walk(pds: ArrobaPDS, tmp_path: Path) -> None:
    """What changed between two repositories is counted by opening only the MST nodes
    that differ; on repositories arroba writes (records created, updated, deleted between
    snapshots) and on unrelated synthetic ones, the counts equal those of walking both
    repositories whole, and a snapshot compared with itself opens nothing but the root."""
    import random

    from skyexport.remote import repo as rrepo
    from skyexport.testing.carwrite import synth_car

    did = "did:plc:" + "m" * 24
    pds.create_repo(did, "mst.test")
    rng = random.Random(11)
    rkeys: list[str] = []
    snaps: list[Path] = []
    for step in range(6):
        for _ in range(rng.choice([1, 3, 40])):
            op = rng.random()
            if rkeys and op < 0.2:
                rk = rkeys.pop(rng.randrange(len(rkeys)))
                pds.delete(did, "app.bsky.feed.post", rk)
            elif rkeys and op < 0.35:
                pds.call("com.atproto.repo.putRecord", {
                    "repo": did, "collection": "app.bsky.feed.post",
                    "rkey": rng.choice(rkeys), "record": {
                        "$type": "app.bsky.feed.post", "text": f"edited {rng.random()}",
                        "createdAt": "2024-01-01T00:00:00.000Z"}})
            else:
                coll = rng.choice(["app.bsky.feed.post", "app.bsky.feed.like"])
                uri = pds.create(did, coll, {"$type": coll, "text": "x", "createdAt":
                                             "2024-01-01T00:00:00.000Z"})["uri"]
                if coll == "app.bsky.feed.post":
                    rkeys.append(uri.rsplit("/", 1)[1])
        f = tmp_path / f"s{step}.car"
        f.write_bytes(_raw(f"{pds.url}/xrpc/com.atproto.sync.getRepo?did={did}"))
        snaps.append(f)
    a, b = tmp_path / "synth-a.car", tmp_path / "synth-b.car"
    synth_car(a, 300, seed=1)
    synth_car(b, 200, seed=2)
    pairs = [(x, y) for x in snaps for y in snaps if x != y] + [(a, b), (b, a)]
    for x, y in pairs:
        assert rrepo.diff(x, y, tmp_path) == rrepo.diff_walk(x, y, tmp_path), (x, y)
    assert rrepo.diff(snaps[0], snaps[-1], tmp_path) != (0, 0, 0)
    opened: list[bytes] = []
    real = rrepo._open_node

    def counting(repo: Any, cid: bytes) -> Any:
        opened.append(cid)
        return real(repo, cid)
    rrepo._open_node = counting  # type: ignore[assignment]
    try:
        assert rrepo.diff(snaps[-1], snaps[-1], tmp_path) == (0, 0, 0)
    finally:
        rrepo._open_node = real  # type: ignore[assignment]
    assert opened == []
