"""A patient's identity as found in a message (HPRIM header, HPRIM Santé P
record, CDA document or the letter's text). Pure value type.

These values are patient data: they never go into logs, metrics, SMTP replies
or notices.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date


@dataclass(frozen=True, slots=True)
class PatientIdentity:
    """Who a document is about. Any field may be missing."""

    last_name: str = ""
    first_name: str = ""
    birth_date: date | None = None
    nir: str = ""
    source: str = ""  # "hprim", "hprim-sante", "cda", "text"

    @property
    def is_nominative(self) -> bool:
        """Enough to file the document into one patient's record."""
        return bool(self.last_name.strip()) and (
            bool(self.first_name.strip()) or self.birth_date is not None
        )
