"""Data commands (SPEC 7): ``persons export``/``show`` and ``db upgrade``/``copy``.

Registered on ``personsd.cli``'s main group at the end of that module.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

import click

from personsd import export
from personsd.cli import _state, errors_handled, fail
from personsd.errors import OperatorError
from personsd.phones import normalize_mdn
from personsd.store import db
from personsd.store import fields as store_fields
from personsd.store import persons as store_persons

# -- persons ---------------------------------------------------------------


@click.group()
def persons() -> None:
    """Look at a tenant's persons."""


@persons.command("export")
@click.option("--tenant", required=True)
@click.option("--output", type=click.Path(path_type=Path), default=None)
@click.pass_context
def persons_export(ctx: click.Context, tenant: str, output: Path | None) -> None:
    """Every person of a tenant as a .persons file, by person_id."""
    state = _state(ctx)
    with errors_handled():
        found = state.tenant(tenant)
        with state.engine.connect() as conn:
            export.write_persons(conn, found.id, output, sys.stdout)


@persons.command("show")
@click.option("--tenant", required=True)
@click.option("--person-id", type=int, default=None)
@click.option("--person-key", default=None)
@click.option("--external-person-id", default=None)
@click.option("--mdn", default=None)
@click.pass_context
def persons_show(
    ctx: click.Context,
    tenant: str,
    person_id: int | None,
    person_key: str | None,
    external_person_id: str | None,
    mdn: str | None,
) -> None:
    """One person as JSON."""
    given = {
        k: v
        for k, v in {
            "person_id": person_id,
            "person_key": person_key,
            "external_person_id": external_person_id,
            "mdn": mdn,
        }.items()
        if v is not None
    }
    if len(given) != 1:
        raise click.UsageError(
            "give exactly one of --person-id, --person-key, --external-person-id, --mdn"
        )
    state = _state(ctx)
    ((column, value),) = given.items()
    if column == "mdn":
        value = normalize_mdn(str(value)) or str(value)
    with errors_handled():
        found = state.tenant(tenant)
        with state.engine.connect() as conn:
            person = store_persons.find(conn, found.id, column, value)
            custom = store_fields.list_fields(conn, found.id)
    if person is None:
        fail(f"no person with {column} {value!r} in tenant {tenant!r}")
    body = export.person_body(person, custom)
    click.echo(json.dumps(body, ensure_ascii=False, indent=2))


# -- db --------------------------------------------------------------------


@click.group("db")
def db_() -> None:
    """Database schema and copy."""


@db_.command("upgrade")
@click.pass_context
def db_upgrade(ctx: click.Context) -> None:
    """Apply schema migrations."""
    state = _state(ctx)
    with errors_handled():
        state.engine  # noqa: B018 -- connecting migrates
        revision = db.current_revision(state.engine)
    click.echo(f"database at revision {revision}")


@db_.command("copy")
@click.option("--to", "to_url", required=True, metavar="URL", help="The empty target database.")
@click.option(
    "--batch-rows",
    type=click.IntRange(min=1),
    default=None,
    help="Rows per committed batch (default 5000).",
)
@click.pass_context
def db_copy(ctx: click.Context, to_url: str, batch_rows: int | None) -> None:
    """Copy everything into the empty database at URL (resumable: run it again)."""
    from personsd.store import copy as store_copy

    state = _state(ctx)
    with errors_handled():
        try:
            target = db.connect(to_url)
        except Exception as exc:  # noqa: BLE001 -- a malformed URL or a missing driver
            raise OperatorError(f"bad target URL: {exc}") from None
        try:
            with _copy_progress(sys.stderr) as (on_total, on_rows):
                report = store_copy.copy_database(
                    state.engine,
                    target,
                    batch_rows=batch_rows or store_copy.BATCH_ROWS,
                    on_total=on_total,
                    on_rows=on_rows,
                )
        finally:
            target.dispose()
    rate = report.copied / report.seconds if report.seconds else 0.0
    verb = "resumed: copied" if report.resumed else "copied"
    click.echo(
        f"{verb} {report.copied} rows in {report.seconds:.1f} s ({rate:.0f} rows/s)"
        f" into {store_copy.display_url(target)}; it holds {report.rows} rows"
    )


@contextmanager
def _copy_progress(stream: TextIO) -> Iterator[tuple[Any, Any]]:
    """A progress bar by rows on a terminal; callbacks doing nothing otherwise."""
    if not stream.isatty():
        yield (lambda total: None), (lambda table, rows: None)
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("copying {task.fields[table]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("rows"),
        TimeRemainingColumn(),
        console=Console(file=stream),
        transient=True,
    ) as bar:
        task = bar.add_task("copy", total=None, table="")

        def on_total(total: int) -> None:
            bar.update(task, total=total)

        def on_rows(table: str, rows: int) -> None:
            bar.update(task, advance=rows, table=table)

        yield on_total, on_rows
