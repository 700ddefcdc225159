"""The fetch's HTTP client against real servers on loopback (tests/helpers/netparts.py:
XrpcServer, plain or TLS with a test CA): redirects (never from https down to http, at
most Policy.max_redirects), answers that break the protocol or never end, a server that
closes its kept-alive connections, and blobs fetched over TLS by the multiplexed path.
Nothing reaches the internet; the test CA is trusted only through the client's test seam."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import skyexport
from skyexport.remote import http as rhttp
from skyexport.remote.errors import FetchError

from helpers.netparts import XrpcServer, _Req, blob_cid, fast_policy, make_ca

SYNTH_DID = "did:plc:synthsynthsynthsynth"  # the DID of every `skyexport synth --car` CAR
# small ones, and one larger than a connection's buffer (it arrives in many reads)
BLOBS = [bytes([i]) * (20_000 + 999 * i) for i in range(5)] + [bytes(range(256)) * 1200]
CIDS = [blob_cid(b) for b in BLOBS]


@pytest.fixture(autouse=True)
def seams() -> Iterator[None]:
    rhttp._TEST.update(policy=fast_policy(3), cafile=None, hosts={})
    yield
    rhttp._TEST.update(policy=None, cafile=None, hosts={})


@pytest.fixture(scope="module")
def car(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A small repository CAR written by skyexport's synthetic generator."""
    path = tmp_path_factory.mktemp("car") / "repo.car"
    subprocess.run([sys.executable, "-m", "skyexport", "synth", str(path), "--car", "5",
                    "--seed", "3"], check=True, stdout=subprocess.DEVNULL)
    return path.read_bytes()


@pytest.fixture
def tls(tmp_path: Path) -> tuple[Path, tuple[Path, Path]]:
    """(the test CA, (certificate, key) for pds.test), the CA trusted by the client."""
    ca, cert, key = make_ca(tmp_path, ["pds.test"])
    rhttp._TEST["cafile"] = str(ca)
    return ca, (cert, key)


def _server(handler: Any, tls: tuple[Path, Path] | None = None) -> XrpcServer:
    s = XrpcServer(handler, tls=tls)
    if tls is not None:  # https://pds.test (port 443 in URLs) connects to the server
        rhttp._TEST["hosts"] = {"pds.test": ("127.0.0.1", s.http.server_port)}
        s.url = "https://pds.test"
    return s


def _get(url: str) -> tuple[bytes, rhttp.Client]:
    client = rhttp.Client()
    try:
        return client.get_bytes(url, None, f"GET {url}"), client
    finally:
        client.close()


# --- redirects ----------------------------------------------------------------------

def test_redirect_from_https_to_http_is_refused(tls: Any) -> None:
    """An https URL redirected to a plain-http one: refused with one line naming both
    URLs; the http server is never asked."""
    plain = _server(lambda req: req.send(200, b"over plain http"))
    secure = _server(lambda req: req.send(302, b"", {"Location": f"{plain.url}/file"}),
                     tls[1])
    try:
        with pytest.raises(FetchError) as info:
            _get(f"{secure.url}/start")
        assert str(info.value) == (
            f"GET {secure.url}/start: the server redirected from {secure.url}/start to "
            f"{plain.url}/file, from https to plain http; refused (a redirect may not "
            "drop TLS)")
        assert plain.log == []
    finally:
        plain.close()
        secure.close()


def test_redirects_from_http_to_https_and_within_a_scheme_are_followed(tls: Any) -> None:
    def secure_handler(req: _Req) -> None:
        if req.route == "/one":
            req.send(301, b"", {"Location": "/two"})  # https -> https, relative
        else:
            req.send(200, b"over TLS " + req.route.encode())
    secure = _server(secure_handler, tls[1])

    def plain_handler(req: _Req) -> None:
        if req.route == "/a":
            req.send(307, b"moved", {"Location": "/b"})  # http -> http
        else:
            req.send(308, b"", {"Location": f"{secure.url}/one"})  # http -> https
    plain = _server(plain_handler)
    try:
        body, _ = _get(f"{plain.url}/a")
        assert body == b"over TLS /two"
        assert [r for r, _ in plain.log] == ["/a", "/b"]
        assert [r for r, _ in secure.log] == ["/one", "/two"]
    finally:
        plain.close()
        secure.close()


def test_redirects_are_capped() -> None:
    s = _server(lambda req: req.send(302, b"", {"Location": f"/{len(req.route)}x"}))
    try:
        with pytest.raises(FetchError, match=r"GET .*/start: more than 5 redirects$"):
            _get(f"{s.url}/start")
        assert len(s.log) == 6
    finally:
        s.close()


# --- answers that break the protocol ------------------------------------------------

def _raw(data: bytes, then_close: bool = True) -> Any:
    def handler(req: _Req) -> None:
        req.wfile.write(data)
        req.wfile.flush()
        req.close_connection = then_close
    return handler


