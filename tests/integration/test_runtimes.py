"""The other runtimes behind the same contract: llama.cpp on Gemma's GGUF file, and ONNX
Runtime on an ONNX export of MiniLM (its vectors agree with the transformers runtime's)."""

from __future__ import annotations

import numpy as np
import pytest
import pytest_asyncio

from infermesh.inference.v1 import generation_options_pb2 as options
from infermesh.inference.v1 import inference_service_pb2 as pb
from infermesh.inference.v1 import inference_types_pb2 as types
from support.services import inference_server

pytestmark = pytest.mark.asyncio(loop_scope="session")
LLAMA, ONNX, MINILM = "gemma-3-270m-llamacpp", "all-minilm-l6-v2-onnx", "all-minilm-l6-v2"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stub():
    async with inference_server(models=[LLAMA, ONNX, MINILM], available_models=[]) as server:
        yield server.inference


async def test_llama_cpp_generates_and_streams_the_same_text(stub):
    request = pb.GenerateTextRequest(
        model=LLAMA, prompt="The capital of France is", config=options.GenerationConfig(max_tokens=16)
    )
    unary = await stub.GenerateText(request)
    assert len(unary.text.split()) >= 3 and unary.usage.output_tokens == 16
    assert unary.finish_reason == types.FINISH_REASON_LENGTH
    chunks = [c async for c in stub.StreamGenerateText(request)]
    assert len(chunks) > 8
    assert "".join(c.text for c in chunks) == unary.text
    assert chunks[-1].usage.output_tokens == 16


async def test_llama_cpp_chat_and_stop_sequences(stub):
    reply = await stub.Chat(
        pb.ChatRequest(
            model=LLAMA,
            messages=[pb.ChatMessage(role=types.ROLE_USER, content="Name a city in France.")],
            config=options.GenerationConfig(max_tokens=24),
        )
    )
    assert reply.message.content.strip() and "User:" not in reply.message.content
    free = await stub.GenerateText(
        pb.GenerateTextRequest(
            model=LLAMA, prompt="The capital of France is", config=options.GenerationConfig(max_tokens=16)
        )
    )
    word = free.text.split()[2]
    cut = await stub.GenerateText(
        pb.GenerateTextRequest(
            model=LLAMA,
            prompt="The capital of France is",
            config=options.GenerationConfig(max_tokens=16, stop_sequences=[word]),
        )
    )
    assert word not in cut.text and cut.finish_reason == types.FINISH_REASON_STOP


async def test_onnx_runtime_embeddings_agree_with_transformers(stub):
    texts = ["A cat sits on the mat.", "Stock markets fell sharply today.", "Der Hund schläft."]
    onnx = await stub.Embed(pb.EmbedRequest(model=ONNX, inputs=texts))
    torch_ = await stub.Embed(pb.EmbedRequest(model=MINILM, inputs=texts))
    for a, b in zip(onnx.embeddings, torch_.embeddings, strict=True):
        assert len(a.values) == 384
        assert float(np.dot(a.values, b.values)) > 0.99  # transformers runs bf16 here, ONNX fp32
    assert onnx.usage.input_tokens == torch_.usage.input_tokens
