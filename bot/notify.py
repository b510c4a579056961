"""Progress and results in the errand's own chat thread (``storage.ports.Notifier``).

One progress message per errand is edited in place as the errand advances
(Telegram ``editMessageText``, Slack ``chat.update``); its id lives in the job's
meta so a restart keeps editing the same message. The result is posted as a
new reply (so the person is pinged) with the transcript attached as a .txt
file (Telegram ``sendDocument``; Slack ``files_upload_v2``, i.e.
``files.getUploadURLExternal`` → upload → ``files.completeUploadExternal``).

The result is already stored by the dispatcher before ``notify`` is called, so
a failed send is retried with back-off and never raises; ``result_delivered``
in meta (keyed by final state and attempt) makes delivery happen exactly once
even if ``notify`` is called again for the same outcome.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any, Protocol, TypeVar

import aiohttp
import telegram
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.web.async_client import AsyncWebClient
from telegram.error import BadRequest, Forbidden, InvalidToken, RetryAfter, TelegramError

from bot import render
from bot.flow import Button, Out, needs_you_buttons
from bot.slack import blocks
from bot.telegram import markup
from storage.errors import JobNotFound, is_retryable_status
from storage.jobs import JobStore
from storage.models import ChatOrigin, Job, JobState, Platform, Turn
from storage.ports import JobEvent

log = logging.getLogger(__name__)
T = TypeVar("T")

_SEND_ERRORS = (TelegramError, SlackClientError, aiohttp.ClientError, TimeoutError, OSError)


class _Sender(Protocol):
    async def send(self, origin: ChatOrigin, text: str, buttons: tuple[Button, ...] = ()) -> str: ...
    async def edit(self, origin: ChatOrigin, ref: str, text: str) -> bool: ...
    async def document(self, origin: ChatOrigin, filename: str, content: bytes, caption: str) -> bool: ...


class _TelegramSender:
    def __init__(self, bot: telegram.Bot) -> None:
        self.bot = bot

    async def send(self, origin: ChatOrigin, text: str, buttons: tuple[Button, ...] = ()) -> str:
        msg = await self.bot.send_message(
            chat_id=int(origin.chat_id),
            text=text,
            message_thread_id=int(origin.thread_id) if origin.thread_id else None,
            reply_parameters=_reply_to(origin),
            reply_markup=markup(buttons),
        )
        return str(msg.message_id)

    async def edit(self, origin: ChatOrigin, ref: str, text: str) -> bool:
        try:
            await self.bot.edit_message_text(text, chat_id=int(origin.chat_id), message_id=int(ref))
        except BadRequest as e:
            if "not modified" not in str(e).lower():
                raise
        return True

    async def document(self, origin: ChatOrigin, filename: str, content: bytes, caption: str) -> bool:
        await self.bot.send_document(
            chat_id=int(origin.chat_id),
            document=telegram.InputFile(content, filename=filename),
            caption=caption,
            message_thread_id=int(origin.thread_id) if origin.thread_id else None,
        )
        return True


def _reply_to(origin: ChatOrigin) -> telegram.ReplyParameters | None:
    if not origin.message_id:
        return None
    return telegram.ReplyParameters(message_id=int(origin.message_id), allow_sending_without_reply=True)


class _SlackSender:
    def __init__(self, client: AsyncWebClient) -> None:
        self.client = client

    async def send(self, origin: ChatOrigin, text: str, buttons: tuple[Button, ...] = ()) -> str:
        resp = await self.client.chat_postMessage(
            channel=origin.chat_id, thread_ts=origin.thread_id, text=text, blocks=blocks(Out(text, buttons))
        )
        return str(resp["ts"])

    async def edit(self, origin: ChatOrigin, ref: str, text: str) -> bool:
        await self.client.chat_update(channel=origin.chat_id, ts=ref, text=text, blocks=blocks(Out(text)))
        return True

    async def document(self, origin: ChatOrigin, filename: str, content: bytes, caption: str) -> bool:
        await self.client.files_upload_v2(
            channel=origin.chat_id,
            thread_ts=origin.thread_id,
            content=content.decode("utf-8"),
            filename=filename,
            title=filename,
            initial_comment=caption,
        )
        return True


def result_marker(job: Job) -> str:
    """What ``meta["result_delivered"]`` holds once the result of the job's final state was posted."""
    return f"{job.state.value}:{job.attempts}"


def result_pending(job: Job) -> bool:
    """The job is finished but its result never reached the chat (e.g. the process died in between)."""
    return (
        job.state.is_final
        and job.state is not JobState.CANCELLED
        and job.meta.get("result_delivered") != result_marker(job)
    )


