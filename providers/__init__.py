"""The provider registry: config `type` -> adapter class. Nothing else branches on a provider's name.

Each type names a module of this package (the type, module and key are the same
word); the module is imported the first time a provider of that type is built.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from providers.base import Provider

# type -> class name inside providers/<type>.py
PROVIDER_TYPES: dict[str, str] = {
    "openai": "OpenAIProvider",
    "azure": "AzureProvider",
    "anthropic": "AnthropicProvider",
    "gemini": "GeminiProvider",
    "mock": "MockProvider",
}


def provider_class(type_: str) -> type[Provider]:
    """The adapter class for a config `type`; KeyError for an unknown type."""
    class_name = PROVIDER_TYPES[type_]
    module = importlib.import_module(f"providers.{type_}")
    return getattr(module, class_name)
