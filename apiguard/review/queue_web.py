"""The review page's queue view ("File d'attente"): the mail waiting for
delivery, each recipient's state, attempts, next attempt and the relay's last
reason; "retry now" for one message or all, and "delete" behind a confirmation
page (never one click), optionally telling the sender.

The handlers run behind the review page's own guards (a signed-in reviewer,
the session's CSRF token on every POST); every action is audited with the
reviewer's name and wakes the delivery worker.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from apiguard.review.queue import QueueChange, QueueOutcome, QueueService
from apiguard.store.aio import AsyncStore
from apiguard.store.base import MessageKind, MessageState

log = structlog.get_logger("apiguard.review")

Render = Callable[..., Response]
Flash = Callable[..., None]


class QueueViews:
    """Handlers of /queue, given the review page's renderer and flash messages."""

    def __init__(
        self,
        queue: QueueService,
        store: AsyncStore,
        *,
        render: Render,
        flash: Flash,
        on_change: Callable[[], None],
        page_size: int,
    ) -> None:
        self.queue = queue
        self.store = store
        self.render = render
        self.flash = flash
        self.on_change = on_change
        self.page_size = page_size

    async def listing(self, request: Request, user: str) -> Response:
        try:
            number = int(request.query_params.get("page", "1"))
        except ValueError:
            number = 1
        page = await self.store.run(self.queue.page, number, self.page_size)
        return self.render(
            request, "queue.html", {"queue": page, "page_link": lambda n: f"/queue?page={n}"}
        )

    async def message(self, request: Request, user: str) -> Response:
        """One message: each recipient's state, its attempt history, its audit trail."""
        shown = await self.store.run(self.queue.show, request.path_params["id"])
        if shown is None:
            return self.render(request, "error.html", {"message": "msg.not_found"}, 404)
        log.info("review.queue_viewed", actor=user, message_id=shown.message.id)
        context = {"message": shown.message, "attempts": shown.attempts}
        return self.render(request, "queue_message.html", context)

    async def confirm_delete(self, request: Request, user: str) -> Response:
        message_id = request.path_params["id"]
        return await self._confirmation(request, message_id)

    async def _confirmation(self, request: Request, message_id: str) -> Response:
        message = await self.store.run(self.queue.message, message_id)
        if message is None:
            return self.render(request, "error.html", {"message": "msg.not_found"}, 404)
        if message.state is not MessageState.QUEUED:
            self.flash(request, "warn", "queue.flash.not_queued")
            return RedirectResponse("/queue", status_code=303)
        notifiable = message.kind is MessageKind.MAIL and bool(message.mail_from)
        return self.render(
            request, "queue_delete.html", {"message": message, "notifiable": notifiable}
        )

    async def retry(self, request: Request, user: str, form: FormData) -> Response:
        message_id = request.path_params["id"]
        changes = await self.store.run(self.queue.retry, [message_id], user)
        self._report(request, "retry", changes, user)
        return RedirectResponse("/queue", status_code=303)

    async def retry_all(self, request: Request, user: str, form: FormData) -> Response:
        changes = await self.store.run(self.queue.retry_all, user)
        self._report(request, "retry", changes, user)
        if not changes:
            self.flash(request, "warn", "queue.flash.nothing")
        return RedirectResponse("/queue", status_code=303)

    async def delete(self, request: Request, user: str, form: FormData) -> Response:
        message_id = request.path_params["id"]
        if form.get("confirm") != "yes":
            return await self._confirmation(request, message_id)  # never in one click
        comment = str(form.get("comment") or "")[:2000]
        notify = form.get("notify") == "yes"
        changes = await self.store.run(
            self.queue.delete, [message_id], user, comment, notify=notify
        )
        self._report(request, "delete", changes, user)
        return RedirectResponse("/queue", status_code=303)

    def _report(self, request: Request, verb: str, changes: list[QueueChange], user: str) -> None:
        for change in changes:
            log.info(
                "review.queue_action",
                action=verb,
                actor=user,
                message_id=change.message_id,
                outcome=change.outcome.value,
            )
        done = [c for c in changes if c.done]
        if done:
            self.on_change()
            if verb == "retry":
                self.flash(request, "ok", "queue.flash.retried", n=len(done))
            else:
                notified = any(c.notified for c in done)
                key = "queue.flash.deleted_notified" if notified else "queue.flash.deleted"
                self.flash(request, "ok", key)
        for change in changes:
            if change.outcome is QueueOutcome.SENDING:
                self.flash(request, "warn", "queue.flash.sending")
            elif not change.done:
                self.flash(request, "warn", "queue.flash.not_queued")
