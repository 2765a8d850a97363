"""Prometheus metrics: counts and durations with fixed label sets.

Labels only ever carry values from closed sets (decisions, actions, states,
outcomes) or rule ids checked against the rule-id pattern: never an address,
a subject or anything else taken from a message. Anything unexpected is
counted under "other".
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from apiguard.policy.verdict import Decision, Finding
from apiguard.store.base import RecipientOutcome

# `*_created` timestamps double the series for no use on a dashboard.
disable_created_metrics()  # type: ignore[no-untyped-call]
REGISTRY = CollectorRegistry(auto_describe=True)
CONTENT_TYPE = CONTENT_TYPE_LATEST

DECISIONS = ("forward", "hold", "reject")
ACTIONS = ("warn", "hold", "reject")
KINDS = ("mail", "notice")
DELIVERY_OUTCOMES = ("delivered", "deferred", "failed")
QUEUE_STATES = ("queued", "deferred", "sending", "held")
CONNECTION_OUTCOMES = (
    "accepted",
    "refused_network",
    "refused_sessions",
    "refused_rate",
    "refused_address_sessions",
    "refused_unauthenticated",
)
AUTH_RESULTS = ("success", "failure")
ERROR_STAGES = ("evaluation", "store")
REASON_CLASSES = ("tls", "auth", "connection", "4xx", "5xx")
STORE_OPERATIONS = ("claim", "record")
# Where an SMTP session was refused, and why (closed sets: see `record_refusal`).
REFUSAL_STAGES = ("connect", "helo", "tls", "auth", "mail", "rcpt", "data", "command")
REFUSAL_CAUSES = (
    "network",
    "sessions",
    "rate",
    "tls_required",
    "auth_required",
    "auth_failed",
    "sender_not_allowed",
    "charter",
    "recipients",
    "line_too_long",
    "too_big",
    "timeout",
    "syntax",
    "unknown_command",
    "too_many_errors",
    "address_sessions",
    "unauthenticated",
    "pre_auth_timeout",
    "auth_throttled",
    "control_characters",
    "memory_budget",
    "store",
    "shutting_down",
    "other",
)
_RULE_ID = re.compile(r"^[a-z0-9]+(?:\.[a-z0-9-]+)+$")

MESSAGES = Counter(
    "apiguard_messages",
    "Messages received at DATA and stored, by charter decision.",
    ["decision"],
    registry=REGISTRY,
)
FINDINGS = Counter(
    "apiguard_findings",
    "Charter rule hits (message and recipient scope), by rule id and action.",
    ["rule", "action"],
    registry=REGISTRY,
)
MESSAGE_ERRORS = Counter(
    "apiguard_message_errors",
    "Messages answered 451 because judging or storing them failed, by stage.",
    ["stage"],
    registry=REGISTRY,
)
DELIVERY_ATTEMPTS = Counter(
    "apiguard_delivery_attempts",
    "Per-recipient delivery attempts to the relay, by message kind and outcome.",
    ["kind", "outcome"],
    registry=REGISTRY,
)
DELIVERY_LATENCY = Histogram(
    "apiguard_delivery_latency_seconds",
    "Time from acceptance to delivery of each delivered recipient.",
    ["kind"],
    buckets=(0.1, 0.5, 1, 2.5, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600, 5 * 24 * 3600),
    registry=REGISTRY,
)
QUEUE_DEPTH = Gauge(
    "apiguard_queue_depth",
    "Recipients waiting in the store, by state (held: in quarantine).",
    ["state"],
    registry=REGISTRY,
)
CIRCUITS_OPEN = Gauge(
    "apiguard_circuits_open",
    "Senders whose art2.rate circuit is open (their messages are held).",
    registry=REGISTRY,
)
SMTP_SESSIONS = Gauge(
    "apiguard_smtp_sessions",
    "SMTP sessions in progress.",
    registry=REGISTRY,
)
SMTP_CONNECTIONS = Counter(
    "apiguard_smtp_connections",
    "SMTP connections, by outcome at connect time.",
    ["outcome"],
    registry=REGISTRY,
)
SMTP_REFUSALS = Counter(
    "apiguard_smtp_refusals",
    "SMTP refusals (4xx and 5xx replies, refused connections), by stage and cause.",
    ["stage", "cause"],
    registry=REGISTRY,
)
QUEUE_OLDEST_AGE = Gauge(
    "apiguard_queue_oldest_age_seconds",
    "Age of the oldest message still waiting for delivery (0: the queue is empty).",
    registry=REGISTRY,
)
DEFERRED_BY_REASON = Gauge(
    "apiguard_deferred_recipients",
    "Recipients waiting for a retry, by the class of their last reason.",
    ["reason"],
    registry=REGISTRY,
)
RELAY_LAST_SUCCESS = Gauge(
    "apiguard_relay_last_success_timestamp_seconds",
    "When the relay last accepted a message (Unix time; 0: not since the start).",
    registry=REGISTRY,
)
STORE_FAILURES = Counter(
    "apiguard_delivery_store_failures",
    "Delivery claims and outcome records the store failed to write, by operation.",
    ["operation"],
    registry=REGISTRY,
)
SMTP_AUTH = Counter(
    "apiguard_smtp_auth",
    "SMTP AUTH attempts, by result.",
    ["result"],
    registry=REGISTRY,
)

# Hostile input (issue 18): what the edge refuses, and notices not sent.
NOTICES_DROPPED = Counter(
    "apiguard_notices_dropped",
    "Notices not sent because the sender is not one the practice owns.",
    ["reason"],
    registry=REGISTRY,
)


def _closed(value: str, allowed: Iterable[str]) -> str:
    return value if value in allowed else "other"


def _rule(rule_id: str) -> str:
    return rule_id if _RULE_ID.match(rule_id) else "other"


def initialise(rule_ids: Iterable[str]) -> None:
    """Create every series at zero, so that dashboards see them before the first event."""
    for decision in DECISIONS:
        MESSAGES.labels(decision=decision)
    for rule_id in rule_ids:
        for action in ACTIONS:
            FINDINGS.labels(rule=_rule(rule_id), action=action)
    for stage in ERROR_STAGES:
        MESSAGE_ERRORS.labels(stage=stage)
    for kind in KINDS:
        DELIVERY_LATENCY.labels(kind=kind)
        for outcome in DELIVERY_OUTCOMES:
            DELIVERY_ATTEMPTS.labels(kind=kind, outcome=outcome)
    for state in QUEUE_STATES:
        QUEUE_DEPTH.labels(state=state)
    for outcome in CONNECTION_OUTCOMES:
        SMTP_CONNECTIONS.labels(outcome=outcome)
    for result in AUTH_RESULTS:
        SMTP_AUTH.labels(result=result)
    NOTICES_DROPPED.labels(reason="sender_not_owned")
    for reason in REASON_CLASSES:
        DEFERRED_BY_REASON.labels(reason=reason)
    for operation in STORE_OPERATIONS:
        STORE_FAILURES.labels(operation=operation)


def record_decision(decision: Decision) -> None:
    """One stored message: its decision and every rule hit."""
    MESSAGES.labels(decision=_closed(decision.verdict.value, DECISIONS)).inc()
    record_findings(decision.findings)


def record_findings(findings: Iterable[Finding]) -> None:
    for finding in findings:
        FINDINGS.labels(
            rule=_rule(finding.rule), action=_closed(finding.action.value, ACTIONS)
        ).inc()


def record_error(stage: str) -> None:
    MESSAGE_ERRORS.labels(stage=_closed(stage, ERROR_STAGES)).inc()


def record_delivery(
    kind: str, outcomes: Iterable[RecipientOutcome], created_at: float, now: float
) -> None:
    """One relay attempt: the outcome of each recipient, and the latency of the delivered."""
    kind = _closed(kind, KINDS)
    for recipient in outcomes:
        outcome = _closed(recipient.state.value, DELIVERY_OUTCOMES)
        DELIVERY_ATTEMPTS.labels(kind=kind, outcome=outcome).inc()
        if outcome == "delivered":
            DELIVERY_LATENCY.labels(kind=kind).observe(max(0.0, now - created_at))


def record_connection(outcome: str) -> None:
    SMTP_CONNECTIONS.labels(outcome=_closed(outcome, CONNECTION_OUTCOMES)).inc()


def record_auth(success: bool) -> None:
    SMTP_AUTH.labels(result="success" if success else "failure").inc()


def record_refusal(stage: str, cause: str) -> None:
    SMTP_REFUSALS.labels(
        stage=_closed(stage, REFUSAL_STAGES), cause=_closed(cause, REFUSAL_CAUSES)
    ).inc()


def record_store_failure(operation: str) -> None:
    STORE_FAILURES.labels(operation=_closed(operation, STORE_OPERATIONS)).inc()


def set_queue_health(oldest_age: float, deferred_by_class: Mapping[str, int]) -> None:
    """The oldest queued message's age and the deferred recipients by reason class."""
    QUEUE_OLDEST_AGE.set(max(0.0, oldest_age))
    for reason in REASON_CLASSES:
        DEFERRED_BY_REASON.labels(reason=reason).set(deferred_by_class.get(reason, 0))


def record_notice_dropped(reason: str = "sender_not_owned") -> None:
    NOTICES_DROPPED.labels(reason=_closed(reason, ("sender_not_owned",))).inc()


def set_queue_depth(counts: Mapping[str, int]) -> None:
    """Recipient counts by state from the store (other states are not a queue)."""
    for state in QUEUE_STATES:
        QUEUE_DEPTH.labels(state=state).set(counts.get(state, 0))


def exposition() -> bytes:
    """The text exposition format of every apiguard metric."""
    return generate_latest(REGISTRY)
