"""The HTTP policy every request of a fetch follows (the server is untrusted input):

- timeouts on connect and on every read (a stalled connection fails, it never hangs);
- retries with exponential backoff (and jitter) on connection errors, truncated bodies
  and 500/502/503/504 answers; `429` waits as long as `Retry-After` or `RateLimit-Reset`
  says (up to `max_wait_s`, else one clear line);
- redirects followed by hand, only to http and https URLs, never from https to http, at
  most `max_redirects`;
- TLS certificates always verified (the system's roots; never switched off); a
  certificate that does not verify is not retried;
- every body capped: a Content-Length above the cap is refused before reading, a body
  that grows past it is cut, a body shorter than its Content-Length is retried, bytes
  past it are not read (nor is the connection used again); the status line and headers
  are capped at HEAD_CAP, a chunk-size or trailer line at LINE_CAP;
- `Accept-Encoding: identity`, so no compressed body can expand past a cap.

HTTP/1.1 is spoken here, on sockets (see "the HTTP/1.1 exchange" below): one keep-alive
connection per host and thread, the response parsed from one reused buffer per connection
(a blob costs one sendall and, when small, one recv on a warm connection); `connection()`
hands a new one to a caller that multiplexes connections itself (remote/blobs.py).  The client
reads no environment variable (no proxy, no CA file): the tests reach it only through
`_TEST`, a private seam.
"""

from __future__ import annotations

import email.utils
import json
import os
import random
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from .errors import AccountError, FetchError

ERROR_BODY_CAP = 64 * 1024
RETRY_STATUSES = (429, 500, 502, 503, 504)  # not 501 (not implemented: it never will be)

#: XRPC error names that say the account itself cannot be served.
ACCOUNT_ERRORS = {
    "RepoNotFound": "is not hosted on this PDS (RepoNotFound)",
    "RepoDeactivated": "is deactivated (RepoDeactivated)",
    "RepoTakendown": "was taken down by its PDS (RepoTakendown)",
    "RepoSuspended": "is suspended (RepoSuspended)",
}


class Policy:
    """Timeouts, retries and limits (seconds and counts)."""

    connect_timeout_s = 10.0
    read_timeout_s = 60.0
    attempts = 6          # tries of one request (connection errors, truncated, 5xx, 429)
    backoff_s = 0.5       # first pause; doubled each retry, with jitter
    backoff_max_s = 30.0
    max_wait_s = 300.0    # the longest 429 wait honoured
    max_redirects = 5


#: Private seam for the tests: `cafile` (a CA trusted instead of the usual roots), `policy` (a
#: Policy with shorter pauses), `hosts` ({name: (ip, port)}: where a host name connects,
#: the certificate still checked against the name).  Never set by the library.
_TEST: dict[str, Any] = {"cafile": None, "policy": None, "hosts": {}}


class Interrupted(Exception):
    """The fetch is being stopped (Ctrl-C, SIGTERM, or another download failed)."""


class CapExceeded(FetchError):
    """A body was larger than its cap; it was cut and nothing of it kept."""


class RedirectRefused(FetchError):
    """The server redirected where skyexport does not follow (no Location, an invalid
    URL, another scheme, https down to http, too many hops): asking again gets the same
    answer."""


class RetryableStatus(Exception):
    def __init__(self, status: int, wait: float | None) -> None:
        self.status = status
        self.wait = wait


def clean(text: str, limit: int = 200) -> str:
    """Untrusted text made fit for one line of a message."""
    out = "".join(c if c.isprintable() else "?" for c in text[:limit])
    return out + ("..." if len(text) > limit else "")


def _retry_after(r: Response) -> float | None:
    value = r.getheader("retry-after")
    now = time.time()
    if value is not None:
        value = value.strip()
        if value.isdigit():
            return float(value)
        try:
            when = email.utils.parsedate_to_datetime(value)
            return max(0.0, when.timestamp() - now)
        except (TypeError, ValueError, IndexError, OverflowError):
            pass
    value = r.getheader("ratelimit-reset")
    if value is not None and value.strip().isdigit():
        n = float(value.strip())
        # atproto's PDS sends a Unix time; the IETF draft sends seconds from now.
        return max(0.0, n - now) if n > 1e9 else n
    return None


