"""The registry's database: SQLite under the data directory by default, PostgreSQL when
REGISTRY_DATABASE_URL names one. Opening it migrates the schema to the latest version.

Durability: SQLite runs in WAL mode with synchronous=FULL, so a write is on disk when
its commit returns (it survives kill -9 and power loss); PostgreSQL commits are durable
with its defaults. Writers are serialized (SQLite: BEGIN IMMEDIATE; PostgreSQL: a
transaction-scoped advisory lock), so the change feed's sequence numbers are handed out
in commit order and a watcher that has seen sequence N has seen everything before it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
WRITE_LOCK = 0x1F_E6_15_7E  # any constant shared by every registry replica
WRITE = "infermesh_write"


def database_url(url: str, data_dir: Path) -> str:
    """The async SQLAlchemy URL for a configured URL (empty: SQLite in `data_dir`)."""
    if not url:
        data_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite+aiosqlite:///{(data_dir / 'registry.db').resolve()}"
    parsed = make_url(url)
    driver = {"postgresql": "postgresql+asyncpg", "postgres": "postgresql+asyncpg", "sqlite": "sqlite+aiosqlite"}
    if parsed.drivername in driver:
        parsed = parsed.set(drivername=driver[parsed.drivername])
    return parsed.render_as_string(hide_password=False)


class Database:
    def __init__(self, url: str) -> None:
        self.engine: AsyncEngine = create_async_engine(url, pool_pre_ping=True)
        self.dialect = self.engine.dialect.name
        if self.dialect == "sqlite":
            _configure_sqlite(self.engine)
        self._writer = self.engine.execution_options(**{WRITE: True})

    async def migrate(self) -> None:
        """Bring the schema to the latest migration (replicas starting together take turns)."""
        async with self._writer.begin() as connection:
            await self._serialize(connection)
            await connection.run_sync(_upgrade)

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A transaction no other writer runs beside; it commits when the block ends."""
        async with self._writer.begin() as connection:
            await self._serialize(connection)
            yield connection

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.connect() as connection:
            yield connection

    async def _serialize(self, connection: AsyncConnection) -> None:
        if self.dialect == "postgresql":
            await connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": WRITE_LOCK})

    async def close(self) -> None:
        await self.engine.dispose()


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def on_connect(connection, _record) -> None:
        # The driver's own BEGIN would be DEFERRED; `on_begin` issues the right one.
        connection.isolation_level = None
        cursor = connection.cursor()
        for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON", "busy_timeout=30000"):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def on_begin(connection) -> None:
        # A writer takes the write lock up front: a DEFERRED transaction that reads and
        # then writes can fail with "database is locked" when another writer got there first.
        connection.exec_driver_sql("BEGIN IMMEDIATE" if connection.get_execution_options().get(WRITE) else "BEGIN")


def _upgrade(connection) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")
