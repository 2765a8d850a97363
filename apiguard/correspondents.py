"""The correspondents directory: which formats each recipient's software reads.

Loaded from `config/correspondents.toml` (see `config/correspondents.example.toml`).
An entry names one address or one domain (which also covers its subdomains);
the most specific entry wins: the address, then the longest domain. A recipient
with no entry is assumed to read HPRIM text and PDF only.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

Format = Literal["hprim", "pdf", "cda", "xdm"]
FORMATS: tuple[str, ...] = ("hprim", "pdf", "cda", "xdm")
DEFAULT_FORMATS: frozenset[str] = frozenset({"hprim", "pdf"})


class DirectoryError(ValueError):
    """The directory file is unreadable or an entry is invalid (the message says which)."""


@dataclass(frozen=True, slots=True)
class Correspondent:
    """One directory entry: an address or a domain, its name and accepted formats."""

    formats: frozenset[str]
    name: str = ""
    address: str = ""
    domain: str = ""


def _default_formats() -> list[Format]:
    return ["hprim", "pdf"]


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    address: str | None = None
    domain: str | None = None
    name: str = ""
    formats: list[Format] = Field(default_factory=_default_formats)

    @model_validator(mode="after")
    def _one_target(self) -> _Entry:
        if (self.address is None) == (self.domain is None):
            raise ValueError("give exactly one of `address` or `domain`")
        if self.address is not None and "@" not in self.address:
            raise ValueError("`address` must be an e-mail address (name@domain)")
        if self.domain is not None and ("@" in self.domain or "." not in self.domain):
            raise ValueError("`domain` must be a domain name such as chu-exemple.mssante.fr")
        return self


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    correspondent: list[_Entry] = Field(default_factory=list)


def _normalise_domain(domain: str) -> str:
    return domain.strip().lower().strip(".").lstrip("@")


class CorrespondentsDirectory:
    """Look up what a recipient accepts. Addresses compare case-insensitively."""

    def __init__(self, correspondents: Iterable[Correspondent] = ()) -> None:
        self._by_address: dict[str, Correspondent] = {}
        self._by_domain: dict[str, Correspondent] = {}
        for entry in correspondents:
            if entry.address:
                self._by_address[entry.address.strip().lower()] = entry
            elif entry.domain:
                self._by_domain[_normalise_domain(entry.domain)] = entry

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], source: str = "correspondents") -> Self:
        """Build from the parsed TOML; raises DirectoryError naming the bad entry."""
        try:
            parsed = _File.model_validate(dict(data))
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "?"
            raise DirectoryError(f"{source}: {where}: {first['msg']}") from None
        seen: set[str] = set()
        entries: list[Correspondent] = []
        for number, item in enumerate(parsed.correspondent):
            target = (item.address or "").strip().lower() or _normalise_domain(item.domain or "")
            if target in seen:
                raise DirectoryError(f"{source}: correspondent.{number}: duplicate entry")
            seen.add(target)
            entries.append(
                Correspondent(
                    formats=frozenset(item.formats),
                    name=item.name.strip(),
                    address=(item.address or "").strip().lower(),
                    domain=_normalise_domain(item.domain or "") if item.domain else "",
                )
            )
        return cls(entries)

    @classmethod
    def from_toml(cls, text: str, source: str = "correspondents") -> Self:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise DirectoryError(f"{source}: {error}") from None
        return cls.from_mapping(data, source)

    def lookup(self, address: str) -> Correspondent | None:
        """The most specific entry for the address: itself, then its longest domain."""
        address = address.strip().strip("<>").lower()
        found = self._by_address.get(address)
        if found is not None:
            return found
        labels = address.rpartition("@")[2].strip(".").split(".")
        for start in range(len(labels) - 1):
            found = self._by_domain.get(".".join(labels[start:]))
            if found is not None:
                return found
        return None

    def formats_for(self, address: str) -> frozenset[str]:
        entry = self.lookup(address)
        return entry.formats if entry is not None else DEFAULT_FORMATS

    def accepts(self, address: str, fmt: str) -> bool:
        """Whether the recipient's software reads that format (hprim, pdf, cda, xdm)."""
        return fmt in self.formats_for(address)

    def display_name(self, address: str) -> str | None:
        entry = self.lookup(address)
        return (entry.name or None) if entry is not None else None

    def known_addresses(self) -> tuple[str, ...]:
        """Every address declared one by one (for the look-alike rule), sorted."""
        return tuple(sorted(self._by_address))

    def __len__(self) -> int:
        return len(self._by_address) + len(self._by_domain)


def load_directory(path: str | Path, key: str = "") -> CorrespondentsDirectory:
    """Read the TOML directory file; raises DirectoryError with the file and
    entry (after `key`, the configuration key that names the file, if given)."""
    path = Path(path)
    where = f"{key}: {path}" if key else str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DirectoryError(f"{where}: file not found") from None
    except IsADirectoryError:
        raise DirectoryError(f"{where}: is a directory") from None
    except UnicodeDecodeError:
        raise DirectoryError(f"{where}: not UTF-8 text") from None
    except OSError as error:
        raise DirectoryError(f"{where}: cannot read ({error.strerror})") from None
    return CorrespondentsDirectory.from_toml(text, source=str(path))
