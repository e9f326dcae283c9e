"""Logs (SPEC section 9): structlog, JSON lines under systemd, pretty on a terminal.

Event names are the constants of :class:`Event`, so code, tests and operators'
queries agree on them. Every import event carries ``tenant``, ``import_id``
and ``file`` (bind them once per import).

In every format an event is one line, and text from outside (user names,
file names, values, exception messages) never reaches a terminal raw: JSON
escapes everything outside printable ASCII (``\u001b``, ``\u2028``); the
console format shows such text escaped as Python does (``'a\x1b[2J'``) and
its tracebacks on the event's line, while keeping its own colours.
"""

from __future__ import annotations

import logging
import math
import re
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, TextIO, cast

import structlog
from structlog.typing import EventDict, ExcInfo, FilteringBoundLogger, Processor, WrappedLogger

FORMATS = ("json", "console", "auto")
LEVELS: Final[dict[str, int]] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
# Third-party libraries (paramiko above all) are chatty below this.
STDLIB_LEVEL = logging.WARNING


class Event:
    """The stable event names of SPEC 9."""

    SFTP_LOGIN: Final = "sftp.login"
    SFTP_LOGIN_FAILED: Final = "sftp.login_failed"
    SFTP_UPLOAD: Final = "sftp.upload"
    FILE_DETECTED: Final = "file.detected"
    IMPORT_QUEUED: Final = "import.queued"
    IMPORT_STARTED: Final = "import.started"
    IMPORT_PROGRESS: Final = "import.progress"
    IMPORT_COMPLETED: Final = "import.completed"
    IMPORT_REJECTED: Final = "import.rejected"
    IMPORT_FAILED: Final = "import.failed"
    IMPORT_RESUMED: Final = "import.resumed"
    DAEMON_STARTED: Final = "daemon.started"
    DAEMON_STOPPING: Final = "daemon.stopping"
    # Added with SPEC 9's December 2026 paragraph.
    IMPORT_WAITING: Final = "import.waiting"
    SFTP_LIMIT: Final = "sftp.limit"
    SFTP_BANNED: Final = "sftp.banned"
    NOTIFY_DELIVERED: Final = "notify.delivered"
    NOTIFY_FAILED: Final = "notify.failed"
    CLUSTER_TAKEOVER: Final = "cluster.takeover"
    # Not in SPEC 9's list (so not in ALL): one file's or import's trouble, retried on its own.
    INTAKE_RETRY: Final = "intake.retry"
    PUBLISH_RETRY: Final = "publish.retry"
    # Not in SPEC 9 (so not in ALL): a banned address's connection closed unserved;
    # the shared ban table unreachable (this instance counts on its own) and back.
    SFTP_REFUSED: Final = "sftp.refused"
    SFTP_BANS_LOCAL: Final = "sftp.bans_local"
    SFTP_BANS_SHARED: Final = "sftp.bans_shared"
    # Not in SPEC 9's list (so not in ALL): an instance found another holding
    # its import's lease and stopped that import (SPEC 12).
    CLUSTER_LEASE_LOST: Final = "cluster.lease_lost"
    # Not SPEC 9's (so not in ALL): a file expanding past layers.MAX_EXPANSION.
    IMPORT_EXPANSION_CAPPED: Final = "import.expansion_capped"
    # Not in SPEC 9's list (so not in ALL): the daemon's own diagnostics, by area.
    ARCHIVE_SWEPT: Final = "archive.swept"
    CLUSTER_HEARTBEAT_FAILED: Final = "cluster.heartbeat_failed"
    CLUSTER_RELEASE_FAILED: Final = "cluster.release_failed"
    CONFIG_RELOAD_FAILED: Final = "config.reload_failed"
    CONFIG_RELOADED: Final = "config.reloaded"
    CONFIG_RESTART_NEEDED: Final = "config.restart_needed"
    DAEMON_ABANDONED_CHUNK: Final = "daemon.abandoned_chunk"
    DAEMON_STOPPED: Final = "daemon.stopped"
    DB_UNAVAILABLE: Final = "db.unavailable"
    IMPORT_ATTEMPT_FAILED: Final = "import.attempt_failed"
    IMPORT_FAIL_UNRECORDED: Final = "import.fail_unrecorded"
    IMPORT_UNHASHED: Final = "import.unhashed"
    IMPORT_VALIDATOR_UNAVAILABLE: Final = "import.validator_unavailable"
    INTAKE_INSTANCE_IN_USE: Final = "intake.instance_in_use"
    INTAKE_UNKNOWN_TENANT: Final = "intake.unknown_tenant"
    METRICS_DATABASE_UNAVAILABLE: Final = "metrics.database_unavailable"
    METRICS_LISTENING: Final = "metrics.listening"
    NOTIFY_PRUNE_FAILED: Final = "notify.prune_failed"
    NOTIFY_PRUNED: Final = "notify.pruned"
    NOTIFY_UNRECORDED: Final = "notify.unrecorded"
    OUTBOX_DISPLACED: Final = "outbox.displaced"
    SFTP_CONNECTION_ERROR: Final = "sftp.connection_error"
    SFTP_FD_LIMIT_KEPT: Final = "sftp.fd_limit_kept"
    SFTP_HOST_KEY_CREATED: Final = "sftp.host_key_created"
    SFTP_IDLE_TIMEOUT: Final = "sftp.idle_timeout"
    SFTP_LISTENING: Final = "sftp.listening"
    SFTP_LOOKUP_FAILED: Final = "sftp.lookup_failed"
    SFTP_ON_UPLOAD_FAILED: Final = "sftp.on_upload_failed"
    SFTP_REMOVE: Final = "sftp.remove"
    SFTP_RENAME: Final = "sftp.rename"
    SFTP_STALE_UPLOAD_REMOVED: Final = "sftp.stale_upload_removed"
    SFTP_STALE_UPLOADS_REMOVED: Final = "sftp.stale_uploads_removed"
    SFTP_STOPPED: Final = "sftp.stopped"
    SFTP_UPLOAD_FAILED: Final = "sftp.upload_failed"
    SFTP_UPLOAD_INCOMPLETE: Final = "sftp.upload_incomplete"
    TENANT_INVALID: Final = "tenant.invalid"
    TENANT_LOOKUP_FAILED: Final = "tenant.lookup_failed"
    WATCHER_EVENTS_UNAVAILABLE: Final = "watcher.events_unavailable"
    WATCHER_ON_READY_FAILED: Final = "watcher.on_ready_failed"
    WATCHER_SCAN_FAILED: Final = "watcher.scan_failed"
    WATCHER_STAT_FAILED: Final = "watcher.stat_failed"

    ALL: Final = (
        SFTP_LOGIN,
        SFTP_LOGIN_FAILED,
        SFTP_UPLOAD,
        FILE_DETECTED,
        IMPORT_QUEUED,
        IMPORT_STARTED,
        IMPORT_PROGRESS,
        IMPORT_COMPLETED,
        IMPORT_REJECTED,
        IMPORT_FAILED,
        IMPORT_RESUMED,
        DAEMON_STARTED,
        DAEMON_STOPPING,
        IMPORT_WAITING,
        SFTP_LIMIT,
        SFTP_BANNED,
        NOTIFY_DELIVERED,
        NOTIFY_FAILED,
        CLUSTER_TAKEOVER,
    )


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or not a real file
        return False


