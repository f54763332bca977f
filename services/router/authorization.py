"""The router's check of its own calls (with AUTHORIZE_CALLS, which `make run` sets when
authorization is on): Envoy's ext_authz is off on the front door's routes to the router,
so a call costs no round trip to the gateway; the credentials are checked here with the
shared policy (services/authz/callers.py). A refusal is what the gateway would have
answered: 401 (with `WWW-Authenticate: Bearer`) or 403 as google.rpc.Status with no
details, in OpenAI's error shape on the OpenAI REST paths, and 429 for a caller past its
requests per minute. Health checks and reflection are not checked here: the front door
sends those through ext_authz (AUTH_PUBLIC_HEALTH, AUTH_PUBLIC_REFLECTION), and Envoy's
own health checks reach the router directly."""

from __future__ import annotations

import grpc
from grpc_status import rpc_status

from services.authz.callers import CallerCheck
from services.authz.policy import HEALTH_PREFIX, REFLECTION_PREFIX, Denied
from services.router.calls import CALLER
from services.router.openai_servicer import refusal_reply
from services.runtime.interceptors import StreamBehavior, UnaryBehavior, WrappingInterceptor, abort_with_status
from services.runtime.openai_errors import OPENAI_SERVICE_PREFIX

UNCHECKED = (HEALTH_PREFIX, REFLECTION_PREFIX)


class Authorization(WrappingInterceptor):
    """Runs before validation, so an unauthenticated caller learns nothing of the API.
    Every router method is unary or server-streaming (the base class wraps no other kind;
    reflection, client-streaming, is not checked here)."""

    def __init__(self, check: CallerCheck) -> None:
        super().__init__()
        self._check = check

    async def intercept_service(self, continuation, handler_call_details):
        if handler_call_details.method.startswith(UNCHECKED):
            return await continuation(handler_call_details)
        return await super().intercept_service(continuation, handler_call_details)

    async def _caller(self, method: str, context: grpc.aio.ServicerContext):
        """The caller, or the OpenAI-shaped reply refusing it; aborts the call otherwise."""
        headers = {key: value for key, value in context.invocation_metadata() or () if isinstance(value, str)}
        try:
            return await self._check.caller(method, headers), None
        except Exception as refused:  # noqa: BLE001 - answered below, like the servicers would
            if method.startswith(OPENAI_SERVICE_PREFIX) and (reply := await refusal_reply(context, refused)):
                return None, reply
            if isinstance(refused, Denied):
                status = rpc_status.to_status(refused.status())
                await context.abort(status.code, status.details, trailing_metadata=tuple(refused.headers.items()))
            await abort_with_status(method, context, refused)

    def wrap_unary(self, method: str, behavior: UnaryBehavior) -> UnaryBehavior:
        async def wrapped(request, context):
            caller, refusal = await self._caller(method, context)
            if refusal is not None:
                return refusal
            token = CALLER.set(caller)
            try:
                return await behavior(request, context)
            finally:
                CALLER.reset(token)

        return wrapped

    def wrap_stream(self, method: str, behavior: StreamBehavior) -> StreamBehavior:
        async def wrapped(request, context):
            caller, refusal = await self._caller(method, context)
            if refusal is not None:
                yield refusal
                return
            CALLER.set(caller)  # the call's own task, which alone iterates this generator
            async for item in behavior(request, context):
                yield item

        return wrapped
