"""Orchestration modes through the front door (issue 6): a batch of prompts for one model
streamed back as each completes, one prompt for several models side by side, and an
ensemble that combines their answers by majority vote, consensus or a judge model.

The Gemini stand-in echoes the prompt's words (support.provider_stand_ins.gemini_default), so its
answers, and those of models registered on it, are known in advance; gemma-3-270m
decodes greedily, so its answer to a prompt is the same however it is asked, as long as
it runs alone: generations batched together on this CPU can differ in a late token
(seen with plain concurrent GenerateText calls too), so the batches that are compared
with single calls run one prompt at a time."""

from __future__ import annotations

import json
import re
import time

import grpc
import httpx
import numpy as np
import pytest
from google.rpc import error_details_pb2

from infermesh.inference.v1 import generation_options_pb2 as options
from infermesh.router.v1 import orchestration_pb2 as pb
from infermesh.router.v1 import router_messages_pb2 as router_messages
from infermesh.router.v1 import router_service_pb2_grpc as pb_grpc
from support.polling import eventually
from support.provider_stand_ins import gemini_default

GEMMA = "gemma-3-270m"
ECHO = "gemini-test"
ECHO_TWIN = "echo-twin"  # a second model id on the Gemini stand-in: it answers as ECHO does
EMBEDDER = "all-minilm-l6-v2"
# These tests count backend work or compare fresh answers: they bypass the response cache.
NO_CACHE = {"cache-control": "no-cache"}
GRPC_NO_CACHE = tuple(NO_CACHE.items())
PROMPTS = ["The capital of France is", "hello " * 9000, "One, two, three,", "The sky is"]
TOO_LONG = 1  # beyond gemma's 8192-token context: that prompt alone fails


@pytest.fixture(scope="module")
def router(front_door: str):
    with grpc.insecure_channel(front_door) as channel:
        yield pb_grpc.RouterServiceStub(channel)


@pytest.fixture(scope="module")
def echo_twin(base_url: str) -> str:
    """ECHO_TWIN registered on the Gemini adapter, once the router knows of it."""
    steps = [
        ("/v1/registry/models", {"model_id": ECHO_TWIN}, {"provider": "gemini", "capabilities": ["text-generation"]}),
        (
            f"/v1/registry/models/{ECHO_TWIN}/versions",
            {"model_version_id": "v1"},
            {"runtime": {"runtime": "gemini", "backend_model": ECHO}},
        ),
        (
            f"/v1/registry/models/{ECHO_TWIN}/deployments",
            {"deployment_id": "gemini"},
            {"backend": "gemini", "traffic_weight": 100},
        ),
    ]
    for path, params, body in steps:
        reply = httpx.post(f"{base_url}{path}", params=params, json=body, timeout=30)
        assert reply.status_code == 200, reply.text
    ready = {"model": ECHO_TWIN, "prompt": "ready", "config": {"max_tokens": 2}}
    eventually(  # the router learns of the new model from the registry's feed
        lambda: post(base_url, "/v1/generate-text", ready).status_code == 200,
        timeout=30,
        interval=0.3,
        what=f"{ECHO_TWIN} answering",
    )
    return ECHO_TWIN


def post(base_url: str, path: str, body: dict) -> httpx.Response:
    return httpx.post(f"{base_url}{path}", json=body, headers=NO_CACHE, timeout=180)


def reason(status) -> str:
    info = error_details_pb2.ErrorInfo()
    assert any(detail.Unpack(info) for detail in status.details), status
    return info.reason


def echo(prompt: str, max_tokens: int = 64) -> list[str]:
    """The words the Gemini stand-in answers a prompt with."""
    return prompt.split()[:max_tokens]


def stand_in_said(request) -> str:
    """What the Gemini stand-in answered to a request it saw (a stream's chunks joined)."""
    body = gemini_default(request).body
    chunks = body if isinstance(body, list) else [body]
    return "".join(p["text"] for c in chunks for candidate in c["candidates"] for p in candidate["content"]["parts"])


