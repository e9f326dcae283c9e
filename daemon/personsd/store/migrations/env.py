"""Alembic environment: runs on the connection handed in by ``store.db.upgrade``.

There is no alembic.ini: the daemon builds the configuration in code. Offline
mode (``alembic upgrade --sql``) renders SQL for the URL in ``sqlalchemy.url``.
"""

from __future__ import annotations

from alembic import context

from personsd.store.models import metadata

config = context.config

if context.is_offline_mode():
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=metadata,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    connection = config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run migrations through personsd.store.db.upgrade")
    context.configure(connection=connection, target_metadata=metadata)
    with context.begin_transaction():
        context.run_migrations()
