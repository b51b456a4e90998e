"""Google AI Gemini API (`v1beta`): generateContent, streamGenerateContent?alt=sse, embedContent.

Always a translation (wire_format "gemini" is no ingress format). The key goes in
the `x-goog-api-key` header, never in the URL, so it cannot leak into logs.

Choices made here (see docs/providers.md):
- Tools are declared with `parametersJsonSchema` and JSON output with
  `responseJsonSchema`: both take the caller's JSON Schema as it is
  (`additionalProperties`, `anyOf`, `$ref` included), unlike the older
  `parameters` / `responseSchema` (an OpenAPI subset). Only `$schema` is dropped.
- Function calls carry no id: tool call ids are generated, stable for the same
  response ("call_" + a hash of response id, candidate, position, name, args).
  A Gemini `thoughtSignature` on a call is returned as the tool call's
  `extra_content.google.thought_signature` (the field Google's own OpenAI layer
  uses) and sent back from there. When the signature is missing for a Gemini 3+
  model, the first call of the turn gets the documented
  `skip_thought_signature_validator` value. Signatures on text parts are dropped.
- finishReason: STOP -> stop (tool_calls when the candidate has function calls),
  MAX_TOKENS -> length, the safety family (SAFETY, RECITATION, BLOCKLIST,
  PROHIBITED_CONTENT, SPII, LANGUAGE, IMAGE_*) -> content_filter, everything else
  (MALFORMED_FUNCTION_CALL, OTHER, ...) -> stop. A blocked prompt
  (promptFeedback.blockReason, no candidates) -> content_filter, empty content.
- Usage: input = promptTokenCount (cached included) + toolUsePromptTokenCount,
  output = candidatesTokenCount + thoughtsTokenCount. Embeddings report no usage:
  it is estimated with the gateway's tokenizer and marked so.
- Left out: `logit_bias`, audio output, predicted outputs, web search, the
  deprecated `functions`, `parallel_tool_calls: false`, token-array embedding input
  (each a 400 naming the field); message `name`s and `user` are ignored.
"""

from __future__ import annotations

import base64
import hashlib
import mimetypes
import re
import struct
import time
from typing import Any
from urllib.parse import urlsplit

import orjson

from llmgate.errors import GatewayError, InvalidRequest, UpstreamError
from llmgate.tokens import count_embedding_input
from llmgate.types import Usage
from providers.base import Provider, WireRequest, WireResponse, map_http_error
from providers.openai import parse_json_body
from providers.sse import SSEEvent

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com"
API_VERSION_PATH = "/v1beta"
SKIP_SIGNATURE = "skip_thought_signature_validator"

# OpenAI request fields and the generationConfig field each becomes, when the value carries over as it is.
_GENERATION_FIELDS = {
    "temperature": "temperature",
    "top_p": "topP",
    "top_k": "topK",
    "n": "candidateCount",
    "seed": "seed",
    "presence_penalty": "presencePenalty",
    "frequency_penalty": "frequencyPenalty",
}
# Fields read by build_generate_body, or without effect on the answer (dropped on purpose).
_HANDLED_FIELDS = {
    "model", "messages", "stream", "stream_options", "user", "metadata", "store", "service_tier",
    "max_tokens", "max_completion_tokens", "stop", "tools", "tool_choice", "parallel_tool_calls",
    "response_format", "reasoning_effort", "logprobs", "top_logprobs",
}  # fmt: skip
_EMBEDDING_FIELDS = {"model", "input", "dimensions", "encoding_format", "user"}

_FINISH_REASONS = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "LANGUAGE": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "IMAGE_PROHIBITED_CONTENT": "content_filter",
    "IMAGE_RECITATION": "content_filter",
}
_TOOL_CHOICE_MODES = {"auto": "AUTO", "none": "NONE", "required": "ANY"}
# reasoning_effort -> thinkingBudget (Gemini 2.x) / thinkingLevel (Gemini 3+).
_THINKING_BUDGETS = {"none": 0, "minimal": 1024, "low": 1024, "medium": 8192, "high": 24576}
_THINKING_LEVELS = {"none": "minimal", "minimal": "minimal", "low": "low", "medium": "medium", "high": "high"}
_FUNCTION_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]{0,63}$")
_GEMINI_VERSION = re.compile(r"^gemini-(\d+)")


