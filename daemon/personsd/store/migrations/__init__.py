"""Alembic migrations (run programmatically by ``personsd.store.db.upgrade``)."""
