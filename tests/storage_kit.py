"""Aids for storage tests that run on both engines (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import sqlite3

import asyncpg

from storage.db import Database

#: What a statement the engine refuses raises, on either engine.
DB_ERRORS = (sqlite3.DatabaseError, asyncpg.PostgresError)


async def table_names(db: Database) -> set[str]:
    """The user tables of the database."""
    if db.dialect == "sqlite":
        rows = await db.fetchall("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {r[0] for r in rows} - {"sqlite_sequence"}
    rows = await db.fetchall("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
    return {r[0] for r in rows}


async def columns(db: Database) -> dict[str, list[str]]:
    """Each table's column names, in declaration order."""
    out: dict[str, list[str]] = {}
    for table in sorted(await table_names(db)):
        if db.dialect == "sqlite":
            rows = await db.fetchall(f"PRAGMA table_info({table})")
            out[table] = [r["name"] for r in rows]
        else:
            rows = await db.fetchall(
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_schema = 'public' AND table_name = ? ORDER BY ordinal_position",
                (table,),
            )
            out[table] = [r[0] for r in rows]
    return out


async def wait_until_sound(db: Database, *, within: float = 30.0) -> None:
    """The database is consistent and no dead client's transaction is still open.

    SQLite: its own integrity check. PostgreSQL: the server has rolled back the sessions
    of killed clients (it notices a closed socket on its own, a moment after the kill);
    until then their row locks would make a claim skip rows it should take.
    """
    if db.dialect == "sqlite":
        assert await db.integrity_check() == "ok"  # type: ignore[attr-defined]
        return
    deadline = asyncio.get_running_loop().time() + within
    while True:
        row = await db.fetchone(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid() AND state LIKE 'idle in transaction%'"
        )
        if row is not None and row[0] == 0:
            return
        assert asyncio.get_running_loop().time() < deadline, "a killed client's transaction stayed open"
        await asyncio.sleep(0.05)


class CuttableLink:
    """A TCP relay on loopback between a client and a database server, which a test can cut.

    ``cut()`` drops every relayed connection and refuses new ones (the server "goes away":
    a failover, a restart, a network partition); ``restore()`` listens again on the same port.
    """

    def __init__(self, target_port: int) -> None:
        self._target = target_port
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    async def start(self) -> CuttableLink:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def url(self, url: str) -> str:
        """``url`` with its port replaced by this link's."""
        return url.replace(f":{self._target}/", f":{self.port}/", 1)

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def restore(self) -> None:
        await self.start()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}