# -- request ------------------------------------------------------------------


def model_id(upstream_model: str) -> str:
    """The bare model id (`gemini-2.5-flash`), whether or not configured as `models/...`."""
    return upstream_model.removeprefix("models/")


def gemini_major_version(upstream_model: str) -> int | None:
    match = _GEMINI_VERSION.match(model_id(upstream_model))
    return int(match.group(1)) if match else None


def build_generate_body(body: dict[str, Any], upstream_model: str) -> dict[str, Any]:
    """An OpenAI chat request -> a GenerateContentRequest body; InvalidRequest names what Gemini cannot do."""
    _reject_unsupported(body)
    system, contents = build_contents(body.get("messages"), upstream_model)
    out: dict[str, Any] = {"contents": contents}
    if system:
        out["systemInstruction"] = {"parts": system}
    tools = body.get("tools")
    if tools:
        out["tools"] = build_tools(tools)
    tool_config = build_tool_config(body.get("tool_choice"), tools or [])
    if tool_config:
        out["toolConfig"] = tool_config
    generation = build_generation_config(body, upstream_model)
    if generation:
        out["generationConfig"] = generation
    return out


def _reject_unsupported(body: dict[str, Any]) -> None:
    for name, value in body.items():
        if value is None or name in _HANDLED_FIELDS or name in _GENERATION_FIELDS:
            continue
        raise InvalidRequest(f"`{name}` is not supported by Gemini models.", param=name)
    if body.get("parallel_tool_calls") is False:
        raise InvalidRequest(
            "`parallel_tool_calls: false` is not supported by Gemini models (they may call several functions).",
            param="parallel_tool_calls",
        )


