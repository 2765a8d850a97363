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

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
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


def host_is_loopback(host: str) -> bool:
    """Is this listening address reachable from this machine only?"""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # "", "0.0.0.0"-like names or a host name: assume reachable


class SubmissionUser(Section):
    """One SMTP AUTH account: `password_hash` from `python -m apiguard.smtp.auth`
    (or `apiguard review hash-password`); `senders` are the envelope senders it may
    use (full addresses or `@domain`; empty: any)."""

    password_hash: str
    senders: list[str] = Field(default_factory=list)

    @field_validator("password_hash")
    @classmethod
    def _hash_parses(cls, value: str) -> str:
        from apiguard.smtp.auth import HashFormatError, ScryptHash

        try:
            ScryptHash.parse(value)
        except HashFormatError as error:
            raise ValueError(f"{error} (make one with `python -m apiguard.smtp.auth`)") from None
        return value


class SmtpSettings(Section):
    """Where mail clients and practice software connect.

    Clients in `allowed_networks` may submit without AUTH when they are on
    loopback or `require_auth` is off; any other client must authenticate
    (AUTH only after STARTTLS or on the implicit TLS port). `require_auth`
    defaults to on when `host` is not a loopback address.
    """

    host: str = "127.0.0.1"
    port: int = Field(default=2525, ge=0, le=65535)
    hostname: str = "apiguard.localhost"
    allowed_networks: list[str] = Field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])
    max_message_size: int = Field(default=25 * MiB, gt=0)
    max_recipients: int = Field(default=100, gt=0)
    timeout: float = Field(default=300.0, gt=0)
    shutdown_grace: float = Field(default=30.0, ge=0)
    tls_cert: str = ""
    tls_key: str = ""
    implicit_tls_port: int | None = Field(default=None, ge=0, le=65535)
    require_auth: bool | None = None
    users: dict[str, SubmissionUser] = Field(default_factory=dict)
    max_sessions: int = Field(default=100, ge=1)
    max_connections_per_minute: int = Field(default=120, ge=1)
    data_timeout: float = Field(default=600.0, gt=0)
    max_line_length: int = Field(default=1000, ge=1000, le=MiB)
    max_errors: int = Field(default=10, ge=1)
    # Hostile clients (issue 18): limits on what one client may hold.
    max_inflight_bytes: int = Field(default=512 * MiB, ge=MiB)
    max_sessions_per_address: int = Field(default=20, ge=1)
    max_unauthenticated_sessions: int = Field(default=20, ge=1)
    pre_auth_timeout: float = Field(default=20.0, gt=0)
    auth_failures_free: int = Field(default=3, ge=1)
    auth_throttle_max: float = Field(default=300.0, gt=0)

    @field_validator("allowed_networks")
    @classmethod
    def _networks_parse(cls, value: list[str]) -> list[str]:
        for network in value:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ValueError(f"not an IP network: {network!r}") from None
        return value

    @property
    def auth_required(self) -> bool:
        """Must clients other than loopback ones authenticate?"""
        if self.require_auth is None:
            return not host_is_loopback(self.host)
        return self.require_auth

    @model_validator(mode="after")
    def _never_an_open_relay(self) -> SmtpSettings:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key go together: set both or neither")
        if self.implicit_tls_port is not None and not self.tls_cert:
            raise ValueError("implicit_tls_port needs tls_cert and tls_key")
        if self.users and not self.tls_cert:
            raise ValueError("users need tls_cert and tls_key: AUTH is only offered over TLS")
        if self.auth_required and not (self.users and self.tls_cert):
            raise ValueError(
                f"require_auth: listening on {self.host!r} (not loopback) needs tls_cert, "
                "tls_key and at least one entry in [smtp.users]; or listen on 127.0.0.1"
            )
        if not self.auth_required and not host_is_loopback(self.host):
            for text in self.allowed_networks:
                network = ipaddress.ip_network(text, strict=False)
                if network.prefixlen == 0 or not network.is_private:
                    raise ValueError(
                        f"allowed_networks: {text} is not a private network; with "
                        "require_auth = false this would be an open relay"
                    )
        return self


