"""Fuzz the webhook receiver over real HTTP: a bad request is a 4xx, never a 500, never a crash.

One receiver listens on loopback for the whole module (in its own thread and
event loop, since hypothesis drives plain functions).  Each case is a raw
HTTP/1.1 request written to a socket, so headers can be anything a client can
send: a fuzzed or non-ASCII ``Authorization``, a wrong ``Content-Length``,
chunked bodies, odd content types; bodies are real Alertmanager captures
mutated byte-wise and as JSON trees, deeply nested JSON, or random bytes.
The promise: every answer is 200 (a valid, authorized notification) or a 4xx;
no request gets a 5xx or makes the server log an unhandled error, and it
still answers a good request at the end.
"""

from __future__ import annotations

import asyncio
import json
import logging
import select
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp.http_exceptions import BadHttpMessage
from fuzzing import fuzz_settings, mutated_bytes, mutated_tree
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from gpuslo.alerts.receiver import WebhookReceiver
from gpuslo.pipeline.config import ReceiverConfig

FIXTURES = Path(__file__).parent.parent / "fixtures" / "alertmanager"
CAPTURES = [(FIXTURES / n).read_bytes() for n in
            ("alertmanager_webhook_example.json", "alertmanager_webhook_example_resolved.json")]
TOKEN = "fuzz-receiver-token"
PATH = "/alertmanager/webhook"
MAX_BODY = 64 * 1024


class _Errors(logging.Handler):
    """Collects records at ERROR and above from aiohttp and gpuslo: unhandled handler errors.

    aiohttp also logs each request its HTTP parser refuses (a 400 it sends
    itself, ``BadHttpMessage``) at ERROR; those are answered, so they are left out.
    """

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, BadHttpMessage):
            return
        self.records.append(record)


