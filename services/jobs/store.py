"""Files, batches and their items in the registry's database (SQLite or PostgreSQL,
services/registry/database.py: every write is durable when its commit returns).

A result is recorded once: an item goes from pending to succeeded or failed in one
statement that only matches a pending item, so a request repeated after a crash (it was
in flight, its result not yet recorded) can never overwrite or duplicate a result that
was."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.engine import Row

from services.jobs import batches as b
from services.jobs import schema
from services.registry.database import Database
from services.runtime.identity import Caller

PENDING, SUCCEEDED, FAILED = "pending", "succeeded", "failed"
FILE_COLUMNS = [c for c in schema.files.c if c.name != "content"]


@dataclass(frozen=True)
class Batch:
    id: str
    owner: str
    caller: Caller
    status: str
    body: dict[str, Any]


def _batch(row: Row) -> Batch:
    # The owner's identity is kept as the headers that carry it (identity.py says how).
    caller = Caller.from_headers(json.loads(row.caller))
    return Batch(row.id, row.owner, caller, row.status, json.loads(row.body))


async def _after(connection, table, after: str, newest_first: bool):
    """The keyset condition for the page that follows row `after` in (created_at, id)
    order, newest or oldest first; None for the first page (or an id that is not there)."""
    c = table.c
    if (
        not after
        or (cursor := (await connection.execute(select(c.created_at, c.id).where(c.id == after))).first()) is None
    ):
        return None
    if newest_first:
        return (c.created_at < cursor.created_at) | ((c.created_at == cursor.created_at) & (c.id < cursor.id))
    return (c.created_at > cursor.created_at) | ((c.created_at == cursor.created_at) & (c.id > cursor.id))


class BatchStore:
    def __init__(self, database: Database, clock: Callable[[], float] = time.time) -> None:
        self.db = database
        self.clock = clock

    def now(self) -> int:
        return int(self.clock())

    # Files

    async def add_file(self, owner: str, purpose: str, filename: str, content: bytes) -> Row:
        file_id = b.new_id("file-")
        async with self.db.write() as connection:
            await connection.execute(
                insert(schema.files).values(
                    id=file_id,
                    owner=owner,
                    purpose=purpose,
                    filename=filename,
                    bytes=len(content),
                    created_at=self.now(),
                    content=content,
                )
            )
        return await self.file(owner, file_id)

    async def file(self, owner: str, file_id: str) -> Row | None:
        async with self.db.read() as connection:
            query = select(*FILE_COLUMNS).where(schema.files.c.id == file_id, schema.files.c.owner == owner)
            return (await connection.execute(query)).first()

    async def content(self, owner: str, file_id: str) -> bytes | None:
        async with self.db.read() as connection:
            query = select(schema.files.c.content).where(schema.files.c.id == file_id, schema.files.c.owner == owner)
            return (await connection.execute(query)).scalar()

    async def files(self, owner: str, purpose: str, limit: int, after: str, newest_first: bool) -> list[Row]:
        """A page of the owner's files (by creation, then id), after the file `after`."""
        f = schema.files.c
        query = select(*FILE_COLUMNS).where(f.owner == owner)
        if purpose:
            query = query.where(f.purpose == purpose)
        async with self.db.read() as connection:
            if (following := await _after(connection, schema.files, after, newest_first)) is not None:
                query = query.where(following)
            order = (f.created_at.desc(), f.id.desc()) if newest_first else (f.created_at, f.id)
            return list((await connection.execute(query.order_by(*order).limit(limit))).all())

    async def delete_file(self, owner: str, file_id: str) -> bool:
        async with self.db.write() as connection:
            query = delete(schema.files).where(schema.files.c.id == file_id, schema.files.c.owner == owner)
            return (await connection.execute(query)).rowcount > 0

    # Batches

    async def add_batch(self, caller: Caller, request: b.CreateBatch, lines: list[b.Line], errors: list[dict]) -> Batch:
        """The batch and its items, in one transaction: a batch is never seen half-written."""
        batch_id = b.new_id("batch_")
        body = b.new_batch(batch_id, request, self.now(), errors)
        async with self.db.write() as connection:
            await connection.execute(
                insert(schema.batches).values(
                    id=batch_id,
                    owner=caller.principal,
                    caller=json.dumps(caller.headers()),
                    status=body["status"],
                    created_at=body["created_at"],
                    body=json.dumps(body),
                )
            )
            if lines:
                rows = [
                    {
                        "batch_id": batch_id,
                        "line": line.line,
                        "custom_id": line.custom_id,
                        "url": line.url,
                        "body": json.dumps(line.body),
                        "state": PENDING,
                    }
                    for line in lines
                ]
                await connection.execute(insert(schema.items), rows)
        return await self.batch(caller.principal, batch_id)

    async def batch(self, owner: str | None, batch_id: str) -> Batch | None:
        """A batch (the owner's, or anyone's with owner None), with its request counts."""
        query = select(schema.batches).where(schema.batches.c.id == batch_id)
        if owner is not None:
            query = query.where(schema.batches.c.owner == owner)
        async with self.db.read() as connection:
            row = (await connection.execute(query)).first()
            if row is None:
                return None
            batch = _batch(row)
            batch.body["request_counts"] = await self._counts(connection, batch_id)
        return batch

    async def _counts(self, connection, batch_id: str) -> dict[str, int]:
        i = schema.items.c
        query = select(i.state, func.count()).where(i.batch_id == batch_id).group_by(i.state)
        counts = dict((await connection.execute(query)).all())
        return {"total": sum(counts.values()), "completed": counts.get(SUCCEEDED, 0), "failed": counts.get(FAILED, 0)}

    async def batches(self, owner: str, limit: int, after: str) -> list[Batch]:
        c = schema.batches.c
        query = select(c.id).where(c.owner == owner)
        async with self.db.read() as connection:
            if (following := await _after(connection, schema.batches, after, newest_first=True)) is not None:
                query = query.where(following)
            ids = (await connection.execute(query.order_by(c.created_at.desc(), c.id.desc()).limit(limit))).scalars()
            ids = list(ids)
        return [batch for batch_id in ids if (batch := await self.batch(owner, batch_id)) is not None]

    async def active(self) -> list[Batch]:
        """Batches the runner has work on, oldest first."""
        c = schema.batches.c
        query = select(c.id).where(c.status.in_(b.ACTIVE)).order_by(c.created_at, c.id)
        async with self.db.read() as connection:
            ids = list((await connection.execute(query)).scalars())
        return [batch for batch_id in ids if (batch := await self.batch(None, batch_id)) is not None]

    async def move(self, batch_id: str, status: str, allowed_from: tuple[str, ...]) -> Batch | None:
        """Set a batch's status (and its timestamp) if it is in one of `allowed_from`; the
        batch as it is afterwards, None if there is no such batch."""
        async with self.db.write() as connection:
            row = (await connection.execute(select(schema.batches).where(schema.batches.c.id == batch_id))).first()
            if row is None:
                return None
            if row.status in allowed_from:
                body = json.loads(row.body)
                body["status"] = status
                body[b.STATUS_TIME[status]] = self.now()
                await connection.execute(
                    update(schema.batches)
                    .where(schema.batches.c.id == batch_id)
                    .values(status=status, body=json.dumps(body))
                )
        return await self.batch(None, batch_id)

    # Items

    async def pending(self, batch_id: str, after_line: int, limit: int) -> list[b.Line]:
        i = schema.items.c
        query = (
            select(i.line, i.custom_id, i.url, i.body)
            .where(i.batch_id == batch_id, i.state == PENDING, i.line > after_line)
            .order_by(i.line)
            .limit(limit)
        )
        async with self.db.read() as connection:
            rows = (await connection.execute(query)).all()
        return [b.Line(r.line, r.custom_id, r.url, json.loads(r.body)) for r in rows]

    async def record(self, batch_id: str, line: int, succeeded: bool, result: dict[str, Any]) -> bool:
        """Record an item's result; False when it was recorded already (nothing changes)."""
        i = schema.items.c
        async with self.db.write() as connection:
            outcome = await connection.execute(
                update(schema.items)
                .where(i.batch_id == batch_id, i.line == line, i.state == PENDING)
                .values(state=SUCCEEDED if succeeded else FAILED, result=json.dumps(result))
            )
        return outcome.rowcount > 0

    async def results(self, batch_id: str, state: str) -> list[str]:
        """The recorded results in one state, in the input's line order."""
        i = schema.items.c
        query = select(i.result).where(i.batch_id == batch_id, i.state == state).order_by(i.line)
        async with self.db.read() as connection:
            return list((await connection.execute(query)).scalars())

    async def finish(self, batch: Batch, status: str) -> Batch | None:
        """Write the output file (the 2xx answers) and the error file (the others), and
        give the batch its final status, in one transaction."""
        output = await self.results(batch.id, SUCCEEDED)
        errors = await self.results(batch.id, FAILED)
        file_ids: dict[str, str | None] = {"output_file_id": None, "error_file_id": None}
        async with self.db.write() as connection:
            for key, lines, name in (("output_file_id", output, "output"), ("error_file_id", errors, "errors")):
                if not lines:
                    continue
                content = "".join(f"{line}\n" for line in lines).encode()
                file_ids[key] = b.new_id("file-")
                await connection.execute(
                    insert(schema.files).values(
                        id=file_ids[key],
                        owner=batch.owner,
                        purpose=b.OUTPUT_PURPOSE,
                        filename=f"{batch.id}_{name}.jsonl",
                        bytes=len(content),
                        created_at=self.now(),
                        content=content,
                    )
                )
            body = {**batch.body, **file_ids, "status": status, b.STATUS_TIME[status]: self.now()}
            await connection.execute(
                update(schema.batches)
                .where(schema.batches.c.id == batch.id)
                .values(status=status, body=json.dumps(body))
            )
        return await self.batch(None, batch.id)
