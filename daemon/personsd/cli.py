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
    durations,
    fileformat,
    logging,
    pgp,
    reports,
    tenancy,
    validation,
    webhooks,
)
from personsd import config as config_mod
from personsd.config import Config, LogConfig
from personsd.errors import OperatorError, PersonsdError
from personsd.fieldtypes import Charset, CustomField, FieldType, format_value
from personsd.phones import normalize_mdn
from personsd.rules import Person
from personsd.store import db
from personsd.store import fields as store_fields
from personsd.store import imports as store_imports
from personsd.store import persons as store_persons
from personsd.store import tenants as store_tenants

EXIT_ERROR = 1
EXIT_REJECTED = 3
# The columns every export starts with: the identifiers of the file format.
BUILTIN_COLUMNS = fileformat.IDENTIFIERS


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


# -- tenants ---------------------------------------------------------------


@main.group()
def tenants() -> None:
    """Partner accounts: SFTP login, inbox, outbox."""


@tenants.command("add")
@click.argument("name")
@click.option(
    "--ssh-key",
    "ssh_keys",
    multiple=True,
    type=click.Path(path_type=Path),
    help="OpenSSH public key file (repeatable).",
)
@click.option("--password-stdin", is_flag=True, help="Read an SFTP password from stdin.")
@click.pass_context
def tenants_add(
    ctx: click.Context, name: str, ssh_keys: tuple[Path, ...], password_stdin: bool
) -> None:
    """Create tenant NAME with its inbox, validate and outbox directories."""
    state = _state(ctx)
    with errors_handled():
        keys = tenancy.read_keys(ssh_keys)
        password_hash = None
        if password_stdin:
            from personsd.passwords import hash_password

            password = sys.stdin.readline().rstrip("\r\n")
            if not password:
                raise OperatorError("empty password on stdin")
            password_hash = hash_password(password)
        with db.write_tx(state.engine) as conn:
            store_tenants.add_tenant(conn, name, keys=keys, password_hash=password_hash)
        tenancy.tenant_dirs(state.config, name)
    click.echo(f"tenant {name} added: inbox {state.config.inbox(name)}")


@tenants.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def tenants_list(ctx: click.Context, as_json: bool) -> None:
    """List tenants."""
    state = _state(ctx)
    with errors_handled(), state.engine.connect() as conn:
        found = store_tenants.list_tenants(conn)
    rows: list[dict[str, Any]] = [
        {
            "name": t.name,
            "keys": len(t.keys),
            "password": t.password_hash is not None,
            "expect_every_seconds": t.expect_every_seconds,
            "notify_url": None if t.notify_url is None else webhooks.redact(t.notify_url),
        }
        for t in found
    ]
    if as_json:
        click.echo(json.dumps(rows))
        return
    for row in rows:
        password = "yes" if row["password"] else "no"
        expect = row["expect_every_seconds"]
        every = "-" if expect is None else durations.render(expect)
        url = row["notify_url"] or "-"
        click.echo(
            f"{row['name']}\tkeys={row['keys']}\tpassword={password}\texpect={every}\tnotify={url}"
        )


@tenants.command("remove")
@click.argument("name")
@click.pass_context
def tenants_remove(ctx: click.Context, name: str) -> None:
    """Remove tenant NAME; its files are moved aside under state/removed, not deleted."""
    state = _state(ctx)
    with errors_handled():
        tenancy.remove(state.engine, state.config, name)
    click.echo(f"tenant {name} removed")


# -- pgp -------------------------------------------------------------------


@main.group("pgp")
def pgp_() -> None:
    """personsd's own OpenPGP key pair, for partners who encrypt (SPEC 11)."""


@pgp_.command("init")
@click.option(
    "--algorithm",
    type=click.Choice(sorted(pgp.ALGORITHMS)),
    default="ed25519",
    show_default=True,
    help="rsa4096 for partners whose tools lack elliptic curves.",
)
@click.option("--new", is_flag=True, help="Add a new key pair even if one exists (rotation).")
@click.pass_context
def pgp_init(ctx: click.Context, algorithm: str, new: bool) -> None:
    """Create the key pair once (idempotent); print its fingerprint."""
    state = _state(ctx)
    with errors_handled():
        key, created = pgp.init(state.config.pgp_home, algorithm=algorithm, new=new)
    verb = "created" if created else "exists"
    click.echo(f"{verb}: {key.fingerprint} in {state.config.pgp_home}")


@pgp_.command("public-key")
@click.pass_context
def pgp_public_key(ctx: click.Context) -> None:
    """Print the public key (ASCII armour) to hand to partners."""
    state = _state(ctx)
    with errors_handled():
        text = pgp.public_key(state.config.pgp_home)
    click.echo(text, nl=False)


# -- fields ----------------------------------------------------------------


@main.group()
def fields() -> None:
    """A tenant's custom fields."""


