"""The prompt document: its fields, their validation, and reading it from a TOML file.

A document is what a prompt file holds and what `PUT /admin/prompts/{name}`
receives. Everything about it that can be wrong is found here, when it is saved
or loaded, never when it is called: field types, input declarations, the output
JSON schema, and (through `llmgate.prompting.templates`) the message templates.
Problems are collected, one line each, naming where they are.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from llmgate.config import UPSTREAM_OVERRIDE_FIELDS

PromptState = Literal["draft", "published", "deprecated", "retired"]
InputType = Literal["string", "integer", "number", "boolean", "array", "object"]
MessageRole = Literal["system", "developer", "user", "assistant"]

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_INPUT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
# Names the template engine or the request body already use.
RESERVED_INPUTS = frozenset(
    {"messages", "self", "loop", "caller", "varargs", "kwargs", "range", "true", "false", "none"}
)
# Request fields the gateway sets itself; a document's `parameters` may not override them.
RESERVED_PARAMETERS = frozenset({"model", "messages", "stream", "stream_options", "n"})


@dataclass(frozen=True, slots=True)
class Problem:
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" if self.where else self.message


class DocumentError(Exception):
    """An invalid prompt document; `problems` holds one located problem each."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(str(p) for p in problems))
        self.problems = problems


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(_Strict):
    """One declared input. Required unless it says otherwise or has a default."""

    type: InputType = "string"
    required: bool | None = None
    default: Any = None
    description: str | None = None
    enum: tuple[Any, ...] | None = Field(None, min_length=1)
    min_length: int | None = Field(None, ge=0)
    max_length: int | None = Field(None, ge=0)
    minimum: float | None = None
    maximum: float | None = None

    @property
    def is_required(self) -> bool:
        return self.required if self.required is not None else self.default is None

    @model_validator(mode="after")
    def _consistent(self) -> InputSpec:
        from llmgate.prompting.inputs import check_value

        if self.required and self.default is not None:
            raise ValueError("an input with a default cannot be required")
        if (self.min_length is not None or self.max_length is not None) and self.type not in ("string", "array"):
            raise ValueError("min_length/max_length apply to string and array inputs only")
        if (self.minimum is not None or self.maximum is not None) and self.type not in ("integer", "number"):
            raise ValueError("minimum/maximum apply to integer and number inputs only")
        if self.min_length is not None and self.max_length is not None and self.min_length > self.max_length:
            raise ValueError("min_length is greater than max_length")
        if self.minimum is not None and self.maximum is not None and self.minimum > self.maximum:
            raise ValueError("minimum is greater than maximum")
        for value in self.enum or ():
            problem = check_value(self.model_copy(update={"enum": None}), value)
            if problem:
                raise ValueError(f"enum value {value!r}: {problem}")
        if self.default is not None:
            problem = check_value(self, self.default)
            if problem:
                raise ValueError(f"default {self.default!r}: {problem}")
        return self


class MessageTemplate(_Strict):
    role: MessageRole
    content: str = Field(min_length=1)


class Prompt(_Strict):
    """A prompt document as validated; `to_document()` is its stored JSON form."""

    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    model: str = Field(min_length=1)
    parameters: dict[str, Any] = Field(default_factory=dict)
    inputs: dict[str, InputSpec] = Field(default_factory=dict)
    messages: tuple[MessageTemplate, ...] = Field(min_length=1)
    output_schema: dict[str, Any] | None = None
    state: PromptState = "published"
    team: str | None = None
    visibility: tuple[str, ...] | None = None
    sunset: date | None = None

    @field_validator("inputs")
    @classmethod
    def _input_names(cls, inputs: dict[str, InputSpec]) -> dict[str, InputSpec]:
        for name in inputs:
            if not _INPUT_NAME.match(name):
                raise ValueError(f"input name {name!r} must be an identifier (letters, digits, _)")
            if name.lower() in RESERVED_INPUTS:
                raise ValueError(f"input name {name!r} is reserved")
        return inputs

    @field_validator("parameters")
    @classmethod
    def _parameters(cls, parameters: dict[str, Any]) -> dict[str, Any]:
        taken = sorted(RESERVED_PARAMETERS & parameters.keys())
        if taken:
            raise ValueError(f"the gateway sets {', '.join(taken)} itself")
        redirecting = sorted(UPSTREAM_OVERRIDE_FIELDS & parameters.keys())
        if redirecting:
            raise ValueError(f"{', '.join(redirecting)}: upstream endpoints and credentials come only from config")
        return parameters

    @field_validator("output_schema")
    @classmethod
    def _output_schema(cls, schema: dict[str, Any] | None) -> dict[str, Any] | None:
        if schema is None:
            return None
        from jsonschema import Draft202012Validator  # imported here: only prompts with an output schema need it
        from jsonschema.exceptions import SchemaError

        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as exc:
            raise ValueError(f"not a valid JSON schema: {exc.message}") from None
        return schema

    @model_validator(mode="after")
    def _response_format(self) -> Prompt:
        if self.output_schema is not None and "response_format" in self.parameters:
            raise ValueError("set either output_schema or parameters.response_format, not both")
        return self

    def to_document(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


def _where(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def parse_prompt(document: Any) -> Prompt:
    """Validate a document's fields (templates are checked by `compile_prompt`); raises DocumentError."""
    if not isinstance(document, dict):
        raise DocumentError([Problem("", "a prompt document must be a JSON object / TOML table")])
    try:
        return Prompt.model_validate(document)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            message = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                message = "unknown field"
            problems.append(Problem(_where(err["loc"]), message))
        raise DocumentError(problems) from None


def read_prompt_file(path: Path) -> dict[str, Any]:
    """A prompt file's raw document; its `name` defaults to the file's stem. Raises DocumentError."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DocumentError([Problem("", f"cannot read: {exc.strerror or exc}")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise DocumentError([Problem("", f"invalid TOML: {exc}")]) from None
    raw.setdefault("name", path.stem)
    return raw


def list_prompt_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.glob("*.toml") if p.is_file())
