"""The prompt service without HTTP: documents, the sandbox, inputs, outputs, versions, files."""

from __future__ import annotations

import time
from datetime import UTC, date, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest

from llmgate.errors import Gone, InvalidRequest, NotFound, PermissionDenied, Unprocessable, UpstreamError
from llmgate.prompting import DocumentError, InMemoryPromptStore, PromptService, compile_prompt
from llmgate.prompting.inputs import build_input_schema, build_response_format, parse_output
from llmgate.prompting.service import authorize, may_list
from llmgate.types import KeyInfo

ROOT = Path(__file__).resolve().parents[1]
MASTER = KeyInfo(id="master", name="master", is_master=True)
TEAM_A = KeyInfo(id="a", name="a", team="a")
TEAM_B = KeyInfo(id="b", name="b", team="b")


def doc(content: str = "Hello {{ who }}!", **extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "greet",
        "model": "mock-small",
        "inputs": {"who": {"type": "string"}},
        "messages": [{"role": "user", "content": content}],
    }
    base.update(extra)
    return base


def problems_of(document: dict[str, Any]) -> list[str]:
    with pytest.raises(DocumentError) as info:
        compile_prompt(document)
    return [str(p) for p in info.value.problems]


def http_date(day: date) -> str:
    return format_datetime(datetime.combine(day, datetime.min.time(), tzinfo=UTC), usegmt=True)


@pytest.fixture
def service() -> PromptService:
    return PromptService(InMemoryPromptStore(), ttl_s=60)


# -- documents and save-time template checks ------------------------------------------


def test_valid_document_round_trips_through_its_stored_form() -> None:
    prompt, templates = compile_prompt(doc(sunset="2027-01-31", state="deprecated"))
    assert len(templates) == 1
    again, _ = compile_prompt(prompt.to_document())
    assert again == prompt
    assert prompt.to_document()["sunset"] == "2027-01-31"


def test_syntax_error_names_message_and_line() -> None:
    found = problems_of(doc("line one\nline two {{ who }}\nthree {{ who + }}"))
    assert len(found) == 1
    assert found[0].startswith("messages[0].content line 3: template syntax error")


def test_unknown_variable_names_message_and_line() -> None:
    document = doc("Hi {{ who }}")
    document["messages"].append({"role": "user", "content": "first\nsecond {{ whom }}"})
    assert problems_of(document) == ["messages[1].content line 2: unknown variable `whom` (not a declared input)"]


@pytest.mark.parametrize(
    ("template", "complaint"),
    [
        ("{{ ''.__class__ }}", "private attribute `__class__`"),
        ("{{ who.__class__.__mro__ }}", "private attribute `__class__`"),
        ("{{ who['__class__'] }}", "private item `__class__`"),
        ("{{ cycler.__init__.__globals__ }}", "unknown variable `cycler`"),
        ("{{ self }}", "`self` is not available"),
        ("{{ lipsum() }}", "unknown variable `lipsum`"),
        ("{{ who.format(who) }}", "method `format`"),
        ("{{ who|center(100000000) }}", "filter `center`"),
        ("{% include 'x' %}", "`include` is not allowed"),
        ("{% import 'x' as y %}", "`import` is not allowed"),
        ("{{ namespace() }}", "unknown variable `namespace`"),
        ("{{ who|attr('__class__') }}", "may not read private attributes"),
        ("{{ [who]|map(attribute='__class__')|list }}", "may not read private attributes"),
    ],
)
def test_unsafe_templates_are_refused_at_save_time(template: str, complaint: str) -> None:
    found = problems_of(doc(template))
    assert any(complaint in p for p in found), found
    assert all(p.startswith("messages[0].content line 1") for p in found)


@pytest.mark.parametrize(
    ("patch", "where"),
    [
        ({"model": ""}, "model"),
        ({"messages": []}, "messages"),
        ({"inputs": {"who": {"type": "text"}}}, "inputs.who.type"),
        ({"inputs": {"messages": {"type": "string"}}}, "inputs"),
        ({"inputs": {"who": {"type": "integer", "min_length": 2}}}, "inputs.who"),
        ({"inputs": {"who": {"type": "string", "enum": ["a", 3]}}}, "inputs.who"),
        ({"inputs": {"who": {"type": "string", "default": 5}}}, "inputs.who"),
        ({"parameters": {"stream": True}}, "parameters"),
        ({"output_schema": {"type": "objekt"}}, "output_schema"),
        ({"state": "live"}, "state"),
        ({"version": 3}, "version"),
        ({"name": "bad name!"}, "name"),
    ],
)
def test_field_problems_name_the_field(patch: dict[str, Any], where: str) -> None:
    found = problems_of(doc(**patch))
    assert any(p.startswith(f"{where}:") for p in found), found


