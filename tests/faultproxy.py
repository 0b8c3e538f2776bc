"""A fault-injecting HTTP/1.1 reverse proxy in front of an S3 server, for tests.

``FaultProxy(upstream)`` listens on a free 127.0.0.1 port (``.url``, the mount's
``--endpoint-url``) and forwards every request to ``upstream`` (moto), each over a
fresh upstream connection, while the client's own connection stays alive between
requests as botocore expects. Request bodies are forwarded whole: by Content-Length,
or de-chunked from ``Transfer-Encoding: chunked`` (an ``aws-chunked`` content
encoding is part of the body and passes through as it is).

Rules (``Rule``) say which requests get a fault:

- ``slowdown`` / ``internal``: 503 SlowDown / 500 InternalError, with S3's XML error body;
- ``reset``: the connection is closed without an answer (``rst=True``: with SO_LINGER 0,
  so the client gets a TCP RST instead of a FIN);
- ``stall``: nothing is sent for ``seconds`` (longer than the client's timeout), then
  the connection is closed;
- ``truncate``: the real status and headers, with the full Content-Length, then only
  ``keep`` of the body, then the connection is closed (of a response without a body,
  only half its status line is sent: http.client would accept headers cut short as
  complete, which no server can help);
- ``stall_body``: like ``truncate``, but the connection stays silent for ``seconds``
  before it is closed;
- ``late``: S3's real answer, held back for ``seconds``: an answer that describes S3 as
  it was when the request arrived, delivered after later requests changed it;
- ``delay``: the request is held ``seconds`` before it is forwarded, then answered as S3
  answers it: it reaches S3 after requests sent later.

A rule matches the method, a regular expression searched in the decoded path
(``/bucket/key``), a substring the raw query string must contain (``query``, e.g.
``"uploadId"`` or ``"partNumber"``), one it must not contain (``not_query``) and a
request header that must be present (``header``). It applies to the first ``times``
matching requests (None: to all), each with probability ``p`` drawn from the proxy's
seeded random generator; a rule with several faults picks one the same way. With
``when="before"`` (the default for errors, resets and stalls) the request never
reaches S3; with ``when="after"`` it is forwarded first, so S3 did the work and only
its answer is lost. Truncations and late answers are always after. Every request and the fault it got
are recorded in ``.log``.
"""

from __future__ import annotations

import contextlib
import http.client
import random
import re
import socket
import struct
import sys
import threading
import time
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import NoReturn
from urllib.parse import unquote, urlsplit

FAULTS = ("slowdown", "internal", "reset", "stall", "truncate", "stall_body", "late", "delay")
ERRORS = {
    "slowdown": (503, "Slow Down", "SlowDown", "Please reduce your request rate."),
    "internal": (500, "Internal Server Error", "InternalError", "We encountered an internal error. Please try again."),
}
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "expect",  # answered here (BaseHTTPRequestHandler sends 100 Continue); the body is read whole
    "content-length",  # set again for what is actually sent
}


@dataclass
class Rule:
    """Which requests get which fault; see the module docstring."""

    fault: str | tuple[str, ...]
    method: str | None = None
    path: str | None = None  # regex, searched in the decoded path /bucket/key
    query: str | None = None  # substring of the raw query string
    not_query: str | None = None
    header: str | None = None  # a request header that must be present (e.g. x-amz-copy-source)
    times: int | None = None  # the first N matching requests; None: every one
    p: float = 1.0
    when: str = "before"  # "after": forwarded first, the answer is what is lost
    seconds: float = 30.0  # stall, stall_body, late, delay
    keep: float = 0.5  # truncate, stall_body: the fraction of the body sent
    rst: bool = False  # reset: TCP RST instead of FIN
    applied: int = 0  # how many requests got a fault from this rule

    def __post_init__(self) -> None:
        faults = (self.fault,) if isinstance(self.fault, str) else self.fault
        unknown = set(faults) - set(FAULTS)
        assert not unknown and faults, f"unknown faults {unknown}"
        assert self.when in ("before", "after"), self.when
        self._path = re.compile(self.path) if self.path is not None else None

    @property
    def faults(self) -> tuple[str, ...]:
        return (self.fault,) if isinstance(self.fault, str) else self.fault

    def matches(self, method: str, path: str, query: str, headers: dict[str, str]) -> bool:
        return (
            (self.method is None or self.method == method)
            and (self._path is None or self._path.search(path) is not None)
            and (self.query is None or self.query in query)
            and (self.not_query is None or self.not_query not in query)
            and (self.header is None or self.header.lower() in headers)
        )


