"""A real local webhook receiver (``http.server`` on 127.0.0.1, port 0) for tests."""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from http_helpers import serving


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def signature_ok(self, secret: bytes) -> bool:
        """What a receiver checks: HMAC-SHA256 of ``TIMESTAMP.BODY`` (docs/operations.md)."""
        timestamp = self.headers["X-Personsd-Timestamp"]
        expected = hmac.new(secret, timestamp.encode() + b"." + self.body, hashlib.sha256)
        return hmac.compare_digest(
            "sha256=" + expected.hexdigest(), self.headers.get("X-Personsd-Signature", "")
        )


class Receiver(ThreadingHTTPServer):
    """Answers each POST with the next code of ``codes`` (then ``default``)."""

    daemon_threads = True

    def __init__(self, codes: list[int] | None = None, default: int = 200, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.codes = list(codes or [])
        self.default = default
        self.hang_seconds = 0.0
        self.received: list[Received] = []
        self.lock = threading.Lock()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def next_code(self) -> int:
        with self.lock:
            return self.codes.pop(0) if self.codes else self.default

    def got(self) -> list[Received]:
        with self.lock:
            return list(self.received)


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        if self.server.hang_seconds:
            time.sleep(self.server.hang_seconds)
        code = self.server.next_code()
        with self.server.lock:
            self.server.received.append(
                Received(self.path, dict(self.headers.items()), body, time.time())
            )
        try:
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()
        except OSError:
            pass  # the sender gave up on us (timeout)

    def log_message(self, format: str, *args: object) -> None:
        return


@contextmanager
def receiver(
    codes: list[int] | None = None, default: int = 200, port: int = 0
) -> Iterator[Receiver]:
    """A receiver on ``port`` (0: any free one), shut down afterwards."""
    with serving(Receiver(codes, default, port)) as server:
        yield server
