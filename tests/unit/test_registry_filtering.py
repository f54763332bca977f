"""AIP-160 filters and AIP-132 order_by over MessageToDict-shaped registry resources."""

import pytest

from services.registry.filtering import FilterError, compile_filter, compile_order_by

GEMMA = {
    "name": "models/gemma-3-270m",
    "display_name": "Gemma 3 270M",
    "provider": "local",
    "capabilities": ["text-generation", "chat"],
    "labels": {"env": "prod", "team": "core"},
    "pricing": {"input_per_1k_tokens": 0.0},
    "parameters": {"context_window_tokens": 32768, "max_output_tokens": "8192"},
    "create_time": "2026-11-25T10:00:00Z",
    "enabled": True,
}
MINILM = {
    "name": "models/all-minilm-l6-v2",
    "display_name": "all-MiniLM-L6-v2",
    "provider": "local",
    "capabilities": ["embedding"],
    "labels": {"env": "dev"},
    "parameters": {"context_window_tokens": 256},
    "create_time": "2026-11-20T08:30:00.250Z",
}
GPT = {
    "name": "models/gpt-4o-mini",
    "display_name": "GPT-4o mini",
    "provider": "openai",
    "capabilities": ["text-generation", "chat", "tools"],
    "pricing": {"input_per_1k_tokens": 0.15},
    "parameters": {"context_window_tokens": 128000, "max_output_tokens": "16384"},
    "create_time": "2026-12-01T00:00:00Z",
}
MODELS = [GEMMA, MINILM, GPT]


def names(text: str, fields: set[str] | None = None) -> list[str]:
    predicate = compile_filter(text, fields)
    return [model["name"].removeprefix("models/") for model in MODELS if predicate(model)]


def test_empty_filter_accepts_everything():
    assert names("") == names("   \n") == ["gemma-3-270m", "all-minilm-l6-v2", "gpt-4o-mini"]


def test_equality_with_quoted_single_quoted_and_bare_strings():
    assert names('provider = "openai"') == ["gpt-4o-mini"]
    assert names("provider = 'openai'") == ["gpt-4o-mini"]
    assert names("provider = local") == ["gemma-3-270m", "all-minilm-l6-v2"]
    assert names('display_name = "Gemma 3 270M"') == ["gemma-3-270m"]


def test_not_equal():
    assert names("provider != local") == ["gpt-4o-mini"]


def test_string_escapes():
    predicate = compile_filter(r'display_name = "say \"hi\"\\"')
    assert predicate({"display_name": 'say "hi"\\'})
    assert compile_filter(r"display_name = 'it\'s'")({"display_name": "it's"})


def test_ordering_comparisons_on_numbers():
    assert names("parameters.context_window_tokens >= 32768") == ["gemma-3-270m", "gpt-4o-mini"]
    assert names("parameters.context_window_tokens > 32768") == ["gpt-4o-mini"]
    assert names("parameters.context_window_tokens < 32768") == ["all-minilm-l6-v2"]
    assert names("parameters.context_window_tokens <= 256") == ["all-minilm-l6-v2"]
    assert names("pricing.input_per_1k_tokens < 0.5") == ["gemma-3-270m", "gpt-4o-mini"]
    assert names("pricing.input_per_1k_tokens = 0") == ["gemma-3-270m"]
    assert names("pricing.input_per_1k_tokens > 1e-2") == ["gpt-4o-mini"]


def test_int64_held_as_a_string_compares_numerically():
    # "16384" < "8192" as strings; as numbers it is the other way round.
    assert names("parameters.max_output_tokens > 10000") == ["gpt-4o-mini"]
    assert names("parameters.max_output_tokens = 8192") == ["gemma-3-270m"]
    assert names("parameters.max_output_tokens >= 8192.0") == ["gemma-3-270m", "gpt-4o-mini"]
    assert compile_filter("size_bytes > -1")({"size_bytes": "0"})


