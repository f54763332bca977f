"""The router's response cache in Redis (a real redis-server): replicas share answers,
versions never do, and Redis expires them."""

from __future__ import annotations

import asyncio

import pytest

from infermesh.inference.v1 import generation_options_pb2 as options
from infermesh.router.v1 import router_messages_pb2 as router_messages
from services.router.core.cache import ResponseCache
from services.router.core.calls import CallContext
from services.router.core.resolvers import Route
from services.router.core.rpcs import Rpc
from support.databases import redis_server

pytestmark = pytest.mark.asyncio
ROUTE = Route(model="m", version="v1", backend="b", backend_model="m")


async def test_router_replicas_share_answers_through_redis_which_expires_them():
    with redis_server() as url:
        first, second = ResponseCache(0, 0.5, url), ResponseCache(0, 0.5, url)
        request = router_messages.GenerateTextRequest(
            model="m", prompt="the sea is", config=options.GenerationConfig(max_tokens=4)
        )
        reply = router_messages.GenerateTextResponse(text=" blue", model="m")
        reply.usage.input_tokens, reply.usage.output_tokens = 3, 1
        key = first.key(Rpc.GENERATE_TEXT, ROUTE, request, CallContext())
        assert await second.get(second.key(Rpc.GENERATE_TEXT, ROUTE, request, CallContext()), ROUTE) is None
        await first.put(key, reply)
        assert await second.get(second.key(Rpc.GENERATE_TEXT, ROUTE, request, CallContext()), ROUTE) == reply
        other_version = Route(model="m", version="v2", backend="b", backend_model="m")
        assert (
            await second.get(second.key(Rpc.GENERATE_TEXT, other_version, request, CallContext()), other_version)
            is None
        )
        await asyncio.sleep(0.7)
        assert await second.get(key, ROUTE) is None  # Redis expired it
        await first.close()
        await second.close()