def _tls_context() -> ssl.SSLContext:
    """The system's trusted roots (as curl uses); where Python has none (python.org's
    macOS builds), certifi's if it is installed.  The tests' CA replaces them."""
    if _TEST["cafile"]:
        return ssl.create_default_context(cafile=_TEST["cafile"])
    ctx = ssl.create_default_context()
    if not ctx.get_ca_certs() and not ctx.cert_store_stats().get("x509_ca"):
        try:
            import certifi  # type: ignore[import-not-found, unused-ignore]
            ctx = ssl.create_default_context(cafile=certifi.where())
        except ImportError:
            pass
    return ctx


# --- the HTTP/1.1 exchange --------------------------------------------------------------
#
# A GET on a persistent connection, parsed here rather than by http.client: one sendall of
# the request, then recv_into one buffer per connection; the status line and headers are
# parsed from that buffer in one pass, and the body is handed out as views of it (a small
# blob arrives with its headers in one recv).  http.client's header parser is the email
# package's; this one is a split of the header block (tests/unit/test_http_exchange.py
# checks it against http.client on the same bytes).

BUF = 256 * 1024          # one per connection: a whole small blob, or a slice of a big body
HEAD_CAP = 64 * 1024      # the status line and every header together
LINE_CAP = 4096           # a chunk-size line, a trailer line
MAX_HEADERS = 100
MAX_INTERIM = 10          # 1xx answers before the final one
_EMPTY = memoryview(b"")
_HEX = frozenset(b"0123456789abcdefABCDEF")
_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"
                   "ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_LENGTH, _CHUNKED, _CLOSE = 0, 1, 2


class _Transport(Exception):
    """A connection-level failure or a malformed response: retried."""


class _Silent(_Transport):
    """The connection closed before any byte of the response (a kept-alive connection
    the server had closed: the request is sent again on a new one, not counted)."""


class _Conn:
    """One connection: its socket and the buffer every response on it is read into."""

    __slots__ = ("sock", "buf", "view", "pos", "end")

    def __init__(self, sock: socket.socket, size: int = BUF) -> None:
        self.sock = sock
        self.buf = bytearray(size)
        self.view = memoryview(self.buf)
        self.pos = 0  # buf[pos:end]: received, not yet consumed
        self.end = 0

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def fill(self) -> int:
        """Receive more after `end` (moving the unconsumed bytes to the front first
        when there is no room after them); 0 at the end of the stream."""
        if self.pos == self.end:
            self.pos = self.end = 0
        elif self.end == len(self.buf):
            if self.pos == 0:
                raise _Transport(f"a header or line longer than the {self.end:,}-byte buffer")
            kept = bytes(self.view[self.pos:self.end])
            self.buf[:len(kept)] = kept
            self.pos, self.end = 0, len(kept)
        got = self.sock.recv_into(self.view[self.end:])
        self.end += got
        return got

    def line(self, what: str) -> bytes:
        """The next line (its CRLF or LF stripped), at most LINE_CAP bytes."""
        while True:
            i = self.buf.find(b"\n", self.pos, self.end)
            if i >= 0:
                out = bytes(self.view[self.pos:i])
                self.pos = i + 1
                return out[:-1] if out.endswith(b"\r") else out
            if self.end - self.pos > LINE_CAP:
                raise _Transport(f"{what} longer than {LINE_CAP:,} bytes")
            if not self.fill():
                raise _Transport(f"the connection closed in {what}")


