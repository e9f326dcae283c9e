"""The database shell: engine and migrations (``db``), tables (``models``) and
small function modules per table (``tenants``, ``fields``, ``persons``, ``imports``).

Every function takes an open ``Connection``; the caller owns the transaction
(``db.write_tx`` for anything that writes).
"""
