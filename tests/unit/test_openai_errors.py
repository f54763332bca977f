"""Errors on the OpenAI-compatible paths in OpenAI's shape (services/runtime/openai_errors.py):
the HTTP status an SDK picks its exception class by, `message` as the SDKs show it, and
the type, code and param OpenAI's own errors carry."""

from __future__ import annotations

import httpx2
import openai
import pytest
from google.rpc import code_pb2, status_pb2

from services.router.core.resolvers import RegistryResolver
from services.runtime import errors
from services.runtime.openai_errors import openai_error, openai_error_body, retry_after_seconds


def test_an_unknown_model_is_a_404_model_not_found_naming_the_model_param():
    status, body = openai_error(
        errors.NotFound("model 'x' is not registered", reason="MODEL_NOT_FOUND", model="x").to_status()
    )
    assert status == 404
    assert body["error"] == {
        "message": "model 'x' is not registered",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
        "details": {"reason": "MODEL_NOT_FOUND", "domain": "infermesh.dev", "metadata": {"model": "x"}},
    }


def test_a_bad_field_is_a_400_naming_the_first_field():
    status, body = openai_error(
        errors.InvalidArgument("invalid request: n: ...", reason="INVALID_REQUEST_FIELDS", fields="n,top_p").to_status()
    )
    assert status == 400
    assert body["error"]["param"] == "n" and body["error"]["code"] == "invalid_request_fields"
    assert body["error"]["type"] == "invalid_request_error"
    # An explicit `param` wins over `fields`; a reason about one field names it.
    explicit = errors.InvalidArgument("x", reason="INVALID_REQUEST_FIELDS", param="stop", fields="n")
    assert openai_error(explicit.to_status())[1]["error"]["param"] == "stop"
    too_many = errors.InvalidArgument("max_tokens 9 is above", reason="MAX_TOKENS_TOO_LARGE", max_tokens=9)
    assert openai_error(too_many.to_status())[1]["error"]["param"] == "max_tokens"


def test_a_prompt_past_the_context_window_has_openais_code():
    error = errors.InvalidArgument("prompt too long", reason="CONTEXT_LENGTH_EXCEEDED", model="m", context_length=8)
    status, body = openai_error(error.to_status())
    assert (status, body["error"]["code"], body["error"]["param"]) == (400, "context_length_exceeded", None)


def test_every_unauthenticated_error_is_an_invalid_api_key_authentication_error():
    for reason in ("API_KEY_UNKNOWN", "API_KEY_REVOKED", "API_KEY_EXPIRED"):
        status, body = openai_error(errors.Unauthenticated("the API key was revoked", reason=reason).to_status())
        assert status == 401
        assert body["error"]["type"] == "authentication_error" and body["error"]["code"] == "invalid_api_key"
    # Without an ErrorInfo (the gateway's own refusals) too.
    bare = status_pb2.Status(code=code_pb2.UNAUTHENTICATED, message="credentials are required")
    assert openai_error(bare)[1]["error"]["code"] == "invalid_api_key"


def test_a_refused_model_is_a_403_permission_error():
    denied = errors.PermissionDenied("may not use 'gemma'", reason="MODEL_NOT_ALLOWED", model="gemma")
    status, body = openai_error(denied.to_status())
    assert (status, body["error"]["type"], body["error"]["code"]) == (403, "permission_error", "model_not_allowed")


def test_a_rate_limit_is_a_429_rate_limit_error_with_its_retry_after():
    limited = errors.ResourceExhausted(
        "rate limit exceeded", reason="RATE_LIMIT_EXCEEDED", retry_after=2.5, limit="requests_per_minute"
    )
    status, body = openai_error(limited.to_status())
    assert (status, body["error"]["type"], body["error"]["code"]) == (429, "rate_limit_error", "rate_limit_exceeded")
    assert body["error"]["details"]["metadata"]["limit"] == "requests_per_minute"
    assert retry_after_seconds(limited.to_status()) == 3
    assert retry_after_seconds(errors.NotFound("x", reason="MODEL_NOT_FOUND").to_status()) is None


