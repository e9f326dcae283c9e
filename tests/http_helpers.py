"""A real HTTP carrier lookup on 127.0.0.1 (SPEC 2 `http`) for tests to script."""

from __future__ import annotations

import json
import socketserver
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self, TypeVar

Server = TypeVar("Server", bound=socketserver.BaseServer)


class CarrierStub:
    """GET ?mdn= on a free port, served in a thread inside ``with``; records the MDNs
    asked and lets :meth:`answer_request` reply (``{"valid": true}`` by default)."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                service.asked.extend(query.get("mdn", []))
                service.answer_request(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/lookup"
        self._serving = ExitStack()

    def answer_request(self, request: BaseHTTPRequestHandler) -> None:
        send_json(request, {"valid": True})

    def __enter__(self) -> Self:
        self._serving.enter_context(serving(self.server))
        return self

    def __exit__(self, *exc: object) -> None:
        self._serving.close()


def send_json(request: BaseHTTPRequestHandler, value: Any) -> None:
    """Answer ``request`` with 200 and ``value`` as JSON."""
    body = json.dumps(value).encode()
    request.send_response(200)
    request.send_header("Content-Type", "application/json")
    request.send_header("Content-Length", str(len(body)))
    request.end_headers()
    request.wfile.write(body)


@contextmanager
def serving(server: Server) -> Iterator[Server]:
    """``server`` answering in a thread during the block, then shut down and closed."""
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
