"""The charter engine: every rule runs, the most severe action decides, and the
table is built from configuration with clear errors."""

from __future__ import annotations

import pytest

from apiguard.mail import Envelope, parse_message
from apiguard.policy.charter import Charter, CharterConfigError
from apiguard.policy.verdict import Action, Finding, Verdict, decide

SENDER = "dr.martin@medical13.apicrypt.org"


def finding(action: Action) -> Finding:
    return Finding(rule="x.y", article=None, action=action, message_fr="fr", message_en="en")


@pytest.mark.parametrize(
    ("actions", "verdict"),
    [
        ([], Verdict.FORWARD),
        ([Action.WARN], Verdict.FORWARD),
        ([Action.WARN, Action.HOLD], Verdict.HOLD),
        ([Action.HOLD, Action.REJECT, Action.WARN], Verdict.REJECT),
        ([Action.REJECT], Verdict.REJECT),
    ],
)
def test_the_most_severe_action_decides(actions: list[Action], verdict: Verdict) -> None:
    assert decide([finding(a) for a in actions]) is verdict


def test_an_unknown_rule_id_is_a_configuration_error_naming_it() -> None:
    with pytest.raises(CharterConfigError, match=r"art9\.nonsense"):
        Charter.build({"art9.nonsense": {"enabled": True}})


def test_an_unknown_rule_setting_is_refused_with_its_key() -> None:
    with pytest.raises(CharterConfigError, match=r'"mime.malformed"\.threshold'):
        Charter.build({"mime.malformed": {"threshold": 3}})


def test_a_bad_action_is_refused() -> None:
    with pytest.raises(CharterConfigError, match="action"):
        Charter.build({"mime.malformed": {"action": "explode"}})


def test_review_all_is_off_by_default_and_holds_when_enabled() -> None:
    raw = b"From: a@b.fr\r\nSubject: s\r\n\r\nbody\r\n"
    envelope = Envelope(SENDER, ("dr.durand@medical69.apicrypt.org",))
    default = Charter.build()
    assert "art5.review-all" not in default.rule_ids
    enabled = Charter.build({"art5.review-all": {"enabled": True}})
    decision = enabled.check_message(envelope, parse_message(raw))
    assert "art5.review-all" in decision.checked
    assert [f.rule for f in decision.findings if f.rule == "art5.review-all"]
    assert decision.verdict in (Verdict.HOLD, Verdict.REJECT)


def test_a_rule_action_can_be_lowered_by_configuration() -> None:
    charter = Charter.build({"recipient.domain": {"action": "warn"}})
    findings = charter.check_recipient(SENDER, "someone@gmail.com")
    assert [(f.rule, f.action) for f in findings] == [("recipient.domain", Action.WARN)]


@pytest.mark.parametrize(
    ("recipient", "rules"),
    [
        ("dr.durand@medical69.apicrypt.org", []),
        ("secretariat@chu-exemple.mssante.fr", []),
        ("DR.Durand@Medical69.APICRYPT.org", []),
        ("someone@gmail.com", ["recipient.domain"]),
        ("someone@apicrypt.org.evil.com", ["recipient.domain"]),
        ("fakeapicrypt.org@x.com", ["recipient.domain"]),
        ("no at sign", ["recipient.syntax"]),
        ("a@@b.fr", ["recipient.syntax"]),
        ("a b@apicrypt.org", ["recipient.syntax"]),
        ("a@localhost", ["recipient.syntax"]),
    ],
)
def test_recipient_rules(recipient: str, rules: list[str]) -> None:
    findings = Charter.build().check_recipient(SENDER, recipient)
    assert [f.rule for f in findings] == rules
    assert all(f.recipient == recipient for f in findings)


def test_sender_domain_applies_by_default_and_an_empty_list_opens_it() -> None:
    from apiguard.policy.context import CharterContext

    raw = parse_message(b"From: x@gmail.com\r\n\r\nbody\r\n")
    envelope = Envelope("x@gmail.com", ("dr.durand@medical69.apicrypt.org",))
    default_charter = Charter.build()  # the secure-messaging domains, as in the config
    assert "sender.domain" in [
        f.rule for f in default_charter.check_message(envelope, raw).findings
    ]
    opened = Charter.build(context=CharterContext(allowed_sender_domains=()))
    assert "sender.domain" not in [f.rule for f in opened.check_message(envelope, raw).findings]
