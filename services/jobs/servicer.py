"""BatchService over gRPC: OpenAI's Files and Batch APIs as JSON in google.api.HttpBody.
Each caller sees only its own files and batches. Errors on the REST paths are OpenAI's
shape with the HTTP status in a header Envoy turns into the response's status (as the
router's OpenAI servicer does); a gRPC client calling the service itself gets gRPC
errors."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Collection
from typing import Any

from google.api import httpbody_pb2

from infermesh.jobs.v1 import batch_service_pb2_grpc as pb_grpc
from services.jobs import batches as b
from services.jobs.store import BatchStore
from services.runtime import multipart_form
from services.runtime.errors import DomainError, FailedPrecondition, InvalidArgument, NotFound
from services.runtime.identity import Caller
from services.runtime.openai_errors import HTTP_STATUS_HEADER, TRANSCODED_PATH_HEADER, openai_error

UPLOAD_FIELDS = {"purpose"}
MAX_LIST = 10_000  # files; OpenAI's own page limit
BATCH_PAGE, MAX_BATCH_PAGE = 20, 100


def _json(payload: Any, content_type: str = "application/json") -> httpbody_pb2.HttpBody:
    return httpbody_pb2.HttpBody(content_type=content_type, data=json.dumps(payload).encode())


def _page(items: list[dict[str, Any]], limit: int) -> dict[str, Any]:
    """OpenAI's list object over `limit + 1` items read (one more tells if there are more)."""
    shown = items[:limit]
    return {
        "object": "list",
        "data": shown,
        "first_id": shown[0]["id"] if shown else None,
        "last_id": shown[-1]["id"] if shown else None,
        "has_more": len(items) > limit,
    }


def _no_file(file_id: str) -> NotFound:
    return NotFound(f"No such File object: {file_id}", reason="FILE_NOT_FOUND", param="file_id")


def _no_batch(batch_id: str) -> NotFound:
    return NotFound(f"No such Batch object: {batch_id}", reason="BATCH_NOT_FOUND", param="batch_id")


def _caller(context) -> Caller:
    return Caller.from_headers(context.invocation_metadata() or ())


