"""Configuration: ${VAR} substitution, disabled providers, one line per problem."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from llmgate.config import ConfigError, load_settings, parse_settings

ROOT = Path(__file__).resolve().parents[1]


def test_embedded_default_config_is_valid() -> None:
    settings = load_settings(ROOT / "config.toml")
    assert settings.gateway.port == 4000
    assert {m.name for m in settings.models} >= {"mock-gpt", "mock-embed"}
    assert all(settings.providers[m.provider].type == "mock" for m in settings.models)


def test_env_substitution_and_missing_key_disables_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMGATE_T_KEY", "sk-from-env")
    monkeypatch.delenv("LLMGATE_T_MISSING", raising=False)
    settings = parse_settings(
        {
            "gateway": {"master_key": "${LLMGATE_T_MISSING}"},
            "providers": {
                "a": {"type": "openai", "api_key": "${LLMGATE_T_KEY}"},
                "b": {"type": "anthropic", "api_key": "${LLMGATE_T_MISSING}"},
            },
            "models": [{"name": "m", "provider": "a"}, {"name": "m2", "provider": "b"}],
        },
        "t.toml",
    )
    assert settings.providers["a"].api_key == "sk-from-env"
    assert settings.providers["a"].disabled_reason is None
    assert settings.providers["b"].api_key is None
    assert settings.providers["b"].disabled_reason == "environment variable LLMGATE_T_MISSING is not set"
    assert settings.gateway.master_key is None


def test_every_problem_is_one_line_with_file_and_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLMGATE_T_MISSING", raising=False)
    with pytest.raises(ConfigError) as info:
        parse_settings(
            {
                "gateway": {"port": "eighty", "database_url": "${LLMGATE_T_MISSING}"},
                "providers": {"p": {"type": "nosuch"}},
                "models": [{"name": "m", "provider": "p", "price": {"input": -1}}, {"name": "x", "provider": "q"}],
                "limits": {"rpm": -5, "colour": "blue"},
            },
            "bad.toml",
        )
    problems = info.value.problems
    assert all(p.startswith("bad.toml: ") for p in problems)
    joined = "\n".join(problems)
    assert "gateway.database_url: environment variable LLMGATE_T_MISSING is not set" in joined
    assert "gateway.port:" in joined
    assert "providers.p.type: unknown provider type 'nosuch'" in joined
    assert "models[0].price.input:" in joined
    assert "limits.rpm:" in joined
    assert "limits.colour: Extra inputs are not permitted" in joined


def test_unknown_references_are_reported() -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings(
            {"providers": {"p": {"type": "mock"}},
             "models": [{"name": "m", "provider": "zzz", "fallbacks": ["nothere"]}]},
            "refs.toml",
        )
    assert info.value.problems == [
        "refs.toml: models[0].provider: unknown provider 'zzz'",
        "refs.toml: models[0].fallbacks: unknown model 'nothere'",
    ]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "llmgate.cli", *args], capture_output=True, text=True, cwd=ROOT)


def test_config_check_cli_exit_codes(tmp_path: Path) -> None:
    ok = _cli("config", "check", "--config", str(ROOT / "config.toml"))
    assert ok.returncode == 0, ok.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text('[gateway]\nport = "x"\n[[models]]\nname = "m"\nprovider = "none"\n')
    result = _cli("config", "check", "--config", str(bad))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith(f"{bad}: ") for line in lines)
    broken = tmp_path / "broken.toml"
    broken.write_text("[gateway\n")
    result = _cli("config", "check", "--config", str(broken))
    assert result.returncode == 2 and "invalid TOML" in result.stderr


def test_serve_refuses_bad_config_with_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[limits]\nrpm = -1\n")
    result = _cli("serve", "--config", str(bad), "--port", "0")
    assert result.returncode == 2 and "limits.rpm" in result.stderr