# What must not reach a terminal raw (SPEC 9): C0 controls, DEL, C1 controls
# (NEL U+0085 among them), the line and paragraph separators, the bidi
# embeddings/overrides/isolates; and lone surrogates (undecodable bytes of a
# file name), which a UTF-8 stream cannot even write.
UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape(text: str) -> str:
    """``text`` with each :data:`UNSAFE` character as a Python escape (``\\x1b``, ``\\u2028``)."""
    if UNSAFE.search(text) is None:
        return text
    return UNSAFE.sub(_escape_one, text)


def _escape_one(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return _NAMED.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


class _Shown:
    """A value the console renderer prints as it is (through ``repr``): escaped text."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _console_value(value: object) -> object:
    if isinstance(value, str):
        # Python's repr escapes every non-printable character, UNSAFE ones included.
        return value if UNSAFE.search(value) is None else _Shown(repr(value))
    text = repr(value)  # what the renderer would print; a custom __repr__ may hold anything
    return value if UNSAFE.search(text) is None else _Shown(escape(text))


def _traceback_on_the_line(sio: TextIO, exc_info: ExcInfo) -> None:
    text = "".join(traceback.format_exception(*exc_info)).rstrip("\n")
    sio.write(" exception=" + repr(text))


class OneLineConsoleRenderer:
    """structlog's console renderer, one line per event, nothing from outside raw (SPEC 9)."""

    # Printed by the inner renderer as text (not repr) or on lines of their own.
    _AS_TEXT = frozenset({"event", "logger", "level", "timestamp", "stack", "exception"})

    def __init__(self, *, colors: bool) -> None:
        self._inner = structlog.dev.ConsoleRenderer(
            colors=colors, exception_formatter=_traceback_on_the_line
        )

    def __call__(self, logger: WrappedLogger, name: str, event_dict: EventDict) -> str:
        safe: EventDict = {}
        for key, value in event_dict.items():
            if key == "exc_info":
                safe[key] = value
            elif key in self._AS_TEXT:
                safe[key] = escape(value if isinstance(value, str) else str(value))
            else:
                safe[escape(str(key))] = _console_value(value)
        # Escaped values hold no line break: any left is the renderer's own
        # separator before a stack or an exception string.
        return self._inner(logger, name, safe).replace("\n", " ")


def _renderer(fmt: str, stream: TextIO) -> Processor:
    if fmt == "json" or (fmt == "auto" and not _is_tty(stream)):
        # ensure_ascii: control, separator and bidi characters (and every other
        # non-ASCII one) are written as \uXXXX escapes, never raw.
        return structlog.processors.JSONRenderer(ensure_ascii=True)
    return OneLineConsoleRenderer(colors=_is_tty(stream))


def configure(fmt: str = "auto", level: str = "info", stream: TextIO | None = None) -> None:
    """Set up structlog and route stdlib logging through it; safe to call again (SIGHUP)."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if level.lower() not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, got {level!r}")
    out = sys.stdout if stream is None else stream
    renderer = _renderer(fmt, out)
    json_lines = isinstance(renderer, structlog.processors.JSONRenderer)
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    # The console renderer prints tracebacks itself; JSON needs them as a string.
    tail: list[Processor] = [structlog.processors.format_exc_info] if json_lines else []
    structlog.configure(
        processors=[*shared, structlog.processors.StackInfoRenderer(), *tail, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level.lower()]),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        # Not cached: a SIGHUP reload must reach loggers bound at import time.
        cache_logger_on_first_use=False,
    )

    handler = logging.StreamHandler(out)
    handler.set_name("personsd")
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *tail,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "personsd"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(STDLIB_LEVEL)
    # paramiko logs a traceback at ERROR for every connection that never speaks
    # SSH (health checks, port scans); sftp/server.py logs those as sftp.connection_error.
    transport = logging.getLogger("paramiko.transport")
    for old_filter in [f for f in transport.filters if isinstance(f, _DropErrors)]:
        transport.removeFilter(old_filter)
    transport.addFilter(_DropErrors())
    # watchdog complains at ERROR about events queued while its thread stops.
    logging.getLogger("watchdog.observers.inotify_buffer").setLevel(logging.CRITICAL)
    logging.getLogger("watchdog.observers.inotify").setLevel(logging.CRITICAL)


class _DropErrors(logging.Filter):
    """paramiko's per-connection error tracebacks; sftp/server.py logs those events itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR


class _LazyLogger:
    """A logger with a context that builds structlog's bound logger at each use.

    So it follows a later configure() (SIGHUP) as structlog's own lazy proxy
    does; written out because ``structlog.get_logger()`` cannot take a
    ``logger`` key (its own parameter) and the proxy's class is private.
    """

    __slots__ = ("_context",)

    def __init__(self, context: dict[str, Any]) -> None:
        self._context = context

    def bind(self, **new_values: Any) -> FilteringBoundLogger:
        """A bound logger for the configuration in force now (as the lazy proxy's ``bind``)."""
        bound = structlog.get_logger().bind(**self._context, **new_values)
        return cast(FilteringBoundLogger, bound)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.bind(), name)