def test_shipped_prompt_files_are_valid() -> None:
    files = sorted((ROOT / "prompts").glob("*.toml"))
    assert {p.stem for p in files} >= {"summarize", "classify", "translate"}
    from llmgate.prompting.document import read_prompt_file

    for path in files:
        prompt, _ = compile_prompt(read_prompt_file(path))
        assert prompt.name == path.stem
        assert prompt.description
    classify, _ = compile_prompt(read_prompt_file(ROOT / "prompts" / "classify.toml"))
    assert classify.output_schema is not None


# -- rendering and the sandbox ------------------------------------------------------


async def test_render_fills_inputs_and_appends_callers_messages(service: PromptService) -> None:
    pv = await service.save(
        "greet",
        doc(
            "Hello {{ who }}{% if excl %}!{% endif %}",
            inputs={"who": {"type": "string"}, "excl": {"type": "boolean", "default": False}},
        ),
    )
    extra = [{"role": "assistant", "content": "earlier"}, {"role": "user", "content": "more"}]
    messages = await service.render(pv, {"who": "Ada", "messages": extra})
    assert messages == [{"role": "user", "content": "Hello Ada"}, *extra]
    assert (await service.render(pv, {"who": "Ada", "excl": True}))[0]["content"] == "Hello Ada!"


async def test_optional_input_without_default_renders_empty(service: PromptService) -> None:
    pv = await service.save("greet", doc("[{{ note }}]", inputs={"note": {"type": "string", "required": False}}))
    assert (await service.render(pv, {}))[0]["content"] == "[]"


async def test_ordinary_template_features_are_allowed(service: PromptService) -> None:
    template = (
        "{% macro item(x) %}<{{ x|upper }}>{% endmacro %}"
        "{% for x in xs %}{{ loop.index }}{{ item(x) }}{{ loop.cycle(',', ';') }}{% endfor %}"
        "|{{ meta.get('k') }}|{{ meta.items()|list|length }}|{{ xs|join('+') }}|{{ meta|tojson }}"
        "|{{ range(3)|sum }}|{{ '-' * 3 }}|{{ 2 ** 10 }}|{{ xs|length is even }}|{{ xs[0] ~ '=' ~ 1 }}"
    )
    inputs = {"xs": {"type": "array"}, "meta": {"type": "object"}}
    pv = await service.save("rich", doc(template, name="rich", inputs=inputs))
    messages = await service.render(pv, {"xs": ["a", "b"], "meta": {"k": "v"}})
    assert messages[0]["content"] == '1<A>,2<B>;|v|1|a+b|{"k": "v"}|3|---|1024|True|a=1'


@pytest.mark.parametrize(
    "value",
    [
        "{{ ''.__class__ }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ self }}",
        "{% for x in ().__class__.__base__.__subclasses__() %}{{ x }}{% endfor %}",
        "{{ 7 * 7 }}",
    ],
)
async def test_input_values_are_data_never_template_code(service: PromptService, value: str) -> None:
    pv = await service.save("greet", doc())
    messages = await service.render(pv, {"who": value})
    assert messages[0]["content"] == f"Hello {value}!"


async def test_strict_undefined_fails_at_render_time_with_the_message_index(service: PromptService) -> None:
    pv = await service.save("greet", doc("{{ who.missing }}", inputs={"who": {"type": "object"}}))
    with pytest.raises(Unprocessable) as info:
        await service.render(pv, {"who": {"present": 1}})
    assert info.value.code == "prompt_render_failed"
    assert info.value.param == "messages[0]"
    assert "missing" in info.value.message


async def test_sandbox_blocks_attribute_walks_on_input_objects(service: PromptService) -> None:
    # Reading a key that holds a private-looking name through a variable is not caught statically.
    pv = await service.save(
        "greet", doc("{{ who[key] }}", inputs={"who": {"type": "string"}, "key": {"type": "string"}})
    )
    with pytest.raises(Unprocessable) as info:
        await service.render(pv, {"who": "x", "key": "__class__"})
    assert "unsafe" in info.value.message