def build_contents(messages: Any, upstream_model: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """OpenAI messages -> (systemInstruction parts, contents); consecutive turns of one role are merged."""
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("`messages` must be a non-empty array.", param="messages")
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    call_names: dict[str, str] = {}
    sign = (gemini_major_version(upstream_model) or 0) >= 3
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise InvalidRequest(f"`{where}` must be an object.", param=where)
        role = msg.get("role")
        if role in ("system", "developer"):
            system.extend(build_text_parts(msg.get("content"), f"{where}.content"))
        elif role == "user":
            _append_turn(contents, "user", build_user_parts(msg.get("content"), f"{where}.content"))
        elif role == "assistant":
            _append_turn(contents, "model", build_model_parts(msg, where, call_names, sign))
        elif role == "tool":
            _append_turn(contents, "user", [build_function_response(msg, where, call_names)])
        else:
            raise InvalidRequest(f"`{where}.role` {role!r} is not supported by Gemini models.", param=f"{where}.role")
    if not contents:
        raise InvalidRequest("`messages` needs at least one user or assistant message.", param="messages")
    return system, contents


def _append_turn(contents: list[dict[str, Any]], role: str, parts: list[dict[str, Any]]) -> None:
    if not parts:
        return
    if contents and contents[-1]["role"] == role:
        contents[-1]["parts"].extend(parts)
    else:
        contents.append({"role": role, "parts": parts})


def build_text_parts(content: Any, where: str) -> list[dict[str, Any]]:
    """Text-only content (system, assistant, tool): a string or text parts."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content else []
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") not in ("text", "refusal"):
                raise InvalidRequest(f"`{where}[{j}]` must be a text part here.", param=f"{where}[{j}]")
            text = part.get("text") if part.get("type") == "text" else part.get("refusal")
            if text:
                parts.append({"text": text})
        return parts
    raise InvalidRequest(f"`{where}` must be a string or an array of parts.", param=where)


def build_user_parts(content: Any, where: str) -> list[dict[str, Any]]:
    """User content: text, images (data: or http(s) URLs), audio, and data: files."""
    if not isinstance(content, list):
        return build_text_parts(content, where)
    parts = []
    for j, part in enumerate(content):
        at = f"{where}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if part.get("text"):
                parts.append({"text": part["text"]})
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            parts.append(build_media_part(url, f"{at}.image_url.url", "image/jpeg"))
        elif kind == "input_audio":
            audio = part.get("input_audio") or {}
            parts.append({"inlineData": {"mimeType": f"audio/{audio.get('format', 'wav')}", "data": audio.get("data")}})
        elif kind == "file" and isinstance(part.get("file"), dict) and part["file"].get("file_data"):
            parts.append(build_media_part(part["file"]["file_data"], f"{at}.file.file_data", None))
        else:
            raise InvalidRequest(f"`{at}` of type {kind!r} is not supported by Gemini models.", param=at)
    return parts


def build_media_part(url: Any, where: str, default_mime: str | None) -> dict[str, Any]:
    """A data: URL -> inlineData; an http(s) URL -> fileData with the MIME type guessed from its extension."""
    if not isinstance(url, str):
        raise InvalidRequest(f"`{where}` must be a URL string.", param=where)
    if url.startswith("data:"):
        header, sep, data = url[5:].partition(",")
        if not sep or not header.endswith(";base64"):
            raise InvalidRequest(f"`{where}` must be a base64 data: URL.", param=where)
        return {"inlineData": {"mimeType": header.removesuffix(";base64") or "application/octet-stream", "data": data}}
    if url.startswith(("https://", "http://")):
        mime = mimetypes.guess_type(urlsplit(url).path)[0] or default_mime
        if mime is None:
            raise InvalidRequest(f"`{where}`: cannot tell the file type from the URL.", param=where)
        return {"fileData": {"mimeType": mime, "fileUri": url}}
    raise InvalidRequest(f"`{where}` must be a data: or http(s) URL.", param=where)


def build_model_parts(msg: dict[str, Any], where: str, call_names: dict[str, str], sign: bool) -> list[dict[str, Any]]:
    """An assistant message -> model parts: its text, then a functionCall per tool call."""
    parts = build_text_parts(msg.get("content"), f"{where}.content")
    for j, call in enumerate(msg.get("tool_calls") or ()):
        at = f"{where}.tool_calls[{j}]"
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise InvalidRequest(f"`{at}` must have a function with a name.", param=at)
        call_names[str(call.get("id"))] = fn["name"]
        part: dict[str, Any] = {"functionCall": {"name": fn["name"], "args": parse_arguments(fn.get("arguments"), at)}}
        signature = ((call.get("extra_content") or {}).get("google") or {}).get("thought_signature")
        if signature:
            part["thoughtSignature"] = signature
        elif sign and j == 0:
            part["thoughtSignature"] = SKIP_SIGNATURE
        parts.append(part)
    return parts


def parse_arguments(arguments: Any, where: str) -> dict[str, Any]:
    """OpenAI's arguments JSON string -> Gemini's args object."""
    if arguments is None or arguments == "":
        return {}
    if isinstance(arguments, dict):
        return arguments
    param = f"{where}.function.arguments"
    try:
        args = orjson.loads(arguments)
    except (orjson.JSONDecodeError, TypeError):
        raise InvalidRequest(f"`{param}` is not valid JSON.", param=param) from None
    if not isinstance(args, dict):
        raise InvalidRequest(f"`{param}` must be a JSON object.", param=param)
    return args


def build_function_response(msg: dict[str, Any], where: str, call_names: dict[str, str]) -> dict[str, Any]:
    """A tool message -> a functionResponse part, named after the call it answers."""
    call_id = msg.get("tool_call_id")
    name = call_names.get(str(call_id))
    if name is None:
        raise InvalidRequest(
            f"`{where}.tool_call_id` {call_id!r} matches no tool call of an earlier assistant message.",
            param=f"{where}.tool_call_id",
        )
    text = "".join(p["text"] for p in build_text_parts(msg.get("content"), f"{where}.content"))
    return {"functionResponse": {"name": name, "response": build_function_result(text)}}


def build_function_result(text: str) -> dict[str, Any]:
    """Gemini wants the result as an object: a JSON object as it is, anything else under `content`."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return {"content": text}
    return value if isinstance(value, dict) else {"content": value}


def build_json_schema(schema: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in schema.items() if k != "$schema"}


def build_tools(tools: Any) -> list[dict[str, Any]]:
    """OpenAI function tools -> one Tool with functionDeclarations; a malformed tool is a 400 naming it."""
    if not isinstance(tools, list):
        raise InvalidRequest("`tools` must be an array.", param="tools")
    declarations = []
    for i, tool in enumerate(tools):
        at = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
            raise InvalidRequest(f'`{at}` must be a function tool (type "function").', param=at)
        fn = tool["function"]
        name = fn.get("name")
        if not isinstance(name, str) or not _FUNCTION_NAME.match(name):
            raise InvalidRequest(
                f"tool {name!r}: the name must start with a letter or underscore and use at most 64 of "
                "a-z, A-Z, 0-9, _ . : -",
                param=f"{at}.function.name",
            )
        declaration: dict[str, Any] = {"name": name}
        if fn.get("description"):
            declaration["description"] = fn["description"]
        params = fn.get("parameters")
        if params is not None:
            if not isinstance(params, dict) or params.get("type", "object") != "object":
                raise InvalidRequest(
                    f"tool {name!r}: `parameters` must be a JSON schema of type object.",
                    param=f"{at}.function.parameters",
                )
            declaration["parametersJsonSchema"] = build_json_schema(params)
        declarations.append(declaration)
    return [{"functionDeclarations": declarations}]


def build_tool_config(tool_choice: Any, tools: list[Any]) -> dict[str, Any] | None:
    """tool_choice -> toolConfig.functionCallingConfig (AUTO / NONE / ANY, + allowedFunctionNames)."""
    if tool_choice is None:
        return None
    if isinstance(tool_choice, str) and tool_choice in _TOOL_CHOICE_MODES:
        if not tools:
            if tool_choice == "required":
                raise InvalidRequest("`tool_choice` is `required` but no `tools` are given.", param="tool_choice")
            return None
        return {"functionCallingConfig": {"mode": _TOOL_CHOICE_MODES[tool_choice]}}
    if isinstance(tool_choice, dict) and tool_choice.get("type") == "function":
        name = (tool_choice.get("function") or {}).get("name")
        declared = {t.get("function", {}).get("name") for t in tools if isinstance(t, dict)}
        if name not in declared:
            raise InvalidRequest(f"`tool_choice` names {name!r}, which is not among `tools`.", param="tool_choice")
        return {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [name]}}
    raise InvalidRequest("`tool_choice` must be auto, none, required or a named function.", param="tool_choice")


