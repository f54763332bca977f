"""Batching under concurrency, in-process on port 0 with the real models: concurrent
generations share forward passes, a cancelled or expired request leaves the batch at
once, embeddings are batched dynamically, and full queues refuse at once with retry advice."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
import pytest_asyncio
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from prometheus_client import REGISTRY

from infermesh.inference.v1 import generation_options_pb2 as options
from infermesh.inference.v1 import inference_service_pb2 as pb
from support.polling import eventually_async
from support.services import inference_server

pytestmark = pytest.mark.asyncio(loop_scope="session")
GEMMA, MINILM = "gemma-3-270m", "all-minilm-l6-v2"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def served():
    async with inference_server() as server:
        yield server.app, server.inference


def batch_histogram(model: str) -> tuple[float, float]:
    """(passes with one sequence or input, all passes) so far."""
    single = REGISTRY.get_sample_value("infermesh_inference_batch_size_bucket", {"model": model, "le": "1.0"}) or 0
    total = REGISTRY.get_sample_value("infermesh_inference_batch_size_count", {"model": model}) or 0
    return single, total


def batcher(app):
    return next(e for e in app.repository.entries() if e.model.model_id == GEMMA).model.batcher


async def test_concurrent_generations_share_forward_passes(served):
    app, stub = served
    single_before, total_before = batch_histogram(GEMMA)
    prompts = [f"Fact number {i} about the ocean:" for i in range(8)]
    replies = await asyncio.gather(
        *(
            stub.GenerateText(
                pb.GenerateTextRequest(model=GEMMA, prompt=p, config=options.GenerationConfig(max_tokens=12))
            )
            for p in prompts
        )
    )
    assert all(r.text and 0 < r.usage.output_tokens <= 12 for r in replies)
    single, total = batch_histogram(GEMMA)
    multi = (total - total_before) - (single - single_before)
    assert multi > 0, "no forward pass held more than one sequence"
    assert batcher(app).in_flight == 0


async def test_greedy_decoding_in_the_batch_is_repeatable(served):
    _, stub = served
    request = pb.GenerateTextRequest(
        model=GEMMA, prompt="The capital of France is", config=options.GenerationConfig(max_tokens=16)
    )
    texts = {(await stub.GenerateText(request)).text for _ in range(6)}
    assert len(texts) == 1, texts


async def test_sampled_generations_are_batched_too(served):
    app, stub = served
    single_before, total_before = batch_histogram(GEMMA)
    replies = await asyncio.gather(
        *(
            stub.GenerateText(
                pb.GenerateTextRequest(
                    model=GEMMA,
                    prompt="My favourite animal is",
                    config=options.GenerationConfig(max_tokens=12, temperature=1.0),
                )
            )
            for _ in range(8)
        )
    )
    single, total = batch_histogram(GEMMA)
    assert (total - total_before) - (single - single_before) > 0
    assert len({r.text for r in replies}) > 1  # sampling, not greedy: answers differ


async def test_a_cancelled_request_leaves_the_batch_and_the_others_go_on(served):
    app, stub = served
    calls = [
        stub.StreamGenerateText(
            pb.GenerateTextRequest(model=GEMMA, prompt=f"Story {i}:", config=options.GenerationConfig(max_tokens=2000))
        )
        for i in range(3)
    ]
    for call in calls:
        await call.read()
    assert batcher(app).in_flight == 3
    calls[0].cancel()
    await eventually_async(lambda: batcher(app).in_flight == 2, interval=0.05)
    more = await calls[1].read()  # the others keep streaming
    assert more.model == GEMMA
    for call in calls[1:]:
        call.cancel()
    await eventually_async(lambda: batcher(app).in_flight == 0, interval=0.05)


async def test_an_expired_deadline_leaves_the_batch(served):
    app, stub = served
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.GenerateText(
            pb.GenerateTextRequest(model=GEMMA, prompt="Once", config=options.GenerationConfig(max_tokens=2000)),
            timeout=1.5,
        )
    assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await eventually_async(lambda: batcher(app).in_flight == 0, interval=0.05)


async def test_embeddings_are_batched_and_match_one_at_a_time(served):
    _, stub = served
    texts = [f"Sentence number {i} is about {'cats' if i % 2 else 'stock markets'}." for i in range(32)]
    alone = [(await stub.Embed(pb.EmbedRequest(model=MINILM, inputs=[t]))).embeddings[0].values for t in texts[:3]]
    single_before, total_before = batch_histogram(MINILM)
    together = await asyncio.gather(*(stub.Embed(pb.EmbedRequest(model=MINILM, inputs=[t])) for t in texts))
    single, total = batch_histogram(MINILM)
    assert (total - total_before) - (single - single_before) > 0
    assert (total - total_before) < len(texts)  # fewer passes than callers
    for solo, reply in zip(alone, together, strict=False):
        assert float(np.dot(solo, reply.embeddings[0].values)) > 0.999
    assert all(r.usage.input_tokens > 0 for r in together)


async def test_full_queues_refuse_at_once_with_retry_advice():
    async with inference_server(max_queue_size=2, embed_max_queue_items=4, embed_max_queue_delay_ms=200) as server:
        stub = server.inference
        running = [
            stub.StreamGenerateText(
                pb.GenerateTextRequest(model=GEMMA, prompt="Go on:", config=options.GenerationConfig(max_tokens=2000))
            )
            for _ in range(2)
        ]
        for call in running:
            await call.read()
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub.GenerateText(
                pb.GenerateTextRequest(model=GEMMA, prompt="One more", config=options.GenerationConfig(max_tokens=4))
            )
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "limit 2" in error.value.details()
        status = rpc_status.from_call(error.value)
        retry = [d for d in status.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
        assert len(retry) == 1
        assert running[0].done() is False  # refused while the admitted ones still stream
        for call in running:
            call.cancel()

        # Embeddings: 4 inputs may wait; a fifth is refused while they wait for their batch.
        waiting = asyncio.ensure_future(stub.Embed(pb.EmbedRequest(model=MINILM, inputs=["a", "b", "c", "d"])))
        await asyncio.sleep(0.05)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub.Embed(pb.EmbedRequest(model=MINILM, inputs=["e"]))
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert len((await waiting).embeddings) == 4  # nothing admitted is lost
