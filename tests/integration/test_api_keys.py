"""API keys in the registry (issue 8), on SQLite and on a real PostgreSQL 15: a key is
issued with a secret shown once and stored only as its SHA-256; it authenticates until
it is revoked (at once) or expires; bad input and unknown keys get the right codes."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from infermesh.registry.v1 import registry_resources_pb2 as res
from infermesh.registry.v1 import registry_service_pb2 as pb
from services.registry.database import database_url
from services.runtime.errors import error_info
from support.databases import DATABASES, database
from support.services import registry_server

pytestmark = pytest.mark.asyncio(loop_scope="session")
USER, ADMIN = res.ApiKey.ROLE_USER, res.ApiKey.ROLE_ADMIN


@pytest_asyncio.fixture(scope="module", loop_scope="session", params=DATABASES)
async def registry(request):
    with database(request.param) as (url, data_dir):
        async with registry_server(url, data_dir) as server:
            yield server.registry, database_url(url, data_dir)


async def refusal(call) -> tuple[grpc.StatusCode, str]:
    """The code and ErrorInfo reason a call fails with."""
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await call
    return failed.value.code(), error_info(failed.value).reason


async def test_a_key_is_issued_once_and_only_its_digest_is_stored(registry):
    stub, url = registry
    issued = await stub.CreateApiKey(
        pb.CreateApiKeyRequest(api_key_id="team-a", api_key=res.ApiKey(display_name="Team A", roles=[USER]))
    )
    secret, key = issued.secret, issued.api_key
    assert secret.startswith("imk_") and len(secret) >= 40
    assert key.name == "apiKeys/team-a" and key.prefix == secret[:12] and key.create_time.seconds > 0
    assert list(key.roles) == [USER] and not key.HasField("revoke_time")
    fetched = await stub.GetApiKey(pb.GetApiKeyRequest(name="apiKeys/team-a"))
    assert fetched == key  # and no secret anywhere in it
    assert secret not in str(fetched) and secret[12:] not in str(await stub.ListApiKeys(pb.ListApiKeysRequest()))
    # The database holds the digest, never the secret.
    engine = create_async_engine(url)
    async with engine.connect() as conn:
        rows = (await conn.execute(text("SELECT name, secret_sha256, body FROM api_keys"))).all()
    await engine.dispose()
    assert rows and all(secret not in " ".join(map(str, row)) for row in rows)
    assert await stub.AuthenticateApiKey(pb.AuthenticateApiKeyRequest(secret=secret)) == key


async def test_a_revoked_key_stops_working_at_once(registry):
    stub, _ = registry
    issued = await stub.CreateApiKey(pb.CreateApiKeyRequest(api_key=res.ApiKey(roles=[ADMIN, USER])))
    assert issued.api_key.name.startswith("apiKeys/")  # a random id when none is given
    await stub.AuthenticateApiKey(pb.AuthenticateApiKeyRequest(secret=issued.secret))
    revoked = await stub.RevokeApiKey(pb.RevokeApiKeyRequest(name=issued.api_key.name))
    assert revoked.HasField("revoke_time")
    check = stub.AuthenticateApiKey(pb.AuthenticateApiKeyRequest(secret=issued.secret))
    assert await refusal(check) == (grpc.StatusCode.UNAUTHENTICATED, "API_KEY_REVOKED")
    again = await stub.RevokeApiKey(pb.RevokeApiKeyRequest(name=issued.api_key.name))
    assert again.revoke_time == revoked.revoke_time  # revoking twice changes nothing


async def test_an_expired_key_stops_working_by_itself(registry):
    stub, _ = registry
    key = res.ApiKey(roles=[USER])
    key.expire_time.FromSeconds(int(time.time()) + 2)
    issued = await stub.CreateApiKey(pb.CreateApiKeyRequest(api_key=key))
    await stub.AuthenticateApiKey(pb.AuthenticateApiKeyRequest(secret=issued.secret))
    await asyncio.sleep(2.2)
    check = stub.AuthenticateApiKey(pb.AuthenticateApiKeyRequest(secret=issued.secret))
    assert await refusal(check) == (grpc.StatusCode.UNAUTHENTICATED, "API_KEY_EXPIRED")


async def test_unknown_secrets_bad_input_and_duplicates_get_clear_errors(registry):
    stub, _ = registry
    unknown = stub.AuthenticateApiKey(pb.AuthenticateApiKeyRequest(secret="imk_" + "x" * 43))
    assert await refusal(unknown) == (grpc.StatusCode.UNAUTHENTICATED, "API_KEY_UNKNOWN")
    no_role = stub.CreateApiKey(pb.CreateApiKeyRequest(api_key=res.ApiKey(display_name="nothing")))
    assert (await refusal(no_role))[0] == grpc.StatusCode.INVALID_ARGUMENT
    past = res.ApiKey(roles=[USER])
    past.expire_time.FromSeconds(int(time.time()) - 10)
    assert await refusal(stub.CreateApiKey(pb.CreateApiKeyRequest(api_key=past))) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "EXPIRED_ON_CREATION",
    )
    await stub.CreateApiKey(pb.CreateApiKeyRequest(api_key_id="twice", api_key=res.ApiKey(roles=[USER])))
    duplicate = stub.CreateApiKey(pb.CreateApiKeyRequest(api_key_id="twice", api_key=res.ApiKey(roles=[USER])))
    assert (await refusal(duplicate))[0] == grpc.StatusCode.ALREADY_EXISTS
    missing = stub.GetApiKey(pb.GetApiKeyRequest(name="apiKeys/nobody"))
    assert (await refusal(missing))[0] == grpc.StatusCode.NOT_FOUND


async def test_keys_are_listed_in_pages(registry):
    stub, _ = registry
    for n in range(5):
        await stub.CreateApiKey(pb.CreateApiKeyRequest(api_key_id=f"page-{n}", api_key=res.ApiKey(roles=[USER])))
    seen, token = [], ""
    while True:
        page = await stub.ListApiKeys(pb.ListApiKeysRequest(page_size=2, page_token=token))
        seen += [k.name for k in page.api_keys]
        if not (token := page.next_page_token):
            break
    assert seen == sorted(seen) and {f"apiKeys/page-{n}" for n in range(5)} <= set(seen)