def classify(e: BaseException) -> tuple[bool, float]:
    """(retryable, seconds the service asked us to wait) for a failed chat send."""
    if isinstance(e, RetryAfter):
        wait = e.retry_after
        return True, wait.total_seconds() if isinstance(wait, timedelta) else float(wait)
    if isinstance(e, BadRequest | Forbidden | InvalidToken):
        return False, 0.0
    if isinstance(e, SlackApiError):
        status = e.response.status_code
        if status == 429:
            return True, float(e.response.headers.get("Retry-After", 1) or 0)
        transient = e.response.get("error") in ("internal_error", "fatal_error", "service_unavailable")
        return is_retryable_status(status) and status != 200 or transient, 0.0
    return True, 0.0


class ChatNotifier:
    """Tells the person, in the errand's origin thread, what is happening.

    Args:
        store: the job store (meta keeps message ids and delivery markers).
        telegram_bot / slack_client: senders for each platform (either may be missing).
        person_tz: times are shown in the person's zone.
        retry_delays: waits between attempts of one send; a service's retry-after wins if longer.
        max_wait: cap on any single wait, so one rate limit cannot stall the dispatcher.
        sleep: injected for tests that count waits.
    """

    def __init__(
        self,
        store: JobStore,
        *,
        telegram_bot: telegram.Bot | None = None,
        slack_client: AsyncWebClient | None = None,
        person_tz: str,
        retry_delays: Sequence[float] = (0.5, 1, 2, 4),
        max_wait: float = 30.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.store = store
        self.person_tz = person_tz
        self.retry_delays = tuple(retry_delays)
        self.max_wait = max_wait
        self._sleep = sleep
        self._senders: dict[Platform, _Sender] = {}
        if telegram_bot is not None:
            self._senders[Platform.TELEGRAM] = _TelegramSender(telegram_bot)
        if slack_client is not None:
            self._senders[Platform.SLACK] = _SlackSender(slack_client)
        self._locks: dict[str, asyncio.Lock] = {}

    async def notify(self, job: Job, event: JobEvent, transcript: Sequence[Turn] = ()) -> None:
        """Post or edit the progress message; on FINISHED deliver the result once. Never raises."""
        sender = self._senders.get(job.request.origin.platform)
        if sender is None:
            log.info("no chat for errand %s (%s): %s", job.id, job.request.origin.platform, event)
            return
        lock = self._locks.setdefault(job.id, asyncio.Lock())
        async with lock:
            try:
                meta = (await self.store.get(job.id)).meta
            except JobNotFound:
                log.warning("notify for unknown errand %s", job.id)
                return
            if event == JobEvent.FINISHED:
                await self._finish(sender, job, meta, transcript)
            else:
                await self._progress(sender, job, meta, render.progress(job, event.value, self.person_tz))
        if event in (JobEvent.FINISHED, JobEvent.CANCELLED) and not lock.locked():
            self._locks.pop(job.id, None)

    async def _progress(self, sender: _Sender, job: Job, meta: dict[str, Any], text: str) -> None:
        origin = job.request.origin
        ref = meta.get("progress_message")
        if ref:
            done = await self._retry(
                f"edit progress of {job.id}", lambda: sender.edit(origin, str(ref), text)
            )
            if done is not None:
                return
        new_ref = await self._retry(f"post progress of {job.id}", lambda: sender.send(origin, text))
        if new_ref is not None:
            await self.store.set_meta(job.id, progress_message=new_ref)

    async def _finish(
        self, sender: _Sender, job: Job, meta: dict[str, Any], transcript: Sequence[Turn]
    ) -> None:
        marker = result_marker(job)
        origin = job.request.origin
        if meta.get("result_delivered") != marker:
            await self._progress(sender, job, meta, render.progress(job, "finished", self.person_tz))
            buttons = needs_you_buttons(job.id) if job.state == JobState.NEEDS_USER else ()
            text = render.result(job, self.person_tz)
            sent = await self._retry(f"post result of {job.id}", lambda: sender.send(origin, text, buttons))
            if sent is None:
                log.error("result of errand %s not delivered; it stays stored for a later notify", job.id)
                return
            await self.store.set_meta(job.id, result_delivered=marker)
        if transcript and meta.get("transcript_delivered") != marker:
            content = render.transcript_text(job, transcript).encode("utf-8")
            name = f"transcript-{job.id}.txt"
            done = await self._retry(
                f"attach transcript of {job.id}",
                lambda: sender.document(
                    origin, name, content, f"Transcript of the call to {job.request.business_name}"
                ),
            )
            if done is not None:
                await self.store.set_meta(job.id, transcript_delivered=marker)

    async def _retry(self, what: str, attempt: Callable[[], Awaitable[T]]) -> T | None:
        """Run ``attempt`` until it succeeds, a permanent error, or the delays run out.

        Returns ``None`` on failure.
        """
        for i in range(len(self.retry_delays) + 1):
            try:
                return await attempt()
            except _SEND_ERRORS as e:
                retryable, hint = classify(e)
                if not retryable or i == len(self.retry_delays):
                    log.warning("%s failed (%s): %s", what, "giving up" if retryable else "permanent", e)
                    return None
                log.info("%s failed, retrying: %s", what, e)
                await self._sleep(min(self.max_wait, max(self.retry_delays[i], hint)))
        return None
