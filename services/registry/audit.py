"""The audit log: every administrative action on the registry (writes, imports, key
management) with who asked (the principal the gateway authenticated, passed on in the
`x-infermesh-principal` header), what, on which resource, when and how it ended. Failed
attempts are recorded too: a refused delete is as telling as a done one."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, select

from infermesh.registry.v1 import registry_resources_pb2 as res
from services.registry import schema
from services.registry.database import Database
from services.runtime.errors import InvalidArgument
from services.runtime.registry_client import outcome, principal_of

MAX_PAGE = 1000


class AuditLog:
    def __init__(self, database: Database) -> None:
        self.db = database

    async def record(self, principal: str, action: str, resource: str, result: str, detail: str = "") -> res.AuditEvent:
        event = res.AuditEvent(principal=principal, action=action, resource=resource, result=result, detail=detail)
        when = datetime.now(UTC)
        event.time.FromDatetime(when)
        async with self.db.write() as conn:
            inserted = await conn.execute(
                insert(schema.audit_log).values(
                    time=when, principal=principal, action=action, resource=resource, result=result, detail=detail
                )
            )
            event.sequence = inserted.inserted_primary_key[0]
        return event

    async def list(self, page_size: int, page_token: str) -> tuple[list[res.AuditEvent], str]:
        size = min(page_size or 50, MAX_PAGE)
        table = schema.audit_log
        query = select(table).order_by(table.c.sequence.desc()).limit(size + 1)
        if page_token:
            query = query.where(table.c.sequence < _decode_token(page_token))
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).all()
        events = []
        for row in rows[:size]:
            event = res.AuditEvent(
                sequence=row.sequence,
                principal=row.principal,
                action=row.action,
                resource=row.resource,
                result=row.result,
                detail=row.detail,
            )
            event.time.FromDatetime(row.time if row.time.tzinfo else row.time.replace(tzinfo=UTC))
            events.append(event)
        return events, (str(rows[size - 1].sequence) if len(rows) > size else "")


def _decode_token(token: str) -> int:
    """A page token is the sequence number the next page starts below (int64, as stored)."""
    if not (token.isascii() and token.isdigit() and len(token) <= 19 and int(token) < 2**63):
        raise InvalidArgument("page_token is not one this service issued", reason="INVALID_PAGE_TOKEN")
    return int(token)


def audited(resource: Callable[[Any, Any], str]) -> Callable:
    """Record the decorated servicer method in `self.audit`: `resource(request, reply)`
    names what it acted on (reply is None when the call failed)."""

    def decorate(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(method)
        async def wrapper(self, request, context):
            action = method.__name__
            try:
                reply = await method(self, request, context)
            except Exception as exc:
                await self.audit.record(principal_of(context), action, resource(request, None), *outcome(exc))
                raise
            await self.audit.record(principal_of(context), action, resource(request, reply), *outcome(None))
            return reply

        return wrapper

    return decorate