def build_generation_config(body: dict[str, Any], upstream_model: str) -> dict[str, Any]:
    config: dict[str, Any] = {
        target: body[field] for field, target in _GENERATION_FIELDS.items() if body.get(field) is not None
    }
    max_tokens = body.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = body.get("max_tokens")
    if max_tokens is not None:
        config["maxOutputTokens"] = max_tokens
    stop = body.get("stop")
    if stop is not None:
        config["stopSequences"] = [stop] if isinstance(stop, str) else stop
    if body.get("logprobs"):
        config["responseLogprobs"] = True
        if body.get("top_logprobs") is not None:
            config["logprobs"] = body["top_logprobs"]
    config.update(build_response_format(body.get("response_format")))
    effort = body.get("reasoning_effort")
    if effort is not None:
        config["thinkingConfig"] = build_thinking_config(effort, upstream_model)
    return config


def build_response_format(response_format: Any) -> dict[str, Any]:
    """response_format -> responseMimeType (+ responseJsonSchema)."""
    if response_format is None:
        return {}
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return {}
    if kind == "json_object":
        return {"responseMimeType": "application/json"}
    if kind == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        if not isinstance(schema, dict):
            raise InvalidRequest(
                "`response_format.json_schema.schema` must be a JSON schema object.",
                param="response_format.json_schema.schema",
            )
        return {"responseMimeType": "application/json", "responseJsonSchema": build_json_schema(schema)}
    raise InvalidRequest("`response_format.type` must be text, json_object or json_schema.", param="response_format")


