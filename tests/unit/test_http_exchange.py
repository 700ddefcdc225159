"""The fetch's own HTTP/1.1 response parser (skyexport.remote.http.Response), read from
real sockets: against the standard library's http.client on the same bytes (hypothesis
writes the responses: status lines, headers, Content-Length, chunked and close-delimited
bodies, split into arbitrary pieces), and on the malformed or endless answers a hostile
server may send (it must fail with one line, never hang, never grow past its caps)."""

from __future__ import annotations

import http.client
import io
import socket
import threading
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from skyexport.remote import http as rhttp


class _BytesSocket:
    """What http.client.HTTPResponse reads from: makefile() over the given bytes."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def makefile(self, mode: str) -> io.BytesIO:
        return io.BytesIO(self.data)


def _stdlib(data: bytes) -> tuple[int, dict[str, str | None], bytes, bool]:
    r = http.client.HTTPResponse(_BytesSocket(data), method="GET")  # type: ignore[arg-type]
    r.begin()
    names = {k.lower() for k in r.headers.keys()}
    return r.status, {n: r.getheader(n) for n in names}, r.read(), bool(r.will_close)


def _pieces_sender(sock: socket.socket, data: bytes, cuts: list[int]) -> threading.Thread:
    def send() -> None:
        try:
            last = 0
            for c in sorted(set(cuts)) + [len(data)]:
                if c > last:
                    sock.sendall(data[last:c])
                    last = c
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
    t = threading.Thread(target=send, daemon=True)
    t.start()
    return t


def _ours(data: bytes, cuts: list[int] = [], size: int = rhttp.BUF  # noqa: B006
          ) -> tuple[int, dict[str, str | None], bytes, bool, int]:
    """(status, headers, body, will_close, bytes left unread after the body)."""
    a, b = socket.socketpair()
    b.settimeout(5)
    try:
        t = _pieces_sender(a, data, cuts)
        c = rhttp._Conn(b, size)
        r = rhttp.Response(c)
        body = bytearray()
        while v := r.chunk():
            body += v
        assert r.done
        extra = c.end - c.pos
        t.join(5)
        return r.status, dict(r.headers), bytes(body), r.will_close, extra
    finally:
        a.close()
        b.close()


# --- hypothesis: the same bytes through both parsers ---------------------------------

_token = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-",
                 min_size=1, max_size=12).filter(
    lambda n: n.lower() not in ("content-length", "transfer-encoding", "connection",
                                "keep-alive"))
_value = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7e),
                 min_size=0, max_size=30).map(lambda v: v.replace(":", ";"))
_value_sp = st.builds(lambda a, b: f"{a} {b}".strip() if a and b else a + b, _value, _value)


@st.composite
def responses(draw: st.DrawFn) -> tuple[bytes, bytes, list[int]]:
    """(the response's bytes, its body, where to cut it into pieces)."""
    version = draw(st.sampled_from(["HTTP/1.1", "HTTP/1.0"]))
    status = draw(st.sampled_from([200, 201, 203, 206, 301, 302, 400, 404, 429, 500, 503]))
    reason = draw(st.sampled_from(["", " OK", " Not Found", " Whatever it says"]))
    headers = draw(st.lists(st.tuples(_token, _value_sp), max_size=8))
    body = draw(st.binary(max_size=3000))
    framing = draw(st.sampled_from(["length", "chunked", "close"]))
    connection = draw(st.sampled_from([None, "close", "keep-alive", "Keep-Alive, Upgrade"]))
    lines = [f"{version} {status}{reason}"]
    lines += [f"{k}: {v}" for k, v in headers]
    if connection is not None:
        lines.append(f"Connection: {connection}")
    if draw(st.booleans()):
        lines.append("Keep-Alive: timeout=5")
    if framing == "length":
        lines.append(f"Content-Length: {len(body)}")
        wire = body
    elif framing == "chunked":
        lines.append(draw(st.sampled_from(["Transfer-Encoding: chunked",
                                           "transfer-encoding: Chunked"])))
        sizes = draw(st.lists(st.integers(1, 700), max_size=10))
        out, i = bytearray(), 0
        for n in sizes:
            part = body[i:i + n]
            if not part:
                break
            ext = draw(st.sampled_from(["", ";name=value", " ;x"]))
            hexa = draw(st.sampled_from(["{:x}", "{:X}", "{:04x}"])).format(len(part))
            out += f"{hexa}{ext}\r\n".encode() + part + b"\r\n"
            i += len(part)
        if i < len(body):
            out += f"{len(body) - i:x}\r\n".encode() + body[i:] + b"\r\n"
        out += b"0\r\n"
        for k, v in draw(st.lists(st.tuples(_token, _value), max_size=2)):
            out += f"{k}: {v}\r\n".encode()
        out += b"\r\n"
        wire = bytes(out)
    else:
        wire = body
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + wire
    cuts = draw(st.lists(st.integers(0, len(data)), max_size=6))
    return data, body, cuts


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(responses(), st.sampled_from([rhttp.BUF, 4096, 1024]))
def test_parser_agrees_with_http_client(case: tuple[bytes, bytes, list[int]], size: int) -> None:
    """Status, every header (repeated ones joined as http.client's getheader joins
    them), the body and whether the connection closes after it: the same as
    http.client's, wherever the bytes are cut into pieces and whatever the buffer.  One
    difference is meant: `Connection: close` closes an HTTP/1.0 connection even beside a
    Keep-Alive header (http.client keeps it)."""
    data, body, cuts = case
    status, headers, got, will_close, extra = _ours(data, cuts, size)
    s_status, s_headers, s_body, s_close = _stdlib(data)
    if b"\r\nConnection: close\r\n" in data:
        s_close = True
    assert (status, got, will_close) == (s_status, s_body, s_close)
    assert got == body
    assert headers == s_headers
    assert extra == 0


# --- literal cases ----------------------------------------------------------------------

def test_chunked_body_with_extensions_and_trailer() -> None:
    data = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5;note=first\r\nhello\r\n6\r\n world\r\n0\r\nX-Checksum: 1\r\n\r\n")
    assert _ours(data) == (200, {"transfer-encoding": "chunked"}, b"hello world", False, 0)


def test_chunked_body_split_at_every_byte() -> None:
    data = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n")
    assert _ours(data, list(range(len(data))))[2] == b"abc0123456789abcdef"


def test_header_lines_ending_in_a_bare_newline() -> None:
    data = b"HTTP/1.1 200 OK\nContent-Length: 3\nX-A:  spaced  \n\nabc"
    assert _ours(data) == (200, {"content-length": "3", "x-a": "spaced"}, b"abc", False, 0)


def test_interim_100_continue_is_skipped() -> None:
    data = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    assert _ours(data)[:3] == (200, {"content-length": "2"}, b"ok")


def test_bytes_past_the_body_are_not_body() -> None:
    """Bytes after the promised Content-Length stay unread (the client then does not
    reuse the connection)."""
    data = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokGARBAGE"
    status, _, body, _, extra = _ours(data)
    assert (status, body) == (200, b"ok") and extra == len(b"GARBAGE")


@pytest.mark.parametrize(("data", "error"), [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
     "the connection closed mid-body"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
     "the connection closed mid-body"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
     "an invalid chunk size: 'zz'"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n",
     "a chunk longer than its size"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
     "an invalid Content-Length: '1, 2'"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "an invalid Content-Length: '-1'"),
    (b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n", "a malformed header line: 'Bad Name: x'"),
    (b"SSH-2.0-OpenSSH\r\n\r\n", "not an HTTP/1.x status line: 'SSH-2.0-OpenSSH'"),
    (b"HTTP/2 200\r\n\r\n", "not an HTTP/1.x status line: 'HTTP/2 200'"),
    (b"HTTP/1.1 2000 OK\r\n\r\n", "not an HTTP/1.x status line"),
    (b"HTTP/1.1 200 OK\r\nContent-Le", "the connection closed in the response's header"),
    (b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 101 + b"\r\n", "more than 100 headers"),
    (b"HTTP/1.1 100 Continue\r\n\r\n" * 11 + b"HTTP/1.1 204 No Content\r\n\r\n",
     "more than 10 interim (1xx) answers"),
])
def test_malformed_answers_fail_with_one_line(data: bytes, error: str) -> None:
    with pytest.raises(rhttp._Transport) as info:
        _ours(data)
    assert str(info.value).startswith(error)


def test_nothing_at_all_is_a_silent_close() -> None:
    """A connection closed before any byte: the kept-alive connection the server had
    closed, which the client retries at once on a new one."""
    with pytest.raises(rhttp._Silent):
        _ours(b"")


# --- answers that never end -------------------------------------------------------------

def _endless(first: bytes, repeat: bytes) -> Iterator[socket.socket]:
    a, b = socket.socketpair()
    b.settimeout(10)
    stop = threading.Event()

    def send() -> None:
        try:
            a.sendall(first)
            while not stop.is_set():
                a.sendall(repeat * 64)
        except OSError:
            pass
    t = threading.Thread(target=send, daemon=True)
    t.start()
    try:
        yield b
    finally:
        stop.set()
        b.close()
        a.close()
        t.join(10)


@pytest.fixture
def endless_header() -> Iterator[socket.socket]:
    yield from _endless(b"HTTP/1.1 200 OK\r\n", b"X-Pad: " + b"p" * 50 + b"\r\n")


def test_an_endless_header_is_cut_at_its_cap(endless_header: socket.socket) -> None:
    c = rhttp._Conn(endless_header)
    with pytest.raises(rhttp._Transport, match="the response's header is longer than "
                                               "65,536 bytes"):
        rhttp.Response(c)
    assert c.end - c.pos <= rhttp.HEAD_CAP + len(c.buf)


@pytest.fixture
def endless_chunk_line() -> Iterator[socket.socket]:
    yield from _endless(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"0")


def test_an_endless_chunk_size_line_is_cut(endless_chunk_line: socket.socket) -> None:
    r = rhttp.Response(rhttp._Conn(endless_chunk_line))
    with pytest.raises(rhttp._Transport, match="a chunk-size line longer than 4,096 bytes"):
        r.chunk()


@pytest.fixture
def endless_chunks() -> Iterator[socket.socket]:
    yield from _endless(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                        b"400\r\n" + b"x" * 1024 + b"\r\n")


def test_an_endless_chunked_body_never_ends_by_itself(endless_chunks: socket.socket) -> None:
    """Chunk after chunk: the parser keeps handing out 1 KiB pieces (the caller's cap
    cuts it; Client.get's cap is tested on a server); a bounded number of reads here."""
    r = rhttp.Response(rhttp._Conn(endless_chunks))
    total = 0
    for _ in range(5000):
        v = r.chunk()
        assert v
        total += len(v)
    assert total >= 1 << 20 and not r.done
