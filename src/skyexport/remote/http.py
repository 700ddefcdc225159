"""The HTTP policy every request of a fetch follows (the server is untrusted input):

- timeouts on connect and on every read (a stalled connection fails, it never hangs);
- retries with exponential backoff (and jitter) on connection errors, truncated bodies
  and 500/502/503/504 answers; `429` waits as long as `Retry-After` or `RateLimit-Reset` says (up to
  `max_wait_s`, else one clear line);
- redirects followed by hand, only to http and https URLs, at most `max_redirects`;
- TLS certificates always verified (certifi's roots; never switched off);
- every body capped: a Content-Length above the cap is refused before reading, a body
  that grows past it is cut, a body shorter than its Content-Length is retried;
- `Accept-Encoding: identity`, so no compressed body can expand past a cap.

The client reads no environment variable (no proxy, no CA file): the tests reach it only
through `_TEST`, a private seam.
"""

from __future__ import annotations

import email.utils
import json
import os
import random
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

from .errors import AccountError, FetchError

try:
    import httpx
except ImportError:  # pragma: no cover - the `fetch` extra is not installed
    raise FetchError("skyexport fetch needs httpx and dnspython: pip install "
                     "'skyexport[fetch]'") from None

CHUNK = 1 << 20
RETRY_STATUSES = (429, 500, 502, 503, 504)  # not 501 (not implemented: it never will be)
ERROR_BODY_CAP = 64 * 1024

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


#: Private seam for the tests: `cafile` (a CA trusted instead of certifi's), `policy` (a
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


def _retry_after(headers: httpx.Headers) -> float | None:
    value = headers.get("retry-after")
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
    value = headers.get("ratelimit-reset")
    if value is not None and value.strip().isdigit():
        n = float(value.strip())
        # atproto's PDS sends a Unix time; the IETF draft sends seconds from now.
        return max(0.0, n - now) if n > 1e9 else n
    return None


