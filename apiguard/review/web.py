"""The review page: a small starlette application over the review service.

Every page but the login form needs a signed-in reviewer; every POST carries
the session's CSRF token; responses carry a strict CSP (no script at all),
refuse framing and are never cached. Logs name ids and reviewers, never content.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import math
import secrets
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import jinja2
import structlog
from starlette.applications import Starlette
from starlette.datastructures import FormData, MutableHeaders
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from apiguard.config import ReviewSettings
from apiguard.reports.web import dashboard_routes
from apiguard.review import i18n
from apiguard.review.auth import Authenticator
from apiguard.review.circuits import CircuitBoard
from apiguard.review.queue import QueueService
from apiguard.review.queue_web import QueueViews
from apiguard.review.service import ReviewOutcome, ReviewResult, ReviewService
from apiguard.review.sessions import ReviewSessions
from apiguard.review.subjects import held_subjects
from apiguard.review.viewer import MessageViewer, ThreadViewer
from apiguard.store.aio import AsyncStore
from apiguard.store.base import MessageState
from apiguard.throttle import FailureThrottle

log = structlog.get_logger("apiguard.review")

HERE = Path(__file__).parent
SESSION_COOKIE = "apiguard_review"
SESSION_SECONDS = 12 * 3600
FAILED_LOGIN_DELAY = 0.5
MAX_FORM_FIELDS = 2000
PENDING_SHOWN = 100

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'none'; object-src 'none'; style-src 'self'; "
        "img-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # Not no-referrer: browsers then send `Origin: null` on POSTs, defeating the
    # origin check; same-origin still sends nothing to any other site.
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}

Page = Callable[[Request, str], Awaitable[Response]]
Action = Callable[[Request, str, FormData], Awaitable[Response]]


class SecurityHeaders:
    """Adds the security headers to every response; only the stylesheet may be cached."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = str(scope.get("path", "")).startswith("/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)  # a stricter one set by a route stays
                headers["Cache-Control"] = "private, max-age=3600" if static else "no-store"
                if not static:
                    headers["Pragma"] = "no-cache"
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _safe_next(value: object, default: str = "/") -> str:
    """A local path to go back to; anything else (another site) becomes `default`."""
    if not isinstance(value, str) or not value.startswith("/") or value.startswith("//"):
        return default
    if "\\" in value or any(ord(c) < 32 for c in value):
        return default
    return value


def _content_disposition(filename: str) -> str:
    ascii_name = "".join(c if c.isalnum() or c in "._-" else "_" for c in filename)[:100]
    quoted = urllib.parse.quote(filename[:200], safe="")
    return f"attachment; filename=\"{ascii_name or 'piece-jointe'}\"; filename*=UTF-8''{quoted}"


