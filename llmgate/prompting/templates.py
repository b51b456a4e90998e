"""Message templates: checked when a prompt is saved, rendered in a bounded sandbox when called.

Templates are Jinja2 in `ImmutableSandboxedEnvironment` with strict undefined and
no autoescaping. Inputs are data: they are passed as context values and never
parsed as template code, so a value holding `{{ ... }}` appears literally.

Checks at save time (each problem names the message and line): syntax, variables
that are not declared inputs, private attributes (`x.__class__`), method calls
outside a short list of string/dict readers, filters that build large strings
from a number (`center`, `indent`, `format`), and include/import/extends.

Bounds at render time, because a template and its inputs together can still ask
for a lot of work: `range()` yields at most MAX_RANGE items; sequence repetition,
concatenation (`+`, `~`, `join`) and powers are capped; the rendered text is capped at
MAX_RENDER_CHARS; and a deadline is enforced line by line inside the compiled
template code (a trace function scoped to template frames), so nested loops over
big inputs stop too.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from types import FrameType
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateSyntaxError, meta, nodes, pass_eval_context
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError
from jinja2.filters import make_attrgetter
from jinja2.nodes import EvalContext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from llmgate.prompting.document import DocumentError, Problem, Prompt, parse_prompt

MAX_RANGE = 1000
MAX_SEQUENCE = 100_000
MAX_EXPONENT = 256
MAX_RENDER_CHARS = 2_000_000
RENDER_DEADLINE_S = 0.5
_TEMPLATE_FILENAME = "<prompt>"

_ALLOWED_METHODS = frozenset(
    {
        "items", "keys", "values", "get",
        "upper", "lower", "title", "capitalize", "strip", "lstrip", "rstrip",
        "startswith", "endswith", "split", "splitlines", "count", "cycle",
    }
)  # fmt: skip
_ALLOWED_FILTERS = frozenset(
    {
        "abs", "attr", "batch", "capitalize", "count", "d", "default", "dictsort", "e", "escape",
        "first", "float", "forceescape", "groupby", "int", "items", "join", "last", "length", "list",
        "lower", "map", "max", "min", "pprint", "reject", "rejectattr", "reverse", "round", "safe",
        "select", "selectattr", "slice", "sort", "string", "striptags", "sum", "title", "tojson",
        "trim", "truncate", "unique", "upper", "urlencode", "wordcount", "wordwrap",
    }
)  # fmt: skip
_FORBIDDEN_STATEMENTS: dict[type[nodes.Node], str] = {
    nodes.Include: "include",
    nodes.Import: "import",
    nodes.FromImport: "from ... import",
    nodes.Extends: "extends",
}


class RenderLimitExceeded(SecurityError):
    """Rendering asked for more time or text than a prompt may use."""


def _bounded_range(*args: int) -> range:
    values = range(*args)
    if len(values) > MAX_RANGE:
        raise RenderLimitExceeded(f"range() is limited to {MAX_RANGE} items")
    return values


def _finalize(value: Any) -> Any:
    """An optional input that was not given renders as nothing, not as `None`."""
    return "" if value is None else value


_SEQUENCES = (str, list, tuple)


def check_binop(operator: str, left: Any, right: Any) -> None:
    """Refuse arithmetic that would build a huge value before any output cap could see it."""
    if operator == "+" and isinstance(left, _SEQUENCES) and isinstance(right, _SEQUENCES):
        if len(left) + len(right) > MAX_RENDER_CHARS:
            raise RenderLimitExceeded(f"a concatenation is limited to {MAX_RENDER_CHARS} items")
    elif operator == "*":
        for seq, times in ((left, right), (right, left)):
            if isinstance(seq, _SEQUENCES) and isinstance(times, int) and len(seq) * times > MAX_SEQUENCE:
                raise RenderLimitExceeded(f"repetition is limited to {MAX_SEQUENCE} items")
    elif operator == "**" and isinstance(right, int | float) and abs(right) > MAX_EXPONENT:
        raise RenderLimitExceeded(f"exponents are limited to {MAX_EXPONENT}")
    elif operator == "%" and isinstance(left, str):
        raise SecurityError("string formatting with % is not allowed in prompt templates")


def _check_size(size: int, what: str) -> None:
    if size > MAX_RENDER_CHARS:
        raise RenderLimitExceeded(f"{what} is limited to {MAX_RENDER_CHARS} characters")


@pass_eval_context
def _bounded_join(eval_ctx: EvalContext, value: Iterable[Any], d: str = "", attribute: str | int | None = None) -> str:
    """Jinja's `join` filter, refusing a result over the size cap before building it."""
    if attribute is not None:
        value = map(make_attrgetter(eval_ctx.environment, attribute), value)
    parts = [str(item) for item in value]
    separator = str(d)
    _check_size(sum(map(len, parts)) + len(separator) * max(0, len(parts) - 1), "a join")
    return separator.join(parts)


