"""Failover with two real backends under faults (issue 6's "done"): a mesh of its own
whose local inference server (gemma-3-270m, admitting only two generations at a time)
and Gemini adapter are real processes; the test slows, fails, overloads and finally
kill -9s them mid-run. The adapter's upstream is a Gemini stand-in speaking Gemini's
documented wire format (no internet here), which lets the test script slow and failing
answers; the router's response cache is a real redis-server.

Each fault shows one fallback path: a slow backend abandoned after FALLBACK_AFTER_SECONDS,
a stream failing before its first chunk failing over, an overloaded backend shedding to
its fallback, and a backend killed mid-run: requests keep being answered by the fallback
with no client-visible error, and a stream it was in the middle of ends with a clear
STREAM_INTERRUPTED error after the chunks already sent (gRPC status and a last chunk
carrying it, which is what REST clients see; OpenAI's error event), never a silent
truncation.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import pytest
import redis
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from infermesh.inference.v1 import generation_options_pb2 as options
from infermesh.router.v1 import router_messages_pb2 as router_messages
from infermesh.router.v1 import router_service_pb2_grpc as router_grpc
from launcher.mesh import Mesh
from support.databases import redis_server
from support.meshes import mesh_settings, register_model
from support.metrics import metric
from support.polling import eventually
from support.provider_stand_ins import Reply, Seen, StandIn, gemini_default, gemini_error

GEMMA = "gemma-3-270m"
FLAKY = "flaky-gemini"  # answered by the Gemini adapter, falls back to the local model
NO_CACHE = {"cache-control": "no-cache"}
FALLBACK_AFTER = 3.0


@pytest.fixture(scope="module")
def stand_in() -> Iterator[StandIn]:
    with StandIn(gemini_default).running() as server:
        yield server


@pytest.fixture(scope="module")
def cache_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


@pytest.fixture(scope="module")
def faulty_mesh(tmp_path_factory, stand_in, cache_url) -> Iterator[Mesh]:
    settings = mesh_settings(models=[GEMMA], providers=["gemini"])
    env = {
        "GEMINI_API_KEY": "AIza-test-faults-key-000",
        "GEMINI_BASE_URL": stand_in.url,
        "GEMINI_TEXT_MODEL": "gemini-test",
        "GEMINI_VISION_MODEL": "gemini-test",
        "GEMINI_EMBEDDING_MODEL": "gemini-embedding-test",
        "MAX_ATTEMPTS": "1",  # the adapter does not retry: each scripted failure is one request's
        "MAX_QUEUE_SIZE": "2",  # the inference server admits two generations at a time
        "FALLBACK_AFTER_SECONDS": str(FALLBACK_AFTER),
        "COOLDOWN_SECONDS": "2",
        "CACHE_REDIS_URL": cache_url,
    }
    running = Mesh(settings, log_dir=tmp_path_factory.mktemp("faulty-mesh-logs"), env=env)
    running.start()
    try:
        running.wait_ready()
        base_url = f"http://127.0.0.1:{settings.front_door_port}"
        register_model(base_url, FLAKY, "gemini", "gemini-test", fallbacks=[GEMMA])
        reply = httpx.patch(
            f"{base_url}/v1/registry/models/{GEMMA}",
            params={"update_mask": "fallbacks"},
            json={"fallbacks": ["models/gemini-test"]},
            timeout=30,
        )
        assert reply.status_code == 200, reply.text
        _wait_until_answered(base_url, FLAKY)
        _wait_until_answered(base_url, GEMMA)  # its first generation sets up the batch: slow
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def base(faulty_mesh: Mesh) -> str:
    return f"http://127.0.0.1:{faulty_mesh.settings.front_door_port}"


@pytest.fixture(scope="module")
def router(faulty_mesh: Mesh) -> Iterator[router_grpc.RouterServiceStub]:
    with grpc.insecure_channel(f"127.0.0.1:{faulty_mesh.settings.front_door_port}") as channel:
        yield router_grpc.RouterServiceStub(channel)


def _wait_until_answered(base_url: str, model: str) -> None:
    """The router and Envoy learn of new models and healthy adapters within moments."""
    eventually(
        lambda: generate(base_url, model, "warm up"),
        until=lambda reply: reply.status_code == 200 and reply.json()["model"] == model,
        timeout=30,
        interval=0.3,
    )


def generate(base_url: str, model: str, prompt: str, max_tokens: int = 4, headers=NO_CACHE) -> httpx.Response:
    body = {"model": model, "prompt": prompt, "config": {"max_tokens": max_tokens}}
    return httpx.post(f"{base_url}/v1/generate-text", json=body, headers=headers, timeout=120)


def stream_request(model: str, prompt: str, max_tokens: int = 8) -> router_messages.GenerateTextRequest:
    return router_messages.GenerateTextRequest(
        model=model, prompt=prompt, config=options.GenerationConfig(max_tokens=max_tokens)
    )


def words(n: int) -> str:
    return " ".join(f"w{i}" for i in range(n))


def test_cache_hits_from_redis_are_identical_to_the_answer(base, cache_url):
    prompt = f"Fact {uuid.uuid4().hex[:8]}: the sky is"
    first = generate(base, GEMMA, prompt, max_tokens=6, headers={})
    second = generate(base, GEMMA, prompt, max_tokens=6, headers={})
    outcome = [(r.headers.get("x-infermesh-cache"), r.headers.get("x-infermesh-fallback")) for r in (first, second)]
    assert outcome == [("miss", "false"), ("hit", "false")], (first.text, second.text)
    assert second.json() == first.json()
    assert any(redis.Redis.from_url(cache_url).scan_iter("infermesh:response:*"))


def test_a_slow_backend_is_abandoned_for_its_fallback(base, router, stand_in):
    stand_in.script.append(Reply(delay=3 * FALLBACK_AFTER, body=None))  # hangs well past the limit
    started = time.monotonic()
    reply = generate(base, FLAKY, "the sea is")
    took = time.monotonic() - started
    assert reply.status_code == 200 and reply.json()["model"] == GEMMA
    assert reply.headers["x-infermesh-fallback"] == "true"
    assert FALLBACK_AFTER <= took < 3 * FALLBACK_AFTER

    # A stream whose backend sends nothing in time fails over before its first chunk.
    stand_in.script.append(Reply(delay=3 * FALLBACK_AFTER, body=[], stream=True))
    call = router.StreamGenerateText(stream_request(FLAKY, "the sea is"), metadata=list(NO_CACHE.items()))
    chunks = list(call)
    assert dict(call.initial_metadata())["x-infermesh-fallback"] == "true"
    assert {c.model for c in chunks} == {GEMMA} and chunks[-1].usage.output_tokens > 0


def test_a_stream_failing_before_its_first_chunk_fails_over(router, stand_in):
    stand_in.script.append(gemini_error(503, "UNAVAILABLE", "overloaded"))
    call = router.StreamGenerateText(stream_request(FLAKY, "alpha beta"), metadata=list(NO_CACHE.items()))
    chunks = list(call)
    assert dict(call.initial_metadata())["x-infermesh-fallback"] == "true"
    assert {c.model for c in chunks} == {GEMMA} and chunks[-1].usage.output_tokens > 0


def test_an_overloaded_backend_sheds_requests_to_its_fallback(base, faulty_mesh):
    _wait_until_answered(base, "gemini-test")  # out of any cooldown the tests above put it in
    inference = faulty_mesh.settings.inference_metrics_port
    rejected = metric(inference, "infermesh_grpc_requests_total", code="RESOURCE_EXHAUSTED")
    with ThreadPoolExecutor(10) as pool:
        replies = list(pool.map(lambda i: generate(base, GEMMA, f"Story {i}: once upon", max_tokens=8), range(10)))
    assert [r.status_code for r in replies] == [200] * 10, [r.text for r in replies if r.status_code != 200]
    answered_by = [r.json()["model"] for r in replies]
    # The server admitted what it could; what it refused (429) went to the fallback.
    assert metric(inference, "infermesh_grpc_requests_total", code="RESOURCE_EXHAUSTED") > rejected
    assert GEMMA in answered_by and "gemini-test" in answered_by
    for reply in replies:
        assert reply.headers["x-infermesh-fallback"] == ("true" if reply.json()["model"] == "gemini-test" else "false")


def slow_stream(stand_in: StandIn, n_words: int) -> None:
    """Script the adapter's next stream: n_words words, two per chunk, half a second apart."""
    request = Seen(
        "POST",
        "/models/gemini-test:streamGenerateContent",
        {},
        {"contents": [{"parts": [{"text": words(n_words)}]}], "generationConfig": {"maxOutputTokens": n_words}},
    )
    stand_in.script.append(Reply(body=gemini_default(request).body, stream=True, chunk_delay=0.5))