class ReviewApp:
    """Routes and handlers of the review page."""

    def __init__(
        self,
        service: ReviewService,
        store: AsyncStore,
        settings: ReviewSettings,
        *,
        on_change: Callable[[], None] = lambda: None,
        circuits: CircuitBoard | None = None,
        queue: QueueService | None = None,
        viewer: MessageViewer | None = None,
    ) -> None:
        self.service = service
        self.store = store
        self.settings = settings
        self.on_change = on_change
        self.circuits = circuits
        # Where stored messages are parsed for display (`apiguard.review.viewer`).
        self.viewer: MessageViewer = viewer or ThreadViewer()
        self.auth = Authenticator(dict(settings.users), settings.token)
        self.sessions = ReviewSessions(self.auth.credential, SESSION_SECONDS)
        # Failed logins per client address: exponential waits, no scrypt while throttled.
        self.throttle = FailureThrottle()
        environment = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.templates = Jinja2Templates(env=environment)
        self.queue = QueueViews(
            queue or QueueService(service.store, service.identity),
            store,
            render=self._render,
            flash=self._flash,
            on_change=on_change,
            page_size=settings.page_size,
        )

    # -- plumbing ------------------------------------------------------------

    def routes(self) -> list[Route | Mount]:
        return [
            Route("/login", self.login_form, methods=["GET"]),
            Route("/login", self.login, methods=["POST"]),
            Route("/lang", self.switch_language, methods=["POST"]),
            Route("/logout", self._action(self.logout), methods=["POST"]),
            Route("/", self._page(self.held_list), methods=["GET"]),
            Route("/messages/{id}", self._page(self.message_page), methods=["GET"]),
            Route(
                "/messages/{id}/attachments/{index:int}",
                self._page(self.download),
                methods=["GET"],
            ),
            Route("/messages/{id}/reject", self._page(self.confirm_reject), methods=["GET"]),
            Route("/messages/{id}/{verb}", self._action(self.act_on_one), methods=["POST"]),
            Route("/bulk", self._action(self.act_on_many), methods=["POST"]),
            Route("/circuits/close", self._action(self.close_circuit), methods=["POST"]),
            Route("/queue", self._page(self.queue.listing), methods=["GET"]),
            Route("/queue/retry", self._action(self.queue.retry_all), methods=["POST"]),
            Route("/queue/{id}", self._page(self.queue.message), methods=["GET"]),
            Route("/queue/{id}/retry", self._action(self.queue.retry), methods=["POST"]),
            Route("/queue/{id}/delete", self._page(self.queue.confirm_delete), methods=["GET"]),
            Route("/queue/{id}/delete", self._action(self.queue.delete), methods=["POST"]),
            *dashboard_routes(self._page, self._render, self._lang, self.store),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ]

    def _user(self, request: Request) -> str | None:
        """The signed-in reviewer: the cookie's session id, checked server-side."""
        return self.sessions.actor(request.session.get("sid"))

    @staticmethod
    def _csrf(request: Request) -> str:
        token = request.session.get("csrf")
        if not isinstance(token, str) or len(token) < 32:
            token = secrets.token_urlsafe(32)
            request.session["csrf"] = token
        return token

    @staticmethod
    def _lang(request: Request) -> str:
        return i18n.language(request.session.get("lang"))

    def _flash(self, request: Request, kind: str, key: str, **values: object) -> None:
        flashes = list(request.session.get("flash") or [])
        flashes.append([kind, i18n.text(self._lang(request), key, **values)])
        request.session["flash"] = flashes[-5:]

    def _render(
        self, request: Request, name: str, context: dict[str, Any], status: int = 200
    ) -> Response:
        lang = self._lang(request)
        here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        full = {
            "lang": lang,
            "t": functools.partial(i18n.text, lang),
            "when": lambda ts: i18n.when(ts, lang),
            "remaining": lambda seconds: i18n.remaining(seconds, lang),
            "size": lambda count: i18n.size(count, lang),
            "csrf": self._csrf(request),
            "user": self._user(request),
            "flashes": request.session.pop("flash", None) or [],
            "here": here,
            "now": time.time(),
            **context,
        }
        return self.templates.TemplateResponse(request, name, full, status_code=status)

    def _forbidden(self, request: Request) -> Response:
        return self._render(request, "error.html", {"message": "forbidden"}, status=403)

    async def _checked_form(self, request: Request) -> FormData | None:
        """The form when the CSRF token and the origin are right, else None."""
        origin = request.headers.get("origin")
        if origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}":
            return None
        form = await request.form(max_files=0, max_fields=MAX_FORM_FIELDS)
        sent = form.get("csrf")
        expected = request.session.get("csrf")
        if not isinstance(sent, str) or not isinstance(expected, str) or not expected:
            return None
        if not hmac.compare_digest(sent.encode(), expected.encode()):
            return None
        return form

    def _page(self, handler: Page) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            user = self._user(request)
            if user is None:
                return RedirectResponse("/login", status_code=303)
            return await handler(request, user)

        return endpoint

    def _action(self, handler: Action) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            user = self._user(request)
            if user is None:
                return self._forbidden(request)
            form = await self._checked_form(request)
            if form is None:
                log.warning("review.csrf_refused", path=request.url.path)
                return self._forbidden(request)
            return await handler(request, user, form)

        return endpoint

    # -- signing in ------------------------------------------------------------

    async def login_form(self, request: Request) -> Response:
        if self._user(request):
            return RedirectResponse("/", status_code=303)
        return self._render(request, "login.html", {"failed": False, "name": ""})

    async def login(self, request: Request) -> Response:
        form = await self._checked_form(request)
        if form is None:
            return self._forbidden(request)
        name = str(form.get("name") or "")[:200]
        password = str(form.get("password") or "")[:1000]
        client = request.client.host if request.client else ""
        wait = self.throttle.wait(client)
        if wait > 0:  # refused without running scrypt
            log.warning("review.login_throttled", wait=round(wait, 1))
            context = {"failed": False, "throttled": math.ceil(wait), "name": name}
            return self._render(request, "login.html", context, status=429)
        actor = await asyncio.to_thread(self.auth.check, name, password)
        if actor is None:
            self.throttle.failed(client)
            log.warning("review.login_failed")
            await asyncio.sleep(FAILED_LOGIN_DELAY)
            context = {"failed": True, "name": name}
            return self._render(request, "login.html", context, status=401)
        self.throttle.succeeded(client)
        lang = self._lang(request)
        self.sessions.close(request.session.get("sid"))
        request.session.clear()  # a fresh session: no fixation
        session_id = self.sessions.open(actor)
        request.session.update({"sid": session_id, "lang": lang, "csrf": secrets.token_urlsafe(32)})
        log.info("review.login", actor=actor)
        return RedirectResponse("/", status_code=303)

    async def logout(self, request: Request, user: str, form: FormData) -> Response:
        self.sessions.close(request.session.get("sid"))
        request.session.clear()
        log.info("review.logout", actor=user)
        return RedirectResponse("/login", status_code=303)

    async def switch_language(self, request: Request) -> Response:
        form = await self._checked_form(request)
        if form is None:
            return self._forbidden(request)
        request.session["lang"] = i18n.language(form.get("lang"))
        return RedirectResponse(_safe_next(form.get("next")), status_code=303)

    # -- pages -------------------------------------------------------------------

    async def held_list(self, request: Request, user: str) -> Response:
        query = request.query_params
        rule = query.get("rule") or None
        sender = query.get("sender") or None
        try:
            page = int(query.get("page", "1"))
        except ValueError:
            page = 1
        held = await self.store.run(
            self.service.held_page, page, self.settings.page_size, rule=rule, sender=sender
        )
        pending = await self.store.run(self.service.cancellable, PENDING_SHOWN)
        subjects = await self.store.run(
            held_subjects, self.store.sync, [m.id for m in held.messages]
        )
        circuits = await self.store.run(self.circuits.circuits) if self.circuits else None

        def page_link(number: int) -> str:
            params = {"rule": rule or "", "sender": sender or "", "page": str(number)}
            return "/?" + urllib.parse.urlencode({k: v for k, v in params.items() if v})

        return self._render(
            request,
            "list.html",
            {
                "held": held,
                "rule": rule or "",
                "sender": sender or "",
                "pending": pending,
                "subjects": subjects,
                "circuits": circuits,
                "expires_at": self.service.expires_at,
                "page_link": page_link,
            },
        )

    async def message_page(self, request: Request, user: str) -> Response:
        message_id = request.path_params["id"]
        shown = await self.store.run(self.service.show, message_id)
        if shown is None:
            return self._render(request, "error.html", {"message": "msg.not_found"}, 404)
        message, raw = shown
        # Parsed elsewhere (a worker process under `apiguard serve`): never on
        # this loop, where the SMTP sessions run.
        view = await self.viewer.view(raw) if raw is not None else None
        cancellable = message.state is MessageState.QUEUED and any(
            m.id == message.id
            for m in await self.store.run(self.service.cancellable, PENDING_SHOWN)
        )
        log.info("review.viewed", actor=user, message_id=message.id)
        return self._render(
            request,
            "message.html",
            {
                "message": message,
                "view": view,
                "view_failed": raw is not None and view is None,
                "held": message.state is MessageState.HELD,
                "cancellable": cancellable,
                "expires_at": self.service.expires_at(message),
            },
        )

    async def confirm_reject(self, request: Request, user: str) -> Response:
        """Refusing from the list is asked again, on a page of its own (no script)."""
        message_id = request.path_params["id"]
        message = await self.store.run(self.store.sync.get, message_id)
        if message is None:
            return self._render(request, "error.html", {"message": "msg.not_found"}, 404)
        if message.state is not MessageState.HELD:
            return RedirectResponse(f"/messages/{message.id}", status_code=303)
        subjects = await self.store.run(held_subjects, self.store.sync, [message.id])
        return self._render(
            request,
            "confirm_reject.html",
            {
                "message": message,
                "subject": subjects.get(message.id, ""),
                "next": _safe_next(request.query_params.get("next")),
            },
        )

    async def download(self, request: Request, user: str) -> Response:
        message_id = request.path_params["id"]
        index = int(request.path_params["index"])
        raw = await self.store.run(self.store.sync.get_raw, message_id)
        found = await self.viewer.attachment(raw, index) if raw else None
        if found is None:
            return self._render(request, "error.html", {"message": "msg.not_found"}, 404)
        filename, content = found
        log.info(
            "review.downloaded", actor=user, message_id=message_id, index=index, size=len(content)
        )
        return Response(
            content,
            media_type="application/octet-stream",
            headers={
                "Content-Disposition": _content_disposition(filename),
                "Content-Security-Policy": "sandbox; default-src 'none'",
            },
        )

    # -- actions -----------------------------------------------------------------

    def _report(self, request: Request, verb: str, results: list[ReviewResult]) -> None:
        done = sum(1 for r in results if r.done)
        refused = len(results) - done
        for result in results:
            log.info(
                "review.action",
                action=verb,
                actor=self._user(request),
                message_id=result.message_id,
                outcome=result.outcome.value,
            )
        if verb == "cancel":
            if done:
                self._flash(request, "ok", "flash.cancelled")
            elif results and results[0].state == "cancelled":
                self._flash(request, "warn", "flash.already_cancelled")
            else:
                self._flash(request, "warn", "flash.too_late")
            return
        if done:
            key = "flash.released" if verb == "release" else "flash.rejected"
            self._flash(request, "ok", key, n=done)
        if refused:
            self._flash(request, "warn", "flash.refused", n=refused)

    async def act_on_one(self, request: Request, user: str, form: FormData) -> Response:
        message_id = request.path_params["id"]
        verb = request.path_params["verb"]
        comment = str(form.get("comment") or "")[:2000]
        operations = {
            "release": self.service.release,
            "reject": self.service.reject,
            "cancel": self.service.cancel,
        }
        operation = operations.get(verb)
        if operation is None:
            return self._render(request, "error.html", {"message": "msg.not_found"}, 404)
        result = await self.store.run(operation, message_id, user, comment)
        if result.outcome is ReviewOutcome.NOT_FOUND:
            return self._render(request, "error.html", {"message": "msg.not_found"}, 404)
        if result.done:
            self.on_change()
        self._report(request, verb, [result])
        return RedirectResponse(_safe_next(form.get("next")), status_code=303)

    async def act_on_many(self, request: Request, user: str, form: FormData) -> Response:
        verb = str(form.get("action") or "")
        ids = [str(i) for i in form.getlist("ids")][: self.settings.page_size * 2]
        comment = str(form.get("comment") or "")[:2000]
        if verb not in ("release", "reject"):
            return self._forbidden(request)
        if not ids:
            self._flash(request, "warn", "flash.none_selected")
        elif verb == "reject" and form.get("confirmed") != "yes":
            # Refusing is final and tells each sender: asked again, on a page of its own.
            found = [await self.store.run(self.store.sync.get, i) for i in ids]
            held = [m for m in found if m is not None and m.state is MessageState.HELD]
            return self._render(
                request,
                "confirm_bulk.html",
                {"messages": held, "comment": comment, "next": _safe_next(form.get("next"))},
            )
        else:
            many = self.service.release_many if verb == "release" else self.service.reject_many
            results = await self.store.run(many, ids, user, comment)
            if any(r.done for r in results):
                self.on_change()
            self._report(request, verb, results)
        return RedirectResponse(_safe_next(form.get("next")), status_code=303)

    async def close_circuit(self, request: Request, user: str, form: FormData) -> Response:
        sender = str(form.get("sender") or "")
        if self.circuits is None or not sender:
            return self._render(request, "error.html", {"message": "msg.not_found"}, 404)
        closed = await self.store.run(self.circuits.close, sender, user, time.time())
        log.info("review.circuit_closed", actor=user, closed=closed)
        if closed:
            self._flash(request, "ok", "flash.circuit_closed")
            self.on_change()
        return RedirectResponse("/", status_code=303)


def create_app(
    service: ReviewService,
    store: AsyncStore,
    settings: ReviewSettings,
    *,
    secret: str,
    on_change: Callable[[], None] = lambda: None,
    circuits: CircuitBoard | None = None,
    queue: QueueService | None = None,
    viewer: MessageViewer | None = None,
) -> Starlette:
    """The review page as an ASGI application."""
    page = ReviewApp(
        service,
        store,
        settings,
        on_change=on_change,
        circuits=circuits,
        queue=queue,
        viewer=viewer,
    )
    return Starlette(
        routes=page.routes(),
        middleware=[
            Middleware(SecurityHeaders),
            Middleware(
                SessionMiddleware,
                secret_key=secret,
                session_cookie=SESSION_COOKIE,
                max_age=SESSION_SECONDS,
                same_site="strict",
                # Under TLS the cookie is never sent over plain HTTP.
                https_only=bool(settings.tls_cert),
            ),
        ],
    )
