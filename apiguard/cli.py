"""The commands: serve, milter, check, review, queue (in `apiguard.queue_cli`)
and report (in `apiguard.reports.command`)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import email.utils
import json
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from apiguard import __version__
from apiguard.config import ConfigError, Settings, load_settings
from apiguard.controls import terminal_safe
from apiguard.correspondents import DirectoryError
from apiguard.mail import Envelope, ParsedMessage, parse_message
from apiguard.policy.charter import CharterConfigError
from apiguard.policy.context import MessageContext
from apiguard.policy.verdict import Decision, Finding, Verdict, decide

if TYPE_CHECKING:
    from apiguard.policy.charter import Charter
    from apiguard.store.volume import VolumeStore
    from apiguard.volume import VolumeSnapshot

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """Bad arguments or unreadable input: one line on stderr, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="apiguard", description="APICRYPT charter SMTP proxy")
    parser.add_argument("--version", action="version", version=f"apiguard {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the proxy")
    serve.add_argument("--config", help="TOML configuration file")

    milter = commands.add_parser("milter", help="run the charter inside Postfix (a milter)")
    milter.add_argument("--config", help="TOML configuration file")

    check = commands.add_parser("check", help="dry-run the charter on one message")
    check.add_argument("--config")
    check.add_argument("--from", dest="mail_from")
    check.add_argument("--to", dest="rcpt_to", action="append", default=[])
    check.add_argument("--json", action="store_true")
    check.add_argument("file", help="an RFC 5322 message, or - for standard input")

    review = commands.add_parser("review", help="the quarantine of held messages")
    review.add_argument("--config")
    actions = review.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="list held messages")
    listing.add_argument("--config", default=argparse.SUPPRESS)
    listing.add_argument("--json", action="store_true")
    listing.add_argument("--limit", type=int, default=100)
    actions.add_parser(
        "hash-password",
        help="print a password hash for [review.users] (reads the password on the terminal"
        " or one line of standard input)",
    )
    circuit = actions.add_parser(
        "circuit", help="senders whose circuit is open (too many messages, Art. 2)"
    )
    circuit.add_argument("--config", default=argparse.SUPPRESS)
    circuit_actions = circuit.add_subparsers(dest="circuit_action", required=True)
    circuit_list = circuit_actions.add_parser("list", help="list open circuits")
    circuit_close = circuit_actions.add_parser("close", help="close a sender's circuit")
    circuit_close.add_argument("sender")
    circuit_close.add_argument("--actor", default="cli")
    for sub in (circuit_list, circuit_close):
        sub.add_argument("--config", default=argparse.SUPPRESS)
        sub.add_argument("--json", action="store_true")
    from apiguard.reports.command import add_arguments as report_arguments

    report_arguments(
        commands.add_parser("report", help="the monthly charter report (html, csv, json, pdf)")
    )
    for name in ("show", "release", "reject", "cancel"):
        sub = actions.add_parser(name)
        sub.add_argument("id")
        sub.add_argument("--config", default=argparse.SUPPRESS)
        sub.add_argument("--json", action="store_true")
        if name != "show":
            sub.add_argument("--comment", default="")
            sub.add_argument("--actor", default="cli")
    from apiguard.queue_cli import add_parser

    add_parser(commands)
    return parser


def _settings(path: str | None) -> Settings:
    return load_settings(path)


# -- check ---------------------------------------------------------------------


def _addresses(values: list[str]) -> list[str]:
    """The addresses of decoded header values: a display name's own comma
    ("Cécile Marchal, sage-femme <…>") gives a piece with no @, left out."""
    return [addr for _, addr in email.utils.getaddresses(values) if "@" in addr]


