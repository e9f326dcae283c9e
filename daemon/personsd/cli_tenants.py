"""Tenant commands (SPEC 7, 11): ``tenants add``/``list``/``remove``, ``fields``, ``pgp``.

Registered on ``personsd.cli``'s main group at the end of that module
(``tenants set`` is ``cli_ops``').
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from personsd import durations, pgp, tenancy, webhooks
from personsd.cli import _state, errors_handled
from personsd.errors import OperatorError
from personsd.fieldtypes import Charset, CustomField, FieldType
from personsd.store import db
from personsd.store import fields as store_fields
from personsd.store import tenants as store_tenants

# -- tenants ---------------------------------------------------------------


@click.group()
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


@click.group("pgp")
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


@click.group()
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
