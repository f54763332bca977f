"""The instruction-tuned chat model: Qwen2.5-Coder-0.5B-Instruct's GGUF, joined from six
packages that are not Qwen's, is served only as the file Qwen published (its SHA-256);
llama.cpp chats with it through the GGUF's own chat template and stops at its end of turn,
while Gemma's base model, which has no template, keeps the plain transcript prompt."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import pytest_asyncio
from gguf import GGUFReader

from infermesh.inference.v1 import generation_options_pb2 as options
from infermesh.inference.v1 import inference_service_pb2 as pb
from infermesh.inference.v1 import inference_types_pb2 as types
from services.backend.types import ChatTurn
from services.inference.models import builtin
from services.inference.models.chat_format import base_model_chat_prompt
from services.registry.seed import _defaults
from support.paths import ROOT
from support.services import inference_server

pytestmark = pytest.mark.asyncio(loop_scope="session")
QWEN, GEMMA_LLAMA = builtin.QWEN_CODER_ID, builtin.GEMMA_GGUF_ID
DATA_DIR = Path(os.environ.get("DATA_DIR", ROOT / ".data"))


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def test_the_joined_file_is_the_gguf_qwen_published():
    path = builtin.qwen_coder_gguf(DATA_DIR)
    assert path.stat().st_size == 491_400_064
    assert sha256(path) == builtin.QWEN_CODER_SHA256
    reader = GGUFReader(path)
    field = lambda key: reader.fields[key].contents()  # noqa: E731
    assert field("general.architecture") == "qwen2"
    assert field("general.name").startswith("Qwen2.5 Coder 0.5B Instruct")
    assert field("qwen2.context_length") == 32768 and len(reader.tensors) == 291
    assert "<|im_start|>" in field("tokenizer.chat_template")
    # The registry records the same file for the model's version.
    _, versions, _ = _defaults()[QWEN]
    assert versions["q4-k-m"].artifact_sha256 == builtin.QWEN_CODER_SHA256


def test_parts_that_do_not_join_into_qwens_file_leave_nothing_behind(tmp_path, monkeypatch):
    monkeypatch.setattr(builtin, "QWEN_CODER_SHA256", "0" * 64)
    with pytest.raises(builtin.WeightsMismatch, match="refusing to serve it"):
        builtin.qwen_coder_gguf(tmp_path)
    assert list((tmp_path / "models" / QWEN).iterdir()) == []


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def server():
    async with inference_server(models=[QWEN, GEMMA_LLAMA], available_models=[]) as running:
        yield running


async def test_qwen_follows_an_instruction_and_ends_its_turn(server):
    # The right answer last in the list: a model that just repeats the first word fails.
    ask = "Reply with exactly one word from this list: Rome, Paris, Berlin. What is the capital of Germany?"
    request = pb.ChatRequest(
        model=QWEN,
        messages=[pb.ChatMessage(role=types.ROLE_USER, content=ask)],
        config=options.GenerationConfig(max_tokens=48, temperature=0),
    )
    reply = await server.inference.Chat(request)
    assert "berlin" in reply.message.content.lower() and len(reply.message.content.split()) <= 3
    # It stopped at its end-of-turn token, not at the length limit, and the token is not text.
    assert reply.finish_reason == types.FINISH_REASON_STOP and reply.usage.output_tokens < 48
    assert "<|im_end|>" not in reply.message.content and "<|im_start|>" not in reply.message.content
    chunks = [c async for c in server.inference.StreamChat(request)]
    assert "".join(c.message.content for c in chunks) == reply.message.content
    assert chunks[-1].finish_reason == types.FINISH_REASON_STOP


async def test_each_model_gets_its_own_chat_prompt(server):
    turns = [ChatTurn("system", "Be brief."), ChatTurn("user", "Hi")]
    qwen = server.app.repository.entry(QWEN).model
    prompt, stops = qwen.chat_prompt(turns)
    assert prompt == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert stops == ()
    gemma = server.app.repository.entry(GEMMA_LLAMA).model  # a base model: no template in its GGUF
    assert gemma.chat_prompt(turns) == base_model_chat_prompt(turns)


async def test_tools_reach_the_models_template_in_its_trained_format(server):
    from services.backend.types import Tools, ToolSpec

    qwen = server.app.repository.entry(QWEN).model
    weather = ToolSpec("get_weather", "The weather in a city.", {"type": "object", "properties": {}})
    prompt, _ = qwen.chat_prompt([ChatTurn("user", "Weather in Paris?")], Tools((weather,)))
    assert "<tools>" in prompt and '"name": "get_weather"' in prompt
    assert "<tool_call>" in prompt  # the template teaches the call format the grammar enforces


async def test_a_forced_tool_call_uses_the_models_own_tool_tokens_and_validates(server):
    """Qwen writes <tool_call> and </tool_call> as single special tokens: the grammar names
    them as tokens, and the reader still finds the call."""
    import json

    from google.protobuf import struct_pb2

    parameters = struct_pb2.Struct()
    parameters.update({"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}})
    request = pb.ChatRequest(
        model=QWEN,
        messages=[pb.ChatMessage(role=types.ROLE_USER, content="What is the weather in Paris?")],
        tools=[options.Tool(name="get_weather", description="The weather in a city.", parameters=parameters)],
        tool_choice=options.ToolChoice(mode=options.TOOL_CHOICE_MODE_REQUIRED),
        parallel_tool_calls=False,
        config=options.GenerationConfig(max_tokens=48),
    )
    reply = await server.inference.Chat(request)
    [call] = reply.message.tool_calls
    assert call.name == "get_weather" and set(json.loads(call.arguments)) <= {"city"}
    assert reply.finish_reason == types.FINISH_REASON_TOOL_CALLS and not reply.message.content
    auto = await server.inference.Chat(
        pb.ChatRequest(
            model=QWEN, messages=request.messages, tools=request.tools, config=options.GenerationConfig(max_tokens=48)
        )
    )
    assert auto.message.tool_calls[0].name == "get_weather" and not auto.message.content  # it chose to call
