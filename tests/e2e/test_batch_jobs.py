"""Asynchronous batch jobs through the front door with the official OpenAI SDK's `files`
and `batches` resources: a 200-request batch completes with every result although the
jobs service running it is killed with SIGKILL halfway (a new one resumes it from the
registry's database, losing and repeating no recorded result); the native API's
endpoints run in batches too; bad input files fail with their lines named; a batch is
cancelled; unknown ids are OpenAI's 404s."""

from __future__ import annotations

import io
import json
import os
import signal
import time

import openai
import pytest

from support.metrics import metric
from support.polling import eventually

CHAT_MODEL, EMBED_MODEL = "gemma-3-270m", "all-minilm-l6-v2"
CHAT = "/infermesh.openai.v1.OpenAIService/CreateChatCompletion"
DONE = ("completed", "failed", "cancelled", "expired")


@pytest.fixture(scope="module")
def client(base_url) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=60)


def upload(client: openai.OpenAI, rows: list[dict]) -> str:
    content = "".join(json.dumps(row) + "\n" for row in rows).encode()
    return client.files.create(file=("requests.jsonl", io.BytesIO(content)), purpose="batch").id


def lines(client: openai.OpenAI, file_id: str | None) -> list[dict]:
    return [] if file_id is None else [json.loads(x) for x in client.files.content(file_id).text.splitlines()]


def finished(client: openai.OpenAI, batch_id: str, timeout: float = 300):
    return eventually(
        lambda: client.batches.retrieve(batch_id),
        until=lambda batch: batch.status in DONE,
        timeout=timeout,
        interval=0.5,
        what=f"batch {batch_id} finishing",
        ignoring=(openai.APIConnectionError, openai.InternalServerError),
    )


def chat_request(index: int, topic: str = "Count from {index} to {end}.", max_tokens: int = 4) -> dict:
    """A short chat; each test asks its own questions (the router's response cache would
    answer a repeated one at once)."""
    question = topic.format(index=index, end=index + 3)
    body = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": question}], "max_tokens": max_tokens}
    return {"custom_id": f"chat-{index}", "method": "POST", "url": "/v1/chat/completions", "body": body}


def test_a_200_request_batch_completes_with_every_result_across_a_kill_9_of_the_jobs_service(client, mesh):
    router_metrics = mesh.settings.router_metrics_port
    answered_before = metric(router_metrics, "infermesh_grpc_requests_total", method=CHAT, code="OK")
    input_id = upload(client, [chat_request(i) for i in range(200)])
    batch = client.batches.create(
        input_file_id=input_id, endpoint="/v1/chat/completions", completion_window="24h", metadata={"run": "kill-9"}
    )
    assert batch.status == "validating" and batch.metadata == {"run": "kill-9"}

    # Progress shows in the batch's status; kill the service running it part-way.
    def progress() -> int:
        return client.batches.retrieve(batch.id).request_counts.completed

    before_kill = eventually(progress, until=lambda done: done >= 40, timeout=240, interval=0.2, what="40 answered")
    jobs = mesh.child("jobs")
    os.kill(jobs.process.pid, signal.SIGKILL)
    jobs.process.wait()
    killed_at = time.monotonic()
    mesh.restart("jobs")
    mesh.wait_ready()
    # Nothing recorded before the kill is lost: the new process reports it at once.
    after_restart = eventually(progress, timeout=60, interval=0.2, what="the restarted jobs service answering",
                               ignoring=(openai.APIConnectionError, openai.InternalServerError))  # fmt: skip
    assert after_restart >= before_kill
    done = finished(client, batch.id)
    print(
        f"\nbatch of 200 chats: {before_kill} answered before kill -9, the rest after a restart "
        f"({time.monotonic() - killed_at:.1f} s from the kill to completion)"
    )
    assert done.status == "completed", done
    assert done.request_counts.total == 200 and done.request_counts.completed == 200 and done.request_counts.failed == 0
    assert done.in_progress_at and done.finalizing_at and done.completed_at and done.error_file_id is None
    output = lines(client, done.output_file_id)
    assert [line["custom_id"] for line in output] == [f"chat-{i}" for i in range(200)]  # every one, once, in order
    for line in output:
        assert line["response"]["status_code"] == 200 and line["error"] is None
        completion = line["response"]["body"]
        assert completion["object"] == "chat.completion" and completion["model"] == CHAT_MODEL
        assert completion["choices"][0]["message"]["content"] and completion["usage"]["completion_tokens"] <= 4
    # At most the requests in flight at the kill (the batch's concurrency, 2) were answered
    # twice (a call the mesh refused as overloaded and the runner sent again is not counted).
    answered = metric(router_metrics, "infermesh_grpc_requests_total", method=CHAT, code="OK") - answered_before
    assert 200 <= answered <= 202, answered
    # The output is a file of the caller's, listed with the input.
    files = {f.id: f for f in client.files.list().data}
    assert files[done.output_file_id].purpose == "batch_output" and files[input_id].purpose == "batch"