def build_thinking_config(effort: Any, upstream_model: str) -> dict[str, Any]:
    """reasoning_effort -> thinkingBudget for Gemini 2.x, thinkingLevel for Gemini 3 and later."""
    if effort not in _THINKING_BUDGETS:
        raise InvalidRequest(
            f"`reasoning_effort` must be one of {', '.join(_THINKING_BUDGETS)}.", param="reasoning_effort"
        )
    major = gemini_major_version(upstream_model)
    if major is not None and major < 3:
        return {"thinkingBudget": _THINKING_BUDGETS[effort]}
    return {"thinkingLevel": _THINKING_LEVELS[effort]}


# -- response -----------------------------------------------------------------


def map_finish_reason(reason: str | None, has_tool_calls: bool) -> str | None:
    if reason is None:
        return None
    mapped = _FINISH_REASONS.get(reason, "stop")
    return "tool_calls" if mapped == "stop" and has_tool_calls else mapped


def parse_usage(meta: Any) -> Usage:
    """usageMetadata -> canonical usage; a missing counter is 0."""
    if not isinstance(meta, dict):
        return Usage()
    thoughts = int(meta.get("thoughtsTokenCount") or 0)
    return Usage(
        input_tokens=int(meta.get("promptTokenCount") or 0) + int(meta.get("toolUsePromptTokenCount") or 0),
        cached_input_tokens=int(meta.get("cachedContentTokenCount") or 0),
        output_tokens=int(meta.get("candidatesTokenCount") or 0) + thoughts,
        reasoning_tokens=thoughts,
    )


def build_tool_call(part: dict[str, Any], key: str, candidate: int, position: int) -> dict[str, Any]:
    """A functionCall part -> an OpenAI tool call with a stable generated id (and its thought signature)."""
    call = part["functionCall"]
    name = call.get("name") or ""
    arguments = orjson.dumps(call.get("args") or {}).decode()
    call_id = call.get("id")
    if not call_id:
        digest = hashlib.sha256(f"{key}:{candidate}:{position}:{name}:{arguments}".encode()).hexdigest()
        call_id = f"call_{digest[:24]}"
    out: dict[str, Any] = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
    if part.get("thoughtSignature"):
        out["extra_content"] = {"google": {"thought_signature": part["thoughtSignature"]}}
    return out


def parse_parts(parts: list[Any]) -> tuple[str, list[dict[str, Any]]]:
    """Candidate parts -> (answer text without thought parts, functionCall parts)."""
    text = "".join(p["text"] for p in parts if isinstance(p.get("text"), str) and not p.get("thought"))
    calls = [p for p in parts if isinstance(p.get("functionCall"), dict)]
    return text, calls


def parse_logprobs(candidate: dict[str, Any]) -> dict[str, Any] | None:
    """logprobsResult -> OpenAI `logprobs.content` (chosen token + its top alternatives)."""
    result = candidate.get("logprobsResult")
    if not isinstance(result, dict):
        return None
    tops = result.get("topCandidates") or []
    content = []
    for i, chosen in enumerate(result.get("chosenCandidates") or []):
        alternatives = (tops[i].get("candidates") or []) if i < len(tops) else []
        entry = _logprob_entry(chosen)
        entry["top_logprobs"] = [_logprob_entry(alt) for alt in alternatives]
        content.append(entry)
    return {"content": content}


