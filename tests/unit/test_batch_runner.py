"""The batch runner on a fake mesh and a hand-moved clock (its store is a real SQLite
file, as the jobs service's is): every request answered and recorded once, in line
order; overload answers retried, caller errors not; a crash mid-run resumed by a new
runner without losing or repeating a recorded result; cancellation and expiry; never
more than `concurrency` requests in flight."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import pytest

from services.jobs import batches as b
from services.jobs.runner import Answer, BatchRunner, Unreachable
from services.jobs.store import BatchStore
from services.registry.database import Database, database_url
from services.runtime.errors import InvalidArgument
from services.runtime.identity import Caller

OWNER = Caller("apiKeys/alice", "user", None)
START = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = START
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


class FakeMesh:
    """Answers each request with `answer(custom_id, attempt)`, counting what it was sent."""

    def __init__(self, answer: Callable[[str, int], Answer] | None = None, delay: float = 0.0) -> None:
        self.answer = answer or (lambda custom_id, attempt: Answer(200, {"echo": custom_id}, f"req-{custom_id}"))
        self.delay = delay
        self.sent: list[str] = []
        self.callers: set[Caller] = set()
        self.in_flight = self.most_in_flight = 0

    async def __call__(self, caller: Caller, url: str, body: dict) -> Answer:
        custom_id = body["custom_id_echo"]
        self.sent.append(custom_id)
        self.callers.add(caller)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
            return self.answer(custom_id, self.sent.count(custom_id))
        finally:
            self.in_flight -= 1


@pytest.fixture
async def store(tmp_path):
    database = Database(database_url("", tmp_path))
    await database.migrate()
    clock = Clock()
    yield BatchStore(database, clock)
    await database.close()


def jsonl(count: int, url: str = "/v1/embeddings") -> bytes:
    rows = (
        {"custom_id": f"r{i}", "method": "POST", "url": url, "body": {"model": "m", "custom_id_echo": f"r{i}"}}
        for i in range(count)
    )
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


async def new_batch(store: BatchStore, count: int) -> b.CreateBatch:
    upload = await store.add_file(OWNER.principal, "batch", "in.jsonl", jsonl(count))
    create = b.CreateBatch(upload.id, "/v1/embeddings", "24h", None)
    lines, errors = b.parse_input(jsonl(count), "/v1/embeddings")
    assert not errors
    return await store.add_batch(OWNER, create, lines, errors)


def runner(store: BatchStore, mesh: FakeMesh, concurrency: int = 2) -> BatchRunner:
    clock = store.clock
    return BatchRunner(store, mesh, concurrency=concurrency, poll_seconds=1.0, sleep=clock.sleep, clock=clock)


async def file_lines(store: BatchStore, file_id: str | None) -> list[dict]:
    if file_id is None:
        return []
    return [json.loads(line) for line in (await store.content(OWNER.principal, file_id)).decode().splitlines()]


async def test_a_batch_answers_every_request_once_in_line_order(store):
    batch = await new_batch(store, 25)
    mesh = FakeMesh(delay=0.001)
    done = await runner(store, mesh, concurrency=3).drive(batch)
    assert done.status == b.COMPLETED
    assert done.body["request_counts"] == {"total": 25, "completed": 25, "failed": 0}
    for stamp in ("in_progress_at", "finalizing_at", "completed_at"):
        assert done.body[stamp] is not None
    output = await file_lines(store, done.body["output_file_id"])
    assert [line["custom_id"] for line in output] == [f"r{i}" for i in range(25)]
    assert output[3]["response"] == {"status_code": 200, "request_id": "req-r3", "body": {"echo": "r3"}}
    assert done.body["error_file_id"] is None
    assert sorted(mesh.sent) == sorted(f"r{i}" for i in range(25))  # each sent once
    assert mesh.callers == {OWNER}  # on the owner's behalf
    assert mesh.most_in_flight == 3


async def test_caller_errors_go_to_the_error_file_and_are_not_retried(store):
    batch = await new_batch(store, 4)

    def answer(custom_id: str, attempt: int) -> Answer:
        if custom_id == "r2":
            return Answer(400, {"error": {"message": "bad", "param": "input"}}, "req-r2")
        return Answer(200, {"ok": True}, "req")

    mesh = FakeMesh(answer)
    done = await runner(store, mesh).drive(batch)
    assert done.body["request_counts"] == {"total": 4, "completed": 3, "failed": 1}
    errors = await file_lines(store, done.body["error_file_id"])
    assert [(e["custom_id"], e["response"]["status_code"]) for e in errors] == [("r2", 400)]
    assert mesh.sent.count("r2") == 1


async def test_overload_and_no_answer_are_retried_with_growing_pauses(store):
    batch = await new_batch(store, 1)
    replies = iter([Answer(503, {"error": {}}), Answer(429, {"error": {}}), None, Answer(200, {"ok": 1})])

    async def send(caller, url, body):
        reply = next(replies)
        if reply is None:
            raise Unreachable("connection refused")
        return reply

    clock = store.clock
    done = await BatchRunner(store, send, sleep=clock.sleep, clock=clock).drive(batch)
    assert done.body["request_counts"]["completed"] == 1
    assert clock.slept == [1.0, 2.0, 4.0]


async def test_a_request_the_mesh_never_answers_is_recorded_as_failed_after_the_retries(store):
    batch = await new_batch(store, 1)

    async def send(caller, url, body):
        raise Unreachable("connection refused")

    clock = store.clock
    done = await BatchRunner(store, send, retry_delays=(1.0, 2.0), sleep=clock.sleep, clock=clock).drive(batch)
    errors = await file_lines(store, done.body["error_file_id"])
    assert errors[0]["response"]["status_code"] == 503
    assert "could not be reached" in errors[0]["response"]["body"]["error"]["message"]


async def test_a_crash_mid_run_loses_and_repeats_no_recorded_result(store):
    """The first runner dies (its task cancelled, as kill -9 would end it) with requests
    in flight; a new runner on the same database finishes the batch."""
    batch = await new_batch(store, 40)
    first = FakeMesh(delay=0.002)
    task = asyncio.create_task(runner(store, first).drive(batch))
    while len(first.sent) < 15:
        await asyncio.sleep(0.001)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    recorded = (await store.batch(None, batch.id)).body["request_counts"]["completed"]
    assert 0 < recorded < 40

    second = FakeMesh()
    resumed = (await store.active())[0]
    done = await runner(store, second).drive(resumed)
    output = await file_lines(store, done.body["output_file_id"])
    assert [line["custom_id"] for line in output] == [f"r{i}" for i in range(40)]
    # Only what had no recorded result was sent again: at most the requests in flight.
    assert len(second.sent) == 40 - recorded
    assert len(first.sent) + len(second.sent) <= 40 + 2
    assert not set(second.sent) & {line["custom_id"] for line in output[:recorded]}


async def test_cancelling_stops_sending_within_a_poll_and_keeps_what_was_answered(store):
    batch = await new_batch(store, 30)
    mesh = FakeMesh(delay=0.001)
    clock = store.clock
    work = BatchRunner(store, mesh, concurrency=1, poll_seconds=1.0, sleep=clock.sleep, clock=clock)

    def answer(custom_id: str, attempt: int) -> Answer:
        clock.now += 0.25  # each answer takes a quarter of a poll
        return Answer(200, {"ok": custom_id})

    mesh.answer = answer
    task = asyncio.create_task(work.drive(batch))
    while len(mesh.sent) < 5:
        await asyncio.sleep(0.001)
    assert (await store.move(batch.id, b.CANCELLING, (b.VALIDATING, b.IN_PROGRESS))).status == b.CANCELLING
    done = await task
    assert done.status == b.CANCELLED and done.body["cancelled_at"] is not None
    answered = done.body["request_counts"]["completed"]
    assert 5 <= answered <= 5 + 4 + 1  # within one poll (four answers) of the cancel
    assert len(await file_lines(store, done.body["output_file_id"])) == answered


async def test_a_batch_whose_window_closes_expires_with_the_rest_in_the_error_file(store):
    batch = await new_batch(store, 6)
    clock = store.clock

    def answer(custom_id: str, attempt: int) -> Answer:
        if custom_id == "r1":
            clock.now = START + b.WINDOW_SECONDS + 1
        return Answer(200, {"ok": custom_id})

    done = await BatchRunner(store, FakeMesh(answer), concurrency=1, sleep=clock.sleep, clock=clock).drive(batch)
    assert done.status == b.EXPIRED
    output = await file_lines(store, done.body["output_file_id"])
    errors = await file_lines(store, done.body["error_file_id"])
    assert [line["custom_id"] for line in output] == ["r0", "r1"]
    assert [line["custom_id"] for line in errors] == ["r2", "r3", "r4", "r5"]
    assert {line["error"]["code"] for line in errors} == {"batch_expired"}


async def test_a_result_is_recorded_only_once(store):
    batch = await new_batch(store, 1)
    first = b.result_line("r0", "a", 200, {"n": 1})
    assert await store.record(batch.id, 1, True, first)
    assert not await store.record(batch.id, 1, True, b.result_line("r0", "b", 200, {"n": 2}))
    assert [json.loads(r) for r in await store.results(batch.id, "succeeded")] == [first]


def test_invalid_lines_are_named_by_line_number():
    rows = [
        '{"custom_id": "a", "method": "POST", "url": "/v1/embeddings", "body": {}}',
        "not json",
        '{"custom_id": "a", "method": "POST", "url": "/v1/embeddings", "body": {}}',
        '{"custom_id": "b", "method": "GET", "url": "/v1/embeddings", "body": {}}',
        '{"custom_id": "c", "method": "POST", "url": "/v1/chat/completions", "body": {}}',
        '{"custom_id": "d", "method": "POST", "url": "/v1/embeddings", "body": {"stream": true}}',
        '{"custom_id": "e", "method": "POST", "url": "/v1/embeddings", "body": {}, "extra": 1}',
    ]
    lines, errors = b.parse_input("\n".join(rows).encode(), "/v1/embeddings")
    assert [line.custom_id for line in lines] == ["a"]
    assert [(e["line"], e["code"]) for e in errors] == [
        (2, "invalid_json_line"),
        (3, "duplicate_custom_id"),
        (4, "invalid_method"),
        (5, "mismatched_endpoint"),
        (6, "invalid_request"),
        (7, "invalid_request"),
    ]


def test_a_create_request_names_what_it_cannot_honour():
    endpoints = {"/v1/embeddings"}
    with pytest.raises(InvalidArgument, match="completion_window") as window:
        b.parse_create(b'{"input_file_id": "f", "endpoint": "/v1/embeddings", "completion_window": "1h"}', endpoints)
    assert window.value.metadata["param"] == "completion_window"
    with pytest.raises(InvalidArgument, match="Unrecognized request argument supplied: output_expires_after"):
        b.parse_create(
            b'{"input_file_id": "f", "endpoint": "/v1/embeddings", "completion_window": "24h",'
            b' "output_expires_after": {"anchor": "created_at", "seconds": 3600}}',
            endpoints,
        )
    with pytest.raises(InvalidArgument, match="not supported"):
        b.parse_create(b'{"input_file_id": "f", "endpoint": "/v1/responses", "completion_window": "24h"}', endpoints)