class Client:
    """One connection pool for a whole fetch (connections are reused); thread-safe."""

    def __init__(self, connections: int = 4, stop: threading.Event | None = None) -> None:
        from .. import __version__

        self.policy: Policy = _TEST["policy"] or Policy()
        self.stop = stop if stop is not None else threading.Event()
        self.retries = 0
        cafile = _TEST["cafile"]
        verify: ssl.SSLContext | bool = (ssl.create_default_context(cafile=cafile)
                                         if cafile else True)
        p = self.policy
        self._http = httpx.Client(
            timeout=httpx.Timeout(p.read_timeout_s, connect=p.connect_timeout_s),
            verify=verify, follow_redirects=False, trust_env=False,
            limits=httpx.Limits(max_connections=connections + 2,
                                max_keepalive_connections=connections + 2),
            headers={"User-Agent": f"skyexport/{__version__}", "Accept-Encoding": "identity"})
        self._lock = threading.Lock()

    def close(self) -> None:
        self._http.close()

    # --- one request -------------------------------------------------------------------

    def _request(self, url: httpx.URL, params: dict[str, str] | None) -> httpx.Request:
        req = self._http.build_request("GET", url, params=params)
        target = _TEST["hosts"].get(url.host)
        if target is not None:  # tests only: connect elsewhere, check the cert by name
            ip, port = target
            req.url = req.url.copy_with(host=ip, port=port)
            req.headers["Host"] = url.host
            req.extensions["sni_hostname"] = url.host
        return req

    def _open(self, url: str, params: dict[str, str] | None, what: str) -> httpx.Response:
        """The response (streamed) after the redirects the policy allows."""
        u = httpx.URL(url)
        for _ in range(self.policy.max_redirects + 1):
            r = self._http.send(self._request(u, params), stream=True)
            if r.status_code not in (301, 302, 303, 307, 308):
                return r
            location = r.headers.get("location")
            r.close()
            if not location:
                raise FetchError(f"{what}: the server answered a redirect without a "
                                 "Location")
            try:
                nxt = u.join(location)
            except (httpx.InvalidURL, ValueError):
                raise FetchError(f"{what}: the server redirected to an invalid URL "
                                 f"({clean(location)})") from None
            if nxt.scheme not in ("http", "https"):
                raise FetchError(f"{what}: the server redirected to a {clean(nxt.scheme)}: "
                                 f"URL ({clean(location)}); only http and https redirects "
                                 "are followed")
            u, params = nxt, None
        raise FetchError(f"{what}: more than {self.policy.max_redirects} redirects")

    def _error(self, r: httpx.Response, what: str) -> FetchError:
        body = bytearray()
        try:
            for chunk in r.iter_raw(ERROR_BODY_CAP):
                body += chunk
                if len(body) >= ERROR_BODY_CAP:
                    break
        except httpx.HTTPError:
            pass
        name = message = ""
        try:
            obj = json.loads(bytes(body))
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
        err = FetchError(f"{what}: HTTP {r.status_code}{detail}")
        err.status, err.xrpc = r.status_code, name
        return err

    def _pause(self, seconds: float) -> None:
        if self.stop.wait(seconds):
            raise Interrupted

    def get(self, url: str, params: dict[str, str] | None, what: str,
            write: Callable[[bytes], object], restart: Callable[[], object],
            cap: int, cap_hint: str = "", statuses: tuple[int, ...] = (200,)) -> int:
        """GET `url` into `write`, with the policy's retries (`restart` empties what a
        failed attempt wrote); the number of body bytes.  Errors: FetchError (one line),
        AccountError, CapExceeded, Interrupted."""
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
            except httpx.TransportError as exc:
                last = clean(str(exc) or type(exc).__name__)
            if attempt >= p.attempts:
                raise FetchError(f"{what}: failed {attempt} times (last: {last})") from None
            with self._lock:
                self.retries += 1
            if wait is None:
                wait = min(p.backoff_max_s, p.backoff_s * 2 ** (attempt - 1))
                wait *= 0.5 + random.random() / 2
            self._pause(wait)

    def _get_once(self, url: str, params: dict[str, str] | None, what: str,
                  write: Callable[[bytes], object], restart: Callable[[], object],
                  cap: int, cap_hint: str, statuses: tuple[int, ...]) -> int:
        r = self._open(url, params, what)
        try:
            status = r.status_code
            if status in RETRY_STATUSES:
                wait = _retry_after(r.headers) if status in (429, 503) else None
                raise RetryableStatus(status, wait)
            if status not in statuses:
                raise self._error(r, what)
            enc = r.headers.get("content-encoding", "identity").strip().lower()
            if enc not in ("", "identity"):
                raise FetchError(f"{what}: the server sent a {clean(enc)}-encoded body "
                                 "though none was asked for")
            length = r.headers.get("content-length")
            promised = int(length) if length is not None and length.isdigit() else None
            if promised is not None and promised > cap:
                raise CapExceeded(f"{what}: the server announces {promised:,} bytes, more "
                                  f"than the cap of {cap:,}{cap_hint}")
            restart()
            n = 0
            for chunk in r.iter_raw(CHUNK):
                n += len(chunk)
                if n > cap:
                    raise CapExceeded(f"{what}: the body grew past the cap of {cap:,} bytes "
                                      f"and was cut{cap_hint}")
                write(chunk)
                if self.stop.is_set():
                    raise Interrupted
            if promised is not None and n != promised:
                raise httpx.RemoteProtocolError(f"body of {n} bytes, {promised} promised")
            return n

        finally:
            r.close()

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


def write_all(fd: int) -> Callable[[bytes], None]:
    """A `write` for Client.get that writes every byte to `fd`."""
    def write(chunk: bytes) -> None:
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view):]
    return write


def truncate(fd: int) -> Callable[[], None]:
    def restart() -> None:
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
    return restart