class RelaySettings(Section):
    """The real outgoing server. Empty host: deliver into the local maildir outbox."""

    host: str = ""
    port: int = Field(default=587, ge=1, le=65535)
    security: Literal["starttls", "tls", "none"] = "starttls"
    username: str = ""
    password: str = ""
    verify_tls: bool = True
    ca_file: str = ""  # PEM CA certificates trusted in addition to the system's
    ca_replace_system: bool = False  # trust only ca_file's CAs, not the system's
    timeout: float = Field(default=60.0, gt=0)
    connections: int = Field(default=4, ge=1, le=64)
    helo_name: str = "apiguard.localhost"


class ProcessingSettings(Section):
    """Where messages are parsed and judged by the content rules."""

    # Worker processes for letters (plus one for attachments and one for big
    # messages: `apiguard.analysis.SIZE_CLASSES`); 0: in the SMTP process.
    workers: int = Field(default=1, ge=0, le=32)
    # The SMTP process's event loop: uvloop when installed ("auto"), or the
    # standard asyncio loop.
    event_loop: Literal["auto", "uvloop", "asyncio"] = "auto"
    # Limits per message in the workers (`apiguard.worker`); past any of them the
    # message is held for review (`analysis.limits`) and its worker replaced.
    # CPU seconds one message may use (time waiting in the queue never counts).
    max_cpu_seconds: float = Field(default=20.0, gt=0, le=3600)
    # Seconds one message may run in its worker, CPU or not (a safety net).
    max_running_seconds: float = Field(default=120.0, gt=0, le=3600)
    # Bytes one message's PDFs and archives may inflate to while being read.
    max_decompressed_bytes: int = Field(default=64 * 1024 * 1024, ge=1024 * 1024)
    # Address space of each worker process, in bytes (RLIMIT_AS); 0: no limit.
    worker_memory_bytes: int = Field(default=1024 * 1024 * 1024, ge=0)


class StorageSettings(Section):
    path: Path = Path("./var")
    backend: Literal["sqlite"] = "sqlite"


class DeliverySettings(Section):
    """Retries: exponential backoff from `retry_initial` doubling up to `retry_max`
    seconds, until `lifetime` seconds after acceptance.

    A claimed recipient is leased for `lease` seconds: an attempt that records
    no outcome by then (the store could not be written) is tried again. Mail
    still undelivered `delay_warning` seconds after acceptance gets one
    "delayed" report to its sender (0: never)."""

    retry_initial: float = Field(default=60.0, gt=0)
    retry_max: float = Field(default=3600.0, gt=0)
    lifetime: float = Field(default=5 * 24 * 3600.0, gt=0)
    poll_interval: float = Field(default=1.0, gt=0)
    batch_size: int = Field(default=50, ge=1)
    lease: float = Field(default=900.0, gt=0)
    delay_warning: float = Field(default=4 * 3600.0, ge=0)


class NoticeSettings(Section):
    """Explanatory e-mails and delivery-status notifications."""

    on_reject: Literal["smtp", "email", "both"] = "both"
    on_hold: bool = True
    from_address: str = ""  # empty: postmaster@<smtp.hostname>
    from_name: str = "apiguard"


class LoggingSettings(Section):
    format: Literal["auto", "json", "console"] = "auto"
    level: Literal["debug", "info", "warning", "error"] = "info"