def read_sse(url: str, body: dict, events: list[dict], started: threading.Event) -> None:
    """Collect a REST stream's server-sent events; set `started` at the first."""
    with httpx.stream("POST", url, json=body, headers=NO_CACHE, timeout=60) as reply:
        for line in reply.iter_lines():
            if line.startswith("data:") and line[5:].strip() != "[DONE]":
                events.append(json.loads(line[5:]))
                started.set()


def test_a_backend_killed_mid_run_loses_no_request_and_its_open_streams_say_so(base, router, stand_in, faulty_mesh):
    # Three long, slow streams from the adapter: typed gRPC, typed REST and OpenAI's REST.
    for _ in range(3):
        slow_stream(stand_in, 20)
    call = router.StreamGenerateText(stream_request(FLAKY, words(20), 20), metadata=list(NO_CACHE.items()))
    received = [next(call)]  # the first chunk is out: no fallback may happen now
    rest_events: list[dict] = []
    openai_events: list[dict] = []
    rest_started, openai_started = threading.Event(), threading.Event()
    body = {"model": FLAKY, "prompt": words(20), "config": {"max_tokens": 20}}
    openai_body = {"model": FLAKY, "prompt": words(20), "max_tokens": 20, "stream": True}
    readers = [
        threading.Thread(target=read_sse, args=(f"{base}/v1/generate-text:stream", body, rest_events, rest_started)),
        threading.Thread(target=read_sse, args=(f"{base}/v1/completions", openai_body, openai_events, openai_started)),
    ]
    for reader in readers:
        reader.start()
    assert rest_started.wait(30) and openai_started.wait(30)

    outcomes: list[tuple[float, int, str, str]] = []
    stop = threading.Event()

    def load(worker: int) -> None:
        n = 0
        while not stop.is_set():
            reply = generate(base, FLAKY, f"load {worker} {n}")
            answer = reply.json()
            outcomes.append((time.monotonic(), reply.status_code, answer.get("model", ""), answer.get("message", "")))
            n += 1

    adapter = next(c.process for c in faulty_mesh.children if c.name == "gemini")
    # Two clients: the local model admits two generations at a time, and after the kill
    # it is the only one left.
    with ThreadPoolExecutor(2) as pool:
        workers = [pool.submit(load, i) for i in range(2)]
        time.sleep(1.5)
        killed_at = time.monotonic()
        os.kill(adapter.pid, signal.SIGKILL)
        time.sleep(4)
        stop.set()
        for worker in workers:
            worker.result()
    for reader in readers:
        reader.join(30)

    # No request was lost: before the kill the adapter answered, after it the fallback.
    errors = [o for o in outcomes if o[1] != 200]
    assert not errors, errors[:3]
    before = [model for at, _, model, _ in outcomes if at < killed_at]
    after = [model for at, _, model, _ in outcomes if at > killed_at + 1]
    assert FLAKY in before and after and set(after) == {GEMMA}

    # gRPC: the chunks sent, a last one carrying the error, and the call's status.
    with pytest.raises(grpc.RpcError) as interrupted:
        for chunk in call:
            received.append(chunk)
    status = rpc_status.from_call(interrupted.value)
    assert interrupted.value.code() == grpc.StatusCode.UNAVAILABLE and "the answer is incomplete" in status.message
    assert _reason(status) == "STREAM_INTERRUPTED"
    assert received[-1].error == status and all(c.text for c in received[:-1]) and 2 <= len(received) < 11
    # Typed REST (no trailers a client sees): the last event is the error.
    *answer, last = rest_events
    assert answer and all(e["text"] and "error" not in e for e in answer)
    assert last["error"]["code"] == 14 and "the answer is incomplete" in last["error"]["message"]
    # OpenAI's API: an error event after the chunks, as OpenAI's own streams end.
    assert openai_events[0]["choices"][0]["text"] and "error" in openai_events[-1]
    assert "the answer is incomplete" in openai_events[-1]["error"]["message"]


def _reason(status) -> str:
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.reason
    return ""
