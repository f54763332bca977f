"""The OpenAI adapter against a real OpenAI-compatible server: this mesh's own front door
serving the local models (the official SDK, HTTP and streaming are all real)."""

from __future__ import annotations

import grpc
import pytest

from infermesh.inference.v1 import generation_options_pb2 as options
from infermesh.inference.v1 import inference_service_pb2 as pb
from infermesh.inference.v1 import inference_types_pb2 as types
from support.services import provider_server

pytestmark = pytest.mark.asyncio(loop_scope="session")
GEMMA, MINILM = "gemma-3-270m", "all-minilm-l6-v2"


async def test_text_chat_and_embeddings_through_an_openai_compatible_server(base_url):
    settings = {"provider": "openai", "openai_api_key": "sk-test-key", "openai_base_url": f"{base_url}/v1"}
    async with provider_server(**settings) as (_, adapter, _health):
        reply = await adapter.GenerateText(
            pb.GenerateTextRequest(model=GEMMA, prompt="Name a colour.", config=options.GenerationConfig(max_tokens=8))
        )
        assert reply.text and reply.model == GEMMA
        assert reply.usage.input_tokens > 0 and 0 < reply.usage.output_tokens <= 8
        assert reply.finish_reason in (types.FINISH_REASON_STOP, types.FINISH_REASON_LENGTH)

        chunks = [
            c
            async for c in adapter.StreamGenerateText(
                pb.GenerateTextRequest(
                    model=GEMMA, prompt="Count: one, two,", config=options.GenerationConfig(max_tokens=12)
                )
            )
        ]
        assert len(chunks) > 2 and "".join(c.text for c in chunks).strip()
        assert chunks[-1].usage.output_tokens > 0 and chunks[-1].finish_reason != types.FINISH_REASON_UNSPECIFIED
        assert all(not c.HasField("usage") for c in chunks[:-1])

        chat = await adapter.Chat(
            pb.ChatRequest(
                model=GEMMA,
                messages=[pb.ChatMessage(role=types.ROLE_USER, content="Name a French city.")],
                config=options.GenerationConfig(max_tokens=8),
            )
        )
        assert chat.message.role == types.ROLE_ASSISTANT and chat.message.content and chat.usage.input_tokens > 0

        texts = ["hello world", "a considerably longer sentence about the weather in Paris today"]
        embedded = await adapter.Embed(pb.EmbedRequest(model=MINILM, inputs=texts))
        assert [len(e.values) for e in embedded.embeddings] == [384, 384]
        assert embedded.usage.input_tokens == sum(e.input_tokens for e in embedded.embeddings) > 0
        assert embedded.embeddings[1].input_tokens > embedded.embeddings[0].input_tokens

        with pytest.raises(grpc.aio.AioRpcError) as error:  # the server's 404, mapped
            await adapter.GenerateText(pb.GenerateTextRequest(model="no-such-model", prompt="x"))
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as error:  # top_k is not part of the OpenAI API
            await adapter.GenerateText(
                pb.GenerateTextRequest(model=GEMMA, prompt="x", config=options.GenerationConfig(top_k=5))
            )
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
