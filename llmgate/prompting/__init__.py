"""Prompt templates as REST endpoints: documents, sandboxed templates, inputs, versions.

- document.py   the prompt document (fields, validation, TOML files)
- templates.py  the Jinja2 sandbox: save-time checks, bounded rendering
- inputs.py     the call contract: input checks, JSON schemas, output checks
- store.py      the storage protocol and an in-memory store
- service.py    versions, labels, lifecycle, access, the in-process cache

`compile_prompt` is looked up on first use (module `__getattr__`): it brings in
Jinja2, which a gateway without prompts does not need.
"""

from typing import Any

from llmgate.prompting.document import DocumentError, Prompt, parse_prompt
from llmgate.prompting.service import (
    PromptService,
    PromptVersion,
    ReloadResult,
    reload_prompts,
    start_prompt_service,
)
from llmgate.prompting.store import InMemoryPromptStore, PromptStore

__all__ = [
    "DocumentError",
    "InMemoryPromptStore",
    "Prompt",
    "PromptService",
    "PromptStore",
    "PromptVersion",
    "ReloadResult",
    "compile_prompt",
    "parse_prompt",
    "reload_prompts",
    "start_prompt_service",
]


def __getattr__(name: str) -> Any:
    if name == "compile_prompt":
        from llmgate.prompting.templates import compile_prompt

        return compile_prompt
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
