"""The review page's viewer: held messages parsed in a worker process."""

from __future__ import annotations

import os

from apiguard.review.display import MessageView
from apiguard.review.viewer import WorkerViewer
from bench import hostile


async def test_a_message_is_shown_from_another_process() -> None:
    viewer = WorkerViewer()
    try:
        view = await viewer.view(hostile.ordinary_letter(4000))
        assert isinstance(view, MessageView)
        assert "DURAND Marie" in view.text
        assert view.attachments[0].detected_type == "pdf"
        assert viewer.pid is not None and viewer.pid != os.getpid()
        found = await viewer.attachment(hostile.ordinary_letter(4000), 0)
        assert found is not None and found[1].startswith(b"%PDF-")
    finally:
        await viewer.stop()


async def test_a_message_past_the_viewers_limit_is_not_shown_and_the_worker_is_replaced() -> None:
    viewer = WorkerViewer()
    try:
        assert isinstance(await viewer.view(hostile.ordinary_letter(4000)), MessageView)
        first = viewer.pid
        viewer.running_seconds = 0.001  # no message can be shown within that
        assert await viewer.view(hostile.ordinary_letter(200_000)) is None
        assert viewer.pid is None  # the next view starts a fresh worker
        viewer.running_seconds = 60.0
        assert isinstance(await viewer.view(hostile.ordinary_letter(4000)), MessageView)
        assert viewer.pid not in (None, first)
    finally:
        await viewer.stop()