@fields.command("add")
@click.option("--tenant", required=True)
@click.argument("name")
@click.option("--type", "type_", required=True, type=click.Choice([t.value for t in FieldType]))
@click.option("--options", default=None, help="Option keys for selects: a,b,c")
@click.option("--charset", default=None, type=click.Choice([c.value for c in Charset]))
@click.option("--max-length", type=int, default=None)
@click.pass_context
def fields_add(
    ctx: click.Context,
    tenant: str,
    name: str,
    type_: str,
    options: str | None,
    charset: str | None,
    max_length: int | None,
) -> None:
    """Define custom field NAME for a tenant."""
    state = _state(ctx)
    with errors_handled():
        found = state.tenant(tenant)
        kwargs: dict[str, Any] = {"name": name, "type": FieldType(type_)}
        if options is not None:
            kwargs["options"] = tuple(o.strip() for o in options.split(","))
        if charset is not None:
            kwargs["charset"] = Charset(charset)
        if max_length is not None:
            kwargs["max_length"] = max_length
        try:
            field = CustomField(**kwargs)
        except ValueError as exc:
            raise OperatorError(str(exc)) from None
        with db.write_tx(state.engine) as conn:
            store_fields.add_field(conn, found.id, field)
    click.echo(f"field {name} ({type_}) added to {tenant}")


def _field_dict(field: CustomField) -> dict[str, Any]:
    return {
        "name": field.name,
        "type": field.type.value,
        "options": list(field.options),
        "charset": field.charset.value,
        "max_length": field.max_length,
    }


@fields.command("list")
@click.option("--tenant", required=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def fields_list(ctx: click.Context, tenant: str, as_json: bool) -> None:
    """List a tenant's custom fields."""
    state = _state(ctx)
    with errors_handled():
        found = state.tenant(tenant)
        with state.engine.connect() as conn:
            rows = [_field_dict(f) for f in store_fields.list_fields(conn, found.id)]
    if as_json:
        click.echo(json.dumps(rows))
        return
    for row in rows:
        extra = ",".join(row["options"]) if row["options"] else ""
        click.echo(f"{row['name']}\t{row['type']}\t{extra}")


@fields.command("remove")
@click.option("--tenant", required=True)
@click.argument("name")
@click.pass_context
def fields_remove(ctx: click.Context, tenant: str, name: str) -> None:
    """Remove a custom field (its stored values are no longer exported)."""
    state = _state(ctx)
    with errors_handled():
        found = state.tenant(tenant)
        with db.write_tx(state.engine) as conn:
            if not store_fields.remove_field(conn, found.id, name):
                raise OperatorError(f"tenant {tenant!r} has no field {name!r}")
    click.echo(f"field {name} removed from {tenant}")


# -- persons ---------------------------------------------------------------


@main.group()
def persons() -> None:
    """Look at a tenant's persons."""


def export_rows(person: Person, custom: list[CustomField]) -> list[str]:
    row = [
        str(person.person_id),
        person.person_key,
        person.external_person_id or "",
        person.mdn or "",
        person.vibes_device_id or "",
    ]
    for field in custom:
        value = person.attributes.get(str(field.id))
        row.append("" if value is None else format_value(value))
    return row


@persons.command("export")
@click.option("--tenant", required=True)
@click.option("--output", type=click.Path(path_type=Path), default=None)
@click.pass_context
def persons_export(ctx: click.Context, tenant: str, output: Path | None) -> None:
    """Every person of a tenant as a .persons file, by person_id."""
    state = _state(ctx)
    with errors_handled():
        found = state.tenant(tenant)
        out: TextIO
        with state.engine.connect() as conn:
            custom = store_fields.list_fields(conn, found.id)  # sorted by name
            header = BUILTIN_COLUMNS + tuple(f.name for f in custom)
            try:
                out = output.open("w", encoding="utf-8", newline="") if output else sys.stdout
            except OSError as exc:
                raise OperatorError(f"cannot write {output}: {exc.strerror}") from None
            try:
                out.write(reports.persons_line(header, ","))
                for person in store_persons.iter_all(conn, found.id):
                    out.write(reports.persons_line(export_rows(person, custom), ","))
            finally:
                if output:
                    out.close()


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
    body: dict[str, Any] = {c: getattr(person, c) for c in BUILTIN_COLUMNS}
    body["fields"] = {
        f.name: format_value(person.attributes[str(f.id)])
        for f in custom
        if str(f.id) in person.attributes
    }
    click.echo(json.dumps(body, ensure_ascii=False, indent=2))


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


# -- db --------------------------------------------------------------------


@main.group("db")
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


def _add_operations_commands() -> None:
    from personsd import cli_ops  # its commands use this module's helpers

    tenants.add_command(cli_ops.tenants_set)
    main.add_command(cli_ops.status_)


_add_operations_commands()

if __name__ == "__main__":  # pragma: no cover
    main()