def test_quoted_number_against_a_number_field_compares_numerically():
    assert names('parameters.context_window_tokens = "256"') == ["all-minilm-l6-v2"]


def test_quoted_strings_against_string_fields_compare_as_strings():
    assert not compile_filter('version = "1.10"')({"version": "1.1"})
    assert compile_filter('version < "1.9"')({"version": "1.10"})


def test_timestamps_compare_chronologically():
    assert names('create_time > "2026-11-24T00:00:00Z"') == ["gemma-3-270m", "gpt-4o-mini"]
    assert names('create_time < "2026-11-25T10:00:00.001Z"') == ["gemma-3-270m", "all-minilm-l6-v2"]
    assert names('create_time = "2026-11-25T11:00:00+01:00"') == ["gemma-3-270m"]
    assert names("create_time >= '2026-12-01'") == ["gpt-4o-mini"]
    # Lexicographically ".250Z" < "Z" would misorder these two; chronologically they are fine.
    assert names('create_time > "2026-11-20T08:30:00Z" AND create_time < "2026-11-21T00:00:00Z"') == [
        "all-minilm-l6-v2"
    ]


def test_booleans_compare_with_true_and_false():
    assert names("enabled = true") == ["gemma-3-270m"]
    assert compile_filter("enabled != false")({"enabled": True})
    assert compile_filter("enabled = false")({"enabled": False})


def test_glob_wildcards_for_equality():
    assert names('display_name = "Gemma*"') == ["gemma-3-270m"]
    assert names('name = "models/*-mini*"') == ["all-minilm-l6-v2", "gpt-4o-mini"]
    assert names('display_name != "*mini*"') == ["gemma-3-270m", "all-minilm-l6-v2"]
    assert names('display_name = "gemma*"') == []  # case-sensitive
    assert names('display_name = "Gemma"') == []  # no star: exact
    assert compile_filter('display_name = "a.b?[c]*"')({"display_name": "a.b?[c]d"})  # only * is special


def test_has_on_a_repeated_field():
    assert names("capabilities:chat") == ["gemma-3-270m", "gpt-4o-mini"]
    assert names('capabilities:"text-generation"') == ["gemma-3-270m", "gpt-4o-mini"]
    assert names("capabilities:text-generation") == ["gemma-3-270m", "gpt-4o-mini"]
    assert names('capabilities:"embed*"') == ["all-minilm-l6-v2"]
    assert names("capabilities:vision") == []


def test_has_on_a_map_field_checks_the_key():
    assert names("labels:env") == ["gemma-3-270m", "all-minilm-l6-v2"]
    assert names("labels:team") == ["gemma-3-270m"]
    assert names("labels:prod") == []  # a value, not a key


def test_has_star_means_present_and_non_empty():
    assert names("pricing:*") == ["gemma-3-270m", "gpt-4o-mini"]
    assert names("labels.team:*") == ["gemma-3-270m"]
    assert not compile_filter("capabilities:*")({"capabilities": []})
    assert not compile_filter("description:*")({"description": ""})


def test_has_on_a_scalar_is_equality():
    assert names("provider:openai") == ["gpt-4o-mini"]


def test_dotted_paths_into_maps_and_messages():
    assert names('labels.env = "prod"') == ["gemma-3-270m"]
    assert names("labels.env = dev") == ["all-minilm-l6-v2"]


def test_missing_fields_compare_as_absent():
    # GPT has no labels; MiniLM has no pricing.
    assert names('labels.env = "prod"') == ["gemma-3-270m"]
    assert names('labels.env != "prod"') == ["all-minilm-l6-v2", "gpt-4o-mini"]
    assert names("pricing.input_per_1k_tokens >= 0") == ["gemma-3-270m", "gpt-4o-mini"]
    assert names("pricing.input_per_1k_tokens < 1") == ["gemma-3-270m", "gpt-4o-mini"]
    assert names("labels:env") == ["gemma-3-270m", "all-minilm-l6-v2"]
    assert names("nonexistent.deeply.nested = 1") == []
    assert names("NOT labels:*") == ["gpt-4o-mini"]


