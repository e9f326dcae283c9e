"""Operations commands (SPEC 7, 10 and 11): ``tenants set`` and ``status``.

Registered on ``personsd.cli``'s groups at the end of that module.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from sqlalchemy import make_url

from personsd import durations, metrics, pgp, status
from personsd.cli import _state, errors_handled, fail
from personsd.errors import OperatorError
from personsd.store import db
from personsd.store import tenants as store_tenants


@click.command("set")
@click.argument("name")
@click.option("--notify-url", metavar="URL", help="This tenant's webhook (instead of notify.url).")
@click.option("--no-notify-url", is_flag=True, help="Back to notify.url.")
@click.option(
    "--expect-every", metavar="DURATION", help="Expected cadence, e.g. 24h, 90m, 7d (alerting)."
)
@click.option("--no-expect", is_flag=True, help="No expected cadence.")
@click.option(
    "--pgp-verify-key",
    type=click.Path(path_type=Path),
    help="The partner's OpenPGP public key: encrypted files must be signed by it.",
)
@click.option("--no-pgp-verify-key", is_flag=True, help="Stop requiring signed files.")
@click.pass_context
def tenants_set(
    ctx: click.Context,
    name: str,
    notify_url: str | None,
    no_notify_url: bool,
    expect_every: str | None,
    no_expect: bool,
    pgp_verify_key: Path | None,
    no_pgp_verify_key: bool,
) -> None:
    """Change settings of tenant NAME (webhook, expected cadence, partner's PGP key)."""
    if pgp_verify_key is not None and no_pgp_verify_key:
        raise click.UsageError("--pgp-verify-key and --no-pgp-verify-key exclude each other")
    if notify_url is not None and no_notify_url:
        raise click.UsageError("--notify-url and --no-notify-url exclude each other")
    if expect_every is not None and no_expect:
        raise click.UsageError("--expect-every and --no-expect exclude each other")
    changes: dict[str, int | str | None] = {}
    if notify_url is not None or no_notify_url:
        changes["notify_url"] = notify_url
    with errors_handled():
        if expect_every is not None:
            changes["expect_every_seconds"] = durations.parse(expect_every)
        elif no_expect:
            changes["expect_every_seconds"] = None
        signer = pgp_verify_key is not None or no_pgp_verify_key
        if not changes and not signer:
            raise click.UsageError("nothing to set")
        armored = fingerprint = None
        if pgp_verify_key is not None:
            try:
                data = pgp_verify_key.read_bytes()
            except OSError as exc:
                raise OperatorError(f"cannot read {pgp_verify_key}: {exc.strerror}") from None
            fingerprint = pgp.key_fingerprint(data)
            # Stored armoured whatever the file's form, so the key travels in the database.
            armored = pgp.armor_key(data)
        state = _state(ctx)
        with db.write_tx(state.engine) as conn:
            tenant = store_tenants.get_tenant(conn, name)
            if tenant is None:
                raise OperatorError(f"unknown tenant {name!r}")
            if changes:
                store_tenants.set_operations(conn, tenant.id, **changes)
            if signer:
                store_tenants.set_pgp_verify_key(conn, tenant.id, armored, fingerprint)
    if changes:
        click.echo(f"tenant {name} updated")
    if signer and fingerprint is None:
        click.echo(f"tenant {name}: encrypted files need no signature")
    elif signer:
        click.echo(f"tenant {name}: encrypted files must be signed by {fingerprint}")


@click.command("status")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def status_(ctx: click.Context, as_json: bool) -> None:
    """Per tenant: queued, running, last finished, time since last completed; health."""
    state = _state(ctx)
    with errors_handled():
        cfg = state.config
    shown_url = make_url(cfg.database.url).render_as_string(hide_password=True)
    error: str | None = None
    snap = status.Snapshot(taken_at=datetime.now(UTC))
    try:
        with state.engine.connect() as conn:
            snap = status.snapshot(conn)
    except Exception as exc:  # noqa: BLE001 -- an outage is what status must show
        error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    disk = status.disk_free(cfg.root)
    if as_json:
        data: dict[str, Any] = status.as_dict(
            snap, database=shown_url, database_error=error, disk=disk
        )
        data["disk_low"] = disk is not None and disk < metrics.READY_MIN_FREE_BYTES
        click.echo(json.dumps(data))
    else:
        from rich.console import Console

        Console(file=sys.stdout).print(
            status.render(snap, database=shown_url, database_error=error, disk=disk)
        )
    if error is not None:
        fail("database unreachable")