def test_a_header_over_the_size_limit_is_refused() -> None:
    s = _server(_raw(b"HTTP/1.1 200 OK\r\nX-Big: " + b"b" * 70_000 + b"\r\n\r\n"))
    try:
        with pytest.raises(FetchError, match=r": failed 3 times \(last: the response's "
                                             r"header is longer than 65,536 bytes\)$"):
            _get(f"{s.url}/x")
    finally:
        s.close()


def test_an_endless_chunked_body_is_cut_at_the_cap() -> None:
    stop = threading.Event()

    def handler(req: _Req) -> None:
        req.wfile.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        try:
            while not stop.is_set():
                req.wfile.write(b"1000\r\n" + b"z" * 4096 + b"\r\n")
        except OSError:
            pass
        req.close_connection = True
    s = _server(handler)
    client = rhttp.Client()
    try:
        with pytest.raises(rhttp.CapExceeded, match=r"GET x: the body grew past the cap of "
                                                    r"1,000,000 bytes and was cut$"):
            client.get_bytes(f"{s.url}/x", None, "GET x", cap=1_000_000)
    finally:
        stop.set()
        client.close()
        s.close()


def test_a_chunked_answer_is_read_whole() -> None:
    """Chunks (one with an extension), then the connection serves the next request."""
    ports: list[int] = []

    def handler(req: _Req) -> None:
        ports.append(req.client_address[1])
        _raw(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
             b"4\r\n{\"a\"\r\n3;x=y\r\n:1}\r\n0\r\n\r\n", then_close=False)(req)
    s = _server(handler)
    client = rhttp.Client()
    try:
        assert client.get_json(f"{s.url}/x", None, "GET x") == {"a": 1}
        assert client.get_json(f"{s.url}/y", None, "GET y") == {"a": 1}
        assert len(ports) == 2 and len(set(ports)) == 1  # one connection, kept
    finally:
        client.close()
        s.close()


def test_a_server_that_closes_its_kept_alive_connection() -> None:
    """The server answers (no Connection: close) and then closes the connection: the
    next request, sent on it, is sent again on a new connection, not counted as a
    retry."""
    def handler(req: _Req) -> None:
        req.send(200, f"{req.client_address[1]}".encode())
        req.close_connection = True
    s = _server(handler)
    client = rhttp.Client()
    try:
        first = client.get_bytes(f"{s.url}/1", None, "GET 1")
        second = client.get_bytes(f"{s.url}/2", None, "GET 2")
        assert first != second  # two connections (their client ports)
        assert [r for r, _ in s.log] == ["/1", "/2"] and client.retries == 0
    finally:
        client.close()
        s.close()


# --- blobs over TLS, multiplexed ----------------------------------------------------

def _pds(car: bytes, get_blob: Any, tls: tuple[Path, Path] | None = None) -> XrpcServer:
    def handler(req: _Req) -> None:
        if req.route == "/xrpc/com.atproto.sync.getRepo":
            req.send(200, car)
        elif req.route == "/xrpc/com.atproto.sync.listBlobs":
            req.json({"cids": CIDS})
        elif req.route == "/xrpc/com.atproto.sync.getBlob":
            get_blob(req, req.query["cid"])
        else:
            req.xrpc_error(501, "MethodNotImplemented")
    return _server(handler, tls)


def _good(req: _Req, cid: str) -> None:
    if cid in CIDS:
        req.send(200, BLOBS[CIDS.index(cid)])
    else:
        req.xrpc_error(400, "BlobNotFound", "Blob not found")


def test_blobs_over_tls_and_a_downgrade_redirect(car: bytes, tls: Any, tmp_path: Path) -> None:
    """Blobs from an https PDS on kept-alive TLS connections, two at once; one blob's
    answer redirects to plain http: that blob is reported (both URLs named), the others
    are whole, and the http server is never asked."""
    assert len(BLOBS[-1]) > rhttp.BUF
    plain = _server(lambda req: req.send(200, BLOBS[0]))

    def get_blob(req: _Req, cid: str) -> None:
        if cid == CIDS[0]:
            req.send(302, b"", {"Location": f"{plain.url}/blob"})
        else:
            _good(req, cid)
    s = _pds(car, get_blob, tls[1])
    try:
        with pytest.raises(FetchError, match=(
                r"^1 blob\(s\) could not be downloaded \(first: blob \w+: the server "
                r"redirected from https://pds.test/xrpc/com.atproto.sync.getBlob\?did=\S+ "
                r"to http://127.0.0.1:\d+/blob, from https to plain http; refused")):
            skyexport.fetch(SYNTH_DID, tmp_path, pds=s.url, jobs=2)
        blobs = tmp_path / SYNTH_DID / "blobs"
        assert sorted(p.name for p in blobs.iterdir()) == sorted(CIDS[1:])
        for cid, data in zip(CIDS[1:], BLOBS[1:], strict=True):
            assert (blobs / cid).read_bytes() == data
        assert plain.log == []
        assert not list((tmp_path / SYNTH_DID).glob(".fetch-work/*"))
    finally:
        s.close()
        plain.close()