def test_the_native_api_runs_in_batches_and_a_bad_request_is_its_own_error_line(client):
    rows = [
        {
            "custom_id": f"embed-{i}",
            "method": "POST",
            "url": "/v1/embed",
            "body": {"model": EMBED_MODEL, "inputs": [text]},
        }
        for i, text in enumerate(["the cat sat", "a rocket launch"])
    ]
    rows.append(
        {"custom_id": "typo", "method": "POST", "url": "/v1/embed", "body": {"model": EMBED_MODEL, "input": ["x"]}}
    )
    batch = client.batches.create(input_file_id=upload(client, rows), endpoint="/v1/embed", completion_window="24h")
    done = finished(client, batch.id)
    assert done.status == "completed" and (done.request_counts.completed, done.request_counts.failed) == (2, 1)
    output = lines(client, done.output_file_id)
    assert [line["custom_id"] for line in output] == ["embed-0", "embed-1"]
    assert len(output[0]["response"]["body"]["embeddings"][0]["values"]) == 384  # the transcoder's JSON
    [typo] = lines(client, done.error_file_id)
    assert typo["custom_id"] == "typo" and typo["response"]["status_code"] == 400
    assert "input" in typo["response"]["body"]["message"]  # google.rpc.Status, as the native API answers
    with pytest.raises(openai.BadRequestError, match="Cannot cancel a batch with status 'completed'"):
        client.batches.cancel(batch.id)


def test_an_input_file_with_bad_lines_fails_the_batch_naming_each_line(client):
    rows = [
        json.dumps(chat_request(0)),
        "{not json",
        json.dumps({**chat_request(1), "custom_id": "chat-0"}),
        json.dumps({**chat_request(2), "url": "/v1/embeddings"}),
    ]
    content = ("\n".join(rows) + "\n").encode()
    input_id = client.files.create(file=("bad.jsonl", io.BytesIO(content)), purpose="batch").id
    batch = client.batches.create(input_file_id=input_id, endpoint="/v1/chat/completions", completion_window="24h")
    assert batch.status == "failed" and batch.failed_at
    assert [(e.line, e.code) for e in batch.errors.data] == [
        (2, "invalid_json_line"),
        (3, "duplicate_custom_id"),
        (4, "mismatched_endpoint"),
    ]


def test_a_cancelled_batch_stops_and_keeps_what_was_answered(client):
    questions = [chat_request(i, "Write a poem about the number {index}.", max_tokens=16) for i in range(100)]
    batch = client.batches.create(
        input_file_id=upload(client, questions),
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    eventually(lambda: client.batches.retrieve(batch.id).request_counts.completed, until=lambda n: n >= 2,
               timeout=120, interval=0.2, what="two answered")  # fmt: skip
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled") and cancelling.cancelling_at
    done = finished(client, batch.id, timeout=60)
    assert done.status == "cancelled" and done.cancelled_at
    answered = done.request_counts.completed
    assert 2 <= answered < 100
    assert len(lines(client, done.output_file_id)) == answered
    assert client.batches.cancel(batch.id).status == "cancelled"  # again: nothing changes


def test_what_the_batch_api_cannot_honour_is_refused_by_name(client):
    input_id = upload(client, [chat_request(0)])
    with pytest.raises(openai.BadRequestError) as window:
        client.batches.create(input_file_id=input_id, endpoint="/v1/chat/completions", completion_window="1h")  # type: ignore[arg-type]
    assert window.value.param == "completion_window"
    with pytest.raises(openai.BadRequestError) as unserved:
        client.batches.create(input_file_id=input_id, endpoint="/v1/responses", completion_window="24h")
    assert unserved.value.param == "endpoint" and "/v1/chat/completions" in unserved.value.message
    with pytest.raises(openai.BadRequestError) as purpose:
        client.files.create(file=("x.jsonl", io.BytesIO(b"{}\n")), purpose="fine-tune")
    assert purpose.value.param == "purpose"
    with pytest.raises(openai.NotFoundError) as missing:
        client.batches.retrieve("batch_does_not_exist")
    assert missing.value.code == "batch_not_found"
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve("file-does-not-exist")
    assert client.files.delete(input_id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.content(input_id)