def _logprob_entry(token: dict[str, Any]) -> dict[str, Any]:
    text = token.get("token") or ""
    return {"token": text, "logprob": token.get("logProbability", 0.0), "bytes": list(text.encode())}


def response_key(data: dict[str, Any]) -> str:
    """What generated ids derive from: the response id, or (rarely absent) a hash of the response."""
    return data.get("responseId") or hashlib.sha256(orjson.dumps(data, option=orjson.OPT_SORT_KEYS)).hexdigest()[:24]


def parse_generate_response(data: dict[str, Any], upstream_model: str, key: str) -> tuple[dict[str, Any], Usage]:
    """A GenerateContentResponse -> a canonical chat.completion and its usage."""
    usage = parse_usage(data.get("usageMetadata"))
    choices = []
    for position, candidate in enumerate(data.get("candidates") or []):
        index = candidate.get("index", position)
        text, call_parts = parse_parts((candidate.get("content") or {}).get("parts") or [])
        calls = [build_tool_call(p, key, index, n) for n, p in enumerate(call_parts)]
        message: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
        if calls:
            message["tool_calls"] = calls
        choice: dict[str, Any] = {
            "index": index,
            "message": message,
            "finish_reason": map_finish_reason(candidate.get("finishReason") or "STOP", bool(calls)),
        }
        logprobs = parse_logprobs(candidate)
        if logprobs is not None:
            choice["logprobs"] = logprobs
        choices.append(choice)
    if not choices:
        if not (data.get("promptFeedback") or {}).get("blockReason"):
            raise UpstreamError("Gemini returned a response without candidates")
        choices.append({"index": 0, "message": {"role": "assistant", "content": ""}, "finish_reason": "content_filter"})
    response = {
        "id": f"chatcmpl-{key}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": data.get("modelVersion") or model_id(upstream_model),
        "choices": choices,
        "usage": usage.to_openai(),
    }
    return response, usage


