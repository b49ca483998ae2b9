"""Connections to the experiment database: SQLite (embedded default) or PostgreSQL.

* :func:`connect` — an SQLAlchemy engine for a URL or an experiment folder, SQLite in WAL
  mode (one writer and many readers, across processes) with foreign keys and a busy
  timeout; the schema is brought up to date with the Alembic migrations.
* :func:`upgrade` / :func:`current_revision` — the migrations.
* :func:`read_table` — a fast bulk read of a ``SELECT`` into a DataFrame (``COPY`` on
  PostgreSQL, the raw cursor on SQLite).
"""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

__all__ = ["DB_FILE", "connect", "current_revision", "insert_rows", "read_table", "upgrade",
           "url_for"]

#: Name of the SQLite file inside an experiment folder.
DB_FILE = "experiment.sqlite"

_MIGRATIONS = Path(__file__).with_name("migrations")


def url_for(path_or_url) -> str:
    """The database URL of an experiment folder (``<folder>/experiment.sqlite``) or a URL.

    Examples
    --------
    >>> url_for("postgresql://u@host/db")
    'postgresql+psycopg://u@host/db'
    >>> url_for("/data/beamtime").endswith("/data/beamtime/experiment.sqlite")
    True
    """
    text = str(path_or_url)
    if "://" in text:
        if text.startswith(("postgresql://", "postgres://")):
            text = "postgresql+psycopg://" + text.split("://", 1)[1]
        return text
    return f"sqlite:///{Path(text).resolve() / DB_FILE}"


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def connect(path_or_url, *, migrate: bool = True) -> sa.Engine:
    """An engine on the experiment database, its schema migrated to the latest revision.

    Parameters
    ----------
    path_or_url : str or path-like
        Experiment folder (SQLite file inside, created with the folder) or an SQLAlchemy
        URL (``postgresql://user@host:port/db``, ``sqlite:///file``).
    migrate : bool
        Run the Alembic migrations (default). They are idempotent.

    Returns
    -------
    sqlalchemy.Engine
    """
    url = url_for(path_or_url)
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 30})
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = sa.create_engine(url, pool_pre_ping=True)
    if migrate:
        upgrade(engine)
    return engine


def _alembic_config(connection):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def upgrade(engine: sa.Engine, revision: str = "head") -> None:
    """Apply the migrations up to ``revision`` (default: the latest).

    Concurrent callers are safe: on PostgreSQL an advisory lock serialises them, on
    SQLite a lock file next to the database does.
    """
    from alembic import command

    if engine.dialect.name == "sqlite" and engine.url.database:
        import fcntl

        with open(f"{engine.url.database}.migrate-lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            with engine.begin() as conn:
                if current_revision(conn) != _head():
                    command.upgrade(_alembic_config(conn), revision)
        return
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(7316001)"))
        if current_revision(conn) != _head():
            command.upgrade(_alembic_config(conn), revision)


def _head() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    return ScriptDirectory.from_config(cfg).get_current_head()


def current_revision(conn) -> str | None:
    """The Alembic revision the database is at (None: empty database)."""
    from alembic.runtime.migration import MigrationContext

    if isinstance(conn, sa.Engine):
        with conn.connect() as c:
            return MigrationContext.configure(c).get_current_revision()
    return MigrationContext.configure(conn).get_current_revision()


def read_table(engine: sa.Engine, query, dtypes: dict | None = None) -> pd.DataFrame:
    """Run a ``SELECT`` and return a DataFrame, fast for millions of rows.

    PostgreSQL streams the result with ``COPY ... TO STDOUT`` (CSV, parsed by pandas' C
    reader); SQLite reads the raw DB-API cursor into columns.

    Parameters
    ----------
    engine : sqlalchemy.Engine
    query : sqlalchemy.sql.Select
    dtypes : dict, optional
        Column -> dtype applied to the result (bool columns arrive as 0/1 on SQLite).

    Returns
    -------
    DataFrame
        One column per selected column, named by its label.
    """
    names = [c.name for c in query.selected_columns]
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            sql = str(query.compile(dialect=conn.dialect,
                                    compile_kwargs={"literal_binds": True}))
            raw = conn.connection.driver_connection
            buf = io.BytesIO()
            with raw.cursor() as cur:
                with cur.copy(f"COPY ({sql}) TO STDOUT WITH (FORMAT csv)") as copy:
                    for chunk in copy:
                        buf.write(chunk)
            buf.seek(0)
            df = pd.read_csv(buf, names=names, header=None, keep_default_na=False,
                             na_values={n: [""] for n in names}, true_values=["t"],
                             false_values=["f"], low_memory=False)
        else:
            result = conn.execute(query)
            rows = result.cursor.fetchall() if result.cursor is not None else []
            df = pd.DataFrame.from_records(rows, columns=names, coerce_float=True)
    if dtypes:
        for col, dt in dtypes.items():
            if col not in df.columns:
                continue
            if dt == "bool":
                df[col] = df[col].astype(bool)
            elif dt == "object":
                s = df[col].astype(object)
                df[col] = s.where(s.notna(), "").astype(str).astype(object)
            else:
                df[col] = df[col].astype(dt)
    return df


def _column_values(series: pd.Series) -> list:
    """Python values of a column, NaN / NA as None (NULL)."""
    if series.dtype.kind == "f":
        return series.astype(object).where(series.notna(), None).tolist()
    if series.dtype == object or pd.api.types.is_string_dtype(series.dtype):
        values = series.astype(object)
        return values.where(values.notna(), None).tolist()
    return series.tolist()


def insert_rows(conn: sa.Connection, table: sa.Table, df: pd.DataFrame) -> int:
    """Bulk-insert the rows of ``df`` (columns named as ``table``'s) inside ``conn``'s transaction.

    SQLite: one ``executemany`` on the raw cursor; PostgreSQL: ``COPY ... FROM STDIN``.
    NaN becomes NULL. Returns the number of rows.
    """
    if not len(df):
        return 0
    cols = list(df.columns)
    unknown = [c for c in cols if c not in table.c]
    if unknown:
        raise KeyError(f"table {table.name} has no column(s) {unknown}")
    rows = list(zip(*(_column_values(df[c]) for c in cols), strict=True))
    raw = conn.connection.driver_connection
    quoted = ", ".join(f'"{c}"' for c in cols)
    if conn.dialect.name == "postgresql":
        with raw.cursor() as cur:
            with cur.copy(f'COPY "{table.name}" ({quoted}) FROM STDIN') as copy:
                for row in rows:
                    copy.write_row(row)
    elif conn.dialect.name == "sqlite":
        marks = ", ".join("?" for _ in cols)
        cur = raw.cursor()
        try:
            cur.executemany(f'INSERT INTO "{table.name}" ({quoted}) VALUES ({marks})', rows)
        finally:
            cur.close()
    else:
        conn.execute(table.insert(), [dict(zip(cols, r, strict=True)) for r in rows])
    return len(rows)
