"""Instructor (structured extraction on top of the OpenAI SDK) against the mesh."""

from __future__ import annotations

import instructor
import pytest

from openai_conformance import BASE_MODEL, CITY_QUESTION, INSTRUCT_MODEL, City, sdk_client


@pytest.mark.parametrize("model", [INSTRUCT_MODEL, BASE_MODEL])
@pytest.mark.parametrize("mode", [instructor.Mode.TOOLS, instructor.Mode.JSON_SCHEMA], ids=["tools", "json_schema"])
def test_create_with_response_model_returns_the_model(base_url, model, mode):
    client = instructor.from_openai(sdk_client(base_url), mode=mode)
    # max_retries=0: one attempt, so a failure is the server's answer (Instructor re-asks 3 times by default).
    city = client.chat.completions.create(
        model=model, response_model=City, messages=CITY_QUESTION, temperature=0, max_tokens=64, max_retries=0
    )
    assert isinstance(city, City) and city.city and city.country