async def test_nested_loops_over_big_inputs_stop_at_the_deadline(service: PromptService) -> None:
    loops = "{% for a in xs %}{% for b in xs %}{% for c in xs %}{% endfor %}{% endfor %}{% endfor %}done"
    pv = await service.save("loops", doc(loops, name="loops", inputs={"xs": {"type": "array"}}))
    started = time.monotonic()
    with pytest.raises(Unprocessable) as info:
        await service.render(pv, {"xs": list(range(3000))})
    assert time.monotonic() - started < 3
    assert info.value.code == "prompt_render_limit"
    assert (await service.render(pv, {"xs": [1, 2]}))[0]["content"] == "done"


@pytest.mark.parametrize(
    ("template", "inputs", "body"),
    [
        ("{% for i in range(10000000) %}{% endfor %}", {}, {}),
        ("{{ 'x' * n }}", {"n": {"type": "integer"}}, {"n": 10**12}),
        ("{{ n ** n }}", {"n": {"type": "integer"}}, {"n": 10**6}),
        ("{% for i in range(900) %}{{ t }}{% endfor %}", {"t": {"type": "string"}}, {"t": "y" * 5000}),
        (
            "{% set a = t + t %}{% set b = a + a %}{% set c = b + b %}{% set d = c + c %}{{ d|length }}",
            {"t": {"type": "string"}},
            {"t": "z" * 300_000},
        ),
        (
            "{% set a = t ~ t %}{% set b = a ~ a %}{% set c = b ~ b %}{% set d = c ~ c %}{{ d|length }}",
            {"t": {"type": "string"}},
            {"t": "z" * 300_000},
        ),
        (
            "{{ xs|join(sep)|length }}",
            {"xs": {"type": "array"}, "sep": {"type": "string"}},
            {"xs": [1] * 1000, "sep": "s" * 5000},
        ),
    ],
)
async def test_render_size_is_bounded(
    service: PromptService, template: str, inputs: dict[str, Any], body: dict[str, Any]
) -> None:
    pv = await service.save("big", doc(template, name="big", inputs=inputs))
    with pytest.raises(Unprocessable) as info:
        await service.render(pv, body)
    assert info.value.code == "prompt_render_limit"


async def test_string_percent_formatting_is_refused_at_render(service: PromptService) -> None:
    pv = await service.save("fmt", doc("{{ '%999999999d' % 1 }}", name="fmt", inputs={}))
    with pytest.raises(Unprocessable):
        await service.render(pv, {})


# -- inputs ---------------------------------------------------------------------------

TYPED = {
    "text": {"type": "string", "min_length": 2, "max_length": 5},
    "count": {"type": "integer", "minimum": 1, "maximum": 10, "default": 3},
    "ratio": {"type": "number", "required": False},
    "flag": {"type": "boolean", "required": False},
    "tags": {"type": "array", "max_length": 2, "required": False},
    "meta": {"type": "object", "required": False},
    "tone": {"type": "string", "enum": ["formal", "casual"], "default": "formal"},
}


