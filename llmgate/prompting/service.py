"""The prompt service: versions, labels, lifecycle and access, cached in process.

Versions are immutable, so a compiled version is cached for good; what moves (a
prompt's latest version and its labels) is cached for `ttl_s` seconds and
refreshed at once on this process's own writes, so a call costs no database
round trip and other processes see a change within `ttl_s`.

Which version answers `POST /prompts/{name}`: the one labelled `prod`; else the
latest version that is not a draft (drafts are work in progress on top of a live
API); else, when every version is a draft, the latest draft.

Files in `prompts_dir` are loaded at start and on reload. A file becomes a new
version only when it differs from the last version loaded from it, so a version
saved through the admin API is not overwritten by an unchanged file at restart.

Jinja2 (llmgate.prompting.templates) is imported when the first version is
compiled or rendered, so a gateway with no prompts never loads it.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from datetime import time as dt_time
from email.utils import format_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from llmgate.errors import Gone, InvalidRequest, NotFound, PermissionDenied, Unprocessable
from llmgate.prompting.document import DocumentError, Prompt, list_prompt_files, read_prompt_file
from llmgate.prompting.inputs import build_input_schema, validate_extra_messages, validate_inputs
from llmgate.prompting.store import InMemoryPromptStore, PromptStore
from llmgate.types import KeyInfo

if TYPE_CHECKING:
    from jinja2 import Template

log = logging.getLogger("llmgate.prompts")

DEFAULT_LABEL = "prod"
LABEL_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
CALLABLE_STATES = frozenset({"published", "deprecated"})
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class PromptVersion:
    """One immutable version, compiled and ready to render."""

    name: str
    version: int
    prompt: Prompt
    source: str
    created_at: datetime | None
    templates: tuple[Template, ...]
    input_schema: dict[str, Any]

    @property
    def state(self) -> str:
        """The lifecycle state in force: a deprecated version is retired once its sunset date has passed."""
        sunset = self.prompt.sunset
        if self.prompt.state == "deprecated" and sunset is not None and sunset < datetime.now(UTC).date():
            return "retired"
        return self.prompt.state

    def lifecycle_headers(self) -> dict[str, str]:
        """`Deprecation` (RFC 9745: when this deprecated version was saved) and `Sunset` (RFC 8594)."""
        if self.state != "deprecated":
            return {}
        since = self.created_at or datetime.now(UTC)
        if since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
        headers = {"Deprecation": f"@{int(since.timestamp())}"}
        if self.prompt.sunset is not None:
            sunset = datetime.combine(self.prompt.sunset, dt_time(0, 0), tzinfo=UTC)
            headers["Sunset"] = format_datetime(sunset, usegmt=True)
        return headers

    def summary(self) -> dict[str, Any]:
        """The catalog entry: what a caller needs to find and call this prompt."""
        p = self.prompt
        entry: dict[str, Any] = {
            "name": self.name,
            "version": self.version,
            "description": p.description,
            "state": self.state,
            "model": p.model,
            "team": p.team,
            "endpoint": f"/prompts/{self.name}",
            "input_schema": self.input_schema,
            "output_schema": p.output_schema,
        }
        if p.sunset is not None:
            entry["sunset"] = p.sunset.isoformat()
        return entry


@dataclass(slots=True)
class _Head:
    latest: int | None
    labels: dict[str, int]
    fetched_at: float


@dataclass(slots=True)
class ReloadResult:
    loaded: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"loaded": self.loaded, "errors": self.errors}


def unprocessable_document(exc: DocumentError) -> Unprocessable:
    first = exc.problems[0] if exc.problems else None
    return Unprocessable(
        f"Invalid prompt: {exc}", param=first.where.split(" ")[0] if first else None, code="invalid_prompt"
    )


def compile_prompt(document: Any) -> tuple[Prompt, tuple[Template, ...]]:
    """`llmgate.prompting.templates.compile_prompt`, importing the Jinja2 sandbox on first use."""
    from llmgate.prompting.templates import compile_prompt as compile_document

    return compile_document(document)


def not_found(name: str) -> NotFound:
    return NotFound(
        f"The prompt `{name}` does not exist or you do not have access to it.", param="name", code="prompt_not_found"
    )


def authorize(pv: PromptVersion, key: KeyInfo) -> None:
    """May `key` call this version? Drafts and restricted prompts stay hidden (404) from others."""
    if key.is_master:
        return
    prompt = pv.prompt
    owner = prompt.team is not None and key.team == prompt.team
    if pv.state == "draft" and not owner:
        raise not_found(pv.name)
    if prompt.visibility is not None and not owner and key.team not in prompt.visibility:
        raise not_found(pv.name)
    if key.prompts is not None and pv.name not in key.prompts:
        raise PermissionDenied(
            f"This key may not call the prompt `{pv.name}`.", param="name", code="prompt_not_allowed"
        )
    if pv.state == "retired":
        raise Gone(f"The prompt `{pv.name}` (version {pv.version}) is retired.", code="prompt_retired")


def may_list(pv: PromptVersion, key: KeyInfo) -> bool:
    """Catalog rule: published (or deprecated) prompts the key may call, on a model it may use."""
    if pv.state not in CALLABLE_STATES or not key.may_use_model(pv.prompt.model):
        return False
    try:
        authorize(pv, key)
    except (NotFound, PermissionDenied, Gone):
        return False
    return True


class PromptService:
    def __init__(self, store: PromptStore, prompts_dir: Path | None = None, ttl_s: float = 5.0) -> None:
        self.store = store
        self.prompts_dir = prompts_dir
        self.ttl_s = ttl_s
        self._heads: dict[str, _Head] = {}
        self._versions: dict[tuple[str, int], PromptVersion] = {}
        self._current: dict[str, PromptVersion] = {}
        self._current_at = 0.0

    async def _io(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(fn, *args)

    # -- reading -------------------------------------------------------------
    async def _head(self, name: str) -> _Head:
        head = self._heads.get(name)
        if head is not None and time.monotonic() - head.fetched_at < self.ttl_s:
            return head
        latest, labels = await self._io(self._read_head, name)
        if head is not None and (latest is None or (head.latest or 0) > latest):
            self._forget_versions(name)  # deleted (and maybe re-created) elsewhere
        fresh = _Head(latest, labels, time.monotonic())
        if latest is None:
            self._heads.pop(name, None)  # unknown names are not cached: callers choose them
        else:
            self._heads[name] = fresh
        return fresh

    def _read_head(self, name: str) -> tuple[int | None, dict[str, int]]:
        latest = self.store.latest_prompt_version(name)
        return latest, self.store.prompt_labels(name) if latest is not None else {}

    def _forget_versions(self, name: str) -> None:
        for key in [k for k in self._versions if k[0] == name]:
            del self._versions[key]

    async def _version(self, name: str, version: int) -> PromptVersion | None:
        cached = self._versions.get((name, version))
        if cached is not None:
            return cached
        record = await self._io(self.store.get_prompt_version, name, version)
        if record is None:
            return None
        try:
            prompt, templates = compile_prompt(record["document"])
        except DocumentError as exc:
            log.error("stored prompt %s version %s is invalid: %s", name, version, exc)
            raise Unprocessable(
                f"The stored prompt `{name}` version {version} is invalid: {exc}", code="invalid_prompt"
            ) from None
        created = record.get("created_at")
        pv = PromptVersion(
            name=name,
            version=version,
            prompt=prompt,
            source=str(record.get("source") or ""),
            created_at=created if isinstance(created, datetime) else _parse_time(created),
            templates=templates,
            input_schema=build_input_schema(prompt),
        )
        self._versions[(name, version)] = pv
        return pv

    async def _default_version(self, name: str, head: _Head) -> int | None:
        if head.latest is None:
            return None
        if DEFAULT_LABEL in head.labels:
            return head.labels[DEFAULT_LABEL]
        for version in range(head.latest, 0, -1):
            pv = await self._version(name, version)
            if pv is not None and pv.state != "draft":
                return version
        return head.latest

    async def resolve(self, name: str, version: int | None = None, label: str | None = None) -> PromptVersion:
        """The version a call addresses: explicit, by label, or the default; 404 when there is none."""
        if version is not None and label is not None:
            raise InvalidRequest("Give a version or a label, not both.", param="label")
        head = await self._head(name)
        if head.latest is None:
            raise not_found(name)
        if label is not None:
            if label not in head.labels:
                raise NotFound(f"The prompt `{name}` has no label `{label}`.", param="label", code="prompt_not_found")
            version = head.labels[label]
        elif version is None:
            version = await self._default_version(name, head)
        pv = await self._version(name, version) if version is not None else None
        if pv is None:
            raise NotFound(f"The prompt `{name}` has no version {version}.", param="version", code="prompt_not_found")
        return pv

    async def render(self, pv: PromptVersion, body: dict[str, Any]) -> list[dict[str, Any]]:
        """The chat messages of a call: inputs checked, templates rendered, the caller's messages appended."""
        from llmgate.prompting.templates import RenderFailed, render_templates

        context = validate_inputs(pv.prompt, body)
        extra = validate_extra_messages(body)
        try:
            texts = await asyncio.to_thread(render_templates, pv.templates, context)
        except RenderFailed as exc:
            code = "prompt_render_limit" if exc.over_limit else "prompt_render_failed"
            raise Unprocessable(
                f"Rendering the prompt failed in messages[{exc.index}]: {exc.cause}",
                param=f"messages[{exc.index}]",
                code=code,
            ) from None
        rendered = [{"role": m.role, "content": text} for m, text in zip(pv.prompt.messages, texts, strict=True)]
        return rendered + extra

    # -- the current set (catalog, OpenAPI) ------------------------------------
    def current(self) -> list[PromptVersion]:
        """The default version of every prompt whose API is live (published or deprecated), by name."""
        return [pv for _, pv in sorted(self._current.items()) if pv.state in CALLABLE_STATES]

    async def refresh(self) -> None:
        names = await self._io(self.store.list_prompt_names)
        for name in set(self._current) - set(names):
            del self._current[name]
        for name in names:
            await self._refresh_name(name)
        self._current_at = time.monotonic()

    async def _refresh_name(self, name: str) -> None:
        self._heads.pop(name, None)
        head = await self._head(name)
        version = await self._default_version(name, head)
        pv = await self._version(name, version) if version is not None else None
        if pv is None:
            self._current.pop(name, None)
        else:
            self._current[name] = pv

    async def catalog(self, key: KeyInfo) -> list[PromptVersion]:
        if time.monotonic() - self._current_at >= self.ttl_s:
            await self.refresh()
        return [pv for pv in self.current() if may_list(pv, key)]

    # -- writing (admin) -------------------------------------------------------
    async def save(self, name: str, document: dict[str, Any], source: str = "api") -> PromptVersion:
        """Validate a document whole and store it as a new version (an identical one is not repeated)."""
        if "version" in document:
            raise Unprocessable("`version` is assigned by the gateway; leave it out.", param="version")
        document = {**document, "name": document.get("name", name)}
        if document["name"] != name:
            raise Unprocessable(
                f"The document's name `{document['name']}` does not match the path's `{name}`.", param="name"
            )
        try:
            prompt, _ = compile_prompt(document)
        except DocumentError as exc:
            raise unprocessable_document(exc) from None
        version = await self._io(self.store.add_prompt_version, name, prompt.to_document(), source)
        await self._refresh_name(name)
        pv = await self._version(name, version)
        assert pv is not None
        return pv

    async def set_label(self, name: str, label: str, version: int) -> None:
        if not LABEL_PATTERN.match(label):
            raise InvalidRequest(f"Invalid label `{label}`: use letters, digits, `_`, `-` or `.`.", param="label")
        if await self._io(self.store.get_prompt_version, name, version) is None:
            raise NotFound(f"The prompt `{name}` has no version {version}.", param="version", code="prompt_not_found")
        await self._io(self.store.set_prompt_label, name, label, version)
        await self._refresh_name(name)

    async def delete(self, name: str) -> None:
        if not await self._io(self.store.delete_prompt, name):
            raise not_found(name)
        self._heads.pop(name, None)
        self._forget_versions(name)
        self._current.pop(name, None)

    async def describe(self, name: str, version: int | None = None) -> dict[str, Any]:
        """A version's stored record with the prompt's labels (the latest when no version is given)."""
        self._heads.pop(name, None)
        head = await self._head(name)
        if head.latest is None:
            raise not_found(name)
        wanted = version if version is not None else head.latest
        record = await self._io(self.store.get_prompt_version, name, wanted)
        if record is None:
            raise NotFound(f"The prompt `{name}` has no version {wanted}.", param="version", code="prompt_not_found")
        default = await self._default_version(name, head)
        return {**_jsonable(record), "labels": head.labels, "latest": head.latest, "default_version": default}

    async def history(self, name: str) -> dict[str, Any]:
        versions = await self._io(self.store.list_prompt_versions, name)
        if not versions:
            raise not_found(name)
        labels = await self._io(self.store.prompt_labels, name)
        rows = []
        for record in versions:
            document = record.get("document") or {}
            rows.append(
                {
                    "version": record["version"],
                    "source": record.get("source"),
                    "created_at": _jsonable(record).get("created_at"),
                    "state": document.get("state", "published"),
                    "labels": sorted(label for label, v in labels.items() if v == record["version"]),
                }
            )
        return {"name": name, "labels": labels, "versions": rows}

    async def names(self) -> list[dict[str, Any]]:
        await self.refresh()
        out = []
        for name in await self._io(self.store.list_prompt_names):
            head = await self._head(name)
            current = self._current.get(name)
            out.append(
                {
                    "name": name,
                    "latest": head.latest,
                    "labels": head.labels,
                    "default_version": current.version if current else None,
                    "state": current.state if current else None,
                    "description": current.prompt.description if current else "",
                }
            )
        return out

    # -- files -------------------------------------------------------------------
    async def reload_files(self) -> ReloadResult:
        """Load every file of `prompts_dir` as a version (when changed), then refresh the cache."""
        result = ReloadResult()
        for path in list_prompt_files(self.prompts_dir) if self.prompts_dir else []:
            source = f"file:{path}"
            try:
                prompt, _ = compile_prompt(read_prompt_file(path))
            except DocumentError as exc:
                result.errors.extend(f"{path}: {problem}" for problem in exc.problems)
                continue
            document = prompt.to_document()
            version, changed = await self._io(self._store_file_version, prompt.name, document, source)
            result.loaded.append({"name": prompt.name, "version": version, "source": source, "changed": changed})
        for line in result.errors:
            log.warning("prompt file rejected: %s", line)
        await self.refresh()
        return result

    def _store_file_version(self, name: str, document: dict[str, Any], source: str) -> tuple[int, bool]:
        for record in sorted(self.store.list_prompt_versions(name), key=lambda r: r["version"], reverse=True):
            if record.get("source") != source:
                continue
            loaded = record.get("document")
            if loaded is None:
                full = self.store.get_prompt_version(name, record["version"]) or {}
                loaded = full.get("document")
            if loaded == document:
                return record["version"], False
            break
        before = self.store.latest_prompt_version(name)
        version = self.store.add_prompt_version(name, document, source)
        return version, version != before


def _parse_time(value: Any) -> datetime | None:
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return None
    return None


def _jsonable(record: dict[str, Any]) -> dict[str, Any]:
    out = dict(record)
    created = out.get("created_at")
    if isinstance(created, datetime):
        out["created_at"] = created.isoformat()
    return out


async def start_prompt_service(gateway: Any) -> PromptService:
    """Build the service on the gateway's store (in memory without one), load the files, attach it."""
    settings = gateway.settings.gateway
    store = gateway.store if gateway.store is not None else InMemoryPromptStore()
    service = PromptService(store, Path(settings.prompts_dir), ttl_s=max(settings.key_cache_ttl_s, 0.0))
    await service.reload_files()
    gateway.extras["prompts"] = service
    return service


async def reload_prompts(gateway: Any) -> ReloadResult:
    """Re-read the prompt files (for SIGHUP and `POST /admin/prompts/reload`)."""
    service: PromptService = gateway.extras["prompts"]
    return await service.reload_files()