def single(router, model: str, prompt: str, max_tokens: int) -> str:
    request = router_messages.GenerateTextRequest(
        model=model, prompt=prompt, config=options.GenerationConfig(max_tokens=max_tokens)
    )
    return router.GenerateText(request, metadata=GRPC_NO_CACHE, timeout=180).text


# Batch


def test_batch_streams_one_result_per_prompt_as_each_completes(router):
    request = pb.BatchGenerateTextRequest(
        model=GEMMA, prompts=PROMPTS, config=options.GenerationConfig(max_tokens=12), max_concurrency=1
    )
    started = time.monotonic()
    arrivals, results = [], {}
    for result in router.BatchGenerateText(request, metadata=GRPC_NO_CACHE, timeout=300):
        arrivals.append(time.monotonic() - started)
        results[result.index] = result
    assert sorted(results) == [0, 1, 2, 3] and len(arrivals) == 4
    # One at a time, each result is sent when its prompt is done, not all at the end (two
    # more prompts of 12 tokens each take well over half a second here).
    assert arrivals[-1] - arrivals[0] > 0.5, arrivals

    failed = results[TOO_LONG]
    assert failed.WhichOneof("outcome") == "error"
    assert failed.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert reason(failed.error) == "CONTEXT_LENGTH_EXCEEDED" and "8192" in failed.error.message
    for index in (0, 2, 3):
        result = results[index]
        assert result.WhichOneof("outcome") == "response", result
        assert result.response.usage.output_tokens > 0
        assert result.served_by.model == GEMMA and result.served_by.backend and not result.served_by.fallback
        # Greedy decoding: a prompt in a batch gets what it gets on its own.
        assert result.response.text == single(router, GEMMA, PROMPTS[index], 12)


