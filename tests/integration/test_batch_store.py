"""The jobs service's store on both databases the registry runs on (SQLite, and a real
PostgreSQL server of the test's own): a batch run by a runner that dies part-way is
finished by a new runner on a new connection, every result once; files are the
owner's, listed in pages."""

from __future__ import annotations

import asyncio
import json

import pytest

from services.jobs import batches as b
from services.jobs.runner import Answer, BatchRunner
from services.jobs.store import BatchStore
from services.registry.database import Database, database_url
from services.runtime.identity import Caller
from support.databases import DATABASES, database

OWNER = Caller("apiKeys/owner", "user", frozenset({"all-minilm-l6-v2"}))


def requests(count: int) -> bytes:
    rows = (
        {"custom_id": f"r{i}", "method": "POST", "url": "/v1/embeddings", "body": {"input": f"text {i}"}}
        for i in range(count)
    )
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


async def opened(url: str, data_dir) -> Database:
    db = Database(database_url(url, data_dir))
    await db.migrate()
    return db


@pytest.mark.parametrize("kind", DATABASES)
async def test_a_batch_survives_its_runner_and_its_connection(kind):
    with database(kind) as (url, data_dir):
        first_db = await opened(url, data_dir)
        store = BatchStore(first_db)
        upload = await store.add_file(OWNER.principal, "batch", "in.jsonl", requests(30))
        lines, errors = b.parse_input(requests(30), "/v1/embeddings")
        batch = await store.add_batch(OWNER, b.CreateBatch(upload.id, "/v1/embeddings", "24h", None), lines, errors)
        sent: list[str] = []

        async def slow(caller: Caller, url: str, body: dict) -> Answer:
            assert caller == OWNER  # the owner's identity survives the database round trip
            sent.append(body["input"])
            await asyncio.sleep(0.01)
            return Answer(200, {"embedded": body["input"]}, "id")

        task = asyncio.create_task(BatchRunner(store, slow).drive(batch))
        while len(sent) < 10:
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await first_db.close()

        second_db = await opened(url, data_dir)  # a new process would open it afresh
        try:
            store = BatchStore(second_db)
            [resumed] = await store.active()
            assert resumed.status == b.IN_PROGRESS and resumed.caller == OWNER
            recorded = resumed.body["request_counts"]["completed"]
            sent_before = len(sent)
            done = await BatchRunner(store, slow).drive(resumed)
            assert done.status == b.COMPLETED and done.body["request_counts"]["completed"] == 30
            content = await store.content(OWNER.principal, done.body["output_file_id"])
            output = [json.loads(line) for line in content.splitlines()]
            assert [x["response"]["body"]["embedded"] for x in output] == [f"text {i}" for i in range(30)]
            # Only the requests with no result were sent again; at most the two in flight twice.
            assert len(sent) - sent_before == 30 - recorded and len(sent) <= 30 + 2
        finally:
            await second_db.close()


@pytest.mark.parametrize("kind", DATABASES)
async def test_files_are_their_owners_and_listed_in_pages(kind):
    with database(kind) as (url, data_dir):
        db = await opened(url, data_dir)
        try:
            store = BatchStore(db)
            ids = [(await store.add_file("alice", "batch", f"{n}.jsonl", b"{}\n")).id for n in range(5)]
            await store.add_file("bob", "batch", "bob.jsonl", b"{}\n")
            newest_first = [row.id for row in await store.files("alice", "", 10, "", True)]
            assert sorted(newest_first) == sorted(ids) and len(newest_first) == 5
            first = await store.files("alice", "", 2, "", True)
            rest = await store.files("alice", "", 10, first[-1].id, True)
            assert [r.id for r in first + rest] == newest_first
            assert await store.file("bob", ids[0]) is None and await store.content("bob", ids[0]) is None
            assert not await store.delete_file("bob", ids[0])
            assert await store.delete_file("alice", ids[0]) and await store.file("alice", ids[0]) is None
        finally:
            await db.close()
