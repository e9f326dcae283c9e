"""The command line (SPEC section 7).

Exit codes: 0 ok, 1 error, 2 usage, 3 file rejected (``import``).
Everything a command prints for machines goes to stdout; logs and the
progress bar go to stderr.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn, TextIO, cast

import click
from sqlalchemy import Engine, make_url
from sqlalchemy.exc import DBAPIError

from personsd import (
    admin,
    logging,
    tenancy,
    validation,
)
from personsd import config as config_mod
from personsd.config import Config, LogConfig
from personsd.errors import OperatorError, PersonsdError
from personsd.export import BUILTIN_COLUMNS, export_rows
from personsd.store import db
from personsd.store import imports as store_imports
from personsd.store import tenants as store_tenants

EXIT_ERROR = 1
EXIT_REJECTED = 3

# Tests build their expected exports with these, as the CLI did before export.py.
__all__ = ["BUILTIN_COLUMNS", "export_rows", "main"]


class State:
    """What every command needs: the config, and a migrated database on demand."""

    def __init__(self, config_path: str | None) -> None:
        self.config_path = config_path
        self._config: Config | None = None
        self._engine: Engine | None = None

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = config_mod.load(self.config_path)
        return self._config

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = db.connect(self.config.database.url)
            db.upgrade(self._engine)
        return self._engine

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def tenant(self, name: str) -> store_tenants.Tenant:
        with self.engine.connect() as conn:
            found = store_tenants.get_tenant(conn, name)
        if found is None:
            raise OperatorError(f"unknown tenant {name!r}")
        return found


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    click.echo(f"personsd: {message}", err=True)
    sys.exit(code)


@contextmanager
def errors_handled() -> Iterator[None]:
    """Operator errors become a one-line message and exit 1, never a traceback."""
    try:
        yield
    except PersonsdError as exc:
        fail(str(exc))
    except DBAPIError as exc:
        fail(f"database unreachable or failing: {exc.orig}")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    envvar=config_mod.ENV_CONFIG,
    metavar="FILE",
    help="TOML config file (default: $PERSONSD_CONFIG, else built-in defaults).",
)
@click.version_option(package_name="personsd")
@click.pass_context
def main(ctx: click.Context, config_path: str | None) -> None:
    """personsd: SFTP inbox daemon importing partners' .persons files."""
    validation.tune_memory()
    ctx.obj = State(config_path)


def _state(ctx: click.Context) -> State:
    state = ctx.find_object(State)
    assert state is not None
    ctx.call_on_close(state.close)
    with errors_handled():
        logging.configure(state.config.log.format, state.config.log.level, stream=sys.stderr)
    return state


@main.command()
@click.pass_context
def run(ctx: click.Context) -> None:
    """Run the daemon: SFTP server, watcher and import workers."""
    state = _state(ctx)
    from personsd.service import main as run_daemon

    with errors_handled():
        logging.configure(state.config.log.format, state.config.log.level, stream=sys.stdout)
        sys.exit(run_daemon(state.config))


@main.command()
@click.pass_context
def init(ctx: click.Context) -> None:
    """Create directories, database schema and host key (idempotent)."""
    state = _state(ctx)
    with errors_handled():
        cfg = state.config
        tenancy.init_paths(cfg)
        state.engine  # noqa: B018 -- connecting migrates the schema
        from personsd.sftp import load_or_create_host_key

        load_or_create_host_key(cfg.sftp.host_key)
        with state.engine.connect() as conn:
            for tenant in store_tenants.list_tenants(conn):
                tenancy.tenant_dirs(cfg, tenant.name)
    url = make_url(cfg.database.url).render_as_string(hide_password=True)
    click.echo(f"initialised {cfg.root} ({url})")


@main.command("import")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--tenant", required=True, help="Tenant whose persons and outbox to use.")
@click.option(
    "--validate",
    is_flag=True,
    help="Check FILE as a drop in /validate would: every rule, nothing written.",
)
@click.pass_context
def import_(ctx: click.Context, file: Path, tenant: str, validate: bool) -> None:
    """Import FILE now (or only validate it) and print its summary JSON."""
    state = _state(ctx)
    with errors_handled():
        cfg = state.config
        outcome = admin.import_file(
            lambda: state.engine,
            cfg,
            file,
            tenant=tenant,
            validate=validate,
            progress=lambda size: _progress(sys.stderr, size, cfg.log),
        )
    click.echo(json.dumps(outcome.summary.as_dict(), ensure_ascii=False, indent=2))
    if outcome.summary.status == "rejected":
        sys.exit(EXIT_REJECTED)
    if outcome.summary.status == "failed":
        sys.exit(EXIT_ERROR)


