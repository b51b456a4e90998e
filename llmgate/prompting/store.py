"""Where prompt versions live: the storage protocol and an in-memory implementation.

`llmgate.storage.Store` implements `PromptStore` on the database. Its methods are
synchronous (the service calls them in a worker thread). `InMemoryPromptStore`
serves a gateway run without a database and the tests.
"""

from __future__ import annotations

import copy
import threading
from datetime import UTC, datetime
from typing import Any, Protocol


class PromptStore(Protocol):
    def add_prompt_version(self, name: str, document: dict[str, Any], source: str) -> int:
        """Store a new version and return its number; an identical document returns the latest."""
        ...

    def get_prompt_version(self, name: str, version: int) -> dict[str, Any] | None:
        """{"name", "version", "document", "source", "created_at"}, or None."""
        ...

    def latest_prompt_version(self, name: str) -> int | None: ...

    def list_prompt_names(self) -> list[str]: ...

    def list_prompt_versions(self, name: str) -> list[dict[str, Any]]: ...

    def set_prompt_label(self, name: str, label: str, version: int) -> None: ...

    def prompt_labels(self, name: str) -> dict[str, int]: ...

    def delete_prompt(self, name: str) -> bool: ...


class InMemoryPromptStore:
    """Prompt versions in a dict, with the same semantics as the database store."""

    def __init__(self) -> None:
        self._versions: dict[str, list[dict[str, Any]]] = {}
        self._labels: dict[str, dict[str, int]] = {}
        self._lock = threading.Lock()

    def add_prompt_version(self, name: str, document: dict[str, Any], source: str) -> int:
        with self._lock:
            versions = self._versions.setdefault(name, [])
            if versions and versions[-1]["document"] == document:
                return versions[-1]["version"]
            version = len(versions) + 1
            versions.append(
                {
                    "name": name,
                    "version": version,
                    "document": copy.deepcopy(document),
                    "source": source,
                    "created_at": datetime.now(UTC),
                }
            )
            return version

    def get_prompt_version(self, name: str, version: int) -> dict[str, Any] | None:
        versions = self._versions.get(name) or []
        if 1 <= version <= len(versions):
            return copy.deepcopy(versions[version - 1])
        return None

    def latest_prompt_version(self, name: str) -> int | None:
        versions = self._versions.get(name)
        return len(versions) if versions else None

    def list_prompt_names(self) -> list[str]:
        return sorted(self._versions)

    def list_prompt_versions(self, name: str) -> list[dict[str, Any]]:
        return [copy.deepcopy(v) for v in self._versions.get(name) or []]

    def set_prompt_label(self, name: str, label: str, version: int) -> None:
        with self._lock:
            self._labels.setdefault(name, {})[label] = version

    def prompt_labels(self, name: str) -> dict[str, int]:
        return dict(self._labels.get(name) or {})

    def delete_prompt(self, name: str) -> bool:
        with self._lock:
            self._labels.pop(name, None)
            return self._versions.pop(name, None) is not None
