"""Every place personsd reaches into paramiko's internals, fenced in one module.

paramiko caps neither the SSH packets it reads nor the data a client sends past
a channel's receive window, and its SFTP subsystem has no hooks for what we
need. Everything else in personsd uses paramiko's public API; the overrides
below lean on its internals, **checked against paramiko 5.1.0** (and its API
since 3.4, which added ``Transport(packetizer_class=...)``):

* :class:`BoundedPacketizer`, given to ``Transport(packetizer_class=...)``:
  ``Packetizer.read_all`` refuses one read longer than a packet may be (the
  length field is read before the body, so nothing is buffered for it), and
  the private ``Packetizer._read_timeout`` (the reader of the lines before
  the client's version string) stops after ``max_banner_bytes``.
* :func:`guard_channels` replaces, on one transport, the handlers of
  ``CHANNEL_DATA`` and ``CHANNEL_EXTENDED_DATA`` in the private
  ``Transport._channel_handler_table``: data beyond the receive window we
  advertised (what a channel holds unread plus the new data) ends the
  connection. :func:`open_channels` counts the private ``Transport._channels``.
* :class:`FencedSftpServer` overrides the private ``SFTPServer._read_packet``
  (size cap), ``_send_server_version`` (no extensions), ``_process`` (a
  public hook before each request) and ``_send_status`` (a refusal's text).

:func:`check` verifies at server start that each of these is still there, so
an upgrade that moves one fails loudly instead of silently dropping a cap.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import paramiko
from paramiko.common import MSG_CHANNEL_DATA, MSG_CHANNEL_EXTENDED_DATA
from paramiko.packet import Packetizer
from paramiko.sftp import CMD_INIT, CMD_VERSION

CHECKED_AGAINST = "5.1.0"
_SFTP_VERSION = 3
# Framing around a packet's payload: length, padding length, up to 255 bytes of
# padding, and a MAC (at most 64 bytes); one read may cover all of them.
_FRAMING = 4 + 1 + 255 + 64

OnLimit = Callable[[str], None]


def check() -> None:
    """Fail at start when a paramiko internal we rely on has moved (see the module doc)."""
    missing = [
        name
        for owner, name in (
            (Packetizer, "read_all"),
            (Packetizer, "_read_timeout"),
            (paramiko.Transport, "_channel_handler_table"),
            (paramiko.Channel, "_feed"),
            (paramiko.Channel, "_feed_extended"),
            (paramiko.SFTPServer, "_read_packet"),
            (paramiko.SFTPServer, "_send_server_version"),
            (paramiko.SFTPServer, "_process"),
            (paramiko.SFTPServer, "_send_status"),
        )
        if not hasattr(owner, name)
    ]
    table = getattr(paramiko.Transport, "_channel_handler_table", {})
    if MSG_CHANNEL_DATA not in table or MSG_CHANNEL_EXTENDED_DATA not in table:
        missing.append("_channel_handler_table[CHANNEL_DATA]")
    if missing:
        raise RuntimeError(
            f"paramiko {paramiko.__version__} lacks {', '.join(missing)}; "
            f"personsd's overrides were checked against {CHECKED_AGAINST}"
        )


class BoundedPacketizer(Packetizer):  # type: ignore[misc]
    """paramiko's packet reader, refusing packets and banners beyond their caps."""

    max_packet_bytes = 256 * 1024
    max_banner_bytes = 16 * 1024
    on_limit: OnLimit | None = None

    def __init__(self, sock: Any) -> None:
        super().__init__(sock)
        self._banner_bytes = 0

    def bound(self, *, max_packet_bytes: int, max_banner_bytes: int, on_limit: OnLimit) -> None:
        self.max_packet_bytes = max_packet_bytes
        self.max_banner_bytes = max_banner_bytes
        self.on_limit = on_limit

    def _refuse(self, limit: str, what: str) -> None:
        if self.on_limit is not None:
            self.on_limit(limit)
        raise paramiko.SSHException(what)

    def read_all(self, n: int, check_rekey: bool = False) -> bytes:
        # read_message asks for the rest of a packet in one call, once it has its length.
        if n > self.max_packet_bytes + _FRAMING:
            self._refuse("packet_bytes", f"packet of {n} bytes")
        return bytes(super().read_all(n, check_rekey))

    def _read_timeout(self, timeout: float) -> bytes:
        data = bytes(super()._read_timeout(timeout))
        self._banner_bytes += len(data)
        if self._banner_bytes > self.max_banner_bytes:
            self._refuse("banner_bytes", f"{self._banner_bytes} bytes before the version line")
        return data


