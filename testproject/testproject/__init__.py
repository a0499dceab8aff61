"""A small Django site that uses FluxGate: admin, two demo views, SQLite by default."""
