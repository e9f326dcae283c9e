"""`make run`: a working daemon on a fresh machine, and how to talk to it.

Creates ``./var`` (SQLite database, tenant tree, host key) and
``./var/personsd.toml``, a ``demo`` tenant whose custom fields match the
seed example, provisioned with the user's ``~/.ssh/id_*.pub`` keys when there
are any, else with a generated password shown once. Then it prints the exact
``sftp`` command and an example file, and runs the daemon in the foreground.
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

from personsd import config as config_mod
from personsd.fieldtypes import CustomField, FieldType
from personsd.passwords import hash_password
from personsd.store import db
from personsd.store import fields as store_fields
from personsd.store import tenants as store_tenants

TENANT = "demo"
EXAMPLE = (
    "mdn,first_name,last_name,sport_interests\n"
    "+12295551234,John,Doe,football|hockey\n"
    "+12025550123,Mary,Sue,soccer\n"
    "+14155552671,Dave,Doe,golf|basketball|hockey\n"
    "+12995550008,John,Smith,soccer|football\n"
)
CONFIG = """\
# Written by `make run` for local use; see config/personsd.toml for every key.
[database]
url = "sqlite:///persons.db"

[paths]
root = "."

[sftp]
listen = "127.0.0.1:2222"
host_key = "ssh_host_ed25519_key"

[import]
settle_seconds = 1.0

[log]
format = "auto"
"""


def _public_keys() -> list[tuple[str, str, str]]:
    keys = []
    for path in sorted((Path.home() / ".ssh").glob("id_*.pub")):
        parts = path.read_text().split(None, 2)
        if len(parts) >= 2:
            keys.append((parts[0], parts[1], parts[2].strip() if len(parts) > 2 else path.name))
    return keys


def main(home: Path | None = None) -> int:
    home = (home or Path.cwd() / "var").resolve()
    home.mkdir(parents=True, exist_ok=True)
    config_path = home / "personsd.toml"
    if not config_path.exists():
        config_path.write_text(CONFIG)
    cfg = config_mod.load(config_path)
    engine = db.connect(cfg.database.url)
    db.upgrade(engine)

    password = None
    keys = _public_keys()
    with db.write_tx(engine) as conn:
        tenant = store_tenants.get_tenant(conn, TENANT)
        if tenant is None:
            if not keys:
                password = secrets.token_urlsafe(12)
            tenant_id = store_tenants.add_tenant(
                conn, TENANT, keys=keys, password_hash=hash_password(password) if password else None
            )
            store_fields.add_field(
                conn, tenant_id, CustomField(name="first_name", type=FieldType.STRING)
            )
            store_fields.add_field(
                conn, tenant_id, CustomField(name="last_name", type=FieldType.STRING)
            )
            store_fields.add_field(
                conn,
                tenant_id,
                CustomField(
                    name="sport_interests",
                    type=FieldType.MULTI_SELECT,
                    options=("football", "hockey", "soccer", "golf", "basketball"),
                ),
            )
        else:
            keys = list(tenant.keys)  # type: ignore[arg-type]
    engine.dispose()
    for path in (cfg.inbox(TENANT), cfg.validate_box(TENANT), cfg.outbox(TENANT)):
        path.mkdir(parents=True, exist_ok=True)
    example = home / "customer_test.persons"
    example.write_text(EXAMPLE)

    port = cfg.sftp.port
    key_hint = "" if password else " -i ~/.ssh/id_ed25519"
    cli = Path(sys.executable).parent / "personsd"
    print(
        f"""
personsd is starting: SQLite at {home / "persons.db"}, SFTP on {cfg.sftp.listen}.

Tenant '{TENANT}' ({
            "password: " + password + "   <- shown once"
            if password
            else f"{len(keys)} SSH key(s) from ~/.ssh"
        }).

Upload the example file and fetch the reports:

    sftp -P {port}{key_hint} -o StrictHostKeyChecking=accept-new {TENANT}@127.0.0.1
    sftp> put {example} /inbox/
    sftp> ls /outbox
    sftp> get /outbox/customer_test.persons.1.summary.json

or from the shell (another terminal):

    {cli} --config {config_path} persons export --tenant {TENANT}

Stop with Ctrl-C.
""",
        flush=True,
    )
    os.execv(
        sys.executable, [sys.executable, "-m", "personsd", "--config", str(config_path), "run"]
    )


if __name__ == "__main__":
    sys.exit(main())
