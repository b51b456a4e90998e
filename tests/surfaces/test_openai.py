"""The OpenAI surface's request checks: `n` capped, fields that would choose the upstream refused."""

from __future__ import annotations

import pytest

from llmgate.config import UPSTREAM_OVERRIDE_FIELDS, parse_settings
from llmgate.errors import InvalidRequest
from llmgate.surfaces.openai import DEFAULT_MAX_N, check_forbidden, validate_chat, validate_embeddings

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def test_n_up_to_the_cap_is_accepted() -> None:
    assert validate_chat({**CHAT, "n": DEFAULT_MAX_N}) == ("m", False)
    assert validate_chat({**CHAT, "n": 4}, max_n=4) == ("m", False)


@pytest.mark.parametrize(("n", "cap"), [(DEFAULT_MAX_N + 1, DEFAULT_MAX_N), (5, 4), (10**12, 16)])
def test_n_over_the_cap_is_refused_naming_n(n: int, cap: int) -> None:
    with pytest.raises(InvalidRequest) as caught:
        validate_chat({**CHAT, "n": n}, max_n=cap)
    assert caught.value.param == "n" and str(cap) in caught.value.message


@pytest.mark.parametrize("field", sorted(UPSTREAM_OVERRIDE_FIELDS))
def test_upstream_fields_are_refused_on_chat_and_embeddings(field: str) -> None:
    for validate, body in ((validate_chat, CHAT), (validate_embeddings, {"model": "e", "input": "x"})):
        with pytest.raises(InvalidRequest) as caught:
            validate({**body, field: "http://169.254.169.254"})
        assert caught.value.param == field and caught.value.status == 400
    check_forbidden({"model": "m", "metadata": {"api_base": "x"}})  # nested data is not a setting


def test_gateway_bounds_have_safe_defaults_and_are_configurable() -> None:
    defaults = parse_settings({}, "t").gateway
    assert (defaults.body_timeout_s, defaults.max_header_bytes, defaults.header_timeout_s, defaults.max_n) == (
        30.0,
        64 * 1024,
        10.0,
        16,
    )
    custom = parse_settings({"gateway": {"max_n": 2, "body_timeout_s": 1.5}}, "t").gateway
    assert custom.max_n == 2 and custom.body_timeout_s == 1.5