class BatchServicer(pb_grpc.BatchServiceServicer):
    def __init__(self, store: BatchStore, endpoints: Collection[str]) -> None:
        self.store = store
        self.endpoints = endpoints

    async def CreateFile(self, request, context):
        return await _answer(context, self._create_file(_caller(context), request.body))

    async def _create_file(self, caller: Caller, body: httpbody_pb2.HttpBody) -> httpbody_pb2.HttpBody:
        fields, upload = multipart_form.form_fields(multipart_form.parse(body.content_type, body.data))
        for field in sorted(fields.keys() - UPLOAD_FIELDS):
            raise InvalidArgument(
                f"Unrecognized request argument supplied: {field}", reason="UNKNOWN_PARAMETER", param=field
            )
        purpose = fields.get("purpose")
        if purpose not in b.UPLOAD_PURPOSES:
            raise b.invalid(f"purpose must be one of {', '.join(b.UPLOAD_PURPOSES)} (got {purpose!r})", "purpose")
        row = await self.store.add_file(caller.principal, purpose, upload.filename or "upload.jsonl", upload.data)
        return _json(b.file_object(row))

    async def ListFiles(self, request, context):
        return await _answer(context, self._list_files(_caller(context), request))

    async def _list_files(self, caller: Caller, request) -> httpbody_pb2.HttpBody:
        if request.order not in ("", "asc", "desc"):
            raise b.invalid("order must be 'asc' or 'desc'", "order")
        limit = _limit(request.limit, MAX_LIST, MAX_LIST)
        rows = await self.store.files(
            caller.principal, request.purpose, limit + 1, request.after, request.order != "asc"
        )
        return _json(_page([b.file_object(row) for row in rows], limit))

    async def GetFile(self, request, context):
        return await _answer(context, self._get_file(_caller(context), request.file_id))

    async def _get_file(self, caller: Caller, file_id: str) -> httpbody_pb2.HttpBody:
        return _json(b.file_object(await self._file(caller, file_id)))

    async def _file(self, caller: Caller, file_id: str):
        row = await self.store.file(caller.principal, file_id)
        if row is None:
            raise _no_file(file_id)
        return row

    async def GetFileContent(self, request, context):
        return await _answer(context, self._file_content(_caller(context), request.file_id))

    async def _file_content(self, caller: Caller, file_id: str) -> httpbody_pb2.HttpBody:
        content = await self.store.content(caller.principal, file_id)
        if content is None:
            raise _no_file(file_id)
        return httpbody_pb2.HttpBody(content_type="application/jsonl", data=content)

    async def DeleteFile(self, request, context):
        return await _answer(context, self._delete_file(_caller(context), request.file_id))

    async def _delete_file(self, caller: Caller, file_id: str) -> httpbody_pb2.HttpBody:
        if not await self.store.delete_file(caller.principal, file_id):
            raise _no_file(file_id)
        return _json({"id": file_id, "object": "file", "deleted": True})

    async def CreateBatch(self, request, context):
        return await _answer(context, self._create_batch(_caller(context), request.body))

    async def _create_batch(self, caller: Caller, body: httpbody_pb2.HttpBody) -> httpbody_pb2.HttpBody:
        create = b.parse_create(body.data, self.endpoints)
        row = await self.store.file(caller.principal, create.input_file_id)
        if row is None:
            raise NotFound(
                f"No such File object: {create.input_file_id}", reason="FILE_NOT_FOUND", param="input_file_id"
            )
        if row.purpose != b.BATCH_PURPOSE:
            raise b.invalid(f"the input file's purpose is {row.purpose!r}, not 'batch'", "input_file_id")
        content = await self.store.content(caller.principal, create.input_file_id) or b""
        lines, errors = b.parse_input(content, create.endpoint)
        batch = await self.store.add_batch(caller, create, lines, errors)
        return _json(batch.body)

    async def ListBatches(self, request, context):
        return await _answer(context, self._list_batches(_caller(context), request))

    async def _list_batches(self, caller: Caller, request) -> httpbody_pb2.HttpBody:
        limit = _limit(request.limit, BATCH_PAGE, MAX_BATCH_PAGE)
        found = await self.store.batches(caller.principal, limit + 1, request.after)
        return _json(_page([batch.body for batch in found], limit))

    async def GetBatch(self, request, context):
        return await _answer(context, self._get_batch(_caller(context), request.batch_id))

    async def _get_batch(self, caller: Caller, batch_id: str) -> httpbody_pb2.HttpBody:
        batch = await self.store.batch(caller.principal, batch_id)
        if batch is None:
            raise _no_batch(batch_id)
        return _json(batch.body)

    async def CancelBatch(self, request, context):
        return await _answer(context, self._cancel_batch(_caller(context), request.batch_id))

    async def _cancel_batch(self, caller: Caller, batch_id: str) -> httpbody_pb2.HttpBody:
        if await self.store.batch(caller.principal, batch_id) is None:
            raise _no_batch(batch_id)
        batch = await self.store.move(batch_id, b.CANCELLING, (b.VALIDATING, b.IN_PROGRESS))
        if batch is None or batch.status not in (b.CANCELLING, b.CANCELLED):
            status = batch.status if batch else "gone"
            raise FailedPrecondition(
                f"Cannot cancel a batch with status '{status}'", reason="BATCH_NOT_CANCELLABLE", param="batch_id"
            )
        return _json(batch.body)


def _limit(asked: int, default: int, most: int) -> int:
    if asked < 0:
        raise b.invalid("limit must not be negative", "limit")
    return min(asked or default, most)


async def _answer(context, reply: Awaitable[httpbody_pb2.HttpBody]) -> httpbody_pb2.HttpBody:
    """The reply, or on the REST paths the error in OpenAI's shape with its HTTP status;
    a gRPC caller gets the error as a gRPC status (the kit's error mapping)."""
    try:
        return await reply
    except DomainError as error:
        if not any(key == TRANSCODED_PATH_HEADER for key, _ in context.invocation_metadata() or ()):
            raise
        http_status, body = openai_error(error.to_status())
        await context.send_initial_metadata([(HTTP_STATUS_HEADER, str(http_status))])
        return _json(body)