def test_repeated_and_map_fields_do_not_equal_scalars():
    assert names('capabilities = "chat"') == []
    assert names('labels = "prod"') == []


def test_and_or_and_juxtaposition():
    assert names("provider = local AND capabilities:chat") == ["gemma-3-270m"]
    assert names("provider = local capabilities:chat") == ["gemma-3-270m"]
    assert names("provider = openai OR labels.env = dev") == ["all-minilm-l6-v2", "gpt-4o-mini"]
    assert names("provider = openai OR labels.env = dev OR labels.env = prod") == [
        "gemma-3-270m",
        "all-minilm-l6-v2",
        "gpt-4o-mini",
    ]


def test_or_binds_tighter_than_and():
    # a AND (b OR c): GPT is openai but is not local, so it is out.
    text = "provider = local AND labels.env = prod OR provider = openai"
    assert names(text) == ["gemma-3-270m"]
    assert names("provider = local AND (labels.env = prod OR provider = openai)") == ["gemma-3-270m"]
    # Parentheses restore the other reading.
    assert names("(provider = local AND labels.env = prod) OR provider = openai") == ["gemma-3-270m", "gpt-4o-mini"]
    # Juxtaposition, too, binds looser than OR.
    assert names("provider = local labels.env = prod OR provider = openai") == ["gemma-3-270m"]


def test_negation_with_not_and_minus():
    assert names("NOT provider = local") == ["gpt-4o-mini"]
    assert names("-provider = local") == ["gpt-4o-mini"]
    assert names("-capabilities:chat") == ["all-minilm-l6-v2"]
    assert names("NOT (provider = local OR capabilities:tools)") == []
    assert names("NOT NOT provider = openai") == ["gpt-4o-mini"]
    assert names("provider = local AND NOT capabilities:embedding") == ["gemma-3-270m"]


def test_keywords_are_whole_words_only():
    assert compile_filter("ANDROID = 1")({"ANDROID": 1})
    assert compile_filter("provider = ORACLE")({"provider": "ORACLE"})
    assert compile_filter("NOTE = x-AND")({"NOTE": "x-AND"})


def test_allow_list_accepts_listed_top_level_fields():
    fields = {"provider", "labels", "parameters"}
    assert names("provider = local AND labels.env = prod AND parameters.context_window_tokens > 1", fields) == [
        "gemma-3-270m"
    ]


def test_allow_list_rejects_other_fields_with_their_column():
    with pytest.raises(FilterError) as error:
        compile_filter("provider = local AND secret_key:*", {"provider", "labels"})
    assert "secret_key" in str(error.value)
    assert "column 22" in str(error.value)
    assert error.value.column == 22
    # The check is on the first segment only; values that look like paths are not fields.
    assert compile_filter("labels.anything = other.word", {"labels"})
    with pytest.raises(FilterError, match="pricing"):
        compile_filter("NOT pricing.input_per_1k_tokens > 1", {"labels"})


@pytest.mark.parametrize(
    ("text", "column"),
    [
        ("provider =", 11),
        ("provider", 9),
        ("provider = local )", 18),
        ("(provider = local", 18),
        ("provider = local AND", 21),
        ("provider == local", 11),
        ('display_name = "unterminated', 16),
        ("provider = local #", 18),
        ("capabilities = *", 16),
        ("OR provider = local", 1),
        ("provider = local AND OR labels:env", 22),
        ("fn(provider)", 3),
    ],
)
def test_bad_syntax_reports_its_column(text, column):
    with pytest.raises(FilterError) as error:
        compile_filter(text)
    assert error.value.column == column
    assert f"column {column}" in str(error.value)
    assert isinstance(error.value, ValueError)


