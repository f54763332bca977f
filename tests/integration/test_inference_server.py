"""The inference server in-process on port 0, with the real Gemma model: readiness,
cancellation, deadlines, pagination and rich errors."""

from __future__ import annotations

import grpc
import pytest
import pytest_asyncio
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2
from grpc_status import rpc_status

from infermesh.inference.v1 import generation_options_pb2 as options
from infermesh.inference.v1 import inference_service_pb2 as pb
from infermesh.inference.v1 import inference_types_pb2 as types
from services.inference.app import SERVICE, model_health_name
from support.services import inference_server

pytestmark = pytest.mark.asyncio(loop_scope="session")
GEMMA = "gemma-3-270m"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def server():
    async with inference_server(models=[GEMMA], available_models=[]) as running:
        yield {
            "stub": running.inference,
            "health": running.health,
            "before": running.health_before_start,
        }


async def test_not_serving_until_models_are_loaded_then_serving_per_model(server):
    assert server["before"] == health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("", SERVICE, model_health_name(GEMMA)):
        reply = await server["health"].Check(health_pb2.HealthCheckRequest(service=name))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, name


async def test_a_cancelled_stream_stops_generating_and_frees_the_model(server):
    stub = server["stub"]
    call = stub.StreamGenerateText(
        pb.GenerateTextRequest(model=GEMMA, prompt="Once upon a time", config=options.GenerationConfig(max_tokens=4000))
    )
    received = 0
    async for _ in call:
        received += 1
        if received == 3:
            break
    call.cancel()
    # One request at a time (MAX_CONCURRENT_INFERENCES=1): this waits behind the 4000-token
    # generation unless cancelling really stopped it.
    reply = await stub.GenerateText(
        pb.GenerateTextRequest(model=GEMMA, prompt="Hi", config=options.GenerationConfig(max_tokens=4)), timeout=30
    )
    assert reply.usage.output_tokens == 4


async def test_an_expired_deadline_ends_the_call_and_the_server_stays_free(server):
    stub = server["stub"]
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.GenerateText(
            pb.GenerateTextRequest(
                model=GEMMA, prompt="Tell me a story", config=options.GenerationConfig(max_tokens=4000)
            ),
            timeout=1,
        )
    assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    reply = await stub.GenerateText(
        pb.GenerateTextRequest(model=GEMMA, prompt="Hi", config=options.GenerationConfig(max_tokens=3)), timeout=30
    )
    assert reply.usage.output_tokens == 3


async def test_stop_sequences_end_generation_without_the_stop_text(server):
    stub = server["stub"]
    free = await stub.GenerateText(
        pb.GenerateTextRequest(
            model=GEMMA, prompt="The capital of France is", config=options.GenerationConfig(max_tokens=16)
        )
    )
    word = free.text.split()[2]  # a word the model is going to say
    stopped = await stub.GenerateText(
        pb.GenerateTextRequest(
            model=GEMMA,
            prompt="The capital of France is",
            config=options.GenerationConfig(max_tokens=16, stop_sequences=[word]),
        )
    )
    assert word not in stopped.text
    assert free.text.startswith(stopped.text)
    assert stopped.finish_reason == types.FINISH_REASON_STOP


async def test_seeded_sampling_is_repeatable(server):
    stub = server["stub"]
    request = pb.GenerateTextRequest(
        model=GEMMA,
        prompt="My favourite food is",
        config=options.GenerationConfig(max_tokens=12, temperature=1.0, seed=7),
    )
    first, second = await stub.GenerateText(request), await stub.GenerateText(request)
    assert first.text == second.text


async def test_repetition_penalty_makes_the_model_repeat_itself_less(server):
    stub = server["stub"]
    request = pb.GenerateTextRequest(
        model=GEMMA, prompt="The capital of France is", config=options.GenerationConfig(max_tokens=32)
    )
    plain = await stub.GenerateText(request)
    request.config.repetition_penalty = 1.8
    penalised = await stub.GenerateText(request)

    def repeats(text: str) -> int:
        words = text.lower().split()
        return len(words) - len(set(words))

    assert repeats(penalised.text) < repeats(plain.text)


async def test_list_models_pages_and_rejects_forged_tokens(server):
    stub = server["stub"]
    page = await stub.ListModels(pb.ListModelsRequest(page_size=1))
    assert [m.model_id for m in page.models] == [GEMMA]
    model = page.models[0]
    assert model.name == f"models/{GEMMA}" and model.state == types.MODEL_STATE_READY
    assert model.context_length == 8192 and types.CAPABILITY_CHAT in model.capabilities
    assert page.next_page_token == ""
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.ListModels(pb.ListModelsRequest(page_token="forged"))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_warmup_reports_the_models_it_warmed(server):
    reply = await server["stub"].Warmup(pb.WarmupRequest())
    assert [m.model_id for m in reply.models] == [GEMMA] and reply.duration_seconds > 0


async def test_errors_carry_exactly_one_error_info(server):
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await server["stub"].GenerateText(pb.GenerateTextRequest(model="missing", prompt="x"))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    status = rpc_status.from_call(error.value)
    infos = [d for d in status.details if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR)]
    assert len(infos) == 1
    info = error_details_pb2.ErrorInfo()
    infos[0].Unpack(info)
    assert info.reason == "MODEL_NOT_FOUND" and info.domain == "infermesh.dev" and info.metadata["model"] == "missing"
