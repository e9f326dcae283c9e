"""Shared fixtures: every database test runs on SQLite and on PostgreSQL.

PostgreSQL tests use ``PERSONSD_TEST_PG_URL`` (default: the local server) and
get a schema of their own per test, so they run in parallel without stepping
on each other. When ``PERSONSD_TEST_REQUIRE_PG`` is set (CI), an unreachable
server fails the run instead of skipping.
"""

from __future__ import annotations

import logging
import os
import runpy
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import structlog
from hypothesis import HealthCheck, settings
from sqlalchemy import Engine

from personsd.store import db

settings.register_profile(
    "ci", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "dev", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

PG_URL = os.environ.get("PERSONSD_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REQUIRE_PG = os.environ.get("PERSONSD_TEST_REQUIRE_PG", "") not in ("", "0")


# bench/ is a folder of scripts, not a package: its plumbing is read from the file.
_BENCH = runpy.run_path(str(Path(__file__).resolve().parents[1] / "bench" / "common.py"))
_pg_conninfo = _BENCH["pg_conninfo"]
_pg_schema = _BENCH["pg_schema"]


_pg_state: dict[str, str | None] = {}


def _pg_unavailable() -> str | None:
    """Why PostgreSQL cannot be used, or None; checked once per process."""
    if "reason" not in _pg_state:
        import psycopg

        try:
            with psycopg.connect(_pg_conninfo(PG_URL), connect_timeout=3) as conn:
                conn.execute("select 1")
            _pg_state["reason"] = None
        except Exception as exc:  # noqa: BLE001 -- any failure to connect means "not here"
            _pg_state["reason"] = f"PostgreSQL at {PG_URL} unreachable: {exc}"
    return _pg_state["reason"]


@contextmanager
def database_url(kind: str, folder: Path) -> Iterator[str]:
    """A fresh database: a SQLite file in ``folder``, or a private PostgreSQL schema.

    For fixtures of any scope; the schema is dropped afterwards. PostgreSQL
    being unreachable skips, or fails when ``PERSONSD_TEST_REQUIRE_PG`` is set.
    """
    if kind == "sqlite":
        yield f"sqlite:///{folder / 'persons.db'}"
        return
    reason = _pg_unavailable()
    if reason is not None:
        if REQUIRE_PG:
            pytest.fail(reason + " (PERSONSD_TEST_REQUIRE_PG is set)")
        pytest.skip(reason)
    with _pg_schema(PG_URL, "t_") as url:
        yield url


@pytest.fixture
def pg_url(tmp_path: Path) -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh, private schema."""
    with database_url("postgresql", tmp_path) as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'persons.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str:
    """Each database test runs twice: on SQLite and on PostgreSQL."""
    name = "pg_url" if request.param == "postgresql" else "sqlite_url"
    return str(request.getfixturevalue(name))


@pytest.fixture(scope="session")
def pgp_keys() -> Iterator[Any]:
    """personsd's, a partner's and a stranger's GnuPG key pairs (SPEC 11), once per worker."""
    from layer_helpers import make_keys

    with make_keys() as keys:
        yield keys


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def module_db(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, str]]:
    """A folder and a fresh database shared by a module's tests, on each database in turn
    (what ``db_url`` is to one test); for an installation or a daemon the module shares."""
    home = tmp_path_factory.mktemp(f"{request.module.__name__}-{request.param}")
    with database_url(request.param, home) as url:
        yield home, url


@pytest.fixture(scope="module")
def shared(module_db: tuple[Path, str]) -> Any:
    """One CLI installation per database and module, for tests that look only at a tenant
    of their own (a module may override it with a prepared site)."""
    from cli_helpers import make_site

    return make_site(*module_db)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Put the root logger's handlers and level and structlog's defaults back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """An engine on a fresh database at the schema's head (SQLite and PostgreSQL)."""
    eng = db.connect(db_url)
    db.upgrade(eng)
    yield eng
    eng.dispose()
