"""The SMTP listeners: submission (with STARTTLS when a certificate is set) and
implicit TLS, sharing one access policy, one user directory and one set of limits."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable

from apiguard.config import ConfigError, SmtpSettings
from apiguard.smtp.auth import UserDirectory
from apiguard.smtp.handler import (
    AccessPolicy,
    ApiguardHandler,
    ConnectionLimits,
    GuardedSMTP,
    parse_networks,
)
from apiguard.smtp.limits import InflightBudget, SessionLimits
from apiguard.smtp.tls import server_context
from apiguard.throttle import FailureThrottle


class SmtpListeners:
    """Built from `[smtp]` (certificate errors surface here as ConfigError);
    `start()` binds the ports (a port in use is a ConfigError naming the key)."""

    def __init__(self, settings: SmtpSettings) -> None:
        self.settings = settings
        self.tls_context: ssl.SSLContext | None = (
            server_context(settings.tls_cert, settings.tls_key) if settings.tls_cert else None
        )
        self.users = UserDirectory(
            {name: (user.password_hash, user.senders) for name, user in settings.users.items()}
        )
        self.policy = AccessPolicy(
            parse_networks(settings.allowed_networks),
            require_auth=settings.auth_required,
            auth_available=bool(self.users) and self.tls_context is not None,
        )
        self.limits = ConnectionLimits(settings.max_sessions, settings.max_connections_per_minute)
        self.budget = InflightBudget(settings.max_inflight_bytes)
        self.sessions = SessionLimits(
            settings.max_sessions_per_address, settings.max_unauthenticated_sessions
        )
        self.auth_throttle = FailureThrottle(
            free=settings.auth_failures_free, cap=settings.auth_throttle_max
        )
        self.submission: asyncio.Server | None = None
        self.implicit_tls: asyncio.Server | None = None

    @property
    def servers(self) -> list[asyncio.Server]:
        return [s for s in (self.submission, self.implicit_tls) if s is not None]

    @property
    def serving(self) -> bool:
        return bool(self.servers) and all(s.is_serving() for s in self.servers)

    @staticmethod
    def port_of(server: asyncio.Server) -> int:
        return int(server.sockets[0].getsockname()[1])

    def _protocol(self, handler: ApiguardHandler, implicit_tls: bool) -> GuardedSMTP:
        smtp = self.settings
        return GuardedSMTP(
            handler,
            networks=self.policy.networks,
            policy=self.policy,
            limits=self.limits,
            users=self.users,
            implicit_tls=implicit_tls,
            tls_context=None if implicit_tls else self.tls_context,
            max_errors=smtp.max_errors,
            data_timeout=smtp.data_timeout,
            max_line_length=smtp.max_line_length,
            budget=self.budget,
            sessions=self.sessions,
            throttle=self.auth_throttle,
            pre_auth_timeout=smtp.pre_auth_timeout,
            data_size_limit=smtp.max_message_size,
            hostname=smtp.hostname,
            ident="apiguard",
            timeout=smtp.timeout,
            loop=asyncio.get_running_loop(),
        )

    async def _listen(
        self, key: str, port: int, factory: Callable[[], GuardedSMTP], tls: ssl.SSLContext | None
    ) -> asyncio.Server:
        host = self.settings.host
        try:
            return await asyncio.get_running_loop().create_server(
                factory, host=host, port=port, ssl=tls
            )
        except OSError as error:
            raise ConfigError(
                f"{key}: cannot listen on {host}:{port}: {error.strerror or error}"
            ) from None

    async def start(self, handler: ApiguardHandler) -> None:
        try:
            self.submission = await self._listen(
                "smtp.port", self.settings.port, lambda: self._protocol(handler, False), None
            )
            if self.settings.implicit_tls_port is not None:
                self.implicit_tls = await self._listen(
                    "smtp.implicit_tls_port",
                    self.settings.implicit_tls_port,
                    lambda: self._protocol(handler, True),
                    self.tls_context,
                )
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop accepting connections (sessions in progress go on)."""
        for server in self.servers:
            server.close()
