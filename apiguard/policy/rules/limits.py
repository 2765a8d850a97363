"""`analysis.limits`: a message whose analysis went past one of its limits.

Hostile input must cost a bounded amount: each message's analysis has a CPU
budget, a running deadline and a memory ceiling in its worker process, and
its PDFs and archives a cap on the bytes they inflate to. A message that goes
past any of them was not fully judged, so it is never forwarded as it is: it
waits for a person. The finding names the limit, never the content.
"""

from __future__ import annotations

from apiguard.policy.context import MessageContext
from apiguard.policy.rule import Rule
from apiguard.policy.verdict import Action, Finding

RULE_ID = "analysis.limits"

# Each limit: (French, English) descriptions.
LIMITS: dict[str, tuple[str, str]] = {
    "cpu": ("temps de calcul", "CPU time"),
    "time": ("durée d'analyse", "analysis time"),
    "memory": ("mémoire", "memory"),
    "decompressed": (
        "volume décompressé des PDF et archives",
        "decompressed size of PDFs and archives",
    ),
    "pdf-objects": ("nombre d'objets d'un PDF", "number of objects in a PDF"),
}


class AnalysisLimits(Rule):
    """`analysis.limits`: the analysis stopped at a limit; a person decides."""

    id = RULE_ID
    article = None
    default_action = Action.HOLD

    def check(self, ctx: MessageContext) -> Finding | None:
        reached = ctx.attachments.limits_reached
        return self.limit_finding(reached[0]) if reached else None

    def limit_finding(self, limit: str) -> Finding:
        """The finding for a message stopped at `limit` (a key of `LIMITS`)."""
        what_fr, what_en = LIMITS.get(limit, (limit, limit))
        return self.finding(
            f"analyse interrompue : limite de {what_fr} atteinte ; le message n'a pas "
            "pu être entièrement vérifié",
            f"analysis stopped: {what_en} limit reached; the message could not be fully checked",
            "Relisez le message et ses pièces jointes avant de le libérer ou de le "
            "refuser. Si c'est un envoi légitime, demandez à l'expéditeur un document "
            "plus simple (PDF produit par le logiciel, sans archive imbriquée).",
            "Review the message and its attachments before releasing or rejecting it. "
            "If it is legitimate, ask the sender for a simpler document (a PDF produced "
            "by the software, no nested archive).",
            details={"limit": limit},
        )


RULES: list[type[Rule]] = [AnalysisLimits]
