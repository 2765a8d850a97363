"""Real programs for the interoperability tests: a private Postfix instance in
a temporary directory, the test CA and certificates it presents, and the
`msmtp` and `swaks` clients. Reusable (a milter test needs the same Postfix).

A Postfix instance here is Debian's Postfix run with its own
`config_directory`, `queue_directory` and `data_directory`, listening on
127.0.0.1 only on ports chosen by the test, logging to its own
`maillog_file`, never touching the machine's /etc/postfix set-up. Postfix's
daemons drop their privileges to `mail_owner` (the `postfix` account the
Debian package creates), so the instance must be started as root, as in CI.

Binaries missing on a developer's machine: the tests are skipped, saying
which; in CI (`CI` set) they fail instead, so the suite never passes there
without having run them.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

POSTFIX_PROGRAMS = ("postfix", "postconf", "postqueue", "postsuper")
# Postfix's commands live in /usr/sbin, which a CI shell's PATH may lack.
_SBIN = "/usr/local/sbin:/usr/sbin:/sbin"


def program(name: str) -> str:
    """The full path of an installed program ("" when it is not installed)."""
    return shutil.which(name) or shutil.which(name, path=_SBIN) or ""


def require_programs(*programs: str) -> None:
    """Skip (developer machine) or fail (CI) when a program is missing, or
    when Postfix cannot be started because this is not root."""
    missing = [p for p in programs if not program(p)]
    if missing:
        reason = f"not installed: {', '.join(missing)} (apt-get install postfix msmtp swaks)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; .ci/run installs them", pytrace=False)
        pytest.skip(reason)
    if "postfix" in programs and os.geteuid() != 0:
        reason = "a private Postfix instance must be started as root"
        if os.environ.get("CI"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)


# -- a test certificate authority ---------------------------------------------


@dataclass(frozen=True)
class CertificateAuthority:
    """A CA made for one test run, and a server certificate it signed for
    127.0.0.1 and localhost."""

    ca_file: Path
    cert_file: Path
    key_file: Path

    @classmethod
    def create(cls, directory: Path, name: str = "apiguard test CA") -> CertificateAuthority:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        directory.mkdir(parents=True, exist_ok=True)
        now = datetime.datetime.now(datetime.UTC)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        ca = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )
        key = ec.generate_private_key(ec.SECP256R1())
        server = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        pem = serialization.Encoding.PEM
        authority = cls(directory / "ca.pem", directory / "server.pem", directory / "server.key")
        authority.ca_file.write_bytes(ca.public_bytes(pem))
        authority.cert_file.write_bytes(server.public_bytes(pem))
        authority.key_file.write_bytes(
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
        return authority


# -- a private Postfix instance -------------------------------------------------

_MAIN_CF = """\
compatibility_level = 3.6
config_directory = {root}/etc
queue_directory = {root}/queue
data_directory = {root}/data
maillog_file = {root}/maillog
maillog_file_prefixes = {root}
mail_owner = postfix
setgid_group = postdrop
myhostname = {name}.postfix.test
mydomain = postfix.test
myorigin = $myhostname
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
alias_maps =
alias_database =
local_recipient_maps =
biff = no
smtp_connection_cache_on_demand = no
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
smtp_tls_security_level = none
"""

# Every service a sending and relaying Postfix needs; no chroot.
_MASTER_CF = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


@dataclass
class QueuedMail:
    """One message in the Postfix queue (`postqueue -j`)."""

    queue_id: str
    queue_name: str
    sender: str
    reasons: dict[str, str]  # recipient -> delay reason


@dataclass
class PostfixInstance:
    """One private Postfix: `settings` are main.cf lines; `listeners` maps a
    loopback port to the `-o name=value` overrides of its smtpd."""

    name: str
    settings: dict[str, str]
    listeners: dict[int, dict[str, str]]
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="apiguard-postfix-")))

    @property
    def config_directory(self) -> Path:
        return self.root / "etc"

    def write_configuration(self) -> None:
        root = self.root
        root.chmod(0o755)  # Postfix's daemons, as `postfix`, reach into it
        for directory in ("etc", "queue", "data"):
            (root / directory).mkdir(exist_ok=True)
        shutil.chown(root / "data", user="postfix")
        main = _MAIN_CF.format(root=root, name=self.name)
        main += "".join(f"{key} = {value}\n" for key, value in self.settings.items())
        (root / "etc" / "main.cf").write_text(main)
        master = _MASTER_CF
        for port, overrides in self.listeners.items():
            master += f"127.0.0.1:{port} inet n - n - - smtpd\n"
            master += "".join(f"  -o {key}={value}\n" for key, value in overrides.items())
        (root / "etc" / "master.cf").write_text(master)

    def _run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [program(command[0]), *command[1:]],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(command)} failed ({result.returncode}):"
                f" {result.stdout}{result.stderr}\n{self.log()[-3000:]}"
            )
        return result

    def start(self) -> None:
        """Write the configuration, start the instance and wait for its ports."""
        self.write_configuration()
        self._run("postfix", "-c", str(self.config_directory), "check")
        self._run("postfix", "-c", str(self.config_directory), "start")
        for port in self.listeners:
            wait_for_port(port, timeout=20, what=f"Postfix {self.name}")

    def stop(self) -> None:
        self._run("postfix", "-c", str(self.config_directory), "stop", check=False)
        # master exits once its children have: wait for the ports to close.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(port_open(p) for p in self.listeners):
            time.sleep(0.05)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def log(self) -> str:
        try:
            return (self.root / "maillog").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def queue(self) -> list[QueuedMail]:
        """What the instance still holds (deferred, active, incoming)."""
        result = self._run("postqueue", "-c", str(self.config_directory), "-j")
        mails = []
        for line in result.stdout.splitlines():
            entry = json.loads(line)
            mails.append(
                QueuedMail(
                    entry["queue_id"],
                    entry["queue_name"],
                    entry["sender"],
                    {r["address"]: r.get("delay_reason", "") for r in entry["recipients"]},
                )
            )
        return mails

    def flush(self) -> None:
        """Try the deferred mail now."""
        self._run("postqueue", "-c", str(self.config_directory), "-f")

    def clear_queue(self) -> None:
        self._run("postsuper", "-c", str(self.config_directory), "-d", "ALL", check=False)


def port_open(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def wait_for_port(port: int, *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not port_open(port):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} is not listening on 127.0.0.1:{port}")
        time.sleep(0.05)


def inline_map(entries: dict[str, str]) -> str:
    """A Postfix `inline:` table (no database file to build)."""
    return "inline:{ " + ", ".join(f"{{ {k} = {v} }}" for k, v in entries.items()) + " }"


# -- the clients ------------------------------------------------------------------


def msmtp(port: int, mail_from: str, recipients: Iterable[str], message: bytes) -> str:
    """Send with msmtp, as a practice's mail program does: plain SMTP to a
    local port, no AUTH. Returns msmtp's session log (raises on failure)."""
    require_programs("msmtp")
    result = subprocess.run(
        [
            program("msmtp"),
            "--host=127.0.0.1",
            f"--port={port}",
            "--auth=off",
            "--tls=off",
            f"--from={mail_from}",
            "--domain=poste.cabinet.test",
            "--",
            *recipients,
        ],
        input=message,
        capture_output=True,
        timeout=60,
        check=False,
    )
    output = (result.stdout + result.stderr).decode(errors="replace")
    if result.returncode != 0:
        raise AssertionError(f"msmtp failed ({result.returncode}): {output}")
    return output


def swaks(port: int, mail_from: str, recipient: str, message_file: Path, *more: str) -> str:
    """Send with swaks; returns its transcript (it does not raise: the
    transcript shows the replies, a refusal included)."""
    require_programs("swaks")
    result = subprocess.run(
        [
            program("swaks"),
            "--server",
            f"127.0.0.1:{port}",
            "--helo",
            "poste.cabinet.test",
            "--from",
            mail_from,
            "--to",
            recipient,
            "--data",
            f"@{message_file}",
            *more,
        ],
        capture_output=True,
        text=True,
        errors="replace",  # it echoes the data, 8-bit included
        timeout=60,
        check=False,
    )
    return result.stdout + result.stderr