class _Server:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.receiver = WebhookReceiver(
            ReceiverConfig(port=0, token=SecretStr(TOKEN), max_body_bytes=MAX_BODY, keep=5,
                           body_timeout_s=1.0))
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    @staticmethod
    async def _cancel_rest() -> None:
        """Connection handlers the runner left waiting (clients that vanished mid-request)."""
        rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in rest:
            task.cancel()
        await asyncio.gather(*rest, return_exceptions=True)

    def __enter__(self) -> _Server:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.receiver.start(), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.receiver.stop(), self.loop).result(10)
        asyncio.run_coroutine_threadsafe(self._cancel_rest(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def server() -> Iterator[_Server]:
    errors = _Errors()
    for name in ("aiohttp", "gpuslo"):
        logging.getLogger(name).addHandler(errors)
    try:
        with _Server() as s:
            s.errors = errors  # type: ignore[attr-defined]
            yield s
    finally:
        for name in ("aiohttp", "gpuslo"):
            logging.getLogger(name).removeHandler(errors)
    assert not errors.records, [r.getMessage() for r in errors.records]


def exchange(port: int, request: bytes, *, complete: bool = True) -> int | None:
    """Send ``request`` raw and return the response's status (None: no answer).

    The head goes first: the receiver refuses a bad token or an oversized body
    from the headers alone and closes without reading the body, and a client
    that kept writing would get a reset instead of that answer (as any HTTP
    client does), so an early answer is read before the body is sent.  An
    incomplete request (its body shorter than it declares) is half-closed
    after sending, since the server would wait for the rest forever; it may
    go unanswered.
    """
    head, sep, body = request.partition(b"\r\n\r\n")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        data = b""
        try:
            sock.sendall(head + sep)
            if not select.select([sock], [], [], 0.05)[0]:
                sock.sendall(body)
                if not complete:
                    sock.shutdown(socket.SHUT_WR)
            while b"\r\n" not in data:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
        except (ConnectionResetError, BrokenPipeError):
            pass
    if not data:
        return None
    status_line = data.split(b"\r\n", 1)[0].split(b" ")
    assert status_line[0].startswith(b"HTTP/1."), data[:200]
    return int(status_line[1])


def request_bytes(method: bytes, path: bytes, headers: list[tuple[bytes, bytes]],
                  body: bytes) -> bytes:
    head = b"".join(k + b": " + v + b"\r\n" for k, v in headers)
    return method + b" " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n" + head + b"\r\n" + body


_auth = st.one_of(
    st.just(b"Bearer " + TOKEN.encode()),
    st.sampled_from([b"bearer " + TOKEN.encode(), b"Bearer  " + TOKEN.encode() + b" ", b"Bearer",
                     b"Bearer ", b"Basic " + TOKEN.encode(), b"Bearer \xff\xfe", b"Bearer \xc3\xa9",
                     b"Bearer " + TOKEN.encode() + b"\x00", b"Bearer " + b"a" * 5000, b"\x80"]),
    st.binary(max_size=40).filter(lambda b: b"\r" not in b and b"\n" not in b),
)
_content_type = st.sampled_from([b"application/json", b"text/plain", b"application/json; "
                                 b"charset=latin-1", b"multipart/form-data; boundary=x", b"\xff"])


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


_bodies = st.one_of(
    mutated_bytes(CAPTURES),
    st.sampled_from([json.loads(c) for c in CAPTURES]).flatmap(
        lambda t: mutated_tree(t, [("alerts",), ("alerts", 0), ("alerts", 0, "labels"),
                                   ("alerts", 0, "startsAt"), ("version",), ("status",)]))
    .map(lambda t: json.dumps(t, default=str).encode()),
    st.sampled_from([_nested(20_000), b'{"a":' * 10_000, b"1" * 5000, b"", b"null", b"[]",
                     b'{"version": "4"}', b"\xff\xfe{}", b'"' + b"\\u0000" * 100 + b'"',
                     b"1e999999", b'{"version":"4","alerts":' + _nested(10_000) + b"}"]),
    st.binary(max_size=256),
    st.sampled_from(CAPTURES),
)


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, bool]:
    """A raw request, and whether it is complete (its body as long as it declares)."""
    body = draw(_bodies)
    complete = True
    method = draw(st.sampled_from([b"POST", b"POST", b"POST", b"GET", b"PUT", b"DELETE",
                                   b"OPTIONS", b"P\xffST"]))
    path = draw(st.sampled_from([PATH.encode(), PATH.encode() + b"?x=1", PATH.encode() + b"/",
                                 b"/", b"/%ff", b"//" + PATH.encode(), b"*"]))
    headers: list[tuple[bytes, bytes]] = []
    if draw(st.integers(0, 9)):
        headers.append((b"Authorization", draw(_auth)))
    if draw(st.booleans()):
        headers.append((b"Content-Type", draw(_content_type)))
    framing = draw(st.sampled_from(["length", "length", "wrong-length", "chunked", "none",
                                    "both"]))
    if framing == "length":
        headers.append((b"Content-Length", str(len(body)).encode()))
    elif framing == "wrong-length":
        declared = draw(st.sampled_from(
            [b"-1", b"abc", b"99999999999999999999", str(len(body) + 10).encode(), b"0",
             str(MAX_BODY + 1).encode()]))
        headers.append((b"Content-Length", declared))
        complete = not declared.isdigit() or int(declared) <= len(body)
    elif framing in ("chunked", "both"):
        headers.append((b"Transfer-Encoding", b"chunked"))
        if framing == "both":
            headers.append((b"Content-Length", str(len(body)).encode()))
        size = draw(st.sampled_from([f"{len(body):x}".encode(), b"zz", b"ffffffffffffffff"]))
        complete = size != b"ffffffffffffffff"
        body = size + b"\r\n" + body + b"\r\n0\r\n\r\n"
    if draw(st.integers(0, 5)) == 0:
        headers.append((draw(st.sampled_from([b"X-\xff", b"Bad Header", b"", b"X"])),
                        draw(st.binary(max_size=20).filter(lambda b: b"\n" not in b))))
    return request_bytes(method, path, headers, body), complete


@fuzz_settings(250)
@given(requests())
def test_every_request_gets_a_200_or_a_4xx(server: _Server, case: tuple[bytes, bool]) -> None:
    request, complete = case
    assert server.receiver.port is not None
    status = exchange(server.receiver.port, request, complete=complete)
    if complete:
        assert status is not None, "the server closed the connection without an answer"
    assert status is None or status == 200 or 400 <= status < 500, status


def test_no_5xx_was_counted_and_a_good_request_still_succeeds(server: _Server) -> None:
    assert server.receiver.port is not None
    body = CAPTURES[0]
    status = exchange(server.receiver.port, request_bytes(
        b"POST", PATH.encode(), [(b"Authorization", f"Bearer {TOKEN}".encode()),
                                 (b"Content-Length", str(len(body)).encode())], body))
    assert status == 200
    assert not [s for s in server.receiver.rejected if s >= 500]


@pytest.mark.parametrize(("auth", "body", "status"), [
    # Fuzz findings: each of these got a 500 (an unhandled error in the handler)...
    (b"Bearer \xff\xfe", CAPTURES[0], 401),  # UnicodeEncodeError comparing the token
    (b"Bearer " + TOKEN.encode(), _nested(20_000), 400),  # RecursionError in json.loads
    # ... or no answer at all: a chunk size that is not hex left the handler waiting
    # for the body forever.
    (b"Bearer " + TOKEN.encode(), None, 408),
])
def test_the_requests_that_made_a_500_get_their_4xx(
    server: _Server, auth: bytes, body: bytes | None, status: int
) -> None:
    assert server.receiver.port is not None
    if body is None:
        framing = [(b"Transfer-Encoding", b"chunked")]
        body = b"zz\r\n" + CAPTURES[0] + b"\r\n0\r\n\r\n"
    else:
        framing = [(b"Content-Length", str(len(body)).encode())]
    got = exchange(server.receiver.port, request_bytes(
        b"POST", PATH.encode(), [(b"Authorization", auth), *framing], body))
    assert got == status

