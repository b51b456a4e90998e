"""A prompt's contract with its callers: the inputs it takes and the output it promises.

Pure functions: checking a call's body against the declared inputs (422 naming
the field), the JSON schemas published in the catalog and OpenAPI, the
`response_format` asked of the model, and checking the model's JSON against the
declared output schema (502 naming the mismatch: the model, not the caller, broke
the contract).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson

from llmgate.config import UPSTREAM_OVERRIDE_FIELDS
from llmgate.errors import InvalidRequest, Unprocessable, UpstreamError

if TYPE_CHECKING:
    from llmgate.prompting.document import InputSpec, Prompt

EXTRA_MESSAGE_ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
_JSON_TYPES = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "a boolean",
    "array": "an array",
    "object": "an object",
}
_SCHEMA_NAME = re.compile(r"[^A-Za-z0-9_-]")


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _has_type(kind: str, value: Any) -> bool:
    actual = _json_kind(value)
    if kind == "number":
        return actual in ("integer", "number") and math.isfinite(value)
    if kind == "integer" and actual == "number":
        return float(value).is_integer()
    return actual == kind


def check_value(spec: InputSpec, value: Any) -> str | None:
    """Why `value` does not fit `spec`, or None when it does."""
    if not _has_type(spec.type, value):
        return f"expected {_JSON_TYPES[spec.type]}, got {_json_kind(value)}"
    if spec.enum is not None and value not in spec.enum:
        return f"must be one of {', '.join(repr(v) for v in spec.enum)}"
    if spec.type in ("string", "array"):
        unit = "characters" if spec.type == "string" else "items"
        if spec.min_length is not None and len(value) < spec.min_length:
            return f"must have at least {spec.min_length} {unit}"
        if spec.max_length is not None and len(value) > spec.max_length:
            return f"must have at most {spec.max_length} {unit}"
    if spec.type in ("integer", "number"):
        if spec.minimum is not None and value < spec.minimum:
            return f"must be at least {spec.minimum:g}"
        if spec.maximum is not None and value > spec.maximum:
            return f"must be at most {spec.maximum:g}"
    return None


def _invalid(field: str, message: str) -> Unprocessable:
    return Unprocessable(f"Invalid input `{field}`: {message}.", param=field, code="invalid_input")


def validate_inputs(prompt: Prompt, body: Mapping[str, Any]) -> dict[str, Any]:
    """The render context for a call: every declared input, defaults filled in.

    Raises Unprocessable naming the first missing, unknown or ill-typed field (InvalidRequest
    for an undeclared field that would choose the upstream, as on every other surface).
    """
    for field in body:
        if field != "messages" and field not in prompt.inputs:
            if field in UPSTREAM_OVERRIDE_FIELDS:
                raise InvalidRequest(
                    f"`{field}` is not accepted: upstream endpoints and credentials come only from the gateway's "
                    "config.",
                    param=field,
                )
            known = ", ".join(prompt.inputs) or "none"
            raise _invalid(field, f"unknown input (this prompt takes: {known})")
    context: dict[str, Any] = {}
    for name, spec in prompt.inputs.items():
        if name not in body or body[name] is None:
            if spec.is_required:
                raise _invalid(name, "this input is required")
            context[name] = spec.default
            continue
        value = body[name]
        problem = check_value(spec, value)
        if problem:
            raise _invalid(name, problem)
        if spec.type == "integer" and isinstance(value, float):
            value = int(value)
        context[name] = value
    return context


def validate_extra_messages(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The optional `messages` a caller appends after the template's own."""
    extra = body.get("messages")
    if extra is None:
        return []
    if not isinstance(extra, list):
        raise _invalid("messages", "expected an array of messages")
    for i, message in enumerate(extra):
        if not isinstance(message, dict):
            raise _invalid(f"messages[{i}]", "expected an object with `role` and `content`")
        if message.get("role") not in EXTRA_MESSAGE_ROLES:
            raise _invalid(f"messages[{i}].role", f"must be one of {', '.join(sorted(EXTRA_MESSAGE_ROLES))}")
        if "content" not in message and "tool_calls" not in message:
            raise _invalid(f"messages[{i}].content", "this field is required")
    return extra


def build_input_property(spec: InputSpec) -> dict[str, Any]:
    prop: dict[str, Any] = {"type": spec.type}
    if spec.description:
        prop["description"] = spec.description
    if spec.enum is not None:
        prop["enum"] = list(spec.enum)
    if spec.default is not None:
        prop["default"] = spec.default
    lengths = ("minLength", "maxLength") if spec.type == "string" else ("minItems", "maxItems")
    if spec.min_length is not None:
        prop[lengths[0]] = spec.min_length
    if spec.max_length is not None:
        prop[lengths[1]] = spec.max_length
    if spec.minimum is not None:
        prop["minimum"] = spec.minimum
    if spec.maximum is not None:
        prop["maximum"] = spec.maximum
    return prop


EXTRA_MESSAGES_SCHEMA: dict[str, Any] = {
    "type": "array",
    "description": "Messages appended after the template's messages (to continue a conversation).",
    "items": {
        "type": "object",
        "properties": {"role": {"type": "string", "enum": sorted(EXTRA_MESSAGE_ROLES)}, "content": {}},
        "required": ["role"],
    },
}


def build_input_schema(prompt: Prompt) -> dict[str, Any]:
    """The JSON schema of a call's body: the declared inputs plus the optional `messages`."""
    properties = {name: build_input_property(spec) for name, spec in prompt.inputs.items()}
    properties["messages"] = EXTRA_MESSAGES_SCHEMA
    schema: dict[str, Any] = {
        "type": "object",
        "title": f"{prompt.name} inputs",
        "properties": properties,
        "additionalProperties": False,
    }
    required = [name for name, spec in prompt.inputs.items() if spec.is_required]
    if required:
        schema["required"] = required
    return schema


def build_response_format(prompt: Prompt) -> dict[str, Any] | None:
    """OpenAI's structured-output request for a prompt with an output schema."""
    if prompt.output_schema is None:
        return None
    return {
        "type": "json_schema",
        "json_schema": {"name": _SCHEMA_NAME.sub("_", prompt.name)[:64], "schema": prompt.output_schema},
    }


def _json_path(path: Any) -> str:
    out = "$"
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def parse_output(prompt: Prompt, content: str | None) -> Any:
    """The reply's `output`: the text, or the parsed JSON checked against the output schema."""
    if prompt.output_schema is None:
        return content
    try:
        value = orjson.loads(content or "")
    except orjson.JSONDecodeError:
        raise UpstreamError(
            "The model's reply is not valid JSON, but this prompt declares an output schema.",
            code="output_schema_mismatch",
        ) from None
    from jsonschema import Draft202012Validator  # imported here: only prompts with an output schema need it

    errors = sorted(Draft202012Validator(prompt.output_schema).iter_errors(value), key=lambda e: list(e.path))
    if errors:
        first = errors[0]
        raise UpstreamError(
            f"The model's JSON does not match the prompt's output schema at {_json_path(first.path)}: {first.message}",
            code="output_schema_mismatch",
        )
    return value
