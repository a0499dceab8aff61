"""The HTTP server: a threading server on loopback (TCP_NODELAY, every open connection
tracked so that stopping closes them) and the request handler that routes a request, picks
its reply and renders it in the addressed provider's wire format."""

from __future__ import annotations

import json
import socket
import sys
import threading
import traceback
from collections.abc import Iterable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import TCPServer
from typing import TYPE_CHECKING, Any

from . import anthropic, gemini, openai
from .embeddings import _embeddings_json
from .replies import FakeRequest
from .routes import _HEALTH_PATHS, _resolve
from .turn import _Turn
from .wire import _JSON_CT, _SSE_CT, _dumps, _new_id

if TYPE_CHECKING:
    from .provider import FakeProvider

#: Renderers by endpoint kind: a reply as a JSON body, or as an iterator of SSE event bytes.
#: Looked up per request (tests may patch an entry through the package).
_JSON_BUILDERS = {
    "chat": openai._chat_json,
    "completions": openai._completion_json,
    "responses": openai._responses_json,
    "messages": anthropic._messages_json,
    "gemini": gemini._gemini_json,
}
_SSE_BUILDERS = {
    "chat": openai._chat_sse,
    "completions": openai._completion_sse,
    "responses": openai._responses_sse,
    "messages": anthropic._messages_sse,
    "gemini": gemini._gemini_sse,
}

_EXTRA_PHRASES = {529: "Overloaded"}


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return _EXTRA_PHRASES.get(status, "Error")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], fake: FakeProvider) -> None:
        self.fake = fake
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a DNS lookup: skip it.
        TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = self.socket.accept()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._conns_lock:
            self._conns.add(sock)
        return sock, addr

    def shutdown_request(self, request: Any) -> None:
        with self._conns_lock:
            self._conns.discard(request)
        super().shutdown_request(request)

    def close_all_connections(self) -> None:
        with self._conns_lock:
            conns = list(self._conns)
            self._conns.clear()
        for sock in conns:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (OSError, ValueError)):  # client went away, socket closed...
            return
        traceback.print_exc()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FluxGateFakeProvider/1.0"
    sys_version = ""
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self._handle()

    do_GET = do_POST
    do_HEAD = do_POST
    do_PUT = do_POST
    do_PATCH = do_POST
    do_DELETE = do_POST

    # -- I/O --------------------------------------------------------------------------

    def _read_body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if length:
            return self.rfile.read(int(length))
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                parts.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(parts)
        return b""

    def _head(self, status: int, content_type: str, headers: dict[str, str]) -> list[str]:
        lines = [
            f"HTTP/1.1 {status} {_reason(status)}\r\n",
            f"Server: {self.server_version}\r\n",
            f"Content-Type: {content_type}\r\n",
        ]
        lines.extend(f"{k}: {v}\r\n" for k, v in headers.items())
        return lines

    def _send(
        self, status: int, body: bytes, headers: dict[str, str], content_type: str = _JSON_CT
    ) -> None:
        lines = self._head(status, content_type, headers)
        lines.append(f"Content-Length: {len(body)}\r\n\r\n")
        head = "".join(lines).encode("latin-1")
        self.wfile.write(head if self.command == "HEAD" else head + body)

    def _send_sse(self, events: Iterable[bytes], headers: dict[str, str], gap: float) -> None:
        base = {"Cache-Control": "no-cache", **headers}
        if gap <= 0:
            self._send(200, b"".join(events), base, _SSE_CT)
            return
        lines = self._head(200, _SSE_CT, base)
        lines.append("Transfer-Encoding: chunked\r\n\r\n")
        pending = "".join(lines).encode("latin-1")
        stopping = self.server.fake._stopping
        first = True
        for ev in events:
            if not first and stopping.wait(gap):
                self.close_connection = True
                return
            first = False
            self.wfile.write(pending + b"%x\r\n" % len(ev) + ev + b"\r\n")
            pending = b""
        self.wfile.write(pending + b"0\r\n\r\n")

    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # -- dispatch -----------------------------------------------------------------------

    def _handle(self) -> None:
        fake = self.server.fake
        raw_path, _, query = self.path.partition("?")
        method = self.command
        if raw_path in _HEALTH_PATHS and method in ("GET", "HEAD"):
            self._send(200, b'{"status":"ok"}', {})
            return
        raw = self._read_body()
        headers = {k.lower(): v for k, v in self.headers.items()}
        target = _resolve(method, raw_path, headers)
        route = target.name
        request_id = _new_id("req_")
        base_headers = {"request-id" if target.anthropic else "x-request-id": request_id}

        body: Any = None
        bad_json = False
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                bad_json = True
        fake._record(FakeRequest(method, raw_path, headers, body, query))

        def error(status: int, message: str | None, extra: dict[str, str] | None = None) -> None:
            if target.google:
                payload = gemini._google_error(status, message)
            elif target.anthropic:
                payload = anthropic._anthropic_error(status, message, request_id)
            else:
                payload = openai._openai_error(status, message)
            self._send(status, _dumps(payload), {**base_headers, **(extra or {})})

        if route is None:
            error(
                404, f"Invalid URL ({method} {raw_path})" if not target.anthropic else "Not Found"
            )
            return
        if bad_json or not isinstance(body, dict):
            error(400, "We could not parse the JSON body of your request.")
            return
        if route == "count_tokens":
            self._send(200, _dumps(anthropic._count_tokens_json(body)), base_headers)
            return
        if route == "gemini_count_tokens":
            self._send(200, _dumps(gemini._count_tokens_json(body)), base_headers)
            return

        path_model = target.path_model
        reply = fake._pick_reply(path_model or body.get("model"))
        if reply.delay > 0 and fake._stopping.wait(reply.delay):
            self._drop()
            return
        if reply.drop_connection:
            self._drop()
            return
        out_headers = {**base_headers, **reply.headers}
        if not 200 <= reply.status < 300:
            error(reply.status, reply.error_message, out_headers)
            return
        try:
            if route == "embeddings":
                payload = _embeddings_json(reply, body, fake.embedding_dimensions)
                self._send(reply.status, _dumps(payload), out_headers)
                return
            kind = "gemini" if target.gemini else route
            turn = _Turn(reply, body, kind, path_model)
            streamed = route == "gemini_stream" if target.gemini else body.get("stream")
            if streamed:
                self._send_sse(_SSE_BUILDERS[kind](turn), out_headers, reply.chunk_delay)
            else:
                self._send(reply.status, _dumps(_JSON_BUILDERS[kind](turn)), out_headers)
        except (OSError, ValueError):
            self.close_connection = True
        except Exception as exc:  # a bug in the fake: answer 500 rather than hang
            error(500, f"fake provider failure: {exc!r}")
