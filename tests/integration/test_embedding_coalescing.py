"""The router's embedding coalescer against a real inference server (MiniLM, in this
process on port 0): callers that share a backend call each get exactly their own vectors,
indexes and token usage; a caller that leaves while waiting does not disturb the others;
a backend error reaches every caller of the shared call."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
import pytest_asyncio

from infermesh.inference.v1 import inference_service_pb2 as pb
from services.router.core.coalescing import EmbedCoalescer
from support.services import inference_server

pytestmark = pytest.mark.asyncio(loop_scope="session")
MINILM = "all-minilm-l6-v2"
BACKEND, TIMEOUT = "inference-0", 30.0


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def backend():
    async with inference_server(models=[MINILM]) as server:
        yield server.inference


class CountingSend:
    """The real backend call, counted."""

    def __init__(self, stub) -> None:
        self.stub, self.calls, self.inputs = stub, 0, []

    async def __call__(self, request: pb.EmbedRequest, backend: str, timeout: float) -> pb.EmbedResponse:
        self.calls += 1
        self.inputs.append(len(request.inputs))
        return await self.stub.Embed(request, metadata=[("x-infermesh-backend", backend)], timeout=timeout)


async def test_callers_sharing_a_backend_call_get_their_own_vectors_and_usage(backend):
    texts = [[f"Sentence {i} about {'cats' if i % 2 else 'bonds'}."] * (1 + i % 3) for i in range(24)]
    alone = [await backend.Embed(pb.EmbedRequest(model=MINILM, inputs=t)) for t in texts]
    send = CountingSend(backend)
    coalescer = EmbedCoalescer(send)
    together = await asyncio.gather(
        *(coalescer.embed(pb.EmbedRequest(model=MINILM, inputs=t), BACKEND, TIMEOUT, in_flight_limit=1) for t in texts)
    )
    assert send.calls < len(texts), "no backend call was shared"
    assert max(send.inputs) > 1
    for own, shared in zip(alone, together, strict=True):
        assert [e.index for e in shared.embeddings] == list(range(len(own.embeddings)))
        assert shared.usage.input_tokens == own.usage.input_tokens > 0
        assert shared.model == MINILM
        a = np.array([e.values for e in own.embeddings])
        b = np.array([e.values for e in shared.embeddings])
        assert np.allclose(a, b, atol=2e-2) and (a * b).sum(axis=1).min() > 0.999  # bf16 batch vs alone


async def test_under_the_limit_each_request_goes_alone(backend):
    send = CountingSend(backend)
    coalescer = EmbedCoalescer(send)
    await asyncio.gather(
        *(
            coalescer.embed(pb.EmbedRequest(model=MINILM, inputs=[f"t{i}"]), BACKEND, TIMEOUT, in_flight_limit=4)
            for i in range(4)
        )
    )
    assert send.calls == 4 and send.inputs == [1, 1, 1, 1]


async def test_a_caller_that_leaves_while_waiting_does_not_disturb_the_others(backend):
    send = CountingSend(backend)
    coalescer = EmbedCoalescer(send)
    first = asyncio.create_task(
        coalescer.embed(pb.EmbedRequest(model=MINILM, inputs=["long " * 200] * 64), BACKEND, TIMEOUT, in_flight_limit=1)
    )
    await asyncio.sleep(0)  # the first call is out; the next ones wait
    leaving = asyncio.create_task(coalescer.embed(pb.EmbedRequest(model=MINILM, inputs=["bye"]), BACKEND, TIMEOUT, 1))
    staying = [
        asyncio.create_task(coalescer.embed(pb.EmbedRequest(model=MINILM, inputs=[f"stay {i}"]), BACKEND, TIMEOUT, 1))
        for i in range(3)
    ]
    await asyncio.sleep(0)
    leaving.cancel()
    replies = await asyncio.gather(first, *staying)
    assert all(r.model == MINILM and r.usage.input_tokens > 0 for r in replies)
    assert [len(r.embeddings) for r in replies] == [64, 1, 1, 1]
    assert send.inputs == [64, 3]  # the one that left was not embedded
    with pytest.raises(asyncio.CancelledError):
        await leaving


async def test_a_backend_error_reaches_every_caller_of_the_shared_call(backend):
    coalescer = EmbedCoalescer(CountingSend(backend))
    results = await asyncio.gather(
        *(coalescer.embed(pb.EmbedRequest(model="no-such-model", inputs=["x"]), BACKEND, TIMEOUT, 1) for _ in range(5)),
        return_exceptions=True,
    )
    assert all(isinstance(r, grpc.aio.AioRpcError) and r.code() == grpc.StatusCode.NOT_FOUND for r in results)
