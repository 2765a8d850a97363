"""The README and the example configuration stay true to the code."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from pydantic import BaseModel

from apiguard.config import Settings
from apiguard.policy.charter import rule_classes

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
EXAMPLE_TEXT = (ROOT / "config" / "apiguard.example.toml").read_text(encoding="utf-8")
EXAMPLE = tomllib.loads(EXAMPLE_TEXT)


def keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    found = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found.extend(keys(annotation, f"{prefix}{name}."))
        else:
            found.append(f"{prefix}{name}")
    return found


@pytest.mark.parametrize("rule", [r.id for r in rule_classes()])
def test_every_rule_is_in_the_readme_and_the_example_config(rule: str) -> None:
    assert f"`{rule}`" in README
    assert rule in EXAMPLE["charter"]["rules"]


@pytest.mark.parametrize("key", keys(Settings))
def test_every_configuration_key_is_documented_in_the_example(key: str) -> None:
    *path, name = key.split(".")
    section: object = EXAMPLE
    for part in path:
        assert isinstance(section, dict) and part in section, f"{key} missing"
        section = section[part]
    assert isinstance(section, dict)
    # Keys without a TOML value by default (unset) are shown commented out.
    commented = rf"^#\s*({name}\s*=|\[{'.'.join(path)}\.{name}[.\]])"
    assert name in section or re.search(commented, EXAMPLE_TEXT, re.M), key


@pytest.mark.parametrize("rule_class", rule_classes(), ids=lambda r: r.id)
def test_rule_thresholds_are_documented(rule_class: type) -> None:
    documented = EXAMPLE["charter"]["rules"][rule_class.id]
    params = set(rule_class.Params.model_fields) - {"enabled", "action"}
    optional = {"phrases", "overrides"}
    for param in params - optional:
        assert param in documented, f"{rule_class.id}.{param}"
    for param in params & optional:
        assert param in EXAMPLE_TEXT


def test_the_readme_quick_start_has_the_two_commands_and_ci_runs_the_second() -> None:
    run_cmd = "pip install . && apiguard serve"
    test_cmd = "pip install -e '.[test]' && python -m pytest"
    assert run_cmd in README and test_cmd in README
    assert test_cmd in (ROOT / ".ci" / "run").read_text()