@contextmanager
def _progress(stream: TextIO, size: int | None, log: LogConfig) -> Iterator[Any]:
    """A progress bar by bytes on a terminal; nothing otherwise.

    While the bar shows, log lines go through its console, which prints each
    above the bar on a row of its own; written straight to ``stream`` they
    would land on the bar's row (the cursor sits at its end).
    """
    if not stream.isatty():
        yield None
        return
    from rich.console import Console
    from rich.file_proxy import FileProxy
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    # soft_wrap: a log line is printed whole, as one line, and the terminal wraps it.
    with Progress(
        TextColumn("importing"),
        BarColumn(),
        DownloadColumn(),
        TextColumn("{task.fields[rows]} rows"),
        TimeRemainingColumn(),
        console=Console(file=stream, soft_wrap=True),
        transient=True,
    ) as bar:
        task = bar.add_task("import", total=size, rows=0)

        def on_chunk(rows: int, done: int) -> None:
            bar.update(task, completed=done, rows=rows)

        # A text stream in all but name (rich's io.TextIOBase; isatty() is the terminal's).
        proxy = cast(TextIO, FileProxy(bar.console, stream))
        logging.configure(log.format, log.level, stream=proxy)
        try:
            yield on_chunk
        finally:
            logging.configure(log.format, log.level, stream=stream)


# -- imports ---------------------------------------------------------------


@main.group("imports")
def imports_() -> None:
    """Imports and their status."""


@imports_.command("list")
@click.option("--tenant", default=None)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def imports_list(ctx: click.Context, tenant: str | None, as_json: bool) -> None:
    """Imports with status and row counts."""
    state = _state(ctx)
    with errors_handled():
        tenant_id = state.tenant(tenant).id if tenant else None
        with state.engine.connect() as conn:
            names = {t.id: t.name for t in store_tenants.list_tenants(conn)}
            records = store_imports.list_imports(conn, tenant_id)
    rows: list[dict[str, Any]] = [
        {
            "import_id": r.id,
            "tenant": names.get(r.tenant_id),
            "file": r.file_name,
            "mode": r.mode,
            "status": r.status,
            "attempts": r.attempts,
            "rows": {
                "total": r.rows_total,
                "succeeded": r.rows_succeeded,
                "failed": r.rows_failed,
                "created": r.rows_created,
                "updated": r.rows_updated,
            },
            "received_at": r.received_at.isoformat() if r.received_at else None,
        }
        for r in records
    ]
    if as_json:
        click.echo(json.dumps(rows))
        return
    for row in rows:
        counts = row["rows"]
        # A validation is marked; an import's line stays as it always was.
        status = row["status"] if row["mode"] == "import" else f"{row['status']} (validate)"
        click.echo(
            f"{row['import_id']}\t{row['tenant']}\t{status}\t{row['file']}\t"
            f"rows={counts['total']} ok={counts['succeeded']} failed={counts['failed']}"
        )


@imports_.command("retry")
@click.argument("import_id", type=int)
@click.pass_context
def imports_retry(ctx: click.Context, import_id: int) -> None:
    """Queue a failed import again (it resumes from its checkpoint).

    Its file stays where the worker put it (the quarantine): work_path says where.
    """
    state = _state(ctx)
    with errors_handled():
        admin.retry_import(lambda: state.engine, import_id)
    click.echo(f"import {import_id} queued again")


def _add_commands() -> None:
    # These modules use this one's helpers: imported once it is complete.
    from personsd import cli_data, cli_ops, cli_tenants

    main.add_command(cli_tenants.tenants)
    main.add_command(cli_tenants.pgp_)
    main.add_command(cli_tenants.fields)
    main.add_command(cli_data.persons)
    main.add_command(cli_data.db_)
    cli_tenants.tenants.add_command(cli_ops.tenants_set)
    main.add_command(cli_ops.status_)


_add_commands()

if __name__ == "__main__":  # pragma: no cover
    main()
