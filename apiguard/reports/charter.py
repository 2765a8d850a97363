"""The charter configuration in force: a canonical snapshot of every rule's
article, action, state and thresholds, remembered at each start when it
changed, so that the monthly report can show what applied and what changed."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from apiguard.config import Settings
from apiguard.policy.charter import Charter


def charter_snapshot(charter: Charter, settings: Settings) -> dict[str, Any]:
    """The effective configuration, defaults included, as plain JSON values."""
    rules: dict[str, Any] = {}
    for rule in charter.all_rules:
        thresholds = rule.params.model_dump(mode="json", exclude={"enabled", "action"})
        rules[rule.id] = {
            "article": rule.article,
            "enabled": rule.enabled,
            "action": rule.action.value,
            "thresholds": thresholds,
        }
    return {
        "allowed_recipient_domains": list(settings.charter.allowed_recipient_domains),
        "allowed_sender_domains": list(settings.charter.allowed_sender_domains),
        "review.hold_days": settings.review.hold_days,
        "review.send_delay": settings.review.send_delay,
        "rules": rules,
    }


def canonical(snapshot: dict[str, Any]) -> tuple[str, str]:
    """(digest, JSON text) of a snapshot: the same configuration, the same digest."""
    text = json.dumps(snapshot, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest(), text


@dataclass(frozen=True, slots=True)
class Change:
    """One setting that changed at `at`: `key` is "rule id.setting" or a charter key."""

    at: float
    key: str
    before: str
    after: str


def changes(before: dict[str, Any], after: dict[str, Any], at: float) -> list[Change]:
    """What differs between two snapshots, setting by setting."""
    found: list[Change] = []
    for key in sorted(set(before) | set(after)):
        if key == "rules":
            continue
        if before.get(key) != after.get(key):
            found.append(Change(at, key, _shown(before.get(key)), _shown(after.get(key))))
    old_rules, new_rules = before.get("rules", {}), after.get("rules", {})
    for rule_id in sorted(set(old_rules) | set(new_rules)):
        old, new = _flat(old_rules.get(rule_id, {})), _flat(new_rules.get(rule_id, {}))
        for setting in sorted(set(old) | set(new)):
            if old.get(setting) != new.get(setting):
                found.append(
                    Change(
                        at,
                        f"{rule_id}.{setting}",
                        _shown(old.get(setting)),
                        _shown(new.get(setting)),
                    )
                )
    return found


def _flat(rule: dict[str, Any]) -> dict[str, Any]:
    flat = {k: v for k, v in rule.items() if k not in ("thresholds", "article")}
    flat.update(rule.get("thresholds", {}))
    return flat


def _shown(value: Any) -> str:
    if value is None:
        return "—"
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
