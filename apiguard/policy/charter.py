"""The charter as a table: every rule runs, hits and misses are recorded, and
one decision is taken by severity."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pydantic import ValidationError

from apiguard.mail import Envelope, ParsedMessage
from apiguard.policy.context import CharterContext, MessageContext, RecipientContext
from apiguard.policy.rule import Rule, Scope
from apiguard.policy.verdict import Decision, Finding

# The rule modules, in the order their rules run. Each exports `RULES`.
RULE_MODULES: tuple[str, ...] = (
    "apiguard.policy.rules.recipients",
    "apiguard.policy.rules.lookalike",
    "apiguard.policy.rules.mime",
    "apiguard.policy.rules.encrypted",
    "apiguard.policy.rules.limits",
    "apiguard.policy.rules.art1",
    "apiguard.policy.rules.art2",
    "apiguard.policy.rules.volume",
    "apiguard.policy.rules.art3",
    "apiguard.policy.rules.art4",
    "apiguard.policy.rules.formats",
    "apiguard.policy.rules.privacy",
    "apiguard.policy.rules.art5",
)


class CharterConfigError(ValueError):
    """A `[charter.rules]` entry names an unknown rule or a bad setting."""


def rule_classes() -> list[type[Rule]]:
    """Every known rule class, in table order."""
    classes: list[type[Rule]] = []
    for name in RULE_MODULES:
        module = importlib.import_module(name)
        classes.extend(module.RULES)
    return classes


class Charter:
    """The ordered table of enabled rules and the decision over their findings."""

    def __init__(self, rules: Iterable[Rule], context: CharterContext | None = None) -> None:
        self.all_rules = tuple(rules)
        self.rules = tuple(rule for rule in self.all_rules if rule.enabled)
        self.context = context or CharterContext()

    @classmethod
    def build(
        cls,
        rule_settings: Mapping[str, Mapping[str, Any]] | None = None,
        context: CharterContext | None = None,
    ) -> Charter:
        """Build the table from `[charter.rules."<id>"]` settings.

        Raises CharterConfigError naming the rule id and key on any mistake.
        """
        settings = dict(rule_settings or {})
        classes = rule_classes()
        known = {rule_class.id for rule_class in classes}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise CharterConfigError(
                f"charter.rules: unknown rule id {unknown[0]!r} (known: {', '.join(sorted(known))})"
            )
        rules: list[Rule] = []
        for rule_class in classes:
            raw = settings.get(rule_class.id, {})
            try:
                params = rule_class.Params.model_validate(dict(raw))
            except ValidationError as error:
                first = error.errors()[0]
                key = ".".join(str(p) for p in first["loc"]) or "?"
                raise CharterConfigError(
                    f'charter.rules."{rule_class.id}".{key}: {first["msg"]}'
                ) from None
            rules.append(rule_class(params))
        return cls(rules, context)

    def subset(self, keep: Callable[[Rule], bool]) -> Charter:
        """The same table restricted to the rules `keep` selects."""
        return Charter((rule for rule in self.all_rules if keep(rule)), self.context)

    @property
    def rule_ids(self) -> tuple[str, ...]:
        return tuple(rule.id for rule in self.rules)

    def rule(self, rule_id: str) -> Rule | None:
        return next((r for r in self.all_rules if r.id == rule_id), None)

    def check_recipient(
        self, mail_from: str, recipient: str, accepted_so_far: Iterable[str] = ()
    ) -> list[Finding]:
        """Run the recipient-scope rules for one RCPT TO."""
        ctx = RecipientContext(
            mail_from=mail_from,
            recipient=recipient,
            accepted_so_far=tuple(accepted_so_far),
            charter=self.context,
        )
        findings: list[Finding] = []
        for rule in self.rules:
            if rule.scope is Scope.RECIPIENT:
                hit = rule.check_recipient(ctx)
                if hit is not None:
                    findings.append(hit)
        return findings

    def check_message(
        self,
        envelope: Envelope,
        message: ParsedMessage,
        context: CharterContext | None = None,
        *,
        include_recipient_rules: bool = False,
    ) -> Decision:
        """Run every message-scope rule (and optionally the recipient ones) and decide."""
        ctx = MessageContext(envelope, message, context or self.context)
        return self.check_context(ctx, include_recipient_rules=include_recipient_rules)

    def check_context(
        self, ctx: MessageContext, *, include_recipient_rules: bool = False
    ) -> Decision:
        """As `check_message`, on a context the caller keeps (to read derived facts)."""
        envelope = ctx.envelope
        findings: list[Finding] = []
        checked: list[str] = []
        skipped: list[str] = []
        for rule in self.rules:
            if rule.scope is Scope.RECIPIENT:
                if not include_recipient_rules:
                    continue
                checked.append(rule.id)
                accepted: list[str] = []
                for recipient in envelope.rcpt_tos:
                    hit = rule.check_recipient(
                        RecipientContext(
                            envelope.mail_from, recipient, tuple(accepted), ctx.charter
                        )
                    )
                    if hit is None:
                        accepted.append(recipient)
                    else:
                        findings.append(hit)
                continue
            if ctx.skip_reason(rule.id) is not None:
                skipped.append(rule.id)
                continue
            checked.append(rule.id)
            result = rule.check(ctx)
            if result is None:
                continue
            findings.extend(result if isinstance(result, list) else [result])
        return Decision(findings=tuple(findings), checked=tuple(checked), skipped=tuple(skipped))