def test_blobs_from_a_server_that_closes_every_connection(car: bytes, tmp_path: Path) -> None:
    """Each answer is followed by the server closing the connection (without saying
    so): every blob is still fetched whole, and none of this counts as a retry."""
    def get_blob(req: _Req, cid: str) -> None:
        _good(req, cid)
        req.close_connection = True
    s = _pds(car, get_blob)
    try:
        r = skyexport.fetch(SYNTH_DID, tmp_path, pds=s.url, jobs=3)
        assert r.blobs_downloaded == len(CIDS) and r.retries == 0
        for cid, data in zip(CIDS, BLOBS, strict=True):
            assert (tmp_path / SYNTH_DID / "blobs" / cid).read_bytes() == data
    finally:
        s.close()


def test_a_blob_answer_that_stalls_times_out_and_is_asked_again(car: bytes,
                                                               tmp_path: Path) -> None:
    """The first answer for one blob stops half-way and the connection stays open: after
    the read timeout that attempt fails (one retry), the blob is asked again and is
    whole; the other blobs are fetched meanwhile on the other connection."""
    rhttp._TEST["policy"].read_timeout_s = 0.5
    release = threading.Event()
    seen: list[str] = []

    def get_blob(req: _Req, cid: str) -> None:
        seen.append(cid)
        data = BLOBS[CIDS.index(cid)] if cid in CIDS else None
        if cid == CIDS[0] and seen.count(cid) == 1:
            assert data is not None
            req.send_response(200)
            req.send_header("Content-Length", str(len(data)))
            req.end_headers()
            req.wfile.write(data[:1000])
            req.wfile.flush()
            release.wait(10)  # stalled, connection open
            req.close_connection = True
            return
        _good(req, cid)
    s = _pds(car, get_blob)
    try:
        r = skyexport.fetch(SYNTH_DID, tmp_path, pds=s.url, jobs=2)
        assert r.blobs_downloaded == len(CIDS) and r.retries == 1
        assert seen.count(CIDS[0]) == 2
        for cid, data in zip(CIDS, BLOBS, strict=True):
            assert (tmp_path / SYNTH_DID / "blobs" / cid).read_bytes() == data
    finally:
        release.set()
        s.close()


def test_a_missing_blob_is_asked_for_once(car: bytes, tmp_path: Path) -> None:
    """A blob the PDS answers with 400 BlobNotFound (its body sent a moment after its
    header): reported as missing, with the server's message, after one request; the
    connection serves the next blobs."""
    gone = CIDS[2]
    seen: list[tuple[str, int]] = []

    def get_blob(req: _Req, cid: str) -> None:
        seen.append((cid, req.client_address[1]))
        if cid == gone:
            body = b'{"error":"BlobNotFound","message":"Blob not found"}'
            req.send_response(400)
            req.send_header("Content-Length", str(len(body)))
            req.end_headers()  # sent now
            time.sleep(0.1)
            req.wfile.write(body)
        else:
            _good(req, cid)
    s = _pds(car, get_blob)
    try:
        r = skyexport.fetch(SYNTH_DID, tmp_path, pds=s.url, jobs=1)
    finally:
        s.close()
    assert [c for c, _ in seen].count(gone) == 1
    assert len({port for _, port in seen}) == 1  # one connection throughout
    assert r.blobs_missing == (f"blob {gone} is not served by the PDS (HTTP 400 "
                               "BlobNotFound: Blob not found)",)
    assert r.blobs_downloaded == len(CIDS) - 1 and r.retries == 0


def test_a_directory_in_place_of_a_blob_is_left_as_it_is(car: bytes, tmp_path: Path) -> None:
    """blobs/<cid> is a directory (with a file in it): the downloaded bytes are not put
    there, the blob is reported, the directory and its file are as they were, and no
    temporary file stays behind."""
    blobs = tmp_path / SYNTH_DID / "blobs"
    (blobs / CIDS[1]).mkdir(parents=True)
    (blobs / CIDS[1] / "keep").write_bytes(b"mine")
    s = _pds(car, _good)
    try:
        r = skyexport.fetch(SYNTH_DID, tmp_path, pds=s.url, jobs=2)
    finally:
        s.close()
    assert r.blobs_bad == (f"blob {CIDS[1]}: blobs/{CIDS[1]} exists and is not a regular "
                           "file; left as it is",)
    assert (blobs / CIDS[1] / "keep").read_bytes() == b"mine"
    assert r.blobs_downloaded == len(CIDS) - 1
    assert not (tmp_path / SYNTH_DID / ".fetch-work").exists()
