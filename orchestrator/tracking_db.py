"""Create MLflow's database schema once, however many servers start against one fresh database.

MLflow 3.17 creates its tables on a store's first use with no lock across processes: servers that
start together on an empty PostgreSQL database race, and the losers die on a duplicate
`alembic_version` table (seen in tests/test_postgres_tracking.py). ensure_schema holds a PostgreSQL
advisory lock while it builds MLflow's own store, so the first caller creates the schema and the
others find it there. Run it before `mlflow server` (the compose stack does):

    python -m orchestrator.tracking_db [URI]    # URI defaults to $MLFLOW_BACKEND_STORE_URI
"""
from __future__ import annotations

import os
import sys
import tempfile

import sqlalchemy
from mlflow.store.db.utils import create_sqlalchemy_engine_with_retry
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

SCHEMA_LOCK = 7_310_512_041  # any fixed bigint shared by every caller


def ensure_schema(uri: str) -> None:
    """Create MLflow's tables in an empty database or verify an existing one (raises if outdated)."""
    engine = create_sqlalchemy_engine_with_retry(uri)
    try:
        if engine.dialect.name != "postgresql":  # a local sqlite file has one writer: no race to guard
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


def _open_store(uri: str) -> None:
    """MLflow's own store creates the tables if none exist, then checks the schema revision."""
    SqlAlchemyStore(uri, tempfile.gettempdir()).engine.dispose()


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("MLFLOW_BACKEND_STORE_URI", "")
    if not target:
        sys.exit("usage: python -m orchestrator.tracking_db URI  (or set MLFLOW_BACKEND_STORE_URI)")
    ensure_schema(target)
