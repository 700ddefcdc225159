"""Real network parts on loopback for the `fetch` tests (nothing reaches the internet):

- `ArrobaPDS`: arroba (a production Python PDS, from PyPI) serving the com.atproto.sync
  and com.atproto.repo methods from its own Flask/XRPC server; repositories are written
  through its own XRPC API (createRecord over HTTP), so the repository bytes come from
  code nobody here wrote.  arroba's listBlobs/getBlob need Google Cloud Datastore, so on
  the same server those two methods are ours (`BlobStore`, following the lexicon: cursor
  paging, BlobNotFound).
- `XrpcServer`: a small hand-written XRPC server (http.server) for the faults a real PDS
  will not produce on demand: dropped connections, bodies longer than promised, 500s,
  429s, redirects to file://, hostile CIDs, wrong bytes, endless bodies.
- `Dnsmasq`: Debian's dnsmasq on a loopback port answering TXT _atproto.HANDLE.
- `TlsServer`: an HTTPS server on loopback with a certificate from a test CA made here
  (cryptography), for /.well-known/atproto-did and did:web's /.well-known/did.json.

The library is pointed at them only through its private test seams
(`skyexport.remote.http._TEST`, `skyexport.remote.resolve._TEST`).
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import http.server
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO_TOKEN = "test-token"

needs_dnsmasq = pytest.mark.skipif(shutil.which("dnsmasq") is None
                                   and not os.path.exists("/usr/sbin/dnsmasq"),
                                   reason="dnsmasq is not installed (.ci/run installs it)")


def fast_policy(attempts: int, read_timeout_s: float = 2.0) -> Any:
    """An HTTP policy for the tests (skyexport.remote.http.Policy): `attempts` tries with
    short pauses between them, a 2 s connect timeout."""
    from skyexport.remote.http import Policy

    p = Policy()
    p.attempts = attempts
    p.backoff_s = 0.01
    p.backoff_max_s = 0.05
    p.read_timeout_s = read_timeout_s
    p.connect_timeout_s = 2.0
    return p


def blob_cid(data: bytes) -> str:
    raw = bytes([0x01, 0x55, 0x12, 0x20]) + hashlib.sha256(data).digest()
    return "b" + base64.b32encode(raw).decode().lower().rstrip("=")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- arroba --------------------------------------------------------------------------

class BlobStore:
    """listBlobs/getBlob for the arroba server (arroba's own need a cloud datastore)."""

    def __init__(self) -> None:
        self.blobs: dict[str, dict[str, bytes]] = {}  # did -> cid -> bytes
        self.hidden: set[str] = set()  # served by getBlob, left out of listBlobs
        self.gets: list[str] = []
        self.lock = threading.Lock()

    def add(self, did: str, data: bytes) -> str:
        cid = blob_cid(data)
        self.blobs.setdefault(did, {})[cid] = data
        return cid


class ArrobaPDS:
    def __init__(self) -> None:
        os.environ.setdefault("REPO_TOKEN", REPO_TOKEN)  # arroba's own auth (its env)
        os.environ.setdefault("PDS_HOST", "localhost")
        import logging

        from arroba import server, util, xrpc_repo, xrpc_sync  # noqa: F401 - registers the methods
        from arroba.storage import MemoryStorage
        from flask import Flask, jsonify, request
        from lexrpc.flask_server import init_flask
        from werkzeug.serving import make_server

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        if server.storage is None:  # arroba keeps one storage per process: shared
            server.storage = MemoryStorage()
        server.server._validate = False
        self.server_mod = server
        self.util = util
        self.store = BlobStore()
        app = Flask("arroba-test")
        store = self.store

        @app.get("/xrpc/com.atproto.sync.listBlobs")
        def list_blobs() -> Any:
            did = request.args.get("did", "")
            limit = int(request.args.get("limit", "500"))
            cursor = request.args.get("cursor")
            cids = sorted(c for c in store.blobs.get(did, {}) if c not in store.hidden)
            if cursor:
                cids = [c for c in cids if c > cursor]
            page = cids[:limit]
            out: dict[str, Any] = {"cids": page}
            if len(page) == limit:
                out["cursor"] = page[-1]
            return jsonify(out)

        @app.get("/xrpc/com.atproto.sync.getBlob")
        def get_blob() -> Any:
            did, cid = request.args.get("did", ""), request.args.get("cid", "")
            data = store.blobs.get(did, {}).get(cid)
            with store.lock:
                store.gets.append(cid)
            if data is None:
                return jsonify({"error": "BlobNotFound", "message": "no such blob"}), 400
            return data, 200, {"Content-Type": "application/octet-stream"}

        init_flask(server.server, app)
        self.http = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.http.server_port}"
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self.thread.start()

    def create_repo(self, did: str, handle: str) -> Any:
        from arroba.repo import Repo

        return Repo.create(self.server_mod.storage, did, handle=handle,
                           signing_key=self.util.new_key())

    def call(self, nsid: str, body: dict[str, Any]) -> Any:
        import urllib.request

        req = urllib.request.Request(
            f"{self.url}/xrpc/{nsid}", data=json.dumps(body).encode(), method="POST",
            headers={"Content-Type": "application/json",
                     "Authorization": f"Bearer {REPO_TOKEN}"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def create(self, did: str, collection: str, record: dict[str, Any]) -> Any:
        return self.call("com.atproto.repo.createRecord",
                         {"repo": did, "collection": collection, "record": record})

    def delete(self, did: str, collection: str, rkey: str) -> Any:
        return self.call("com.atproto.repo.deleteRecord",
                         {"repo": did, "collection": collection, "rkey": rkey})

    def close(self) -> None:
        self.http.shutdown()
        self.thread.join(5)


def did_doc(did: str, handle: str, pds_url: str) -> dict[str, Any]:
    """A DID document naming `handle` back and `pds_url` as the account's PDS."""
    return {"@context": ["https://www.w3.org/ns/did/v1"], "id": did,
            "alsoKnownAs": [f"at://{handle}"],
            "service": [{"id": "#atproto_pds", "type": "AtprotoPersonalDataServer",
                         "serviceEndpoint": pds_url}]}


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def image_post(cid: str, size: int) -> dict[str, Any]:
    return {"$type": "app.bsky.feed.post", "text": "a picture", "createdAt": now(),
            "embed": {"$type": "app.bsky.embed.images", "images": [{
                "alt": "", "image": {"$type": "blob", "ref": {"$link": cid},
                                     "mimeType": "image/jpeg", "size": size}}]}}


def fill_account(pds: ArrobaPDS, did: str, posts: int, images: int) -> dict[str, bytes]:
    """Posts (some with images, whose bytes go to the blob store), likes and follows,
    written through arroba's XRPC API; the blobs by CID."""
    blobs: dict[str, bytes] = {}
    for i in range(posts):
        record: dict[str, Any] = {"$type": "app.bsky.feed.post", "text": f"post {i}",
                                  "createdAt": now()}
        if i < images:
            data = os.urandom(1000 + 37 * i)
            cid = pds.store.add(did, data)
            blobs[cid] = data
            record["embed"] = {"$type": "app.bsky.embed.images", "images": [{
                "alt": f"image {i}", "image": {"$type": "blob", "ref": {"$link": cid},
                                               "mimeType": "image/png", "size": len(data)}}]}
        pds.create(did, "app.bsky.feed.post", record)
    for i in range(max(1, posts // 2)):
        pds.create(did, "app.bsky.feed.like", {
            "$type": "app.bsky.feed.like", "createdAt": now(),
            "subject": {"uri": f"at://did:plc:other/app.bsky.feed.post/{i}",
                        "cid": "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm"}})
    for i in range(max(1, posts // 4)):
        pds.create(did, "app.bsky.graph.follow", {
            "$type": "app.bsky.graph.follow", "createdAt": now(),
            "subject": f"did:plc:{'f' * 20}{i:04d}"})
    return blobs


# --- a hand-written XRPC server for faults ---------------------------------------------

Handler = Callable[["_Req"], None]


class _Req(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body leave at once (no delayed-ACK stalls)
    server: _Server

    def log_message(self, *args: Any) -> None:
        pass

    @property
    def query(self) -> dict[str, str]:
        return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))

    @property
    def route(self) -> str:
        return urllib.parse.urlsplit(self.path).path

    def do_GET(self) -> None:
        with self.server.lock:
            self.server.log.append((self.route, self.query))
        try:
            self.server.handler(self)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def send(self, status: int, body: bytes, headers: dict[str, str] | None = None,
             length: int | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)

    def json(self, obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self.send(status, json.dumps(obj).encode(),
                  {"Content-Type": "application/json", **(headers or {})})

    def xrpc_error(self, status: int, name: str, message: str = "") -> None:
        self.json({"error": name, "message": message}, status)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    handler: Handler
    lock: threading.Lock
    log: list[tuple[str, dict[str, str]]]

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hung up (the faults do it on purpose): nothing to print


class XrpcServer:
    def __init__(self, handler: Handler, tls: tuple[Path, Path] | None = None) -> None:
        self.http = _Server(("127.0.0.1", 0), _Req)
        self.http.handler = handler
        self.http.lock = threading.Lock()
        self.http.log = []
        self.url = f"http://127.0.0.1:{self.http.server_port}"
        if tls is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            self.http.socket = ctx.wrap_socket(self.http.socket, server_side=True)
            self.url = f"https://127.0.0.1:{self.http.server_port}"
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        self.thread.start()

    @property
    def log(self) -> list[tuple[str, dict[str, str]]]:
        return self.http.log

    def calls(self, route: str) -> list[dict[str, str]]:
        return [q for r, q in self.http.log if r == f"/xrpc/{route}"]

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


@contextlib.contextmanager
def xrpc_server(handler: Handler) -> Iterator[XrpcServer]:
    s = XrpcServer(handler)
    try:
        yield s
    finally:
        s.close()


def plc_directory(docs: dict[str, dict[str, Any]]) -> XrpcServer:
    """A PLC directory: GET /<did> -> the document, 404 otherwise."""
    def handler(req: _Req) -> None:
        doc = docs.get(req.route.lstrip("/"))
        if doc is None:
            req.send(404, b'{"message":"DID not registered"}')
        else:
            req.json(doc)
    return XrpcServer(handler)


# --- the command in a child ------------------------------------------------------------

DRIVER = str(Path(__file__).parent / "fetch_driver.py")


def start_driver(tmp_path: Path, seams: dict[str, Any], *args: object,
                 **kw: Any) -> subprocess.Popen[str]:
    """`skyexport ARGS` in a child with the test seams set (fetch_driver.py); its peak RSS
    is written to tmp_path/peak."""
    seams.setdefault("policy", {"attempts": 4, "backoff_s": 0.01, "backoff_max_s": 0.05,
                                "read_timeout_s": 5.0})
    sf = tmp_path / f"seams-{os.urandom(3).hex()}.json"
    sf.write_text(json.dumps(seams))
    return subprocess.Popen([sys.executable, DRIVER, str(sf), str(tmp_path / "peak"),
                             *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def run_driver(tmp_path: Path, seams: dict[str, Any], *args: object) -> tuple[int, str, str]:
    """start_driver() waited for: (exit status, stdout, stderr)."""
    p = start_driver(tmp_path, seams, *args)
    out, err = p.communicate(timeout=180)
    return p.returncode, out, err


# --- DNS ------------------------------------------------------------------------------

class Dnsmasq:
    """dnsmasq answering only the TXT records given, on 127.0.0.1:port (no upstream)."""

    def __init__(self, txt: dict[str, list[str]], tmp: Path) -> None:
        exe = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
        self.port = free_port()
        conf = tmp / "dnsmasq.conf"
        lines = ["no-resolv", "no-hosts", "no-poll", "bind-interfaces",
                 "listen-address=127.0.0.1", f"port={self.port}", "log-facility=-",
                 "local=/test/"]  # authoritative for .test: NXDOMAIN, not REFUSED
        for name, values in txt.items():
            for v in values:
                lines.append(f'txt-record={name},"{v}"')
        conf.write_text("\n".join(lines) + "\n")
        user = ["--user=root"] if os.geteuid() == 0 else []
        self.proc = subprocess.Popen([exe, "--keep-in-foreground", f"--conf-file={conf}",
                                      "--pid-file=", *user],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dnsmasq exited: {self.proc.stderr.read()!r}")  # type: ignore[union-attr]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                try:
                    s.bind(("127.0.0.1", self.port))
                except OSError:
                    return  # dnsmasq holds the port: it is up
            time.sleep(0.05)
        raise RuntimeError("dnsmasq did not start")

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


# --- TLS ------------------------------------------------------------------------------

def make_ca(tmp: Path, names: list[str]) -> tuple[Path, Path, Path]:
    """(ca.pem, cert.pem, key.pem): a test CA and a server certificate for `names`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now_ = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "skyexport test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now_ - datetime.timedelta(days=1))
          .not_valid_after(now_ + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                       crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False,
                                       decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now_ - datetime.timedelta(days=1))
            .not_valid_after(now_ + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_pem, cert_pem, key_pem = tmp / "ca.pem", tmp / "cert.pem", tmp / "key.pem"
    ca_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return ca_pem, cert_pem, key_pem