def directory_error(deployments: int) -> status_pb2.Status:
    """The router's MODEL_NOT_DEPLOYED, as its directory raises it."""
    return errors.Unavailable(
        "model 'm' has no deployment with traffic on a backend of this mesh",
        reason="MODEL_NOT_DEPLOYED",
        model="m",
        deployments=deployments,
    ).to_status()


def test_a_model_with_no_deployment_is_a_404_that_sdks_do_not_retry():
    status, body = openai_error(directory_error(0))
    assert (status, body["error"]["type"], body["error"]["code"]) == (
        404,
        "invalid_request_error",
        "model_not_deployed",
    )


def test_a_deployment_whose_backend_is_down_or_restarting_stays_a_503_that_sdks_retry():
    status, body = openai_error(directory_error(1))
    assert (status, body["error"]["type"], body["error"]["code"]) == (503, "server_error", "model_not_deployed")
    cooling = errors.Unavailable("cooling down", reason="BACKEND_COOLING", backend="b")
    assert openai_error(cooling.to_status())[0] == 503


def test_the_directory_says_how_many_deployments_a_model_has_when_it_cannot_route_it():
    """The directory's two MODEL_NOT_DEPLOYED cases: none with traffic (404 above), and
    some whose backends are not in the catalog (503)."""
    from infermesh.registry.v1 import registry_resources_pb2 as res
    from services.runtime.catalog import EmbeddedCatalog

    directory = RegistryResolver(EmbeddedCatalog.of([]))
    directory.apply(res.Change(sequence=1, name="models/m", model=res.Model(name="models/m")))
    with pytest.raises(errors.Unavailable) as none:
        directory.route("m")
    assert none.value.metadata["deployments"] == "0"
    deployment = res.Deployment(name="models/m/deployments/d", version="models/m/versions/v", backend="away")
    deployment.traffic_weight = 100
    directory.apply(res.Change(sequence=2, name=deployment.name, deployment=deployment))
    with pytest.raises(errors.Unavailable) as away:
        directory.route("m")
    assert away.value.metadata["deployments"] == "1"


def test_server_errors_say_nothing_internal_and_name_their_grpc_code():
    status, body = openai_error(errors.internal_status())
    assert status == 500
    assert body["error"] == {"message": "internal error", "type": "server_error", "param": None, "code": "internal"}
    assert openai_error(status_pb2.Status(code=code_pb2.DEADLINE_EXCEEDED))[0] == 504
    assert openai_error(status_pb2.Status(code=code_pb2.UNIMPLEMENTED, message="x"))[1]["error"]["code"] == (
        "unimplemented"
    )


def test_the_body_builder_picks_the_type_by_status():
    types = {s: openai_error_body(s, "m", None)["error"]["type"] for s in (400, 404, 409, 413, 415, 422)}
    assert set(types.values()) == {"invalid_request_error"}
    assert openai_error_body(503, "m", None)["error"]["type"] == "server_error"
    assert openai_error_body(400, "m", "c", type="x")["error"] == {
        "message": "m",
        "type": "x",
        "param": None,
        "code": "c",
    }


@pytest.mark.parametrize(
    ("error", "exception"),
    [
        (errors.NotFound("model 'x' is not registered", reason="MODEL_NOT_FOUND", model="x"), openai.NotFoundError),
        (errors.Unauthenticated("the API key was revoked", reason="API_KEY_REVOKED"), openai.AuthenticationError),
        (errors.ResourceExhausted("rate limit exceeded", reason="RATE_LIMIT_EXCEEDED"), openai.RateLimitError),
        (errors.InvalidArgument("n: must be 1", reason="INVALID_REQUEST_FIELDS", fields="n"), openai.BadRequestError),
    ],
)
def test_the_official_sdk_raises_its_class_and_shows_our_message(error, exception):
    status, body = openai_error(error.to_status())

    def answer(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(status, json=body)

    client = openai.OpenAI(
        base_url="http://mesh.test/v1",
        api_key="k",
        max_retries=0,
        http_client=openai.DefaultHttpxClient(transport=httpx2.MockTransport(answer)),
    )
    with pytest.raises(exception) as raised:
        client.models.retrieve("x")
    assert raised.value.message == f"Error code: {status} - {error.message}"
    assert raised.value.body["message"] == error.message and raised.value.code == body["error"]["code"]
