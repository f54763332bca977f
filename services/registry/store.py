"""The registry's rules over its tables: standard methods for models, versions and
deployments (AIP-133..135), one default version per model, cascades on forced deletes,
etags (AIP-154), and a change-feed entry written in the same transaction as each change.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from google.protobuf import json_format
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.message import Message
from sqlalchemy import Table, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from infermesh.registry.v1 import registry_resources_pb2 as res
from services.registry import schema
from services.registry.database import Database
from services.registry.filtering import FilterError, compile_filter, compile_order_by
from services.runtime.errors import Aborted, AlreadyExists, FailedPrecondition, InvalidArgument, NotFound

DEFAULT_PAGE_SIZE = 50
OUTPUT_ONLY = {"name", "create_time", "update_time", "etag"}
Kind = res.Change.Kind


@dataclass(frozen=True)
class Collection:
    """One resource type: its proto, its table, and how its names are made."""

    message: type[Message]
    table: Table
    collection: str  # the name segment: models/{id}, models/{m}/versions/{id}, ...
    change_field: str  # the Change.resource oneof field

    def name(self, parent: str, resource_id: str) -> str:
        return f"{parent}/{self.collection}/{resource_id}" if parent else f"{self.collection}/{resource_id}"


MODELS = Collection(res.Model, schema.models, "models", "model")
VERSIONS = Collection(res.ModelVersion, schema.model_versions, "versions", "model_version")
DEPLOYMENTS = Collection(res.Deployment, schema.deployments, "deployments", "deployment")


@dataclass
class Page:
    items: list
    next_page_token: str
    total_size: int


class RegistryStore:
    def __init__(self, database: Database) -> None:
        self.db = database
        self._changed = asyncio.Event()

    # -- models ----------------------------------------------------------------------

    async def create_model(self, model_id: str, model: res.Model) -> res.Model:
        model.name = MODELS.name("", model_id)
        _check_fallbacks(model)
        async with self._write() as conn:
            return await self._insert(conn, MODELS, model, {})

    async def create_model_tree(
        self,
        model_id: str,
        model: res.Model,
        versions: dict[str, res.ModelVersion],
        deployments: dict[str, res.Deployment],
    ) -> res.Model:
        """A model with its versions and deployments, all or nothing (the first version
        is the default unless another says it is; deployments without a version serve
        the default)."""
        model.name = MODELS.name("", model_id)
        _check_fallbacks(model)
        async with self._write() as conn:
            await self._insert(conn, MODELS, model, {})
            if versions and not any(v.is_default for v in versions.values()):
                next(iter(versions.values())).is_default = True
            default = ""
            for version_id, version in versions.items():
                version.name = VERSIONS.name(model.name, version_id)
                await self._insert(conn, VERSIONS, version, {"model": model.name, "is_default": version.is_default})
                default = version.name if version.is_default else default
            for deployment_id, deployment in deployments.items():
                deployment.name = DEPLOYMENTS.name(model.name, deployment_id)
                deployment.version = deployment.version or default
                await self._check_version(conn, deployment)
                columns = {"model": model.name, "version": deployment.version}
                await self._insert(conn, DEPLOYMENTS, deployment, columns)
        return model

    async def get_model(self, name: str) -> res.Model:
        async with self.db.read() as conn:
            return await self._get(conn, MODELS, name)

    async def list_models(self, page_size: int, page_token: str, filter_text: str, order_by: str) -> Page:
        return await self._list(MODELS, "", page_size, page_token, filter_text, order_by)

    async def update_model(self, model: res.Model, mask: FieldMask) -> res.Model:
        async with self._write() as conn:
            current = await self._get(conn, MODELS, model.name)
            merged = _merge(current, model, mask)
            _check_fallbacks(merged)
            return await self._replace(conn, MODELS, merged, {})

    async def delete_model(self, name: str, etag: str, force: bool) -> list[res.ModelVersion]:
        """Deletes the model (and, with force, its versions and deployments); returns the
        versions deleted, whose artifacts may go too."""
        async with self._write() as conn:
            model = await self._get(conn, MODELS, name)
            _check_etag(model, etag)
            versions = await self._children(conn, VERSIONS, name)
            deployments = await self._children(conn, DEPLOYMENTS, name)
            if (versions or deployments) and not force:
                raise FailedPrecondition(
                    f"{name} has {len(versions)} versions and {len(deployments)} deployments; "
                    "delete them first or pass force",
                    reason="HAS_CHILDREN",
                    model=name,
                    versions=len(versions),
                    deployments=len(deployments),
                )
            for child, collection in [*((d, DEPLOYMENTS) for d in deployments), *((v, VERSIONS) for v in versions)]:
                await self._remove(conn, collection, child)
            await self._remove(conn, MODELS, model)
        return versions

    # -- versions --------------------------------------------------------------------

    async def create_version(self, parent: str, version_id: str, version: res.ModelVersion) -> res.ModelVersion:
        version.name = VERSIONS.name(parent, version_id)
        async with self._write() as conn:
            await self._get(conn, MODELS, parent)
            siblings = await self._children(conn, VERSIONS, parent)
            if not siblings:
                version.is_default = True  # a model with versions always has a default
            elif version.is_default:
                await self._clear_default(conn, siblings)
            return await self._insert(conn, VERSIONS, version, {"model": parent, "is_default": version.is_default})

    async def get_version(self, name: str) -> res.ModelVersion:
        async with self.db.read() as conn:
            return await self._get(conn, VERSIONS, name)

    async def version_exists(self, name: str) -> bool:
        query = select(func.count()).where(schema.model_versions.c.name == name)
        async with self.db.read() as conn:
            return bool((await conn.execute(query)).scalar_one())

    async def list_versions(
        self, parent: str, page_size: int, page_token: str, filter_text: str, order_by: str
    ) -> Page:
        return await self._list(VERSIONS, parent, page_size, page_token, filter_text, order_by)

    async def update_version(self, version: res.ModelVersion, mask: FieldMask) -> res.ModelVersion:
        async with self._write() as conn:
            current = await self._get(conn, VERSIONS, version.name)
            merged = _merge(current, version, mask)
            model = _parent(merged.name)
            if current.is_default and not merged.is_default:
                raise FailedPrecondition(
                    f"{merged.name} is the default version of {model}; make another version the default instead",
                    reason="DEFAULT_VERSION_REQUIRED",
                    version=merged.name,
                )
            if merged.is_default and not current.is_default:
                others = [v for v in await self._children(conn, VERSIONS, model) if v.name != merged.name]
                await self._clear_default(conn, others)
            return await self._replace(conn, VERSIONS, merged, {"is_default": merged.is_default})

    async def delete_version(self, name: str, etag: str, force: bool) -> res.ModelVersion:
        async with self._write() as conn:
            version = await self._get(conn, VERSIONS, name)
            _check_etag(version, etag)
            model = _parent(name)
            serving = [d for d in await self._children(conn, DEPLOYMENTS, model) if d.version == name]
            if serving and not force:
                raise FailedPrecondition(
                    f"{name} is deployed by {', '.join(d.name for d in serving)}; delete those first or pass force",
                    reason="VERSION_DEPLOYED",
                    version=name,
                    deployments=",".join(d.name for d in serving),
                )
            others = [v for v in await self._children(conn, VERSIONS, model) if v.name != name]
            if version.is_default and others:
                raise FailedPrecondition(
                    f"{name} is the default version of {model}; make another version the default first",
                    reason="DEFAULT_VERSION_REQUIRED",
                    version=name,
                )
            for deployment in serving:
                await self._remove(conn, DEPLOYMENTS, deployment)
            await self._remove(conn, VERSIONS, version)
        return version

    # -- deployments -----------------------------------------------------------------

    async def create_deployment(self, parent: str, deployment_id: str, deployment: res.Deployment) -> res.Deployment:
        deployment.name = DEPLOYMENTS.name(parent, deployment_id)
        _require(deployment, "backend")
        async with self._write() as conn:
            await self._get(conn, MODELS, parent)
            if not deployment.version:  # the model's default version
                defaults = [v.name for v in await self._children(conn, VERSIONS, parent) if v.is_default]
                if not defaults:
                    raise FailedPrecondition(
                        f"{parent} has no versions yet; create one before deploying it",
                        reason="NO_VERSION",
                        model=parent,
                    )
                deployment.version = defaults[0]
            await self._check_version(conn, deployment)
            columns = {"model": parent, "version": deployment.version}
            return await self._insert(conn, DEPLOYMENTS, deployment, columns)

    async def get_deployment(self, name: str) -> res.Deployment:
        async with self.db.read() as conn:
            return await self._get(conn, DEPLOYMENTS, name)

    async def list_deployments(
        self, parent: str, page_size: int, page_token: str, filter_text: str, order_by: str
    ) -> Page:
        return await self._list(DEPLOYMENTS, parent, page_size, page_token, filter_text, order_by)

    async def update_deployment(self, deployment: res.Deployment, mask: FieldMask) -> res.Deployment:
        async with self._write() as conn:
            current = await self._get(conn, DEPLOYMENTS, deployment.name)
            merged = _merge(current, deployment, mask)
            await self._check_version(conn, merged)
            return await self._replace(conn, DEPLOYMENTS, merged, {"version": merged.version})

    async def delete_deployment(self, name: str, etag: str) -> None:
        async with self._write() as conn:
            deployment = await self._get(conn, DEPLOYMENTS, name)
            _check_etag(deployment, etag)
            await self._remove(conn, DEPLOYMENTS, deployment)

    # -- the change feed -------------------------------------------------------------

    async def changes_after(self, sequence: int, limit: int = 256) -> list[res.Change]:
        query = (
            select(schema.changes)
            .where(schema.changes.c.sequence > sequence)
            .order_by(schema.changes.c.sequence)
            .limit(limit)
        )
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).all()
        return [_change(row) for row in rows]

    def next_change(self) -> asyncio.Event:
        """Set when this process next commits a change. Take it before reading the feed,
        so a change committed in between is not missed; changes made by other replicas
        of the registry are seen when the feed is next read."""
        return self._changed

    @staticmethod
    async def wait(signal: asyncio.Event, timeout: float) -> None:
        try:
            await asyncio.wait_for(signal.wait(), timeout)
        except TimeoutError:
            pass

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction; once it has committed, watchers in this process look again."""
        async with self.db.write() as conn:
            yield conn
        self._changed.set()
        self._changed = asyncio.Event()

    # -- shared mechanics ------------------------------------------------------------

    async def _get(self, conn: AsyncConnection, collection: Collection, name: str) -> Message:
        row = (await conn.execute(select(collection.table).where(collection.table.c.name == name))).first()
        if row is None:
            raise NotFound(f"{name} does not exist", reason="RESOURCE_NOT_FOUND", name=name)
        return json_format.Parse(row.body, collection.message())

    async def _children(self, conn: AsyncConnection, collection: Collection, parent: str) -> list:
        query = select(collection.table.c.body).where(collection.table.c.model == parent)
        query = query.order_by(collection.table.c.name)
        return [json_format.Parse(body, collection.message()) for (body,) in (await conn.execute(query)).all()]

    async def _insert(self, conn: AsyncConnection, collection: Collection, message: Message, columns: dict) -> Message:
        exists = await conn.execute(select(func.count()).where(collection.table.c.name == message.name))
        if exists.scalar_one():
            raise AlreadyExists(f"{message.name} already exists", reason="RESOURCE_EXISTS", name=message.name)
        now = _now()
        message.create_time.FromDatetime(now)
        message.update_time.FromDatetime(now)
        _stamp(message)
        await conn.execute(
            insert(collection.table).values(
                name=message.name, body=(body := _json(message)), etag=message.etag, **columns
            )
        )
        await self._record(conn, Kind.KIND_CREATED, collection, message.name, body, now)
        return message

    async def _replace(self, conn: AsyncConnection, collection: Collection, message: Message, columns: dict) -> Message:
        now = _now()
        message.update_time.FromDatetime(now)
        _stamp(message)
        table = collection.table
        await conn.execute(
            update(table)
            .where(table.c.name == message.name)
            .values(body=(body := _json(message)), etag=message.etag, **columns)
        )
        await self._record(conn, Kind.KIND_UPDATED, collection, message.name, body, now)
        return message

    async def _remove(self, conn: AsyncConnection, collection: Collection, message: Message) -> None:
        await conn.execute(delete(collection.table).where(collection.table.c.name == message.name))
        await self._record(conn, Kind.KIND_DELETED, collection, message.name, _json(message), _now())

    async def _clear_default(self, conn: AsyncConnection, versions: Iterable[res.ModelVersion]) -> None:
        for version in versions:
            if version.is_default:
                version.is_default = False
                await self._replace(conn, VERSIONS, version, {"is_default": False})

    async def _check_version(self, conn: AsyncConnection, deployment: res.Deployment) -> None:
        model = _parent(deployment.name)
        if _parent(deployment.version) != model:
            raise InvalidArgument(
                f"{deployment.name} can only serve a version of {model}, not {deployment.version}",
                reason="VERSION_OF_ANOTHER_MODEL",
                deployment=deployment.name,
                version=deployment.version,
            )
        await self._get(conn, VERSIONS, deployment.version)

    async def _record(
        self, conn: AsyncConnection, kind: int, collection: Collection, name: str, body: str, when
    ) -> None:
        await conn.execute(
            insert(schema.changes).values(
                kind=Kind.Name(kind),
                name=name,
                resource_type=collection.change_field,
                body=body,
                change_time=when,
            )
        )

    async def _list(
        self, collection: Collection, parent: str, page_size: int, page_token: str, filter_text: str, order_by: str
    ) -> Page:
        fields = {f.name for f in collection.message.DESCRIPTOR.fields}
        try:
            matches = compile_filter(filter_text, fields)
            ordered = compile_order_by(order_by or "name", fields)
        except FilterError as error:
            raise InvalidArgument(str(error), reason="INVALID_FILTER", filter=filter_text, order_by=order_by) from None
        query = select(collection.table.c.body)
        one_model = parent not in ("", "models/-")
        if one_model:
            query = query.where(collection.table.c.model == parent)
        async with self.db.read() as conn:
            if one_model:
                await self._get(conn, MODELS, parent)
            bodies = [body for (body,) in (await conn.execute(query)).all()]
        resources = {r.name: r for r in (json_format.Parse(body, collection.message()) for body in bodies)}
        views = [
            json_format.MessageToDict(r, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
            for r in resources.values()
        ]
        selected = ordered([view for view in views if matches(view)])
        query_key = _query_key(parent, filter_text, order_by)
        start = _decode_token(page_token, query_key)
        size = page_size or DEFAULT_PAGE_SIZE
        page = [resources[view["name"]] for view in selected[start : start + size]]
        end = start + len(page)
        token = _encode_token(end, query_key) if end < len(selected) else ""
        return Page(page, token, len(selected))


def _merge(current: Message, incoming: Message, mask: FieldMask) -> Message:
    """`current` with the fields `mask` names taken from `incoming` (AIP-134)."""
    if incoming.etag and incoming.etag != current.etag:
        raise Aborted(
            f"{current.name} changed since it was read (etag {incoming.etag!r}, now {current.etag!r}); "
            "read it again and retry",
            reason="ETAG_MISMATCH",
            name=current.name,
            etag=current.etag,
        )
    descriptor = current.DESCRIPTOR
    mutable = [f.name for f in descriptor.fields if f.name not in OUTPUT_ONLY]
    if not mask.paths:
        paths = [f.name for f, _ in incoming.ListFields() if f.name not in OUTPUT_ONLY]
    elif "*" in mask.paths:
        paths = mutable
    else:
        paths = [p for p in mask.paths if p.split(".")[0] not in OUTPUT_ONLY]
    unknown = [p for p in paths if not FieldMask(paths=[p]).IsValidForDescriptor(descriptor)]
    if unknown:
        raise InvalidArgument(
            f"update_mask names fields {descriptor.name} does not have: {', '.join(unknown)}",
            reason="INVALID_UPDATE_MASK",
            paths=",".join(unknown),
        )
    merged = type(current)()
    merged.CopyFrom(current)
    if paths:
        FieldMask(paths=paths).MergeMessage(incoming, merged, replace_message_field=True, replace_repeated_field=True)
    return merged


def _require(resource: Message, *fields: str) -> None:
    missing = [f for f in fields if not getattr(resource, f)]
    if missing:
        kind = type(resource).DESCRIPTOR.name
        raise InvalidArgument(
            f"a new {kind} needs {', '.join(missing)}", reason="REQUIRED_FIELD", fields=",".join(missing)
        )


def _check_etag(resource: Message, etag: str) -> None:
    if etag and etag != resource.etag:
        raise Aborted(
            f"{resource.name} changed since it was read (etag {etag!r}, now {resource.etag!r}); read it again and retry",
            reason="ETAG_MISMATCH",
            name=resource.name,
            etag=resource.etag,
        )


def _check_fallbacks(model: res.Model) -> None:
    if model.name in model.fallbacks:
        raise InvalidArgument(f"{model.name} cannot be its own fallback", reason="SELF_FALLBACK", model=model.name)


def _parent(name: str) -> str:
    return "/".join(name.split("/")[:2])


def _now() -> datetime:
    return datetime.now(UTC)


def _stamp(message: Message) -> None:
    message.etag = ""
    digest = hashlib.sha256(message.SerializeToString(deterministic=True)).digest()
    message.etag = base64.urlsafe_b64encode(digest[:12]).decode()


def _json(message: Message) -> str:
    return json_format.MessageToJson(message, preserving_proto_field_name=True, indent=None)


def _change(row) -> res.Change:
    change = res.Change(sequence=row.sequence, kind=Kind.Value(row.kind), name=row.name)
    change.change_time.FromDatetime(row.change_time if row.change_time.tzinfo else row.change_time.replace(tzinfo=UTC))
    json_format.Parse(row.body, getattr(change, row.resource_type))
    return change


def _query_key(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def _encode_token(offset: int, query_key: str) -> str:
    return base64.urlsafe_b64encode(json.dumps({"o": offset, "q": query_key}).encode()).decode()


def _decode_token(token: str, query_key: str) -> int:
    if not token:
        return 0
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        offset, key = int(data["o"]), data["q"]
    except (ValueError, KeyError, TypeError):
        raise InvalidArgument("page_token is not one this service issued", reason="INVALID_PAGE_TOKEN") from None
    if key != query_key or offset < 0:
        raise InvalidArgument(
            "page_token belongs to a different query: keep parent, filter and order_by unchanged between pages",
            reason="INVALID_PAGE_TOKEN",
        )
    return offset
