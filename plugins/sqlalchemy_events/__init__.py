"""SQLAlchemy event store backend (PostgreSQL, SQLite)."""