class OpsSettings(Section):
    """The operations listener: /metrics (Prometheus), /healthz and /readyz.
    No message data is served here."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=9025, ge=0, le=65535)
    # /readyz says "not ready" once the relay has failed (no connection, TLS,
    # login) for this many seconds without a success; 0: never for the relay.
    relay_failure_grace: float = Field(default=900.0, ge=0)


class ReviewSettings(Section):
    """The quarantine of held messages, its web page and the grace period.

    `users` maps a reviewer name to a password hash made by
    `apiguard review hash-password`; `token` is an alternative shared secret.
    An empty `session_secret` is generated once and kept under `storage.path`.
    """

    hold_days: float = Field(default=7.0, gt=0)
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(default=8025, ge=0, le=65535)
    users: dict[str, str] = Field(default_factory=dict)
    token: str = ""
    session_secret: str = ""
    send_delay: float = Field(default=0.0, ge=0)
    page_size: int = Field(default=50, ge=1, le=500)
    tls_cert: str = ""
    tls_key: str = ""

    @field_validator("users")
    @classmethod
    def _hashes_parse(cls, value: dict[str, str]) -> dict[str, str]:
        for name, hashed in value.items():
            fields = hashed.split("$")
            if len(fields) != 3 or not fields[0].startswith("scrypt:"):
                raise ValueError(
                    f"user {name!r}: not a password hash (use `apiguard review hash-password`)"
                )
        return value

    @field_validator("token")
    @classmethod
    def _token_long_enough(cls, value: str) -> str:
        if value and len(value) < 16:
            raise ValueError("token too short: use at least 16 random characters")
        return value

    @model_validator(mode="after")
    def _someone_can_log_in(self) -> ReviewSettings:
        if self.enabled and not self.users and not self.token:
            raise ValueError("the review page is enabled but no `users` nor `token` is set")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key go together: set both or neither")
        if self.enabled and not self.tls_cert and not host_is_loopback(self.host):
            raise ValueError(
                f"listening on {self.host!r} (not loopback) needs tls_cert and tls_key: "
                "passwords and patient data must not cross the network in clear; "
                "or listen on 127.0.0.1"
            )
        return self


class ReportSettings(Section):
    """The decision records behind the dashboard and the monthly report: kept
    `retention_days`, then pruned (at start and daily)."""

    retention_days: int = Field(default=400, ge=1)


class AlertSettings(Section):
    """Who hears about incidents (a sender's circuit opening); empty: nobody but
    the sender."""

    to: str = ""


class MilterSettings(Section):
    """`apiguard milter`: the charter inside Postfix (`smtpd_milters`).

    `socket` is `inet:HOST:PORT` or `unix:/path`. Released held mail and notices
    are handed back to the MTA at `reinject` (`smtp:HOST:PORT`, the Postfix
    smtpd port that runs this milter), signed with the key in `mark_key_file`
    (default: `milter.key` under `storage.path`, made on first start, 0600).
    """

    socket: str = "inet:127.0.0.1:8891"
    reinject: str = "smtp:127.0.0.1:25"
    mark_key_file: str = ""
    mark_max_age: float = Field(default=900.0, gt=0)
    max_message_size: int = Field(default=25 * MiB, gt=0)
    # Longer than Postfix's smtpd_timeout: a client may idle between messages.
    timeout: float = Field(default=3600.0, gt=0)

    @field_validator("socket")
    @classmethod
    def _socket_parses(cls, value: str) -> str:
        kind, _, rest = value.partition(":")
        if kind == "unix" and rest.startswith("/"):
            return value
        host, _, port = rest.rpartition(":")
        if kind == "inet" and host and port.isdigit() and int(port) <= 65535:
            return value
        raise ValueError('expected "inet:HOST:PORT" or "unix:/absolute/path"')

    @field_validator("reinject")
    @classmethod
    def _reinject_parses(cls, value: str) -> str:
        kind, _, rest = value.partition(":")
        host, _, port = rest.rpartition(":")
        if kind == "smtp" and host and port.isdigit() and 0 < int(port) <= 65535:
            return value
        raise ValueError('expected "smtp:HOST:PORT" (the Postfix smtpd port)')


class CharterSettings(Section):
    """Charter-wide settings and per-rule settings by rule id."""

    allowed_recipient_domains: list[str] = Field(
        default_factory=lambda: ["apicrypt.org", "mssante.fr"]
    )
    # Envelope senders the practice owns (and the only ones notices go to, with
    # authenticated senders); empty: any sender, notices to authenticated ones only.
    allowed_sender_domains: list[str] = Field(
        default_factory=lambda: ["apicrypt.org", "mssante.fr"]
    )
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
    processing: ProcessingSettings = Field(default_factory=ProcessingSettings)
    delivery: DeliverySettings = Field(default_factory=DeliverySettings)
    notices: NoticeSettings = Field(default_factory=NoticeSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    ops: OpsSettings = Field(default_factory=OpsSettings)
    review: ReviewSettings = Field(default_factory=ReviewSettings)
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    reports: ReportSettings = Field(default_factory=ReportSettings)
    charter: CharterSettings = Field(default_factory=CharterSettings)
    milter: MilterSettings = Field(default_factory=MilterSettings)

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
    message = message.removeprefix("Value error, ")
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
