"""The HTTP policy every request of a fetch follows (the server is untrusted input):

- timeouts on connect and on every read (a stalled connection fails, it never hangs);
- retries with exponential backoff (and jitter) on connection errors, truncated bodies
  and 500/502/503/504 answers; `429` waits as long as `Retry-After` or `RateLimit-Reset`
  says (up to `max_wait_s`, else one clear line);
- redirects followed by hand, only to http and https URLs, at most `max_redirects`;
- TLS certificates always verified (the system's roots; never switched off); a
  certificate that does not verify is not retried;
- every body capped: a Content-Length above the cap is refused before reading, a body
  that grows past it is cut, a body shorter than its Content-Length is retried, bytes
  past it are not read;
- `Accept-Encoding: identity`, so no compressed body can expand past a cap.

Built on the standard library's http.client: one keep-alive connection per host and
thread (a blob costs one request on a warm connection, a fraction of a millisecond of
Python), bodies read with readinto into one buffer.  The client reads no environment
variable (no proxy, no CA file): the tests reach it only through `_TEST`, a private seam.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import os
import random
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from .errors import AccountError, FetchError

CHUNK = 1 << 20
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


class RetryableStatus(Exception):
    def __init__(self, status: int, wait: float | None) -> None:
        self.status = status
        self.wait = wait


def clean(text: str, limit: int = 200) -> str:
    """Untrusted text made fit for one line of a message."""
    out = "".join(c if c.isprintable() else "?" for c in text[:limit])
    return out + ("..." if len(text) > limit else "")


def _retry_after(r: http.client.HTTPResponse) -> float | None:
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


class _Tls(http.client.HTTPConnection):
    """HTTPS to `address`, the certificate checked against `name` (which differs from
    the address only under the tests' `hosts` seam)."""

    default_port = 443

    def __init__(self, address: tuple[str, int], name: str, context: ssl.SSLContext,
                 timeout: float) -> None:
        super().__init__(address[0], address[1], timeout=timeout)
        self._name = name
        self._context = context

    def connect(self) -> None:
        super().connect()
        self.sock = self._context.wrap_socket(self.sock, server_hostname=self._name)


class _Transport(Exception):
    """A connection-level failure: retried."""


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
        self._all: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._buf = threading.local()

    def close(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
        for c in conns:
            c.close()

    # --- one request -------------------------------------------------------------------

    def _conn(self, scheme: str, host: str, port: int) -> http.client.HTTPConnection:
        pool: dict[tuple[str, str, int], http.client.HTTPConnection] = \
            self._local.__dict__.setdefault("pool", {})
        c = pool.get((scheme, host, port))
        if c is None:
            address = _TEST["hosts"].get(host, (host, port))
            timeout = self.policy.connect_timeout_s
            if scheme == "https":
                c = _Tls(address, host, self._tls, timeout)
            else:
                c = http.client.HTTPConnection(address[0], address[1], timeout=timeout)
            pool[(scheme, host, port)] = c
            with self._lock:
                self._all.append(c)
        return c

    def _drop(self, scheme: str, host: str, port: int) -> None:
        pool = self._local.__dict__.get("pool", {})
        c = pool.pop((scheme, host, port), None)
        if c is not None:
            c.close()
            with self._lock:
                if c in self._all:
                    self._all.remove(c)

    def _send(self, url: str,
              what: str) -> tuple[http.client.HTTPResponse, Callable[[bool], None]]:
        """The response to GET `url`, and its release (True once the body was read
        whole: the connection may serve the next request)."""
        u = urllib.parse.urlsplit(url)
        scheme, host = u.scheme, u.hostname or ""
        port = u.port or (443 if scheme == "https" else 80)
        target = (u.path or "/") + (f"?{u.query}" if u.query else "")
        headers = {"Host": u.netloc.rpartition("@")[2], "User-Agent": self._agent,
                   "Accept-Encoding": "identity", "Accept": "*/*"}
        for fresh in (False, True):
            c = self._conn(scheme, host, port)
            reused = c.sock is not None
            try:
                if c.sock is None:
                    c.connect()
                assert c.sock is not None
                c.sock.settimeout(self.policy.read_timeout_s)
                c.request("GET", target, headers=headers)
                r = c.getresponse()
            except ssl.SSLCertVerificationError as exc:
                self._drop(scheme, host, port)
                why = exc.verify_message or str(exc)
                raise FetchError(f"{what}: the TLS certificate of {host} does not verify "
                                 f"(CERTIFICATE_VERIFY_FAILED: {why})") from None
            except (http.client.RemoteDisconnected, BrokenPipeError,
                    ConnectionResetError) as exc:
                self._drop(scheme, host, port)
                if reused and not fresh:
                    continue  # the server closed an idle keep-alive connection: once more
                raise _Transport(str(exc) or type(exc).__name__) from None
            except (OSError, http.client.HTTPException) as exc:
                self._drop(scheme, host, port)
                raise _Transport(str(exc) or type(exc).__name__) from None

            def release(whole: bool, r: http.client.HTTPResponse = r) -> None:
                """Keep the connection for the next request only after a body read
                whole from a server that keeps it open."""
                if not whole or r.will_close or not r.isclosed():
                    r.close()
                    self._drop(scheme, host, port)
            return r, release
        raise AssertionError("unreachable")

    def _open(self, url: str, params: dict[str, str] | None,
              what: str) -> tuple[http.client.HTTPResponse, Callable[[bool], None]]:
        """The response after the redirects the policy allows."""
        if params:
            url += "?" + urllib.parse.urlencode(params)
        for _ in range(self.policy.max_redirects + 1):
            r, release = self._send(url, what)
            if r.status not in (301, 302, 303, 307, 308):
                return r, release
            location = r.getheader("location")
            try:
                r.read(ERROR_BODY_CAP)
            except (OSError, http.client.HTTPException):
                pass
            release(r.isclosed())
            if not location:
                raise FetchError(f"{what}: the server answered a redirect without a "
                                 "Location")
            try:
                nxt = urllib.parse.urljoin(url, location.strip())
                scheme = urllib.parse.urlsplit(nxt).scheme
            except ValueError:
                raise FetchError(f"{what}: the server redirected to an invalid URL "
                                 f"({clean(location)})") from None
            if scheme not in ("http", "https"):
                raise FetchError(f"{what}: the server redirected to a {clean(scheme)}: "
                                 f"URL ({clean(location)}); only http and https redirects "
                                 "are followed")
            url = nxt
        raise FetchError(f"{what}: more than {self.policy.max_redirects} redirects")

    def _error(self, r: http.client.HTTPResponse, what: str) -> FetchError:
        try:
            body = r.read(ERROR_BODY_CAP)
        except (OSError, http.client.HTTPException):
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
            cap: int, cap_hint: str = "", statuses: tuple[int, ...] = (200,)) -> int:
        """GET `url` into `write` (handed views of one reused buffer), with the policy's
        retries (`restart` empties what a failed attempt wrote); the number of body
        bytes.  Errors: FetchError (one line), AccountError, CapExceeded, Interrupted."""
        p = self.policy
        last = ""
        attempt = 0
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
            if wait is None:
                wait = min(p.backoff_max_s, p.backoff_s * 2 ** (attempt - 1))
                wait *= 0.5 + random.random() / 2
            self._pause(wait)

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
            if promised is not None and promised > cap:
                raise CapExceeded(f"{what}: the server announces {promised:,} bytes, more "
                                  f"than the cap of {cap:,}{cap_hint}")
            restart()
            buf = self._buf.__dict__.get("b")
            if buf is None:
                buf = self._buf.b = memoryview(bytearray(CHUNK))
            n = 0
            while True:
                try:
                    got = r.readinto(buf)
                except (OSError, http.client.HTTPException) as exc:
                    raise _Transport(str(exc) or type(exc).__name__) from None
                if not got:
                    break
                n += got
                if n > cap:
                    raise CapExceeded(f"{what}: the body grew past the cap of {cap:,} "
                                      f"bytes and was cut{cap_hint}")
                write(buf[:got])  # a local error (a full disk) is not the network's
                if self.stop.is_set():
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