def check_message(
    settings: Settings,
    raw: bytes,
    mail_from: str | None,
    rcpt_to: list[str],
    *,
    use_store: bool = False,
) -> dict[str, Any]:
    """Run the whole charter on one message, as the proxy would, without storing it.

    With `use_store` and a store under `storage.path`, the volume rules count in
    it (read-only) and known correspondents come from it; otherwise the volume
    rules are reported as skipped.
    """
    from apiguard.app import build_charter

    charter = build_charter(settings)
    parsed: ParsedMessage = parse_message(raw)
    sender = mail_from
    if sender is None:
        senders = _addresses(parsed.header_all("From"))
        sender = senders[0] if senders else ""
    recipients = rcpt_to or _addresses(parsed.header_all("To") + parsed.header_all("Cc"))
    memory = _open_memory(settings) if use_store else None
    if memory is not None:
        from apiguard.policy.rules.lookalike import known_correspondents

        known = known_correspondents(charter.context.directory, memory.known_addresses())
        charter.context = dataclasses.replace(charter.context, known_correspondents=known)
    refused: list[str] = []
    recipient_findings: list[Finding] = []
    accepted: list[str] = []
    for rcpt in recipients:
        hits = charter.check_recipient(sender, rcpt, accepted)
        if any(f.action.value == "reject" for f in hits):
            refused.append(rcpt)
            recipient_findings.extend(hits)
        else:
            accepted.append(rcpt)
    volume = _peek_and_close(memory, charter, parsed, sender, accepted)
    context = dataclasses.replace(charter.context, now=datetime.now(UTC), volume=volume)
    ctx = MessageContext(Envelope(sender, tuple(accepted)), parsed, context)
    decision = charter.check_context(ctx, include_recipient_rules=True)
    findings = recipient_findings + list(decision.findings)
    verdict = (
        Verdict.REJECT if recipients and not accepted else decide([f for f in decision.findings])
    )
    result: dict[str, Any] = {
        "verdict": verdict.value,
        "findings": [f.to_json() for f in findings],
        "checked": list(dict.fromkeys(decision.checked)),
        "skipped": list(decision.skipped),
        "refused_recipients": refused,
    }
    result.update(_derived_facts(ctx, decision))
    return result


def _open_memory(settings: Settings) -> VolumeStore | None:
    """The store's volume memory, read-only; None when there is no store."""
    from apiguard.store.base import StoreError
    from apiguard.store.sqlite import SqliteStore
    from apiguard.store.volume import VolumeStore

    if not (settings.storage.path / "apiguard.sqlite3").exists():
        return None
    try:
        return VolumeStore(SqliteStore(settings.storage.path, readonly=True), readonly=True)
    except StoreError as error:
        raise UsageError(f"{settings.storage.path}: cannot read the store: {error}") from None


def _peek_and_close(
    memory: VolumeStore | None,
    charter: Charter,
    parsed: ParsedMessage,
    sender: str,
    recipients: list[str],
) -> VolumeSnapshot | None:
    """What the store remembers for this message, as `serve` would count it."""
    if memory is None:
        return None
    from apiguard.fingerprint import content_fingerprint
    from apiguard.store.base import StoreError
    from apiguard.volume import NO_HISTORY, VolumeWindows

    try:
        if sender in ("", "<>"):
            return NO_HISTORY
        return memory.peek(
            content_fingerprint(parsed, recipients),
            sender,
            recipients,
            time.time(),
            VolumeWindows.from_charter(charter),
        )
    except StoreError as error:
        raise UsageError(f"cannot read the store: {error}") from None
    finally:
        memory.store.close()


def _derived_facts(ctx: MessageContext, decision: Decision) -> dict[str, Any]:
    """What the rules read, without values: HPRIM fields present, attachment types."""
    facts: dict[str, Any] = {}
    skipped = set(decision.skipped)
    if ctx.message.text or ctx.message.attachments:
        scan = ctx.hprim
        if scan.found:
            facts["hprim"] = scan.summary()
    if ctx.message.attachments and not skipped.issuperset({"art3.forbidden-type"}):
        facts["attachments"] = ctx.attachments.to_json()
    return facts


def _print_check(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, ensure_ascii=False))
        return
    print(f"verdict: {result['verdict']}")
    for finding in result["findings"]:
        article = f"Art. {finding['article']}" if finding["article"] else "-"
        who = f" [{finding['recipient']}]" if "recipient" in finding else ""
        line = f"  {finding['action']:6} {finding['rule']} ({article}){who}: {finding['message']}"
        print(terminal_safe(line))
    print(f"checked: {', '.join(result['checked'])}")


def _read_input(name: str) -> bytes:
    if name == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(name).read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"{name}: is a directory") from None
    except PermissionError:
        raise UsageError(f"{name}: permission denied") from None
    except OSError as error:
        raise UsageError(f"{name}: {error.strerror}") from None


# -- review --------------------------------------------------------------------


def _message_json(message: Any) -> dict[str, Any]:
    return {
        "id": message.id,
        "created_at": datetime.fromtimestamp(message.created_at, UTC).isoformat(),
        "state": message.state.value,
        "verdict": message.verdict,
        "mail_from": message.mail_from,
        "size": message.size,
        "recipients": [
            {
                "address": r.rcpt,
                "state": r.state.value,
                "attempts": r.attempts,
                "last_reply": r.last_reply,
            }
            for r in message.recipients
        ],
        "findings": [f.to_json() for f in message.findings],
        "audit": [
            {
                "at": datetime.fromtimestamp(a.at, UTC).isoformat(),
                "actor": a.actor,
                "action": a.action,
                "comment": a.comment,
            }
            for a in message.audit
        ],
    }


