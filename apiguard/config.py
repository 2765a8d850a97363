"""Configuration: one TOML file validated by pydantic, unknown keys refused,
environment variables (`APIGUARD_SMTP__PORT=2526`) overriding file keys.

Every key has a default, so `apiguard serve` runs with no file at all.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

MiB = 1024 * 1024


class ConfigError(Exception):
    """A configuration problem, described in one line naming the key or file."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SmtpSettings(Section):
    """Where mail clients and practice software connect."""

    host: str = "127.0.0.1"
    port: int = Field(default=2525, ge=0, le=65535)
    hostname: str = "apiguard.localhost"
    allowed_networks: list[str] = Field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])
    max_message_size: int = Field(default=25 * MiB, gt=0)
    max_recipients: int = Field(default=100, gt=0)
    timeout: float = Field(default=300.0, gt=0)
    shutdown_grace: float = Field(default=30.0, ge=0)

    @field_validator("allowed_networks")
    @classmethod
    def _networks_parse(cls, value: list[str]) -> list[str]:
        for network in value:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ValueError(f"not an IP network: {network!r}") from None
        return value


class RelaySettings(Section):
    """The real outgoing server. Empty host: deliver into the local maildir outbox."""

    host: str = ""
    port: int = Field(default=587, ge=1, le=65535)
    security: Literal["starttls", "tls", "none"] = "starttls"
    username: str = ""
    password: str = ""
    verify_tls: bool = True
    ca_file: str = ""
    timeout: float = Field(default=60.0, gt=0)
    connections: int = Field(default=4, ge=1, le=64)
    helo_name: str = "apiguard.localhost"


class StorageSettings(Section):
    path: Path = Path("./var")
    backend: Literal["sqlite"] = "sqlite"


class DeliverySettings(Section):
    """Retries: exponential backoff from `retry_initial` doubling up to `retry_max`
    seconds, until `lifetime` seconds after acceptance."""

    retry_initial: float = Field(default=60.0, gt=0)
    retry_max: float = Field(default=3600.0, gt=0)
    lifetime: float = Field(default=5 * 24 * 3600.0, gt=0)
    poll_interval: float = Field(default=1.0, gt=0)
    batch_size: int = Field(default=50, ge=1)


class NoticeSettings(Section):
    """Explanatory e-mails and delivery-status notifications."""

    on_reject: Literal["smtp", "email", "both"] = "both"
    on_hold: bool = True
    from_address: str = "postmaster@apiguard.localhost"
    from_name: str = "apiguard"


class LoggingSettings(Section):
    format: Literal["auto", "json", "console"] = "auto"
    level: Literal["debug", "info", "warning", "error"] = "info"


class ReviewSettings(Section):
    """The quarantine of held messages."""

    hold_days: float = Field(default=7.0, gt=0)


class CharterSettings(Section):
    """Charter-wide settings and per-rule settings by rule id."""

    allowed_recipient_domains: list[str] = Field(
        default_factory=lambda: ["apicrypt.org", "mssante.fr"]
    )
    allowed_sender_domains: list[str] = Field(default_factory=list)
    correspondents: str = ""
    rules: dict[str, dict[str, Any]] = Field(default_factory=dict)


class Settings(BaseSettings):
    """The whole configuration (see config/apiguard.example.toml)."""

    model_config = SettingsConfigDict(
        env_prefix="APIGUARD_",
        env_nested_delimiter="__",
        extra="forbid",
    )

    smtp: SmtpSettings = Field(default_factory=SmtpSettings)
    relay: RelaySettings = Field(default_factory=RelaySettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    delivery: DeliverySettings = Field(default_factory=DeliverySettings)
    notices: NoticeSettings = Field(default_factory=NoticeSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    review: ReviewSettings = Field(default_factory=ReviewSettings)
    charter: CharterSettings = Field(default_factory=CharterSettings)

    @property
    def spool_path(self) -> Path:
        return self.storage.path

    @property
    def outbox_path(self) -> Path:
        return self.storage.path / "outbox"


def _format_error(error: ValidationError, source: str) -> str:
    first = error.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "?"
    message = first["msg"]
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    return f"{source}: {key}: {message}"


def load_settings(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Load the TOML file (`path`, else $APIGUARD_CONFIG, else none), then the
    environment. Raises ConfigError with one line naming the problem."""
    chosen = path or os.environ.get("APIGUARD_CONFIG") or None
    toml_path = Path(chosen) if chosen else None
    source = str(toml_path) if toml_path else "configuration"
    if toml_path is not None:
        try:
            with toml_path.open("rb") as handle:
                tomllib.load(handle)
        except FileNotFoundError:
            raise ConfigError(f"{toml_path}: configuration file not found") from None
        except PermissionError:
            raise ConfigError(f"{toml_path}: configuration file not readable") from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{toml_path}: invalid TOML: {error}") from None
        except OSError as error:
            raise ConfigError(f"{toml_path}: {error.strerror}") from None

    class _FileSettings(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
            if toml_path is not None:
                sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_path))
            return tuple(sources)

    try:
        loaded = _FileSettings(**overrides)
    except ValidationError as error:
        raise ConfigError(_format_error(error, source)) from None
    return Settings.model_validate(loaded.model_dump())