@pytest.mark.parametrize(
    ("body", "field", "phrase"),
    [
        ({}, "text", "required"),
        ({"text": 12}, "text", "expected a string, got integer"),
        ({"text": "a"}, "text", "at least 2 characters"),
        ({"text": "abcdef"}, "text", "at most 5 characters"),
        ({"text": "abc", "count": "3"}, "count", "expected an integer, got string"),
        ({"text": "abc", "count": True}, "count", "expected an integer, got boolean"),
        ({"text": "abc", "count": 2.5}, "count", "expected an integer"),
        ({"text": "abc", "count": 11}, "count", "at most 10"),
        ({"text": "abc", "ratio": "x"}, "ratio", "expected a number"),
        ({"text": "abc", "flag": 1}, "flag", "expected a boolean"),
        ({"text": "abc", "tags": [1, 2, 3]}, "tags", "at most 2 items"),
        ({"text": "abc", "meta": []}, "meta", "expected an object"),
        ({"text": "abc", "tone": "rude"}, "tone", "must be one of"),
        ({"text": "abc", "colour": "red"}, "colour", "unknown input"),
        ({"text": "abc", "messages": "hi"}, "messages", "array of messages"),
        ({"text": "abc", "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role", "must be one of"),
    ],
)
async def test_bad_inputs_are_422_naming_the_field(
    service: PromptService, body: dict[str, Any], field: str, phrase: str
) -> None:
    pv = await service.save("typed", doc("{{ text }}", name="typed", inputs=TYPED))
    with pytest.raises(Unprocessable) as info:
        await service.render(pv, body)
    assert info.value.status == 422
    assert info.value.param == field
    assert phrase in info.value.message


async def test_defaults_apply_and_integral_floats_are_integers(service: PromptService) -> None:
    pv = await service.save("typed", doc("{{ text }} {{ count }} {{ tone }}", name="typed", inputs=TYPED))
    assert (await service.render(pv, {"text": "abc"}))[0]["content"] == "abc 3 formal"
    assert (await service.render(pv, {"text": "abc", "count": 4.0}))[0]["content"] == "abc 4 formal"


def test_input_schema_describes_the_body() -> None:
    prompt, _ = compile_prompt(doc("{{ text }}", inputs=TYPED))
    schema = build_input_schema(prompt)
    assert schema["required"] == ["text"]
    assert schema["additionalProperties"] is False
    assert schema["properties"]["text"] == {"type": "string", "minLength": 2, "maxLength": 5}
    assert schema["properties"]["tags"]["maxItems"] == 2
    assert schema["properties"]["tone"]["enum"] == ["formal", "casual"]
    assert schema["properties"]["count"]["default"] == 3
    assert schema["properties"]["messages"]["type"] == "array"


# -- outputs --------------------------------------------------------------------------

LABEL_SCHEMA = {
    "type": "object",
    "properties": {"label": {"type": "string", "enum": ["spam", "ham"]}, "score": {"type": "number"}},
    "required": ["label"],
}


def test_output_schema_asks_for_json_and_checks_the_reply() -> None:
    prompt, _ = compile_prompt(doc(output_schema=LABEL_SCHEMA))
    assert build_response_format(prompt) == {
        "type": "json_schema",
        "json_schema": {"name": "greet", "schema": LABEL_SCHEMA},
    }
    assert parse_output(prompt, '{"label": "ham", "score": 0.5}') == {"label": "ham", "score": 0.5}
    with pytest.raises(UpstreamError) as info:
        parse_output(prompt, '{"label": "eggs"}')
    assert info.value.status == 502
    assert "$.label" in info.value.message and "eggs" in info.value.message
    with pytest.raises(UpstreamError) as info:
        parse_output(prompt, "not json")
    assert "not valid JSON" in info.value.message


def test_text_output_passes_through() -> None:
    prompt, _ = compile_prompt(doc())
    assert build_response_format(prompt) is None
    assert parse_output(prompt, "plain") == "plain"


# -- versions, labels, lifecycle ---------------------------------------------------------


async def test_versions_are_immutable_and_identical_saves_do_not_repeat(service: PromptService) -> None:
    v1 = await service.save("greet", doc("One {{ who }}"))
    v2 = await service.save("greet", doc("Two {{ who }}"))
    same = await service.save("greet", doc("Two {{ who }}"))
    assert (v1.version, v2.version, same.version) == (1, 2, 2)
    assert (await service.render(await service.resolve("greet", 1), {"who": "x"}))[0]["content"] == "One x"
    assert (await service.resolve("greet")).version == 2
    history = await service.history("greet")
    assert [row["version"] for row in history["versions"]] == [1, 2]


async def test_prod_label_wins_over_latest_and_labels_resolve(service: PromptService) -> None:
    await service.save("greet", doc("One {{ who }}"))
    await service.save("greet", doc("Two {{ who }}"))
    await service.set_label("greet", "prod", 1)
    await service.set_label("greet", "staging", 2)
    assert (await service.resolve("greet")).version == 1
    assert (await service.resolve("greet", label="staging")).version == 2
    with pytest.raises(NotFound):
        await service.resolve("greet", label="canary")
    with pytest.raises(NotFound):
        await service.set_label("greet", "prod", 9)
    with pytest.raises(InvalidRequest):
        await service.set_label("greet", "bad label", 1)
    with pytest.raises(InvalidRequest):
        await service.resolve("greet", 1, "staging")


async def test_unknown_prompt_and_version_are_404(service: PromptService) -> None:
    await service.save("greet", doc())
    with pytest.raises(NotFound):
        await service.resolve("nope")
    with pytest.raises(NotFound):
        await service.resolve("greet", 7)


async def test_drafts_are_skipped_by_default_resolution(service: PromptService) -> None:
    await service.save("greet", doc("live {{ who }}"))
    await service.save("greet", doc("wip {{ who }}", state="draft", team="a"))
    assert (await service.resolve("greet")).version == 1
    assert (await service.resolve("greet", 2)).state == "draft"
    only_drafts = await service.save("wip", doc(name="wip", state="draft", team="a"))
    assert (await service.resolve("wip")).version == only_drafts.version


async def test_access_rules_for_drafts_visibility_prompt_lists_and_retired(service: PromptService) -> None:
    draft = await service.save("d", doc(name="d", state="draft", team="a"))
    authorize(draft, MASTER)
    authorize(draft, TEAM_A)
    with pytest.raises(NotFound):
        authorize(draft, TEAM_B)
    private = await service.save("p", doc(name="p", team="a", visibility=["c"]))
    authorize(private, TEAM_A)
    authorize(private, KeyInfo(id="c", name="c", team="c"))
    with pytest.raises(NotFound):
        authorize(private, TEAM_B)
    open_ = await service.save("o", doc(name="o"))
    with pytest.raises(PermissionDenied):
        authorize(open_, KeyInfo(id="r", name="r", prompts=("other",)))
    authorize(open_, KeyInfo(id="r", name="r", prompts=("o",)))
    retired = await service.save("r", doc(name="r", state="retired"))
    with pytest.raises(Gone):
        authorize(retired, TEAM_A)
    assert not may_list(retired, MASTER)
    assert not may_list(draft, TEAM_A)


async def test_deprecated_versions_carry_deprecation_and_sunset(service: PromptService) -> None:
    sunset = date.today() + timedelta(days=90)
    pv = await service.save("old", doc(name="old", state="deprecated", sunset=sunset.isoformat()))
    headers = pv.lifecycle_headers()
    assert headers["Sunset"] == http_date(sunset)
    assert headers["Deprecation"].startswith("@")
    assert abs(int(headers["Deprecation"][1:]) - time.time()) < 60
    assert (await service.save("greet", doc())).lifecycle_headers() == {}


async def test_catalog_lists_callable_published_prompts(service: PromptService) -> None:
    await service.save("pub", doc(name="pub"))
    await service.save("dep", doc(name="dep", state="deprecated"))
    await service.save("draft", doc(name="draft", state="draft", team="a"))
    await service.save("gone", doc(name="gone", state="retired"))
    await service.save("bonly", doc(name="bonly", team="b", visibility=["b"]))
    assert [pv.name for pv in await service.catalog(TEAM_A)] == ["dep", "pub"]
    assert [pv.name for pv in await service.catalog(TEAM_B)] == ["bonly", "dep", "pub"]
    assert [pv.name for pv in await service.catalog(MASTER)] == ["bonly", "dep", "pub"]
    only = KeyInfo(id="x", name="x", prompts=("pub",))
    assert [pv.name for pv in await service.catalog(only)] == ["pub"]
    other_models = KeyInfo(id="m", name="m", models=("another-model",))
    assert await service.catalog(other_models) == []


async def test_admin_save_rejects_bad_documents_with_422(service: PromptService) -> None:
    with pytest.raises(Unprocessable) as info:
        await service.save("greet", doc("{{ nope }}"))
    assert info.value.param == "messages[0].content"
    assert "line 1" in info.value.message
    with pytest.raises(Unprocessable):
        await service.save("other", doc())  # the document's name is `greet`
    with pytest.raises(NotFound):
        await service.resolve("greet")


async def test_delete_forgets_everything(service: PromptService) -> None:
    await service.save("greet", doc())
    await service.delete("greet")
    with pytest.raises(NotFound):
        await service.resolve("greet")
    with pytest.raises(NotFound):
        await service.delete("greet")
    assert service.current() == []


async def test_cache_serves_calls_without_the_store(service: PromptService) -> None:
    await service.save("greet", doc())
    await service.resolve("greet")
    calls: list[str] = []
    store = service.store
    original = store.get_prompt_version

    def counting(name: str, version: int) -> dict[str, Any] | None:
        calls.append(name)
        return original(name, version)

    store.get_prompt_version = counting  # type: ignore[method-assign]
    for _ in range(5):
        await service.resolve("greet")
    assert calls == []


async def test_other_writers_are_seen_after_the_ttl() -> None:
    store = InMemoryPromptStore()
    reader = PromptService(store, ttl_s=0.05)
    writer = PromptService(store, ttl_s=0.05)
    await writer.save("greet", doc("One {{ who }}"))
    assert (await reader.resolve("greet")).version == 1
    await writer.save("greet", doc("Two {{ who }}"))
    time.sleep(0.06)
    assert (await reader.resolve("greet")).version == 2


# -- files ------------------------------------------------------------------------------

GREET_TOML = """
description = "Greets someone"
model = "mock-small"
[inputs.who]
type = "string"
[[messages]]
role = "user"
content = "Hello {{ who }}"
"""


async def test_files_load_as_versions_and_reload_only_changes(tmp_path: Path) -> None:
    (tmp_path / "greet.toml").write_text(GREET_TOML)
    (tmp_path / "broken.toml").write_text('model = "m"\n[[messages]]\nrole = "user"\ncontent = "{{ x }"\n')
    service = PromptService(InMemoryPromptStore(), tmp_path, ttl_s=60)
    result = await service.reload_files()
    assert [(e["name"], e["version"], e["changed"]) for e in result.loaded] == [("greet", 1, True)]
    assert result.loaded[0]["source"] == f"file:{tmp_path / 'greet.toml'}"
    assert len(result.errors) == 1 and "broken.toml: messages[0].content line 1" in result.errors[0]
    assert [pv.name for pv in service.current()] == ["greet"]

    again = await service.reload_files()
    assert [(e["version"], e["changed"]) for e in again.loaded] == [(1, False)]

    api = await service.save("greet", doc("Via API {{ who }}"))
    unchanged = await service.reload_files()
    assert unchanged.loaded[0]["changed"] is False
    assert (await service.resolve("greet")).version == api.version  # an unchanged file does not win

    (tmp_path / "greet.toml").write_text(GREET_TOML.replace("Hello", "Hi"))
    changed = await service.reload_files()
    assert changed.loaded[0] == {
        "name": "greet",
        "version": 3,
        "source": f"file:{tmp_path / 'greet.toml'}",
        "changed": True,
    }
    assert (await service.render(await service.resolve("greet"), {"who": "x"}))[0]["content"] == "Hi x"


async def test_the_database_store_serves_the_same_service(tmp_path: Path) -> None:
    from llmgate.storage import create_store

    store = create_store(f"sqlite:///{tmp_path / 'gate.db'}")
    store.upgrade()
    (tmp_path / "greet.toml").write_text(GREET_TOML)
    service = PromptService(store, tmp_path, ttl_s=60)
    assert [e["changed"] for e in (await service.reload_files()).loaded] == [True]
    assert [e["changed"] for e in (await service.reload_files()).loaded] == [False]
    sunset = date.today() + timedelta(days=30)
    deprecated = await service.save("greet", doc("Bye {{ who }}", state="deprecated", sunset=sunset.isoformat()))
    assert deprecated.version == 2
    assert deprecated.lifecycle_headers()["Sunset"] == http_date(sunset)
    await service.set_label("greet", "prod", 1)
    fresh = PromptService(store, tmp_path, ttl_s=60)  # another process: nothing cached
    assert (await fresh.resolve("greet")).version == 1
    assert (await fresh.render(await fresh.resolve("greet", 2), {"who": "x"}))[0]["content"] == "Bye x"
    history = await fresh.history("greet")
    assert [(v["version"], v["state"], v["labels"]) for v in history["versions"]] == [
        (1, "published", ["prod"]),
        (2, "deprecated", []),
    ]
    await fresh.delete("greet")
    assert store.list_prompt_names() == []
    store.close()


# -- fields that would choose the upstream ----------------------------------------------


@pytest.mark.parametrize("field", ["api_base", "base_url", "extra_headers", "litellm_params", "azure_endpoint"])
def test_parameters_may_not_choose_the_upstream(field: str) -> None:
    found = problems_of(doc(parameters={field: "http://169.254.169.254", "temperature": 0.1}))
    assert len(found) == 1 and found[0].startswith("parameters:") and field in found[0]


async def test_an_undeclared_upstream_field_in_a_call_is_a_400_naming_it(service: PromptService) -> None:
    pv = await service.save("greet", doc())
    with pytest.raises(InvalidRequest) as caught:
        await service.render(pv, {"who": "x", "api_base": "http://169.254.169.254"})
    assert caught.value.status == 400 and caught.value.param == "api_base"
    with pytest.raises(Unprocessable) as unknown:
        await service.render(pv, {"who": "x", "colour": "red"})
    assert unknown.value.param == "colour"


async def test_a_declared_input_may_share_a_name_with_an_upstream_field(service: PromptService) -> None:
    pv = await service.save(
        "fetch", doc("Summarize {{ base_url }}", name="fetch", inputs={"base_url": {"type": "string"}})
    )
    assert await service.render(pv, {"base_url": "https://example.com"}) == [
        {"role": "user", "content": "Summarize https://example.com"}
    ]