class Response:
    """A response whose status line and headers are read; its body is read with
    `chunk()`.  `headers`: lower-case names, repeated ones joined by ", " (as
    http.client's getheader)."""

    __slots__ = ("conn", "status", "version", "headers", "will_close", "transfer",
                 "_mode", "_left", "_done", "_crlf")

    def __init__(self, conn: _Conn) -> None:
        self.conn = conn
        for _ in range(MAX_INTERIM + 1):
            self._head()
            if not 100 <= self.status < 200:
                break  # an interim answer (100 Continue, 103 Early Hints) is skipped
        else:
            raise _Transport(f"more than {MAX_INTERIM} interim (1xx) answers")
        self._done = self._left == 0 and self._mode == _LENGTH
        self._crlf = False

    def _head(self) -> None:
        c = self.conn
        first = c.pos == c.end
        scanned = 0  # bytes after pos already searched
        while True:
            start = c.pos + scanned
            i = c.buf.find(b"\n\r\n", start, c.end)
            j = c.buf.find(b"\n\n", start, c.end if i < 0 else i + 1)
            if i >= 0 and (j < 0 or i < j):
                stop, body = i + 1, i + 3
                break
            if j >= 0:
                stop, body = j + 1, j + 2
                break
            if c.end - c.pos > HEAD_CAP:
                raise _Transport(f"the response's header is longer than {HEAD_CAP:,} bytes")
            scanned = max(0, c.end - c.pos - 2)
            if not c.fill():
                if first and c.end == c.pos:
                    raise _Silent("the server closed the connection without answering")
                raise _Transport("the connection closed in the response's header")
        if stop - c.pos > HEAD_CAP:
            raise _Transport(f"the response's header is longer than {HEAD_CAP:,} bytes")
        lines = bytes(c.view[c.pos:stop]).decode("latin-1").split("\n")
        c.pos = body
        status_line = lines[0].rstrip("\r")
        parts = status_line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or len(parts[1]) != 3 \
                or not parts[1].isdigit() or not parts[1].isascii() or parts[1] < "100":
            raise _Transport(f"not an HTTP/1.x status line: {clean(status_line, 80)!r}")
        self.status = int(parts[1])
        self.version = 10 if parts[0] == "HTTP/1.0" else 11
        headers: dict[str, str] = {}
        lengths: list[str] = []
        last = ""
        count = 0
        for raw in lines[1:-1]:  # the last is the empty string after the last newline
            line = raw[:-1] if raw.endswith("\r") else raw
            if line[:1] in (" ", "\t"):  # obs-fold: a continuation of the previous value
                if not last:
                    raise _Transport("a header continuation line without a header")
                folded = line.strip(" \t")
                headers[last] = f"{headers[last]} {folded}" if headers[last] else folded
                continue
            name, colon, value = line.partition(":")
            if not colon or not name or not _TCHAR.issuperset(name):
                raise _Transport(f"a malformed header line: {clean(line, 80)!r}")
            count += 1
            if count > MAX_HEADERS:
                raise _Transport(f"more than {MAX_HEADERS} headers")
            last = name.lower()
            value = value.strip(" \t")
            if last == "content-length":
                lengths.append(value)
            headers[last] = f"{headers[last]}, {value}" if last in headers else value
        self.headers = headers
        tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
        self.will_close = "close" in tokens or (
            self.version == 10 and "keep-alive" not in tokens and "keep-alive" not in headers)
        self.transfer = headers.get("transfer-encoding", "").strip().lower()
        self._left = 0
        if self.status in (204, 304) or self.status < 200:
            self._mode = _LENGTH
        elif self.transfer == "chunked":
            self._mode = _CHUNKED
        elif self.transfer:  # a coding not asked for: the caller refuses it
            self._mode = _CLOSE
            self.will_close = True
        elif lengths:
            if len(set(lengths)) != 1 or not lengths[0].isdigit() \
                    or not lengths[0].isascii() or len(lengths[0]) > 18:
                raise _Transport(f"an invalid Content-Length: "
                                 f"{clean(', '.join(lengths), 80)!r}")
            self._mode = _LENGTH
            self._left = int(lengths[0])
        else:
            self._mode = _CLOSE
            self.will_close = True

    def getheader(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    @property
    def done(self) -> bool:
        """The whole body was read."""
        return self._done

    def chunk(self) -> memoryview:
        """The next bytes of the body (a view of the connection's buffer, valid until the
        next call); empty at its end.  A body cut short raises _Transport."""
        c = self.conn
        if self._left == 0:
            if self._done:
                return _EMPTY
            if self._mode == _CLOSE:
                if c.pos == c.end and not c.fill():
                    self._done = True
                    return _EMPTY
                v = c.view[c.pos:c.end]
                c.pos = c.end
                return v
            self._next_chunk()  # chunked: the next chunk's size
            if self._done:
                return _EMPTY
        if c.pos == c.end and not c.fill():
            raise _Transport("the connection closed mid-body")
        n = min(self._left, c.end - c.pos)
        v = c.view[c.pos:c.pos + n]
        c.pos += n
        self._left -= n
        if self._left == 0:
            if self._mode == _LENGTH:
                self._done = True
            else:
                self._crlf = True
        return v

    def _next_chunk(self) -> None:
        c = self.conn
        if self._crlf:  # the CRLF that ends the previous chunk's data
            if c.line("the end of a chunk"):
                raise _Transport("a chunk longer than its size")
            self._crlf = False
        line = c.line("a chunk-size line")
        size = line.split(b";", 1)[0].strip(b" \t")
        if not size or len(size) > 15 or not _HEX.issuperset(size):
            raise _Transport(f"an invalid chunk size: {clean(line.decode('latin-1'), 80)!r}")
        self._left = int(size, 16)
        if self._left:
            return
        total = 0
        while True:  # the trailer section, ignored
            try:
                t = c.line("the trailer")
            except _Transport:
                if c.pos == c.end:  # the stream ended after the last chunk
                    self.will_close = True
                    break
                raise
            if not t:
                break
            total += len(t)
            if total > HEAD_CAP:
                raise _Transport(f"a trailer longer than {HEAD_CAP:,} bytes")
        self._done = True

    def buffered(self) -> memoryview:
        """The body's bytes already received (a Content-Length body), without waiting
        for more: a view of the buffer, consumed."""
        c = self.conn
        n = min(self._left, c.end - c.pos)
        v = c.view[c.pos:c.pos + n]
        c.pos += n
        self._left -= n
        if self._left == 0 and self._mode == _LENGTH:
            self._done = True
        return v

    @property
    def plain(self) -> bool:
        """A body with a Content-Length, sent as it is (no transfer- or content-coding)."""
        return self._mode == _LENGTH and not self.transfer and \
            self.headers.get("content-encoding", "identity").strip().lower() in ("", "identity")

    @property
    def left(self) -> int:
        return self._left

    def read(self, limit: int) -> bytes:
        """At most `limit` bytes of the body (an error's, a redirect's)."""
        out = bytearray()
        while len(out) < limit:
            v = self.chunk()
            if not v:
                break
            out += v[:limit - len(out)]
        return bytes(out)


_SPLIT: dict[str, tuple[str, str, int, str, str]] = {}
_BAD_URL_CHARS = frozenset(chr(i) for i in range(33)) | {"\x7f"}


def _request(url: str, agent: str, what: str) -> tuple[str, str, int, bytes]:
    """(scheme, host, port, the request's bytes) for GET `url`; a URL that cannot be
    sent as it is (spaces, control or non-ASCII characters, an unknown scheme) is one
    line."""
    base, q, query = url.partition("?")
    parts = _SPLIT.get(base)
    if parts is None:
        try:
            u = urllib.parse.urlsplit(base)
            port = u.port or (443 if u.scheme == "https" else 80)
        except ValueError:
            raise FetchError(f"{what}: an invalid URL ({clean(url)})") from None
        if u.scheme not in ("http", "https") or not u.hostname:
            raise FetchError(f"{what}: not an http or https URL ({clean(url)})")
        hostport = u.netloc.rpartition("@")[2]
        parts = (u.scheme, u.hostname, port, u.path or "/", hostport)
        if len(_SPLIT) < 64:
            _SPLIT[base] = parts
    scheme, host, port, path, hostport = parts
    target = f"{path}?{query}" if q else path
    if not target.isascii() or not _BAD_URL_CHARS.isdisjoint(target) \
            or not hostport.isascii() or not _BAD_URL_CHARS.isdisjoint(hostport):
        raise FetchError(f"{what}: the URL has characters that cannot be sent "
                         f"({clean(url)})")
    request = (f"GET {target} HTTP/1.1\r\nHost: {hostport}\r\nUser-Agent: {agent}\r\n"
               "Accept-Encoding: identity\r\nAccept: */*\r\n\r\n").encode("ascii")
    return scheme, host, port, request


class Client:
    """Keep-alive connections (one per host and thread) for a whole fetch; thread-safe."""

    def __init__(self, connections: int = 4, stop: threading.Event | None = None) -> None:
        from .. import __version__

        self.policy: Policy = _TEST["policy"] or Policy()
        self.stop = stop if stop is not None else threading.Event()
        self.retries = 0
        self._tls = _tls_context()  # verifies certificates and host names, always
        self._agent = f"skyexport/{__version__}"
        self._local = threading.local()
        self._all: list[_Conn] = []
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
        for c in conns:
            c.close()

    # --- one request -------------------------------------------------------------------

    def _connect(self, scheme: str, host: str, port: int) -> _Conn:
        """A new connection (TCP, then TLS verified against `host`), with the connect
        timeout for both, then the read timeout for every later send and receive."""
        address = _TEST["hosts"].get(host, (host, port))
        sock = socket.create_connection(address, timeout=self.policy.connect_timeout_s)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if scheme == "https":
                sock = self._tls.wrap_socket(sock, server_hostname=host)
            sock.settimeout(self.policy.read_timeout_s)
        except BaseException:
            sock.close()
            raise
        return _Conn(sock)

    def _drop(self, c: _Conn) -> None:
        c.close()
        with self._lock:
            if c in self._all:
                self._all.remove(c)

    def _send(self, url: str, what: str) -> tuple[Response, Callable[[bool], None]]:
        """The response to GET `url` (its headers read), and its release (True once the
        body was read whole: the connection may serve the next request)."""
        scheme, host, port, request = _request(url, self._agent, what)
        key = (scheme, host, port)
        pool: dict[tuple[str, str, int], _Conn] = self._local.__dict__.setdefault("pool", {})
        for fresh in (False, True):
            c = pool.pop(key, None)  # in use: not in the pool until released whole
            reused = c is not None
            try:
                if c is None:
                    c = self._connect(scheme, host, port)
                    with self._lock:
                        self._all.append(c)
                c.sock.sendall(request)
                r = Response(c)
            except ssl.SSLCertVerificationError as exc:
                if c is not None:
                    self._drop(c)
                why = exc.verify_message or str(exc)
                raise FetchError(f"{what}: the TLS certificate of {host} does not verify "
                                 f"(CERTIFICATE_VERIFY_FAILED: {why})") from None
            except (_Silent, BrokenPipeError, ConnectionResetError) as exc:
                if c is not None:
                    self._drop(c)
                if reused and not fresh:
                    continue  # the server closed an idle keep-alive connection: once more
                raise _Transport(str(exc) or type(exc).__name__) from None
            except (OSError, _Transport) as exc:
                if c is not None:
                    self._drop(c)
                raise _Transport(str(exc) or type(exc).__name__) from None

            def release(whole: bool, r: Response = r, c: _Conn = c) -> None:
                """Keep the connection for the next request only after a body read
                whole, from a server that keeps it open and sent nothing more."""
                if whole and r.done and not r.will_close and c.pos == c.end:
                    pool[key] = c
                else:
                    self._drop(c)
            return r, release
        raise AssertionError("unreachable")

    def _open(self, url: str, params: dict[str, str] | None,
              what: str) -> tuple[Response, Callable[[bool], None]]:
        """The response after the redirects the policy allows: only to http and https
        URLs, never from https to http, at most `max_redirects`."""
        if params:
            url += "?" + urllib.parse.urlencode(params)
        for _ in range(self.policy.max_redirects + 1):
            r, release = self._send(url, what)
            if r.status not in (301, 302, 303, 307, 308):
                return r, release
            location = r.getheader("location")
            try:
                r.read(ERROR_BODY_CAP)
            except (OSError, _Transport):
                pass
            release(r.done)
            if not location:
                raise RedirectRefused(f"{what}: the server answered a redirect without "
                                      "a Location")
            try:
                nxt = urllib.parse.urljoin(url, location.strip())
                scheme = urllib.parse.urlsplit(nxt).scheme
            except ValueError:
                raise RedirectRefused(f"{what}: the server redirected to an invalid "
                                      f"URL ({clean(location)})") from None
            if scheme not in ("http", "https"):
                raise RedirectRefused(f"{what}: the server redirected to a "
                                      f"{clean(scheme)}: URL ({clean(location)}); only "
                                      "http and https redirects are followed")
            if scheme == "http" and urllib.parse.urlsplit(url).scheme == "https":
                raise RedirectRefused(f"{what}: the server redirected from {clean(url)} "
                                      f"to {clean(nxt)}, from https to plain http; refused "
                                      "(a redirect may not drop TLS)")
            url = nxt
        raise RedirectRefused(f"{what}: more than {self.policy.max_redirects} redirects")

    def _error(self, r: Response, what: str) -> FetchError:
        try:
            body = r.read(ERROR_BODY_CAP)
        except (OSError, _Transport):
            body = b""
        name = message = ""
        try:
            obj = json.loads(body)
            if isinstance(obj, dict):
                e, m = obj.get("error"), obj.get("message")
                name = e if isinstance(e, str) else ""
                message = m if isinstance(m, str) else ""
        except ValueError:
            pass
        if name in ACCOUNT_ERRORS:
            return AccountError(f"{what}: the account {ACCOUNT_ERRORS[name]}"
                                + (f": {clean(message)}" if message else ""), name)
        detail = f" {clean(name)}" if name else ""
        detail += f": {clean(message)}" if message else ""
        err = FetchError(f"{what}: HTTP {r.status}{detail}")
        err.status, err.xrpc = r.status, name
        return err

    def _pause(self, seconds: float) -> None:
        if self.stop.wait(seconds):
            raise Interrupted

    def get(self, url: str, params: dict[str, str] | None, what: str,
            write: Callable[[memoryview], object], restart: Callable[[], object],
            cap: int, cap_hint: str = "", statuses: tuple[int, ...] = (200,),
            tried: int = 0, last: str = "") -> int:
        """GET `url` into `write` (handed views of one reused buffer), with the policy's
        retries (`restart` empties what a failed attempt wrote); the number of body
        bytes.  `tried`: attempts already made elsewhere (the blobs' multiplexed path;
        `last` says how the last one failed).  Errors: FetchError (one line),
        AccountError, CapExceeded, Interrupted."""
        p = self.policy
        attempt = tried
        if attempt >= p.attempts:
            raise FetchError(f"{what}: failed {attempt} times (last: {last})")
        while True:
            if self.stop.is_set():
                raise Interrupted
            attempt += 1
            wait: float | None = None
            try:
                return self._get_once(url, params, what, write, restart, cap, cap_hint,
                                      statuses)
            except RetryableStatus as exc:
                last = f"HTTP {exc.status}"
                wait = exc.wait
                if wait is not None and wait > p.max_wait_s:
                    raise FetchError(f"{what}: the server asks to wait {wait:.0f} s (HTTP "
                                     f"{exc.status}); try again later") from None
            except _Transport as exc:
                last = clean(str(exc))
            if attempt >= p.attempts:
                raise FetchError(f"{what}: failed {attempt} times (last: {last})") from None
            with self._lock:
                self.retries += 1
            self._pause(wait if wait is not None else self.backoff(attempt))

    def backoff(self, attempt: int) -> float:
        """The pause after failed attempt number `attempt` (1, 2...): doubled each time,
        with jitter."""
        p = self.policy
        return float(min(p.backoff_max_s, p.backoff_s * 2 ** (attempt - 1))
                     * (0.5 + random.random() / 2))

    def request(self, url: str, what: str) -> bytes:
        """The bytes of a GET of `url`."""
        return _request(url, self._agent, what)[3]

    def connection(self, url: str, what: str) -> tuple[_Conn, bytes]:
        """A new connection for GET requests like `url` (TLS verified; the read timeout
        set), and the request's bytes, for a caller that multiplexes connections itself
        (it makes them non-blocking).  Errors: FetchError, _Transport, OSError."""
        scheme, host, port, request = _request(url, self._agent, what)
        try:
            return self._connect(scheme, host, port), request
        except ssl.SSLCertVerificationError as exc:
            why = exc.verify_message or str(exc)
            raise FetchError(f"{what}: the TLS certificate of {host} does not verify "
                             f"(CERTIFICATE_VERIFY_FAILED: {why})") from None

    def _get_once(self, url: str, params: dict[str, str] | None, what: str,
                  write: Callable[[memoryview], object], restart: Callable[[], object],
                  cap: int, cap_hint: str, statuses: tuple[int, ...]) -> int:
        r, release = self._open(url, params, what)
        whole = False
        try:
            status = r.status
            if status in RETRY_STATUSES:
                wait = _retry_after(r) if status in (429, 503) else None
                raise RetryableStatus(status, wait)
            if status not in statuses:
                raise self._error(r, what)
            enc = (r.getheader("content-encoding") or "identity").strip().lower()
            if enc not in ("", "identity"):
                raise FetchError(f"{what}: the server sent a {clean(enc)}-encoded body "
                                 "though none was asked for")
            length = r.getheader("content-length")
            promised = int(length) if length is not None and length.isdigit() else None
            if r.transfer not in ("", "chunked"):
                raise FetchError(f"{what}: the server sent a {clean(r.transfer)} "
                                 "transfer-coding though none was asked for")
            if promised is not None and promised > cap:
                raise CapExceeded(f"{what}: the server announces {promised:,} bytes, more "
                                  f"than the cap of {cap:,}{cap_hint}")
            restart()
            n = 0
            stop = self.stop
            while True:
                try:
                    view = r.chunk()
                except (OSError, _Transport) as exc:
                    raise _Transport(str(exc) or type(exc).__name__) from None
                if not view:
                    break
                n += len(view)
                if n > cap:
                    raise CapExceeded(f"{what}: the body grew past the cap of {cap:,} "
                                      f"bytes and was cut{cap_hint}")
                write(view)  # a local error (a full disk) is not the network's
                if stop.is_set():
                    raise Interrupted
            if promised is not None and n != promised:
                raise _Transport(f"body of {n} bytes, {promised} promised")
            whole = True
            return n
        finally:
            release(whole)

    def get_bytes(self, url: str, params: dict[str, str] | None, what: str,
                  cap: int = 4 << 20) -> bytes:
        buf = bytearray()
        self.get(url, params, what, buf.extend, buf.clear, cap)
        return bytes(buf)

    def get_json(self, url: str, params: dict[str, str] | None, what: str,
                 cap: int = 4 << 20, statuses: tuple[int, ...] = (200,)) -> Any:
        buf = bytearray()
        self.get(url, params, what, buf.extend, buf.clear, cap, statuses=statuses)
        try:
            return json.loads(bytes(buf))
        except ValueError:
            raise FetchError(f"{what}: the answer is not JSON") from None


def write_all(fd: int) -> Callable[[memoryview], None]:
    """A `write` for Client.get that writes every byte to `fd`."""
    def write(view: memoryview) -> None:
        while view:
            view = view[os.write(fd, view):]
    return write


def truncate(fd: int) -> Callable[[], None]:
    def restart() -> None:
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
    return restart
