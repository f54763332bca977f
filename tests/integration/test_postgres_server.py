"""The throwaway PostgreSQL server used by the registry's PostgreSQL tests: it starts, takes
writes and reads over asyncpg, and on exit its process is gone, its port free, its files removed."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from support.databases import postgres_server

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_postgres_server_serves_and_cleans_up():
    with postgres_server() as url:
        parsed = make_url(url)
        assert parsed.drivername == "postgresql+asyncpg"
        assert (parsed.host, parsed.username, parsed.database) == ("127.0.0.1", "postgres", "registry")
        port = parsed.port

        conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
        try:
            await conn.execute("CREATE TABLE models (name text PRIMARY KEY, version integer NOT NULL)")
            await conn.execute("INSERT INTO models VALUES ($1, $2)", "gemma-3-270m", 3)
            row = await conn.fetchrow("SELECT name, version FROM models")
            assert tuple(row) == ("gemma-3-270m", 3)
            assert await conn.fetchval("SHOW fsync") == "on"
            assert await conn.fetchval("SHOW server_encoding") == "UTF8"
            data_dir = Path(await conn.fetchval("SHOW data_directory"))
            postmaster_pid = int((data_dir / "postmaster.pid").read_text().splitlines()[0])
        finally:
            await conn.close()

    with pytest.raises(ProcessLookupError):
        os.kill(postmaster_pid, 0)
    assert not data_dir.parent.exists()
    with socket.socket() as s:  # nothing listens there any more (SO_REUSEADDR: a TIME_WAIT is not a listener)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()