def _review(args: argparse.Namespace) -> int:
    from apiguard.notices import NoticeIdentity
    from apiguard.review.service import ReviewOutcome, ReviewService
    from apiguard.store.sqlite import SqliteStore

    if args.action == "hash-password":
        return _hash_password()
    settings = _settings(args.config)
    database = settings.storage.path / "apiguard.sqlite3"
    if not database.exists():
        raise UsageError(f"{database}: no store here (has `apiguard serve` run?)")
    if args.action == "circuit":
        return _circuit(args, settings)
    store = SqliteStore(settings.storage.path)
    service = ReviewService(
        store,
        NoticeIdentity.of(settings),
        hold_days=settings.review.hold_days,
    )
    try:
        if args.action == "list":
            held = service.list_held(limit=args.limit)
            if args.json:
                print(json.dumps([_message_json(m) for m in held], ensure_ascii=False))
            elif not held:
                print("Aucun message en attente de relecture. / No message held for review.")
            else:
                for m in held:
                    when = datetime.fromtimestamp(m.created_at, UTC).strftime("%Y-%m-%d %H:%M")
                    rules = ",".join(f.rule for f in m.findings)
                    sender = terminal_safe(m.mail_from)
                    print(f"{m.id}  {when}  {sender}  {len(m.recipients)} dest.  {rules}")
            return EXIT_OK
        if args.action == "show":
            shown = service.show(args.id)
            if shown is None:
                print(f"{args.id}: message inconnu / unknown message", file=sys.stderr)
                return EXIT_ERROR
            message, raw = shown
            if args.json:
                print(json.dumps(_message_json(message), ensure_ascii=False))
            else:
                data = _message_json(message)
                print(terminal_safe(json.dumps(data, ensure_ascii=False, indent=2)))
                if raw is not None:
                    print("-" * 60)
                    print(terminal_safe(parse_message(raw).text))
            return EXIT_OK
        if args.action == "release":
            result = service.release(args.id, args.actor, args.comment)
        elif args.action == "cancel":
            result = service.cancel(args.id, args.actor, args.comment)
        else:
            result = service.reject(args.id, args.actor, args.comment)
        if args.json:
            print(
                json.dumps(
                    {
                        "id": result.message_id,
                        "outcome": result.outcome.value,
                        "state": result.state,
                    }
                )
            )
        elif result.outcome is ReviewOutcome.DONE:
            verb = {
                "release": "libéré / released",
                "cancel": "envoi annulé / sending cancelled",
            }.get(args.action, "refusé / rejected")
            print(f"{result.message_id}: {verb}")
        elif result.outcome is ReviewOutcome.NOT_FOUND:
            print(f"{args.id}: message inconnu / unknown message", file=sys.stderr)
        elif result.outcome is ReviewOutcome.TOO_LATE:
            print(f"{args.id}: {_cannot_cancel(result.state)}", file=sys.stderr)
        else:
            print(
                f"{args.id}: ce message n'est pas en attente ({result.state}) / "
                f"this message is not held",
                file=sys.stderr,
            )
        return EXIT_OK if result.outcome is ReviewOutcome.DONE else EXIT_ERROR
    finally:
        store.close()


def _cannot_cancel(state: str) -> str:
    """Why a letter cannot be cancelled, by the state it is in."""
    return {
        "cancelled": "l'envoi est déjà annulé / sending was already cancelled",
        "rejected": "ce message a été refusé, il ne partira pas / this message was refused,"
        " it will not be sent",
        "held": "ce message est retenu pour relecture : libérez-le ou refusez-le"
        " (apiguard review release|reject) / this message is held for review:"
        " release or reject it",
        "done": "trop tard, le message est parti / too late: the message has been sent",
    }.get(state, "trop tard, l'envoi a commencé / too late: sending has begun")


