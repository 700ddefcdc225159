"""`skyexport fetch`: backing up an account from the network, against real parts on
loopback (tests/netparts.py says which is which): arroba as the PDS (getRepo of
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

from netparts import (
    ArrobaPDS,
    Dnsmasq,
    XrpcServer,
    _Req,
    blob_cid,
    fill_account,
    make_ca,
    xrpc_server,
)

PY = sys.executable
DRIVER = str(Path(__file__).parent / "fetch_driver.py")
DID = "did:plc:" + "a" * 24
DID2 = "did:plc:" + "b" * 24
HANDLE = "alice.test"

pytestmark = pytest.mark.skipif(shutil.which("dnsmasq") is None
                                and not os.path.exists("/usr/sbin/dnsmasq"),
                                reason="dnsmasq is not installed (.ci/run installs it)")


# --- fixtures -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pds() -> Iterator[ArrobaPDS]:
    p = ArrobaPDS()
    p.create_repo(DID, HANDLE)
    p.blobs = fill_account(p, DID, 30, 6)  # type: ignore[attr-defined]
    yield p
    p.close()


def _fast_policy() -> rhttp.Policy:
    p = rhttp.Policy()
    p.attempts = 4
    p.backoff_s = 0.01
    p.backoff_max_s = 0.05
    p.read_timeout_s = 1.0
    p.connect_timeout_s = 2.0
    return p


@pytest.fixture(autouse=True)
def seams() -> Iterator[None]:
    """Short pauses, and no test seam left set for the next test."""
    rhttp._TEST.update(policy=_fast_policy(), cafile=None, hosts={})
    rresolve._TEST.update(nameserver=None, plc=None)
    yield
    rhttp._TEST.update(policy=None, cafile=None, hosts={})
    rresolve._TEST.update(nameserver=None, plc=None)


def _raw(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as r:
        return bytes(r.read())


def _did_doc(did: str, handle: str, pds_url: str) -> dict[str, Any]:
    return {"@context": ["https://www.w3.org/ns/did/v1"], "id": did,
            "alsoKnownAs": [f"at://{handle}"],
            "service": [{"id": "#atproto_pds", "type": "AtprotoPersonalDataServer",
                         "serviceEndpoint": pds_url}]}


def _plc(docs: dict[str, dict[str, Any]]) -> XrpcServer:
    """A PLC directory: GET /<did> -> the document, 404 otherwise."""
    def handler(req: _Req) -> None:
        doc = docs.get(req.route.lstrip("/"))
        if doc is None:
            req.send(404, b'{"message":"DID not registered"}')
        else:
            req.json(doc)
    return XrpcServer(handler)


def _tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def _visible(backup: Path) -> list[str]:
    """Every file a user sees in the backup (not the hidden work directory)."""
    return [n for n in _tree(backup) if not n.startswith(".fetch-work")]


# --- end to end: handle -> DNS -> PLC -> arroba --------------------------------------

def test_backup_from_a_handle_in_dns(pds: ArrobaPDS, tmp_path: Path) -> None:
    """A handle published in DNS (dnsmasq), its did:plc document from a PLC directory,
    arroba as the PDS: repo.car is byte for byte what arroba's getRepo serves, every
    listed blob is in blobs/ under its CID with its bytes, fetch.json says what was done,
    and the backup exports like any repository CAR."""
    dns = Dnsmasq({f"_atproto.{HANDLE}": [f"did={DID}"]}, tmp_path)
    plc = _plc({DID: _did_doc(DID, HANDLE, pds.url)})
    try:
        rresolve._TEST.update(nameserver=dns.address, plc=plc.url)
        r = skyexport.fetch(HANDLE, tmp_path / "out")
    finally:
        dns.close()
        plc.close()
    backup = tmp_path / "out" / DID
    assert r.directory == backup and r.handle == HANDLE and r.did == DID and r.pds == pds.url
    car = _raw(f"{pds.url}/xrpc/com.atproto.sync.getRepo?did={DID}")
    assert (backup / "repo.car").read_bytes() == car
    blobs: dict[str, bytes] = pds.blobs  # type: ignore[attr-defined]
    assert sorted(os.listdir(backup / "blobs")) == sorted(blobs)
    for cid, data in blobs.items():
        assert (backup / "blobs" / cid).read_bytes() == data
    assert r.records == 30 + 15 + 7 and r.records_added == r.records
    assert (r.blobs_listed, r.blobs_downloaded, r.blobs_present) == (6, 6, 0)
    meta = json.loads((backup / "fetch.json").read_text())
    assert meta["handle"] == HANDLE and meta["did"] == DID and meta["pds"] == pds.url
    assert meta["repo"]["sha256"] == r.repo_sha256 and meta["repo"]["bytes"] == len(car)
    assert meta["repo"]["collections"] == {"app.bsky.feed.like": 15,
                                           "app.bsky.feed.post": 30,
                                           "app.bsky.graph.follow": 7}
    assert meta["this_run"]["blobs_downloaded"] == 6 and meta["rev"] == r.rev
    assert _visible(backup) == sorted(["blobs", "fetch.json", "repo.car"]
                                      + [f"blobs/{c}" for c in blobs])
    out = subprocess.run([PY, "-m", "skyexport", "export", backup / "repo.car", "-o",
                          tmp_path / "exp", "--format", "jsonl"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and "posts: 30" in out.stdout, out.stderr


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
        repo = p.create_repo(DID2, "bob.test")
        p.server_mod.storage.deactivate_repo(repo)
        with pytest.raises(AccountError, match="is deactivated .RepoDeactivated."):
            skyexport.fetch(DID2, tmp_path, pds=p.url)
    finally:
        p.close()