class _PromptCodeGenerator(CodeGenerator):
    """Compiles `a ~ b` to the environment's bounded join instead of a plain one."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.bounded_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class PromptSandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"+", "*", "**", "%"})
    code_generator_class = _PromptCodeGenerator

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        check_binop(operator, left, right)
        return super().call_binop(context, operator, left, right)

    def bounded_concat(self, values: tuple[Any, ...]) -> str:
        parts = [str(value) for value in values]
        _check_size(sum(map(len, parts)), "a `~` concatenation")
        return "".join(parts)


def new_environment() -> PromptSandbox:
    env = PromptSandbox(undefined=StrictUndefined, autoescape=False, finalize=_finalize, keep_trailing_newline=True)
    env.globals.clear()
    env.globals["range"] = _bounded_range
    env.filters["join"] = _bounded_join
    return env


ENVIRONMENT = new_environment()


def _first_line(ast: nodes.Template, name: str) -> int:
    for node in ast.find_all(nodes.Name):
        if node.name == name:
            return node.lineno
    return 1


def _private_argument(node: nodes.Filter) -> bool:
    """`attr('__class__')`, `map(attribute='__dict__')`: filters that read an attribute named by a string."""
    values = [*node.args, *(kw.value for kw in node.kwargs)]
    return any(isinstance(v, nodes.Const) and isinstance(v.value, str) and v.value.startswith("_") for v in values)


def _policy_problems(ast: nodes.Template) -> list[tuple[int, str]]:
    """(line, problem) for every construct the prompt sandbox refuses."""
    found: list[tuple[int, str]] = []
    for node in ast.find_all(nodes.Node):
        if isinstance(node, nodes.Getattr) and node.attr.startswith("_"):
            found.append((node.lineno, f"access to the private attribute `{node.attr}` is not allowed"))
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
            if isinstance(node.arg.value, str) and node.arg.value.startswith("_"):
                found.append((node.lineno, f"access to the private item `{node.arg.value}` is not allowed"))
        elif isinstance(node, nodes.Call):
            target = node.node
            if isinstance(target, nodes.Getattr) and target.attr not in _ALLOWED_METHODS:
                found.append((node.lineno, f"calling the method `{target.attr}` is not allowed (use a filter)"))
            elif not isinstance(target, nodes.Name | nodes.Getattr):
                found.append((node.lineno, "only functions and macros may be called"))
        elif isinstance(node, nodes.Filter) and node.name not in _ALLOWED_FILTERS:
            found.append((node.lineno, f"the filter `{node.name}` is not allowed in prompt templates"))
        elif isinstance(node, nodes.Filter) and _private_argument(node):
            found.append((node.lineno, f"the filter `{node.name}` may not read private attributes"))
        elif isinstance(node, nodes.Name) and node.name == "self" and node.ctx == "load":
            found.append((node.lineno, "`self` is not available in prompt templates"))
        else:
            for kind, word in _FORBIDDEN_STATEMENTS.items():
                if isinstance(node, kind):
                    found.append((node.lineno, f"`{word}` is not allowed in prompt templates"))
    return found


def check_template(source: str, declared: set[str], where: str) -> list[Problem]:
    """Every problem of one message template, each naming `where` and the line."""
    try:
        ast = ENVIRONMENT.parse(source)
    except TemplateSyntaxError as exc:
        return [Problem(f"{where} line {exc.lineno}", f"template syntax error: {exc.message}")]
    problems = [Problem(f"{where} line {line}", text) for line, text in _policy_problems(ast)]
    unknown = meta.find_undeclared_variables(ast) - declared - set(ENVIRONMENT.globals)
    for name in sorted(unknown, key=lambda n: (_first_line(ast, n), n)):
        problems.append(
            Problem(f"{where} line {_first_line(ast, name)}", f"unknown variable `{name}` (not a declared input)")
        )
    return problems


def check_prompt_templates(prompt: Prompt) -> list[Problem]:
    declared = set(prompt.inputs)
    problems: list[Problem] = []
    for i, message in enumerate(prompt.messages):
        problems.extend(check_template(message.content, declared, f"messages[{i}].content"))
    return problems


def compile_templates(prompt: Prompt) -> tuple[Template, ...]:
    """The message templates compiled; call only after `check_prompt_templates` found nothing."""
    out = []
    for message in prompt.messages:
        code = ENVIRONMENT.compile(message.content, filename=_TEMPLATE_FILENAME)
        out.append(ENVIRONMENT.template_class.from_code(ENVIRONMENT, code, ENVIRONMENT.make_globals(None)))
    return tuple(out)


class _Deadline:
    """A trace function that raises once the deadline passes, active only in template frames."""

    def __init__(self, seconds: float) -> None:
        self.until = time.monotonic() + seconds

    def __call__(self, frame: FrameType, event: str, arg: Any) -> Any:
        if frame.f_code.co_filename != _TEMPLATE_FILENAME:
            return None
        self._check()
        return self._line

    def _line(self, frame: FrameType, event: str, arg: Any) -> Any:
        if event == "line":
            self._check()
        return self._line

    def _check(self) -> None:
        if time.monotonic() > self.until:
            raise RenderLimitExceeded(f"rendering took longer than {RENDER_DEADLINE_S}s")


def _render_one(template: Template, context: dict[str, Any], budget: int) -> str:
    parts: list[str] = []
    used = 0
    pieces: Iterator[str] = template.generate(context)
    for piece in pieces:
        used += len(piece)
        if used > budget:
            raise RenderLimitExceeded(f"the rendered prompt is longer than {MAX_RENDER_CHARS} characters")
        parts.append(piece)
    return "".join(parts)


def render_templates(templates: tuple[Template, ...], context: dict[str, Any]) -> list[str]:
    """Render each template with `context`; a failure raises RenderFailed naming the message.

    Synchronous and CPU-bound: callers run it in a worker thread.
    """
    previous = sys.gettrace()
    sys.settrace(_Deadline(RENDER_DEADLINE_S))
    try:
        out: list[str] = []
        budget = MAX_RENDER_CHARS
        for i, template in enumerate(templates):
            try:
                text = _render_one(template, context, budget)
            except Exception as exc:  # any failure inside a template is the template's, reported as such
                raise RenderFailed(i, exc) from None
            budget -= len(text)
            out.append(text)
        return out
    finally:
        sys.settrace(previous)


class RenderFailed(Exception):
    def __init__(self, index: int, cause: BaseException) -> None:
        super().__init__(f"messages[{index}]: {cause}")
        self.index = index
        self.cause = cause

    @property
    def over_limit(self) -> bool:
        return isinstance(self.cause, RenderLimitExceeded | RecursionError)


def compile_prompt(document: Any) -> tuple[Prompt, tuple[Template, ...]]:
    """A document validated whole (fields and templates) and compiled; raises DocumentError."""
    prompt = parse_prompt(document)
    problems = check_prompt_templates(prompt)
    if problems:
        raise DocumentError(problems)
    return prompt, compile_templates(prompt)
