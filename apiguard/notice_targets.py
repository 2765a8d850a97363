"""Who may receive a notice: only senders the practice owns.

An envelope sender is a claim. A notice (held, refused, circuit opened) sent
to whatever address a client claimed is backscatter: anyone on the allowed
network could make apiguard mail a 50 KB report to a stranger. So notices go
to authenticated senders (their account vouches for the address) and to
addresses in `charter.allowed_sender_domains` (the practice's own secure
messaging domains by default); any other notice is dropped, logged and
counted (`apiguard_notices_dropped_total`).
"""

from __future__ import annotations

from dataclasses import dataclass

from apiguard.policy.rules.recipients import domain_allowed


@dataclass(frozen=True, slots=True)
class NoticeTargets:
    """The senders a notice may go to."""

    allowed_domains: tuple[str, ...]

    def owned(self, sender: str, *, authenticated: bool) -> bool:
        """May a notice about this sender's message go back to it?"""
        if not sender or sender == "<>":
            return False  # never answer a notification with a notification
        return authenticated or domain_allowed(sender, self.allowed_domains)
