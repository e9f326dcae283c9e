"""What kind of failure an exception is (SPEC 5), decided by codes only.

Three kinds, and what each costs an import:

* ``PARTNER``: the partner's data (:class:`~personsd.errors.PartnerDataError`);
  reported in the outbox, never retried.
* ``ENVIRONMENT``: the world around personsd is not ready (database
  unreachable, locked or out of resources, disk full, too many open files):
  the import waits with the retry policy and spends no attempt.
* ``INTERNAL``: everything else, a bug until shown otherwise: an attempt is
  spent, and after ``import.max_attempts`` the import is ``failed``.

The codes read are PostgreSQL's SQLSTATE (``.sqlstate`` of psycopg's
errors), SQLite's extended result code (``sqlite_errorcode``, Python 3.11)
and ``errno``. Message text is never read: it is localised (``lc_messages``)
and changes between versions. The exception, its SQLAlchemy ``.orig``, its
``__cause__`` and its ``__context__`` are all looked at, so a ``DiskFull``
wrapped in another error, or an ENOSPC behind a driver error, is still found.
"""

from __future__ import annotations

import enum
import errno
import sqlite3

from personsd.errors import PartnerDataError, TransientError


class Kind(enum.StrEnum):
    PARTNER = "partner"
    ENVIRONMENT = "environment"
    INTERNAL = "internal"


# Whole SQLSTATE classes (first two characters) that are the environment's:
# 08 connection exception, 53 insufficient resources (53100 disk full,
# 53200 out of memory, 53300 too many connections).
ENVIRONMENT_SQLSTATE_CLASSES = frozenset({"08", "53"})
ENVIRONMENT_SQLSTATES = frozenset(
    {
        "57P01",  # admin_shutdown (the server is stopping, or pg_terminate_backend)
        "57P02",  # crash_shutdown
        "57P03",  # cannot_connect_now (starting up, recovering)
        "40001",  # serialization_failure
        "40P01",  # deadlock_detected
        "55P03",  # lock_not_available
    }
)
# Primary result codes (the low byte of the extended code).
ENVIRONMENT_SQLITE_CODES = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_PROTOCOL,
    }
)
ENVIRONMENT_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EMFILE, errno.ENFILE, errno.EIO, errno.ENOMEM}
)
# Enough for any real chain (SQLAlchemy error -> driver error -> OSError).
_MAX_DEPTH = 16


def classify(exc: BaseException) -> Kind:
    """The kind of ``exc``: partner data, environment or internal."""
    chain = list(_chain(exc))
    if any(isinstance(e, PartnerDataError) for e in chain):
        return Kind.PARTNER
    if any(_environmental(e) for e in chain):
        return Kind.ENVIRONMENT
    return Kind.INTERNAL


def reason(exc: BaseException) -> str:
    """The code that made ``exc`` environmental (``sqlstate 53100``, ``errno ENOSPC``…),
    else its type name: what ``import.waiting`` logs, short and stable."""
    for e in _chain(exc):
        state = _sqlstate(e)
        if state is not None and _sqlstate_environmental(state):
            return f"sqlstate {state}"
        code = getattr(e, "sqlite_errorcode", None)
        if isinstance(code, int) and (code & 0xFF) in ENVIRONMENT_SQLITE_CODES:
            return f"sqlite {getattr(e, 'sqlite_errorname', code)}"
        if isinstance(e, OSError) and e.errno in ENVIRONMENT_ERRNOS:
            return f"errno {errno.errorcode.get(e.errno, e.errno)}"
        if _driver_operational_without_state(e):
            return "database unreachable"
    return type(exc).__name__


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and every exception behind it, each once, breadth first."""
    seen: list[BaseException] = []
    todo: list[BaseException] = [exc]
    while todo and len(seen) < _MAX_DEPTH:
        current = todo.pop(0)
        if any(current is s for s in seen):
            continue
        seen.append(current)
        for attr in ("orig", "__cause__", "__context__"):
            behind = getattr(current, attr, None)
            if isinstance(behind, BaseException):
                todo.append(behind)
    return seen


def _environmental(exc: BaseException) -> bool:
    if isinstance(exc, TransientError):
        return True
    if isinstance(exc, OSError) and exc.errno in ENVIRONMENT_ERRNOS:
        return True
    state = _sqlstate(exc)
    if state is not None:
        return _sqlstate_environmental(state)
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return (code & 0xFF) in ENVIRONMENT_SQLITE_CODES
    return _driver_operational_without_state(exc)


def _sqlstate(exc: BaseException) -> str | None:
    state = getattr(exc, "sqlstate", None)
    return state if isinstance(state, str) and len(state) == 5 else None


def _sqlstate_environmental(state: str) -> bool:
    return state[:2] in ENVIRONMENT_SQLSTATE_CLASSES or state in ENVIRONMENT_SQLSTATES


def _driver_operational_without_state(exc: BaseException) -> bool:
    """psycopg's OperationalError with no SQLSTATE: the server never answered
    (connection refused, timed out, closed under us)."""
    try:
        import psycopg
    except ImportError:  # pragma: no cover -- psycopg is a dependency
        return False
    return isinstance(exc, psycopg.OperationalError) and getattr(exc, "sqlstate", None) is None