def test_order_by_empty_is_identity():
    assert compile_order_by("")(MODELS) == MODELS
    assert compile_order_by("  ")([]) == []


def order(text: str, resources=None, fields: set[str] | None = None) -> list[str]:
    return [model["name"].removeprefix("models/") for model in compile_order_by(text, fields)(resources or MODELS)]


def test_order_by_strings_and_desc():
    # Lexicographic by code point: "GPT" < "Gemma" < "all".
    assert order("display_name") == ["gpt-4o-mini", "gemma-3-270m", "all-minilm-l6-v2"]
    assert order("display_name asc") == ["gpt-4o-mini", "gemma-3-270m", "all-minilm-l6-v2"]
    assert order("name desc") == ["gpt-4o-mini", "gemma-3-270m", "all-minilm-l6-v2"]


def test_order_by_numbers_numerically_including_int64_strings():
    assert order("parameters.context_window_tokens") == ["all-minilm-l6-v2", "gemma-3-270m", "gpt-4o-mini"]
    # MiniLM has no max_output_tokens: first ascending, last descending.
    assert order("parameters.max_output_tokens") == ["all-minilm-l6-v2", "gemma-3-270m", "gpt-4o-mini"]
    assert order("parameters.max_output_tokens desc") == ["gpt-4o-mini", "gemma-3-270m", "all-minilm-l6-v2"]


def test_order_by_timestamps_chronologically():
    assert order("create_time") == ["all-minilm-l6-v2", "gemma-3-270m", "gpt-4o-mini"]
    resources = [
        {"name": "models/b", "create_time": "2026-11-25T10:00:00Z"},
        {"name": "models/a", "create_time": "2026-11-25T10:00:00.500Z"},
    ]
    assert order("create_time", resources) == ["b", "a"]


def test_order_by_missing_values_first_ascending_and_last_descending():
    assert order("pricing.input_per_1k_tokens") == ["all-minilm-l6-v2", "gemma-3-270m", "gpt-4o-mini"]
    assert order("pricing.input_per_1k_tokens desc") == ["gpt-4o-mini", "gemma-3-270m", "all-minilm-l6-v2"]


def test_order_by_several_keys_is_a_stable_multi_key_sort():
    assert order("provider, display_name desc") == ["all-minilm-l6-v2", "gemma-3-270m", "gpt-4o-mini"]
    assert order("provider, display_name") == ["gemma-3-270m", "all-minilm-l6-v2", "gpt-4o-mini"]
    assert order("provider desc, parameters.context_window_tokens") == [
        "gpt-4o-mini",
        "all-minilm-l6-v2",
        "gemma-3-270m",
    ]
    # Ties on every key keep the input order.
    assert order("provider") == ["gemma-3-270m", "all-minilm-l6-v2", "gpt-4o-mini"]
    assert order("provider", list(reversed(MODELS))) == ["all-minilm-l6-v2", "gemma-3-270m", "gpt-4o-mini"]


def test_order_by_does_not_modify_its_input():
    resources = list(MODELS)
    compile_order_by("name desc")(resources)
    assert resources == MODELS


@pytest.mark.parametrize(
    ("text", "column"),
    [("name,", 6), ("name desc desc", 11), ("name DESCENDING", 6), (", name", 1), ("name -", 6)],
)
def test_order_by_bad_syntax_reports_its_column(text, column):
    with pytest.raises(FilterError) as error:
        compile_order_by(text)
    assert error.value.column == column
    assert f"column {column}" in str(error.value)


def test_order_by_allow_list():
    assert order("create_time desc", fields={"create_time"}) == ["gpt-4o-mini", "gemma-3-270m", "all-minilm-l6-v2"]
    with pytest.raises(FilterError, match="'labels'.*column 14") as error:
        compile_order_by("create_time, labels.env", {"create_time"})
    assert error.value.column == 14