def test_batch_over_rest_is_a_stream_of_server_sent_events(base_url, router):
    body = {"model": GEMMA, "prompts": PROMPTS, "config": {"max_tokens": 12}, "max_concurrency": 1}
    with httpx.stream(
        "POST", f"{base_url}/v1/generate-text:batch", json=body, headers=NO_CACHE, timeout=300
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [
            json.loads(line.removeprefix("data: ")) for line in response.iter_lines() if line.startswith("data: ")
        ]
    by_index = {event["index"]: event for event in events}
    assert sorted(by_index) == [0, 1, 2, 3]
    assert by_index[TOO_LONG]["error"]["details"][0]["reason"] == "CONTEXT_LENGTH_EXCEEDED"
    assert "response" not in by_index[TOO_LONG]
    for index in (0, 2, 3):
        event = by_index[index]
        assert event["served_by"]["model"] == GEMMA and "error" not in event
        assert event["response"]["text"] == single(router, GEMMA, PROMPTS[index], 12)


def test_a_batch_for_an_unknown_model_says_so_for_every_prompt(router):
    request = pb.BatchGenerateTextRequest(model="no-such-model", prompts=["a", "b"])
    results = list(router.BatchGenerateText(request, timeout=60))
    assert sorted(r.index for r in results) == [0, 1]
    for result in results:
        assert result.error.code == grpc.StatusCode.NOT_FOUND.value[0] and "no-such-model" in result.error.message


def test_a_cancelled_batch_stops_generating(mesh, router):
    metrics = f"http://127.0.0.1:{mesh.settings.inference_metrics_port}/metrics"

    def in_flight() -> float:
        for line in httpx.get(metrics, timeout=10).text.splitlines():
            if line.startswith(f'infermesh_inference_queue_depth{{model="{GEMMA}"}}'):
                return float(line.split()[-1])
        return 0.0

    request = pb.BatchGenerateTextRequest(
        model=GEMMA,
        prompts=["Tell me a very long story."] * 6,
        config=options.GenerationConfig(max_tokens=4000),
        max_concurrency=2,
    )
    call = router.BatchGenerateText(request, metadata=GRPC_NO_CACHE, timeout=300)
    eventually(lambda: in_flight() >= 2, what="two prompts in flight")
    assert in_flight() == 2  # two prompts at a time, as asked
    call.cancel()
    eventually(lambda: in_flight() == 0, what="no prompt in flight")
    assert in_flight() == 0
    time.sleep(1)
    assert in_flight() == 0  # and the prompts not yet started never start


# Parallel


def test_parallel_answers_every_model_in_order_and_an_unknown_one_with_its_error(base_url, router):
    prompt = "The capital of France is"
    body = {"models": [GEMMA, "no-such-model", ECHO], "prompt": prompt, "config": {"max_tokens": 10}}
    reply = post(base_url, "/v1/generate-text:parallel", body)
    assert reply.status_code == 200, reply.text
    gemma, missing, gemini = reply.json()["answers"]
    assert [gemma["model"], missing["model"], gemini["model"]] == body["models"]
    assert gemma["response"]["text"] == single(router, GEMMA, prompt, 10)
    assert gemma["served_by"]["model"] == GEMMA and gemma["served_by"]["backend"] == f"inference/{GEMMA}"
    assert gemini["response"]["text"].split() == echo(prompt) and gemini["served_by"]["backend"] == "gemini"
    assert missing["error"]["code"] == 5 and missing["error"]["details"][0]["reason"] == "MODEL_NOT_FOUND"
    assert "response" not in missing
    usage = reply.json()["usage"]
    assert usage["total_tokens"] == gemma["response"]["usage"]["total_tokens"] + 10  # the echo: 5 words in, 5 out


def test_parallel_needs_at_least_one_model(base_url):
    reply = post(base_url, "/v1/generate-text:parallel", {"models": [], "prompt": "hi"})
    assert reply.status_code == 400 and "models" in reply.json()["message"]


# Ensemble


def test_majority_vote_picks_the_answer_most_models_gave_and_says_why(base_url, echo_twin):
    prompt = "Is Paris in France? Answer yes or no."
    body = {
        "models": [GEMMA, ECHO, echo_twin],
        "prompt": prompt,
        "config": {"max_tokens": 6},
        "strategy": "ENSEMBLE_STRATEGY_MAJORITY_VOTE",
    }
    reply = post(base_url, "/v1/generate-text:ensemble", body)
    assert reply.status_code == 200, reply.text
    result = reply.json()
    assert result["model"] == ECHO and result["text"].split() == echo(prompt, 6)  # the earlier of the two that agree
    assert result["strategy"] == "ENSEMBLE_STRATEGY_MAJORITY_VOTE"
    assert result["rationale"].startswith("2 of 3 answers agree") and echo_twin in result["rationale"]
    assert [a["score"] for a in result["answers"]] == [1, 2, 2]
    assert result["usage"]["total_tokens"] == sum(a["response"]["usage"]["total_tokens"] for a in result["answers"])


def test_consensus_picks_the_answer_closest_in_meaning_to_the_others(base_url, echo_twin):
    prompt = "Write one sentence about the sea."
    body = {
        "models": [GEMMA, ECHO, echo_twin],
        "prompt": prompt,
        "config": {"max_tokens": 12},
        "strategy": "ENSEMBLE_STRATEGY_CONSENSUS",
        "embedding_model": EMBEDDER,
    }
    reply = post(base_url, "/v1/generate-text:ensemble", body)
    assert reply.status_code == 200, reply.text
    result = reply.json()
    texts = [a["response"]["text"] for a in result["answers"]]
    # The scores are the mean cosine similarity of each answer's embedding to the others'.
    embedded = post(base_url, "/v1/embed", {"model": EMBEDDER, "inputs": texts}).json()
    vectors = np.array([e["values"] for e in embedded["embeddings"]])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    similarity = vectors @ vectors.T
    expected = [(similarity[i].sum() - similarity[i, i]) / 2 for i in range(3)]
    assert [a["score"] for a in result["answers"]] == pytest.approx(expected, abs=0.01)
    # The two echoes agree with each other, so either is closer to the rest than gemma is.
    assert result["model"] == ECHO and result["text"] == texts[1]
    assert "cosine similarity" in result["rationale"] and EMBEDDER in result["rationale"]
    answers_tokens = sum(a["response"]["usage"]["total_tokens"] for a in result["answers"])
    assert result["usage"]["total_tokens"] == answers_tokens + embedded["usage"]["total_tokens"]


def test_judge_picks_the_answer_whose_number_it_replies_with(base_url, echo_twin, gemini_stand_in):
    prompt = "Give 2 reasons to learn French."
    body = {
        "models": [GEMMA, ECHO, echo_twin],
        "prompt": prompt,
        "config": {"max_tokens": 8},
        "strategy": "ENSEMBLE_STRATEGY_JUDGE",
        "judge_model": ECHO,
    }
    reply = post(base_url, "/v1/generate-text:ensemble", body)
    assert reply.status_code == 200, reply.text
    result = reply.json()
    # What the judge (the echoing stand-in) said: the judge's request was the last it saw.
    judged = gemini_stand_in.seen[-1]
    assert prompt in json.dumps(judged.body) and "best answer" in json.dumps(judged.body)
    said = stand_in_said(judged)
    choice = next(int(n) for n in re.findall(r"\b\d+\b", said) if 1 <= int(n) <= 3)
    assert choice == 2  # the echo repeats the question, whose first number is 2
    assert result["model"] == body["models"][choice - 1]
    assert [a["score"] for a in result["answers"]] == [0, 1, 0]
    assert f"judged answer {choice} of 3" in result["rationale"] and ECHO in result["rationale"]
    answers_tokens = sum(a["response"]["usage"]["total_tokens"] for a in result["answers"])
    assert result["usage"]["total_tokens"] > answers_tokens  # the judge's tokens count too


def test_an_ensemble_where_one_model_answers_takes_that_answer(base_url):
    body = {
        "models": ["no-such-model", ECHO],
        "prompt": "only one of us knows",
        "strategy": "ENSEMBLE_STRATEGY_MAJORITY_VOTE",
    }
    reply = post(base_url, "/v1/generate-text:ensemble", body)
    assert reply.status_code == 200, reply.text
    result = reply.json()
    assert result["model"] == ECHO and result["text"].split() == echo("only one of us knows")
    assert "only gemini-test answered" in result["rationale"] and "no-such-model" in result["rationale"]
    assert result["answers"][0]["error"]["code"] == 5


def test_an_ensemble_whose_models_all_refuse_is_a_client_error_naming_each_error(base_url, router):
    body = {"models": ["no-such-model", "nor-this-one"], "prompt": "hi", "strategy": "ENSEMBLE_STRATEGY_CONSENSUS"}
    reply = post(base_url, "/v1/generate-text:ensemble", body)
    assert reply.status_code == 400
    error = reply.json()
    assert error["details"][0]["reason"] == "NO_ANSWERS"
    assert "no-such-model" in error["message"] and "nor-this-one" in error["message"]


def test_a_judged_ensemble_needs_a_judge(base_url, router):
    body = {"models": [GEMMA, ECHO], "prompt": "hi", "strategy": "ENSEMBLE_STRATEGY_JUDGE"}
    reply = post(base_url, "/v1/generate-text:ensemble", body)
    assert reply.status_code == 400 and "judge_model" in reply.json()["message"]
    request = pb.EnsembleGenerateTextRequest(models=[GEMMA, ECHO], prompt="hi", strategy=pb.ENSEMBLE_STRATEGY_JUDGE)
    with pytest.raises(grpc.RpcError) as error:
        router.EnsembleGenerateText(request, timeout=30)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
