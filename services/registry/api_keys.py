"""API keys: issued with a random secret shown once, stored as the secret's SHA-256,
listed, revoked, and checked for the gateway's authorization service.

A secret is `imk_` and 43 URL-safe characters (256 random bits), so a plain SHA-256 is
the right store: there is nothing to guess, and a lookup by digest takes one index read.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime

from google.protobuf import json_format
from sqlalchemy import insert, select, update

from infermesh.registry.v1 import registry_resources_pb2 as res
from services.registry import schema
from services.registry.database import Database
from services.runtime.errors import AlreadyExists, InvalidArgument, NotFound, Unauthenticated

SECRET_PREFIX = "imk_"
SHOWN_PREFIX = len(SECRET_PREFIX) + 8
MAX_PAGE = 1000


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _json(key: res.ApiKey) -> str:
    return json_format.MessageToJson(key, preserving_proto_field_name=True, indent=None)


def _parse(body: str) -> res.ApiKey:
    return json_format.Parse(body, res.ApiKey())


class ApiKeyStore:
    def __init__(self, database: Database) -> None:
        self.db = database

    async def create(self, key_id: str, key: res.ApiKey) -> tuple[res.ApiKey, str]:
        """The new key and its secret (the only time the secret exists outside the caller)."""
        key_id = key_id or secrets.token_hex(6)
        if key.HasField("expire_time") and key.expire_time.ToDatetime(UTC) <= datetime.now(UTC):
            raise InvalidArgument("expire_time is in the past", reason="EXPIRED_ON_CREATION")
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        issued = res.ApiKey()
        issued.CopyFrom(key)
        issued.name = f"apiKeys/{key_id}"
        issued.prefix = secret[:SHOWN_PREFIX]
        issued.ClearField("revoke_time")
        issued.create_time.FromDatetime(datetime.now(UTC))
        async with self.db.write() as conn:
            taken = await conn.execute(select(schema.api_keys.c.name).where(schema.api_keys.c.name == issued.name))
            if taken.first() is not None:
                raise AlreadyExists(f"{issued.name} already exists", reason="RESOURCE_EXISTS", name=issued.name)
            await conn.execute(
                insert(schema.api_keys).values(name=issued.name, secret_sha256=digest(secret), body=_json(issued))
            )
        return issued, secret

    async def get(self, name: str) -> res.ApiKey:
        async with self.db.read() as conn:
            row = (await conn.execute(select(schema.api_keys.c.body).where(schema.api_keys.c.name == name))).first()
        if row is None:
            raise NotFound(f"{name} does not exist", reason="RESOURCE_NOT_FOUND", name=name)
        return _parse(row.body)

    async def list(self, page_size: int, page_token: str) -> tuple[list[res.ApiKey], str]:
        size = min(page_size or 50, MAX_PAGE)
        query = select(schema.api_keys.c.name, schema.api_keys.c.body).order_by(schema.api_keys.c.name)
        if page_token:
            query = query.where(schema.api_keys.c.name > page_token)
        async with self.db.read() as conn:
            rows = (await conn.execute(query.limit(size + 1))).all()
        keys = [_parse(row.body) for row in rows[:size]]
        return keys, (rows[size - 1].name if len(rows) > size else "")

    async def revoke(self, name: str) -> res.ApiKey:
        async with self.db.write() as conn:
            row = (await conn.execute(select(schema.api_keys.c.body).where(schema.api_keys.c.name == name))).first()
            if row is None:
                raise NotFound(f"{name} does not exist", reason="RESOURCE_NOT_FOUND", name=name)
            key = _parse(row.body)
            if not key.HasField("revoke_time"):
                key.revoke_time.FromDatetime(datetime.now(UTC))
                await conn.execute(
                    update(schema.api_keys).where(schema.api_keys.c.name == name).values(body=_json(key))
                )
        return key

    async def authenticate(self, secret: str) -> res.ApiKey:
        """The key this secret belongs to, if it works now; UNAUTHENTICATED otherwise (the
        reason says which, never echoing the secret)."""
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    select(schema.api_keys.c.body).where(schema.api_keys.c.secret_sha256 == digest(secret))
                )
            ).first()
        if row is None:
            raise Unauthenticated("the API key is not recognised", reason="API_KEY_UNKNOWN")
        key = _parse(row.body)
        if key.HasField("revoke_time"):
            raise Unauthenticated(f"the API key {key.name} was revoked", reason="API_KEY_REVOKED", name=key.name)
        if key.HasField("expire_time") and key.expire_time.ToDatetime(UTC) <= datetime.now(UTC):
            raise Unauthenticated(f"the API key {key.name} has expired", reason="API_KEY_EXPIRED", name=key.name)
        return key