class GeminiStreamParser:
    """`streamGenerateContent?alt=sse` -> canonical chunks.

    Every event is a whole GenerateContentResponse holding only the new text; a
    function call arrives whole in one event and becomes one tool call delta.
    usageMetadata is repeated on each event (the last one counts). There is no
    [DONE]: the stream is complete once a candidate carries a finishReason.
    """

    __slots__ = ("calls", "created", "done", "key", "model", "provider", "started", "usage")

    def __init__(self, provider: str, upstream_model: str) -> None:
        self.provider = provider
        self.model = model_id(upstream_model)
        self.usage: Usage | None = None
        self.done = False
        self.key: str | None = None
        self.created = int(time.time())
        self.started: set[int] = set()  # candidates whose role was sent
        self.calls: dict[int, int] = {}  # candidate -> tool calls sent so far

    def feed(self, event: SSEEvent) -> list[dict[str, Any]]:
        try:
            data = orjson.loads(event.data)
        except orjson.JSONDecodeError:
            raise UpstreamError(f"provider {self.provider!r} sent a stream event that is not JSON") from None
        if not isinstance(data, dict):
            raise UpstreamError(f"provider {self.provider!r} sent a stream event that is not an object")
        if "error" in data:
            raise map_gemini_error(self.provider, WireResponse(_error_status(data), event.data))
        if self.key is None:
            self.key = response_key(data)
            self.model = data.get("modelVersion") or self.model
        if data.get("usageMetadata"):
            self.usage = parse_usage(data["usageMetadata"])
        candidates = data.get("candidates") or []
        if not candidates and (data.get("promptFeedback") or {}).get("blockReason"):
            self.done = True
            return [self._chunk(0, {"role": "assistant", "content": ""}), self._chunk(0, {}, "content_filter")]
        chunks: list[dict[str, Any]] = []
        for position, candidate in enumerate(candidates):
            chunks.extend(self._candidate_chunks(candidate.get("index", position), candidate))
        return chunks

    def _candidate_chunks(self, index: int, candidate: dict[str, Any]) -> list[dict[str, Any]]:
        text, call_parts = parse_parts((candidate.get("content") or {}).get("parts") or [])
        chunks = []
        # Only the first chunk of a choice carries the role (strict clients need it once).
        role: dict[str, Any] = {} if index in self.started else {"role": "assistant"}
        self.started.add(index)
        if text or (role and not call_parts):
            chunks.append(self._chunk(index, {**role, "content": text}, logprobs=parse_logprobs(candidate)))
            role = {}
        if call_parts:
            sent = self.calls.get(index, 0)
            deltas = [
                {"index": n, **build_tool_call(part, self.key or "", index, n)}
                for n, part in enumerate(call_parts, start=sent)
            ]
            self.calls[index] = sent + len(call_parts)
            chunks.append(self._chunk(index, {**role, "tool_calls": deltas}))
        reason = candidate.get("finishReason")
        if reason:
            self.done = True
            chunks.append(self._chunk(index, {}, map_finish_reason(reason, bool(self.calls.get(index)))))
        return chunks

    def _chunk(
        self, index: int, delta: dict[str, Any], finish: str | None = None, logprobs: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": index, "delta": delta, "finish_reason": finish}
        if logprobs is not None:
            choice["logprobs"] = logprobs
        return {
            "id": f"chatcmpl-{self.key}",
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        }

    def finish(self) -> list[dict[str, Any]]:
        return []


# -- errors -------------------------------------------------------------------


def parse_duration(value: Any) -> float | None:
    """A protobuf Duration in JSON ("34.4s") -> seconds."""
    if not isinstance(value, str) or not value.endswith("s"):
        return None
    try:
        return max(0.0, float(value[:-1]))
    except ValueError:
        return None


def _error_object(body: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    if isinstance(data, list) and data:  # the non-SSE stream endpoint wraps errors in an array
        data = data[0]
    err = data.get("error") if isinstance(data, dict) else None
    return err if isinstance(err, dict) else {}


def _error_status(data: dict[str, Any]) -> int:
    code = (data.get("error") or {}).get("code") if isinstance(data.get("error"), dict) else None
    return code if isinstance(code, int) and 400 <= code < 600 else 500


def map_gemini_error(provider: str, response: WireResponse) -> GatewayError:
    """A google.rpc Status body -> a gateway error.

    A refused API key is 400 API_KEY_INVALID upstream but the gateway's own
    credential problem (mapped like a 401); the retry delay of a 429 comes from
    the RetryInfo detail rather than a header.
    """
    err = _error_object(response.body)
    message = err.get("message") or response.body[:200].decode("utf-8", "replace") or None
    status_name = err.get("status") if isinstance(err.get("status"), str) else None
    details = [d for d in err.get("details") or () if isinstance(d, dict)]
    status = response.status
    if any(d.get("reason") == "API_KEY_INVALID" for d in details) or status_name == "UNAUTHENTICATED":
        status = 401
    headers = dict(response.headers)
    delay = next((parse_duration(d.get("retryDelay")) for d in details if "retryDelay" in d), None)
    if delay is not None and "retry-after" not in headers and "retry-after-ms" not in headers:
        headers["retry-after"] = str(delay)
    code = None
    if status == 400 and message and "exceeds the maximum number of tokens" in message:
        code = "context_length_exceeded"
    elif status != 429 and status_name:
        code = status_name.lower()
    return map_http_error(provider, WireResponse(status, response.body, headers), message, code)


# -- embeddings ---------------------------------------------------------------


def build_embed_request(body: dict[str, Any], upstream_model: str) -> tuple[str, dict[str, Any]]:
    """OpenAI embeddings -> (method, body): embedContent for one string, batchEmbedContents for a list."""
    for name, value in body.items():
        if value is not None and name not in _EMBEDDING_FIELDS:
            raise InvalidRequest(f"`{name}` is not supported by Gemini embedding models.", param=name)
    if body.get("encoding_format") not in (None, "float", "base64"):
        raise InvalidRequest("`encoding_format` must be float or base64.", param="encoding_format")
    model = f"models/{model_id(upstream_model)}"
    dimensions = body.get("dimensions")

    def request(text: str) -> dict[str, Any]:
        out: dict[str, Any] = {"model": model, "content": {"parts": [{"text": text}]}}
        if dimensions is not None:
            out["outputDimensionality"] = dimensions
        return out

    value = body.get("input")
    if isinstance(value, str):
        return "embedContent", request(value)
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return "batchEmbedContents", {"requests": [request(v) for v in value]}
    raise InvalidRequest("`input` must be a string or a non-empty array of strings for Gemini models.", param="input")


def encode_float32(values: list[float]) -> str:
    """OpenAI's base64 embedding: little-endian float32, base64-encoded."""
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()


def parse_embed_response(
    data: dict[str, Any], upstream_model: str, body: dict[str, Any]
) -> tuple[dict[str, Any], Usage]:
    """embedContent / batchEmbedContents -> an OpenAI embeddings list; usage is estimated (Gemini sends none)."""
    if isinstance(data.get("embedding"), dict):
        vectors = [data["embedding"].get("values") or []]
    elif isinstance(data.get("embeddings"), list):
        vectors = [(e or {}).get("values") or [] for e in data["embeddings"]]
    else:
        raise UpstreamError("Gemini returned an embeddings response without embeddings")
    as_base64 = body.get("encoding_format") == "base64"
    tokens = count_embedding_input(body.get("input"), upstream_model)
    response = {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": encode_float32(v) if as_base64 else v}
            for i, v in enumerate(vectors)
        ],
        "model": model_id(upstream_model),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    return response, Usage(input_tokens=tokens, estimated=True)


# -- adapter ------------------------------------------------------------------


class GeminiProvider(Provider):
    type = "gemini"
    wire_format = "gemini"

    def __init__(self, name: str, settings: Any) -> None:
        super().__init__(name, settings)
        base = (settings.base_url or DEFAULT_BASE_URL).rstrip("/").removesuffix(API_VERSION_PATH)
        self.base_url = base
        self.headers = self._auth_headers()

    def _auth_headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json", **self.settings.headers}
        key = self.settings.api_key
        if key:
            style = self.settings.auth_style
            if style == "default":
                headers["x-goog-api-key"] = key
            elif style == "bearer":
                headers["authorization"] = f"Bearer {key}"
            else:
                headers[style] = key
        return headers

    def model_url(self, upstream_model: str, method: str) -> str:
        return f"{self.base_url}{API_VERSION_PATH}/models/{model_id(upstream_model)}:{method}"

    def build_chat_request(self, body: dict[str, Any], upstream_model: str, stream: bool) -> WireRequest:
        payload = build_generate_body(body, upstream_model)
        method = "streamGenerateContent?alt=sse" if stream else "generateContent"
        return WireRequest(self.model_url(upstream_model, method), orjson.dumps(payload), self.headers)

    def parse_chat_response(self, response: WireResponse, upstream_model: str) -> tuple[dict[str, Any], Usage]:
        data = parse_json_body(response, self.name)
        return parse_generate_response(data, upstream_model, response_key(data))

    def new_stream_parser(self, upstream_model: str, body: dict[str, Any]) -> GeminiStreamParser:
        return GeminiStreamParser(self.name, upstream_model)

    def map_error(self, response: WireResponse) -> GatewayError:
        return map_gemini_error(self.name, response)

    def build_embeddings_request(self, body: dict[str, Any], upstream_model: str) -> WireRequest:
        method, payload = build_embed_request(body, upstream_model)
        return WireRequest(self.model_url(upstream_model, method), orjson.dumps(payload), self.headers)

    def parse_embeddings_response(
        self, response: WireResponse, upstream_model: str, body: dict[str, Any]
    ) -> tuple[dict[str, Any], Usage]:
        return parse_embed_response(parse_json_body(response, self.name), upstream_model, body)