def guard_channels(transport: paramiko.Transport, on_violation: Callable[[str], None]) -> None:
    """Make ``transport`` end the connection when a client ignores a channel's window."""
    table = dict(type(transport)._channel_handler_table)
    feed, feed_extended = table[MSG_CHANNEL_DATA], table[MSG_CHANNEL_EXTENDED_DATA]

    def admit(chan: paramiko.Channel, size: int) -> None:
        # An honest client has at most the window in flight beyond what we consumed
        # (we acknowledge only consumed bytes), so unread + new never exceeds it.
        unread = len(chan.in_buffer) + len(chan.in_stderr_buffer)
        if size > chan.in_max_packet_size or unread + size > chan.in_window_size:
            on_violation("channel_window")
            raise paramiko.SSHException(f"channel data beyond the window ({unread}+{size})")

    def on_data(chan: paramiko.Channel, m: paramiko.Message) -> None:
        position = m.packet.tell()
        admit(chan, len(m.get_binary()))
        m.packet.seek(position)
        feed(chan, m)

    def on_extended(chan: paramiko.Channel, m: paramiko.Message) -> None:
        position = m.packet.tell()
        m.get_int()
        admit(chan, len(m.get_binary()))
        m.packet.seek(position)
        feed_extended(chan, m)

    table[MSG_CHANNEL_DATA] = on_data
    table[MSG_CHANNEL_EXTENDED_DATA] = on_extended
    transport._channel_handler_table = table  # this transport only


def open_channels(transport: paramiko.Transport) -> int:
    """How many channels ``transport`` has open."""
    return len(transport._channels)


class Refusal(int):
    """An SFTP status code with the text the client is shown (e.g. why a cap refused)."""

    message: str

    def __new__(cls, code: int, message: str) -> Refusal:
        refusal = super().__new__(cls, code)
        refusal.message = message
        return refusal


class FencedSftpServer(paramiko.SFTPServer):  # type: ignore[misc]
    """paramiko's SFTP subsystem with a request cap, no extensions and a pre-request hook."""

    max_request_bytes = 1024 * 1024

    def before_request(self, t: int, request_number: int, msg: paramiko.Message) -> bool:
        """Called before paramiko handles a request; True when it was answered here."""
        return False

    def after_request(self, t: int) -> None:
        """Called after each request, however it was answered."""

    def request_too_large(self, size: int) -> None:
        """Called before a session is ended for a request over ``max_request_bytes``."""

    def send_status(self, request_number: int, code: int, desc: str | None = None) -> None:
        self._send_status(request_number, code, desc)

    # -- paramiko private overrides ----------------------------------------------------

    def _read_packet(self) -> tuple[int, bytes]:
        head = self._read_all(4)
        (size,) = struct.unpack(">I", head)
        if size > self.max_request_bytes:
            self.request_too_large(size)
            raise EOFError(f"sftp packet of {size} bytes")
        data = self._read_all(size)
        return (data[0], data[1:]) if data else (0, b"")

    def _send_server_version(self) -> int:
        # paramiko advertises check-file, whose loop never ends on a short read: no extensions.
        t, data = self._read_packet()
        if t != CMD_INIT:
            raise EOFError("incompatible sftp protocol")
        msg = paramiko.Message()
        msg.add_int(_SFTP_VERSION)
        self._send_packet(CMD_VERSION, msg)
        return int(struct.unpack(">I", data[:4])[0])

    def _process(self, t: int, request_number: int, msg: paramiko.Message) -> None:
        try:
            if self.before_request(t, request_number, msg):
                return
            msg.rewind()
            msg.get_int()  # back to just after the request number
            super()._process(t, request_number, msg)
        finally:
            self.after_request(t)

    def _send_status(self, request_number: int, code: int, desc: str | None = None) -> None:
        if desc is None and isinstance(code, Refusal):
            desc = code.message
        super()._send_status(request_number, int(code), desc)