def _circuit(args: argparse.Namespace, settings: Settings) -> int:
    """`review circuit list|close SENDER`: senders held for sending too much."""
    from apiguard.store.sqlite import SqliteStore
    from apiguard.store.volume import VolumeStore

    volume = VolumeStore(SqliteStore(settings.storage.path))
    try:
        if args.circuit_action == "list":
            circuits = volume.circuits()
            if args.json:
                print(json.dumps([_circuit_json(c) for c in circuits], ensure_ascii=False))
            elif not circuits:
                print("Aucun circuit ouvert. / No open circuit.")
            else:
                for c in circuits:
                    when = datetime.fromtimestamp(c.opened_at, UTC).strftime("%Y-%m-%d %H:%M")
                    sender = terminal_safe(c.sender)
                    print(
                        f"{sender}  ouvert/opened {when}  {c.messages_short} msg/10 min"
                        f"  {c.messages_day} msg/24 h  {c.held_messages} retenu(s)/held"
                    )
            return EXIT_OK
        closed = volume.close_circuit(args.sender, args.actor, time.time())
        sender = args.sender.strip().lower()
        circuits = volume.circuits(open_only=False)
        held = next((c.held_messages for c in circuits if c.sender == sender), 0)
        if args.json:
            print(json.dumps({"sender": args.sender, "closed": closed, "held_messages": held}))
        elif closed:
            print(
                f"{args.sender}: circuit fermé / circuit closed. {held} message(s) retenu(s) "
                "restent à relire / held messages stay for review: apiguard review list"
            )
        else:
            print(
                f"{args.sender}: aucun circuit ouvert pour cet expéditeur / "
                "no open circuit for this sender",
                file=sys.stderr,
            )
        return EXIT_OK if closed else EXIT_ERROR
    finally:
        volume.store.close()


def _circuit_json(circuit: Any) -> dict[str, Any]:
    return {
        "sender": circuit.sender,
        "state": circuit.state,
        "opened_at": datetime.fromtimestamp(circuit.opened_at, UTC).isoformat(),
        "times_opened": circuit.times_opened,
        "messages_10min": circuit.messages_short,
        "messages_day": circuit.messages_day,
        "held_messages": circuit.held_messages,
    }


def _hash_password() -> int:
    import getpass

    from apiguard.review.auth import hash_password

    if sys.stdin.isatty():
        password = getpass.getpass("Mot de passe / Password: ")
        if getpass.getpass("Encore / Again: ") != password:
            raise UsageError("the two passwords differ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if len(password) < 8:
        raise UsageError("password too short: use at least 8 characters")
    print(hash_password(password))
    return EXIT_OK


# -- main ----------------------------------------------------------------------


def event_loop_factory(choice: str = "auto") -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The SMTP process's event loop (`processing.event_loop`): uvloop, the
    same asyncio API with the loop, its timers and its sockets in C, where it
    is installed (a dependency on Linux and macOS) or asked for; None for the
    standard loop."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ConfigError(
                "processing.event_loop: uvloop is not installed (pip install uvloop),"
                ' or set "auto" or "asyncio"'
            ) from None
        return None
    return uvloop.new_event_loop


def _serve(args: argparse.Namespace) -> int:
    from apiguard.app import Application
    from apiguard.logs import configure_logging, install_error_hooks

    settings = _settings(args.config)
    configure_logging(settings.logging.format, settings.logging.level)
    install_error_hooks()

    async def run() -> None:
        if args.command == "milter":
            from apiguard.milter.app import MilterApplication

            app: Application = MilterApplication(settings)
        else:
            app = Application(settings)
        await app.serve_until_signalled()

    try:
        loop_factory = event_loop_factory(settings.processing.event_loop)
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(run())
    except (ConfigError, CharterConfigError, DirectoryError, KeyboardInterrupt):
        raise  # one line from main(): the key or file and the problem
    except Exception as error:
        # Anything else, at start-up or later: still one line, never a traceback.
        reason = " ".join(str(error).split())[:300]
        print(f"apiguard: stopped: {type(error).__name__}: {reason}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
        if args.command in ("serve", "milter"):
            return _serve(args)
        if args.command == "check":
            settings = _settings(args.config)
            raw = _read_input(args.file)
            result = check_message(
                settings, raw, args.mail_from, args.rcpt_to, use_store=args.config is not None
            )
            _print_check(result, args.json)
            return EXIT_OK
        if args.command == "review":
            return _review(args)
        if args.command == "queue":
            from apiguard.queue_cli import run

            return run(args)
        if args.command == "report":
            from apiguard.reports import command

            try:
                return command.run(args, _settings(args.config))
            except command.ReportUsageError as error:
                raise UsageError(str(error)) from None
    except UsageError as error:
        print(f"apiguard: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (ConfigError, CharterConfigError, DirectoryError) as error:
        print(f"apiguard: configuration error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    return EXIT_USAGE  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
