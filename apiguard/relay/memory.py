"""The in-memory twin of a relay, for unit tests and dry runs: it records what it
is given and answers from a script."""

from __future__ import annotations

from dataclasses import dataclass, field

from apiguard.relay.base import Content, RelayReply, SendResult, SpooledContent


@dataclass
class MemoryRelay:
    """Answers 250 unless `replies` (consumed per attempt) or `refuse` say otherwise."""

    sent: list[tuple[str, tuple[str, ...], bytes]] = field(default_factory=list)
    replies: list[RelayReply] = field(default_factory=list)
    refuse: dict[str, RelayReply] = field(default_factory=dict)

    async def send(self, mail_from: str, recipients: list[str], data: Content) -> SendResult:
        if isinstance(data, SpooledContent):
            data = data.read()
        if self.replies:
            reply = self.replies.pop(0)
            if not reply.delivered:
                return SendResult({r: reply for r in recipients})
        answers = {r: self.refuse.get(r, RelayReply(250, "2.0.0 ok")) for r in recipients}
        accepted = tuple(r for r, a in answers.items() if a.delivered)
        if accepted:
            self.sent.append((mail_from, accepted, data))
        return SendResult(answers)

    async def close(self) -> None:
        return None
