"""Template injection: inputs are data, and admin-saved templates cannot escape the sandbox.

Inputs holding Jinja syntax come out literally. A template that reaches for
Python internals (`__class__`, `cycler`, `joiner`, `namespace`, `self`, `lipsum`,
attribute walks, `|attr`, format strings, include/import) is refused when it is
saved, or, when nothing at save time can tell, fails to render with a clear 422
and no Python object in the answer. Templates that ask for unbounded work end
within the render deadline.
"""

from __future__ import annotations

import time

import httpx
import pytest

from tests.harness import GatewayServer

INJECTIONS = [
    "{{ 7 * 7 }}",
    "{% for i in range(3) %}x{% endfor %}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{% raw %}{{ self }}{% endraw %}",
    "{#",
    "}}{{",
]


def _save(gateway: GatewayServer, headers: dict[str, str], name: str, template: str) -> httpx.Response:
    document = {
        "model": "mock-gpt",
        "inputs": {"text": {"type": "string", "default": "abc"}},
        "messages": [{"role": "user", "content": template}],
    }
    return httpx.put(f"{gateway.url}/admin/prompts/{name}", headers=headers, json=document)


@pytest.fixture(scope="module")
def echo_prompt(gateway: GatewayServer) -> str:
    from tests.security.conftest import MASTER

    response = _save(gateway, {"authorization": f"Bearer {MASTER}"}, "echo", "You said: {{ text }}")
    assert response.status_code == 200, response.text
    return "echo"


@pytest.mark.parametrize("payload", INJECTIONS)
def test_inputs_with_jinja_syntax_render_literally(
    gateway: GatewayServer, master_headers: dict[str, str], echo_prompt: str, payload: str
) -> None:
    rendered = httpx.post(f"{gateway.url}/prompts/{echo_prompt}/render", headers=master_headers, json={"text": payload})
    assert rendered.status_code == 200, rendered.text
    assert rendered.json()["messages"][0]["content"] == f"You said: {payload}"
    called = httpx.post(f"{gateway.url}/prompts/{echo_prompt}", headers=master_headers, json={"text": payload})
    assert called.status_code == 200, called.text
    assert called.json()["output"].endswith(f"You said: {payload}")  # the mock model echoes the message


def test_extra_messages_are_not_templates(
    gateway: GatewayServer, master_headers: dict[str, str], echo_prompt: str
) -> None:
    extra = [{"role": "user", "content": "{{ text.__class__ }}{% for i in range(9) %}x{% endfor %}"}]
    rendered = httpx.post(
        f"{gateway.url}/prompts/{echo_prompt}/render", headers=master_headers, json={"text": "a", "messages": extra}
    )
    assert rendered.status_code == 200, rendered.text
    assert rendered.json()["messages"][1] == extra[0]


# Templates refused when saved: each names what is wrong.
REFUSED_AT_SAVE = {
    "class-walk": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "input-class": "{{ text.__class__ }}",
    "cycler": "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "joiner": "{{ joiner.__init__.__globals__ }}",
    "namespace": "{% set ns = namespace(a=1) %}{{ ns }}",
    "lipsum": "{{ lipsum.__globals__['os'].popen('id').read() }}",
    "self": "{{ self }}",
    "self-walk": "{{ self._TemplateReference__context }}",
    "range-walk": "{{ range.__init__.__globals__ }}",
    "attr-filter": "{{ text|attr('__class__') }}",
    "attr-escaped": "{{ text|attr('\\x5f\\x5fclass\\x5f\\x5f') }}",
    "map-attribute": "{{ [text]|map(attribute='__class__')|list }}",
    "private-item": "{{ text['__class__'] }}",
    "format-method": "{{ '{0.__class__}'.format(text) }}",
    "format-filter": "{{ '%s'|format(text) }}",
    "dunder-call": "{{ text.__len__() }}",
    "config": "{{ config }}",
    "request": "{{ request.application }}",
    "dict-global": "{{ dict(a=1) }}",
    "include": "{% include 'secrets.txt' %}",
    "import": "{% import 'x' as y %}",
    "extends": "{% extends 'base' %}",
    "syntax": "{{ text ",
}


@pytest.mark.parametrize("name", sorted(REFUSED_AT_SAVE))
def test_escaping_templates_are_refused_at_save(
    gateway: GatewayServer, master_headers: dict[str, str], name: str
) -> None:
    response = _save(gateway, master_headers, f"bad-{name}", REFUSED_AT_SAVE[name])
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_prompt" and "messages[0].content" in error["message"]
    assert httpx.get(f"{gateway.url}/admin/prompts/bad-{name}", headers=master_headers).status_code == 404


# Templates no save-time check can judge; they must fail when rendered, quickly and without leaking objects.
FAIL_AT_RENDER = {
    "built-attr-name": "{{ text|attr('_' ~ '_class__') }}",
    "percent-format": "{{ '%s and %r' % (text, text) }}",
    "huge-range": "{{ range(10 ** 9)|list|length }}",
    "repeat": "{{ text * 100000000 }}",
    "power": "{{ 9 ** 9999 }}",
    "nested-loops": (
        "{% for i in range(1000) %}{% for j in range(1000) %}{% for k in range(1000) %}"
        "{% endfor %}{% endfor %}{% endfor %}"
    ),
    "loop-output": "{% for i in range(1000) %}{% for j in range(1000) %}{{ text }}{% endfor %}{% endfor %}",
    "recursion": "{% macro m(n) %}{{ m(n) }}{% endmacro %}{{ m(1) }}",
    "join-bomb": "{{ (range(1000)|list * 100)|join(text * 1000) }}",
}
LEAK_MARKERS = ("<class", "object at 0x", "__globals__", "Traceback", "subprocess", "<built-in")


@pytest.mark.parametrize("name", sorted(FAIL_AT_RENDER))
def test_unsafe_templates_fail_to_render_in_bounded_time(
    gateway: GatewayServer, master_headers: dict[str, str], name: str
) -> None:
    saved = _save(gateway, master_headers, f"render-{name}", FAIL_AT_RENDER[name])
    if saved.status_code == 422:  # refused at save: as good
        assert saved.json()["error"]["code"] == "invalid_prompt"
        return
    assert saved.status_code == 200, saved.text
    for path in (f"/prompts/render-{name}/render", f"/prompts/render-{name}"):
        started = time.monotonic()
        response = httpx.post(gateway.url + path, headers=master_headers, json={"text": "abc"}, timeout=10)
        elapsed = time.monotonic() - started
        assert elapsed < 2.0, f"{name} took {elapsed:.2f}s"
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["code"] in ("prompt_render_failed", "prompt_render_limit")
        assert error["param"] == "messages[0]"
        assert not any(marker in response.text for marker in LEAK_MARKERS), response.text


def test_gateway_still_answers_after_the_bombs(
    gateway: GatewayServer, master_headers: dict[str, str], echo_prompt: str
) -> None:
    response = httpx.post(f"{gateway.url}/prompts/{echo_prompt}", headers=master_headers, json={"text": "ok"})
    assert response.status_code == 200 and response.json()["output"].endswith("You said: ok")
