"""The server-side TLS context for STARTTLS and implicit TLS submission."""

from __future__ import annotations

import ssl
from pathlib import Path

from apiguard.config import ConfigError


def server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """TLS 1.2+ server context from PEM files; ConfigError naming the file otherwise."""
    for key, path in (("smtp.tls_cert", cert_file), ("smtp.tls_key", key_file)):
        try:
            with Path(path).open("rb") as handle:
                handle.read(1)
        except FileNotFoundError:
            raise ConfigError(f"{key}: {path}: file not found") from None
        except IsADirectoryError:
            raise ConfigError(f"{key}: {path}: is a directory") from None
        except OSError as error:
            raise ConfigError(f"{key}: {path}: cannot read ({error.strerror})") from None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_file, key_file)
    except ssl.SSLError as error:
        reason = error.reason or "invalid PEM"
        raise ConfigError(
            f"smtp.tls_cert/tls_key: {cert_file}, {key_file}: not a usable certificate "
            f"and key ({reason})"
        ) from None
    except OSError as error:
        raise ConfigError(f"smtp.tls_cert: {cert_file}: {error.strerror or error}") from None
    return context
