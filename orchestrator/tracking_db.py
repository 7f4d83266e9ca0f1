"""Create MLflow's database schema once, however many processes start against one fresh database.

MLflow 3.17 creates its tables on a store's first use with no lock across processes: servers that
start together on an empty PostgreSQL database race, and the losers die on a duplicate
`alembic_version` table (seen in tests/test_postgres_tracking.py); two drivers opening a fresh
embedded SQLite store at once die on `_alembic_tmp_latest_metrics already exists`. ensure_schema holds
a lock while it builds MLflow's own store (a PostgreSQL advisory lock; for SQLite an flock on a file
beside the database), so the first caller creates the schema and the others find it there. Every
command opens a database store through it (workspace.SweepContext.store); run it before
`mlflow server` too (the compose stack does):

    python -m orchestrator.tracking_db [URI]    # URI defaults to $MLFLOW_BACKEND_STORE_URI
"""
from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import sys
import tempfile
from contextlib import closing
from pathlib import Path

import sqlalchemy
from mlflow.store.db.utils import create_sqlalchemy_engine_with_retry
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

SCHEMA_LOCK = 7_310_512_041  # any fixed bigint shared by every caller
# "Creating initial MLflow database tables..." on a command's stderr says nothing its user needs
logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)


def ensure_schema(uri: str) -> None:
    """Create MLflow's tables in an empty database or verify an existing one (raises if outdated)."""
    engine = create_sqlalchemy_engine_with_retry(uri)
    try:
        if engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
            lock = Path(engine.url.database).with_name(Path(engine.url.database).name + ".schema-lock")
            lock.parent.mkdir(parents=True, exist_ok=True)
            with open(lock, "a") as held:  # released when closed, or when the process dies
                fcntl.flock(held, fcntl.LOCK_EX)
                if not _sqlite_has_schema(Path(engine.url.database)):  # made under this lock, so complete
                    _open_store(uri)
            return
        if engine.dialect.name != "postgresql":
            _open_store(uri)
            return
        with engine.connect() as conn:  # the lock lives as long as this session
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": SCHEMA_LOCK})
            try:
                _open_store(uri)
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": SCHEMA_LOCK})
    finally:
        engine.dispose()


def _sqlite_has_schema(path: Path) -> bool:
    if not path.exists():
        return False
    with closing(sqlite3.connect(path)) as db:
        return db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='alembic_version'").fetchone() \
            is not None


def _open_store(uri: str) -> None:
    """MLflow's own store creates the tables if none exist, then checks the schema revision."""
    SqlAlchemyStore(uri, tempfile.gettempdir()).engine.dispose()


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("MLFLOW_BACKEND_STORE_URI", "")
    if not target:
        sys.exit("usage: python -m orchestrator.tracking_db URI  (or set MLFLOW_BACKEND_STORE_URI)")
    ensure_schema(target)