@dataclass(frozen=True)
class Exchange:
    """One request the proxy received, and what it did with it."""

    method: str
    path: str  # decoded, /bucket/key
    query: str  # raw
    fault: str | None  # None: forwarded and answered faithfully
    when: str | None
    status: int | None  # what the client got: S3's, an injected error's, or None (no full answer)
    at: float = field(default_factory=time.monotonic)

    @property
    def key(self) -> str | None:
        parts = self.path.lstrip("/").split("/", 1)
        return parts[1] if len(parts) == 2 else None


class InjectedClose(Exception):
    """The handler closed the client's connection on purpose."""


class FaultProxy:
    def __init__(self, upstream: str, seed: int = 0) -> None:
        up = urlsplit(upstream)
        self.upstream = (up.hostname, up.port)
        self.rules: list[Rule] = []
        self.log: list[Exchange] = []
        self.connections = 0  # client connections accepted: keep-alive shows as few of them
        self.handler_errors: list[str] = []  # exceptions in the proxy itself, other than the client leaving
        self.lock = threading.Lock()
        self.rng = random.Random(seed)
        self.stopping = threading.Event()
        self._sockets: set[socket.socket] = set()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.server.daemon_threads = True
        self.server.handle_error = self._handle_error  # type: ignore[method-assign]
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="faultproxy", daemon=True)
        self.thread.start()

    # ---- rules and what happened

    def add(self, *rules: Rule) -> Rule:
        """Install rules (checked in order, the first that fires wins); returns the last."""
        with self.lock:
            self.rules.extend(rules)
        return rules[-1]

    def remove(self, rule: Rule) -> None:
        with self.lock:
            self.rules.remove(rule)

    def clear(self) -> None:
        """No more faults: every request is forwarded faithfully."""
        with self.lock:
            self.rules.clear()

    def reset(self, seed: int) -> None:
        """Rules, log and random generator as new."""
        with self.lock:
            self.rules.clear()
            self.log.clear()
            self.handler_errors.clear()
            self.rng = random.Random(seed)

    def injected(self, fault: str | None = None, method: str | None = None) -> list[Exchange]:
        """The requests that got a fault (of this kind, with this method)."""
        with self.lock:
            return [
                e for e in self.log if e.fault is not None and fault in (None, e.fault) and method in (None, e.method)
            ]

    def _choose(self, method: str, path: str, query: str, headers: dict[str, str]) -> tuple[Rule | None, str | None]:
        with self.lock:
            for rule in self.rules:
                if not rule.matches(method, path, query, headers):
                    continue
                if rule.times is not None and rule.applied >= rule.times:
                    continue
                if rule.p < 1.0 and self.rng.random() >= rule.p:
                    continue
                rule.applied += 1
                faults = rule.faults
                return rule, faults[0] if len(faults) == 1 else self.rng.choice(faults)
        return None, None

    def _record(self, exchange: Exchange) -> None:
        with self.lock:
            self.log.append(exchange)

    def _handle_error(self, request, client_address) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (OSError, InjectedClose)) or self.stopping.is_set():
            return  # the client gave up (its timeout), or we closed on purpose
        with self.lock:
            self.handler_errors.append(traceback.format_exc())

    # ---- the server

    def close(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        with self.lock:
            sockets = list(self._sockets)
        for sock in sockets:  # idle keep-alive connections: their threads wait in readline
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.server.server_close()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, and Expect: 100-continue answered at once
            timeout = 300  # an idle client connection is dropped after this

            def setup(self) -> None:
                super().setup()
                with proxy.lock:
                    proxy.connections += 1
                    proxy._sockets.add(self.connection)

            def finish(self) -> None:
                with contextlib.suppress(OSError):
                    super().finish()
                with proxy.lock:
                    proxy._sockets.discard(self.connection)

            def handle_one_request(self) -> None:
                try:
                    super().handle_one_request()
                except InjectedClose:
                    self.close_connection = True

            def do_any(self) -> None:
                split = urlsplit(self.path)
                path, query = unquote(split.path), split.query
                headers = {k.lower(): v for k, v in self.headers.items()}
                body = self._read_body(headers)
                rule, fault = proxy._choose(self.command, path, query, headers)
                when = None if rule is None else ("after" if fault in ("truncate", "stall_body", "late") else rule.when)

                def record(status: int | None) -> None:
                    proxy._record(Exchange(self.command, path, query, fault, when, status))

                if fault == "delay":  # then forwarded and answered as any request
                    proxy.stopping.wait(rule.seconds)
                    rule, when = None, None
                if rule is not None and when == "before":
                    if fault in ERRORS:
                        record(ERRORS[fault][0])
                        return self._send_error(fault, path)
                    record(None)
                    if fault == "stall":
                        proxy.stopping.wait(rule.seconds)
                    self._close(rst=rule.rst)
                status, reason, resp_headers, resp_body = self._forward(body)
                if rule is None or fault == "late":
                    if rule is not None:
                        proxy.stopping.wait(rule.seconds)
                    record(status)
                    return self._send(status, reason, resp_headers, resp_body)
                if fault in ERRORS:
                    record(ERRORS[fault][0])
                    return self._send_error(fault, path)
                record(None)
                if fault in ("truncate", "stall_body"):
                    head = self._head(status, reason, resp_headers, len(resp_body))
                    if resp_body:
                        self.wfile.write(head + resp_body[: int(len(resp_body) * rule.keep)])
                    else:  # half a status line: http.client would take headers cut short for all of them
                        self.wfile.write(head[: head.index(b"\r\n") // 2])
                    if fault == "stall_body":
                        proxy.stopping.wait(rule.seconds)
                elif fault == "stall":
                    proxy.stopping.wait(rule.seconds)
                self._close(rst=rule.rst)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_any

            def _read_body(self, headers: dict[str, str]) -> bytes:
                if "chunked" in headers.get("transfer-encoding", "").lower():
                    out = bytearray()
                    while True:
                        line = self.rfile.readline(65537)
                        if not line:
                            raise ConnectionError("the client left inside a chunked body")
                        size = int(line.split(b";", 1)[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                                pass  # trailers
                            return bytes(out)
                        chunk = self.rfile.read(size)
                        if len(chunk) != size:
                            raise ConnectionError("the client left inside a chunk")
                        out += chunk
                        self.rfile.readline()  # the CRLF after the chunk
                length = int(headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                if len(body) != length:
                    raise ConnectionError("the client left inside the body")
                return body

            def _forward(self, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=120)
                try:
                    conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                    for name, value in self.headers.items():
                        if name.lower() not in HOP_BY_HOP:
                            conn.putheader(name, value)
                    if body or self.command in ("PUT", "POST"):
                        conn.putheader("Content-Length", str(len(body)))
                    conn.endheaders(body or None)
                    resp = conn.getresponse()
                    data = resp.read()  # nothing for HEAD: http.client knows
                    headers = [(k, v) for k, v in resp.getheaders() if k.lower() not in HOP_BY_HOP]
                    if self.command == "HEAD":  # the object's length, which is not sent
                        headers.append(("Content-Length", resp.getheader("Content-Length") or "0"))
                    return resp.status, resp.reason, headers, data
                finally:
                    conn.close()

            def _head(self, status: int, reason: str, headers: Iterable[tuple[str, str]], length: int) -> bytes:
                lines = [f"HTTP/1.1 {status} {reason}"]
                lines += [f"{k}: {v}" for k, v in headers]
                if self.command != "HEAD":
                    lines.append(f"Content-Length: {length}")
                return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

            def _send(self, status: int, reason: str, headers: list[tuple[str, str]], body: bytes) -> None:
                self.wfile.write(self._head(status, reason, headers, len(body)) + body)

            def _send_error(self, fault: str, path: str) -> None:
                status, reason, code, message = ERRORS[fault]
                request_id = f"FAULT{len(proxy.log):06d}"
                body = (
                    '<?xml version="1.0" encoding="UTF-8"?>\n'
                    f"<Error><Code>{code}</Code><Message>{message}</Message><Resource>{path}</Resource>"
                    f"<RequestId>{request_id}</RequestId></Error>"
                ).encode()
                headers = [
                    ("Content-Type", "application/xml"),
                    ("x-amz-request-id", request_id),
                    ("Date", formatdate(usegmt=True)),
                    ("Server", "faultproxy"),
                ]
                if self.command == "HEAD":  # no body, as S3 answers a HEAD
                    headers.append(("Content-Length", "0"))
                    body = b""
                self._send(status, reason, headers, body)

            def _close(self, rst: bool) -> NoReturn:
                if rst:
                    with contextlib.suppress(OSError):
                        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                with contextlib.suppress(OSError):
                    self.wfile.flush()
                if not rst:
                    with contextlib.suppress(OSError):
                        self.connection.shutdown(socket.SHUT_RDWR)
                self.connection.close()
                raise InjectedClose

            def log_message(self, *args) -> None:
                pass

        return Handler