def get_logger(name: str | None = None, **context: Any) -> FilteringBoundLogger:
    """The one way personsd gets a logger; bound to ``logger=name`` when a name is given."""
    if name is not None:
        context = {"logger": name, **context}
    return cast(FilteringBoundLogger, _LazyLogger(context))


@dataclass(frozen=True, kw_only=True, slots=True)
class Progress:
    """What one ``import.progress`` event reports."""

    rows: int
    rows_per_s: float
    percent: float
    eta_seconds: int | None

    def as_fields(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "rows_per_s": self.rows_per_s,
            "percent": self.percent,
            "eta_seconds": self.eta_seconds,
        }


class ProgressReporter:
    """Decides when an import reports progress (at most every ``interval`` s) and what.

    Rates count only what this run did since it was created, so an import
    resumed from a checkpoint does not claim the earlier run's rows as speed.
    """

    def __init__(
        self,
        total_bytes: int,
        *,
        interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        start_rows: int = 0,
        start_bytes: int = 0,
    ) -> None:
        if total_bytes < 0 or start_rows < 0 or start_bytes < 0:
            raise ValueError("byte and row counts must be >= 0")
        if interval <= 0:
            raise ValueError(f"interval must be > 0, got {interval}")
        self.total_bytes = total_bytes
        self.interval = interval
        self._clock = clock
        self._start = self._last = clock()
        self._start_rows = start_rows
        self._start_bytes = start_bytes

    def measure(self, rows: int, bytes_done: int) -> Progress:
        """The progress at ``rows`` rows and ``bytes_done`` bytes read, now."""
        elapsed = self._clock() - self._start
        done_bytes = min(bytes_done, self.total_bytes)
        percent = 100.0 if self.total_bytes == 0 else 100.0 * done_bytes / self.total_bytes
        rate_rows = (rows - self._start_rows) / elapsed if elapsed > 0 else 0.0
        rate_bytes = (done_bytes - self._start_bytes) / elapsed if elapsed > 0 else 0.0
        eta: int | None = None
        if done_bytes >= self.total_bytes:
            eta = 0
        elif rate_bytes > 0:
            eta = math.ceil((self.total_bytes - done_bytes) / rate_bytes)
        return Progress(
            rows=rows,
            rows_per_s=round(max(rate_rows, 0.0), 1),
            percent=round(percent, 1),
            eta_seconds=eta,
        )

    def update(self, rows: int, bytes_done: int) -> Progress | None:
        """The progress to log now, or None when the last report is too recent."""
        now = self._clock()
        if now - self._last < self.interval:
            return None
        self._last = now
        return self.measure(rows, bytes_done)
