"""PostgreSQL's planner statistics of persons, kept in step with an initial load."""

from __future__ import annotations

from sqlalchemy import Connection, Engine


class Statistics:
    """Keeps PostgreSQL's statistics of persons in step with an initial load.

    Plans made from the statistics of a nearly empty table scan the tenant on
    every chunk instead of probing the unique indexes: quadratic in the file.
    Autovacuum catches up eventually (if it runs at all); this analyses
    whenever the import has added a fifth of what the planner believes the
    table holds, so a few times per load, at doubling sizes.
    """

    def __init__(self, engine: Engine, *, enabled: bool = True) -> None:
        self.engine = engine
        # A validation adds no person: nothing to keep in step.
        self.enabled = enabled and engine.dialect.name == "postgresql"
        self.believed: float = 0.0
        self.created_at_analyze = 0
        if self.enabled:
            with engine.connect() as conn:
                self.believed = planner_rows(conn) or 0.0

    def grown(self, created: int) -> None:
        added = created - self.created_at_analyze
        # The tenant's own growth counts, not the table's: a new tenant in a
        # table of other tenants' millions is believed empty, and its probes
        # then walk the tenant's rows (any index on tenant_id looks as good).
        base = min(self.believed, float(self.created_at_analyze))
        if not self.enabled or added < max(1000.0, 0.2 * base):
            return
        with self.engine.begin() as conn:
            analyze(conn)
            self.believed = planner_rows(conn) or float(created)
        self.created_at_analyze = created


def planner_rows(conn: Connection) -> float | None:
    """PostgreSQL's idea of the persons table's size (None elsewhere, or unknown)."""
    if conn.dialect.name != "postgresql":
        return None
    tuples = conn.exec_driver_sql(
        "SELECT reltuples FROM pg_class WHERE oid = 'persons'::regclass"
    ).scalar()
    return None if tuples is None or tuples < 0 else float(tuples)


def analyze(conn: Connection) -> None:
    """Refresh PostgreSQL's statistics of persons (see :class:`Statistics` for when)."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("ANALYZE persons")
