"""Progress and results in the errand's own chat thread (``storage.ports.Notifier``).

One progress message per errand is edited in place as the errand advances
(Telegram ``editMessageText``, Slack ``chat.update``); its id lives in
``JobMeta.progress_message`` so a restart keeps editing the same message. With several nodes,
two may notify one errand at once before that message exists (the node that took the
submission, the node that claimed the call): the first post is claimed in the database
(``JobMeta.progress_posting``, a compare-and-set), and the other node waits for its id and
edits instead of posting a second message. The result is posted as a
new reply (so the person is pinged) with the transcript attached as a .txt
file (Telegram ``sendDocument``; Slack ``files_upload_v2``, i.e.
``files.getUploadURLExternal`` → upload → ``files.completeUploadExternal``).

The result is already stored by the dispatcher before ``notify`` is called, so
a failed send is retried with back-off and never raises; ``JobMeta.result_delivered``
(``Job.result_marker``: final state and attempt) makes delivery happen exactly once
even if ``notify`` is called again for the same outcome.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import warnings
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import datetime, timedelta
from typing import Any, ParamSpec, Protocol, TypeVar

import aiohttp
import telegram
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.web.async_client import AsyncWebClient
from telegram.error import BadRequest, Forbidden, InvalidToken, RetryAfter, TelegramError, TimedOut
from telegram.warnings import PTBDeprecationWarning

from bot import render
from bot.flow import Button, Out, live_ask_buttons, needs_you_buttons
from bot.slack import blocks
from bot.telegram import markup
from storage.errors import (
    JobNotFound,
    ProviderConnectionError,
    ProviderError,
    ProviderStatusError,
    ProviderTimeoutError,
    is_retryable_status,
)
from storage.jobs import JobStore
from storage.models import ChatOrigin, Job, JobMeta, JobState, Platform, Turn, utcnow
from storage.ports import JobEvent
from storage.retry import Backoff, parse_retry_after, retry, retry_after_header

log = logging.getLogger(__name__)
T = TypeVar("T")
P = ParamSpec("P")

_SEND_ERRORS = (TelegramError, SlackClientError, aiohttp.ClientError, TimeoutError, OSError)
#: Waits of 0.5, 1, 2 and 4 s between five tries of one send; a service's Retry-After replaces the
#: wait, cut to 30 s so one rate limit cannot stall the dispatcher.
NOTIFY_RETRY = Backoff(max_attempts=5, base_delay=0.5, max_delay=4.0, max_retry_after=30.0)
#: How long a notifier may take to post an errand's first progress message before another
#: one (another node) stops waiting for its id and posts itself: the post's whole retry budget.
FIRST_POST_CLAIM = timedelta(seconds=60)
#: How often a notifier waiting for that id looks for it (seconds).
FIRST_POST_POLL = 0.1


def telegram_error(e: BaseException) -> ProviderError:
    """The one Telegram mapper: flood control (``RetryAfter``) is a 429 carrying its wait; a bad
    request, a blocked bot or a wrong token is permanent; anything else (network, 5xx) is transient."""
    if isinstance(e, RetryAfter):
        with warnings.catch_warnings():  # int today, timedelta later: parse_retry_after takes both
            warnings.simplefilter("ignore", PTBDeprecationWarning)
            wait = parse_retry_after(e.retry_after)
        return ProviderStatusError(f"telegram: {e}", provider="telegram", status=429, retry_after=wait)
    for kind, status in ((BadRequest, 400), (Forbidden, 403), (InvalidToken, 401)):
        if isinstance(e, kind):
            return ProviderStatusError(f"telegram: {e}", provider="telegram", status=status)
    if isinstance(e, TimedOut | TimeoutError):
        return ProviderTimeoutError(f"telegram: {e}", provider="telegram")
    return ProviderConnectionError(f"telegram: {e!r}", provider="telegram")


def slack_error(e: BaseException) -> ProviderError:
    """The one Slack mapper: HTTP 429 (``ratelimited``) carries its Retry-After (1 s if none);
    ``ok: false`` is permanent unless Slack calls it an internal error; transport failures are transient."""
    if isinstance(e, SlackApiError):
        status = e.response.status_code
        if status == 429:
            wait = retry_after_header(e.response.headers)
            return ProviderStatusError(
                f"slack: {e}", provider="slack", status=429, retry_after=1.0 if wait is None else wait
            )
        transient = e.response.get("error") in ("internal_error", "fatal_error", "service_unavailable")
        retryable = transient or is_retryable_status(status)
        return ProviderStatusError(f"slack: {e}", provider="slack", status=status, retryable=retryable)
    if isinstance(e, TimeoutError):
        return ProviderTimeoutError(f"slack: {e!r}", provider="slack")
    return ProviderConnectionError(f"slack: {e!r}", provider="slack")


_Method = Callable[P, Coroutine[Any, Any, T]]


def _mapped(mapper: Callable[[BaseException], ProviderError]) -> Callable[[_Method[P, T]], _Method[P, T]]:
    """A sender method whose SDK and transport errors leave it as its provider's ``ProviderError``."""

    def wrap(method: _Method[P, T]) -> _Method[P, T]:
        @functools.wraps(method)
        async def mapped(*args: P.args, **kwargs: P.kwargs) -> T:
            try:
                return await method(*args, **kwargs)
            except _SEND_ERRORS as e:
                raise mapper(e) from e

        return mapped

    return wrap


class _Sender(Protocol):
    async def send(self, origin: ChatOrigin, text: str, buttons: tuple[Button, ...] = ()) -> str: ...
    async def edit(self, origin: ChatOrigin, ref: str, text: str) -> bool: ...
    async def document(self, origin: ChatOrigin, filename: str, content: bytes, caption: str) -> bool: ...


class _TelegramSender:
    def __init__(self, bot: telegram.Bot) -> None:
        self.bot = bot

    @_mapped(telegram_error)
    async def send(self, origin: ChatOrigin, text: str, buttons: tuple[Button, ...] = ()) -> str:
        msg = await self.bot.send_message(
            chat_id=int(origin.chat_id),
            text=text,
            message_thread_id=int(origin.thread_id) if origin.thread_id else None,
            reply_parameters=_reply_to(origin),
            reply_markup=markup(buttons),
        )
        return str(msg.message_id)

    @_mapped(telegram_error)
    async def edit(self, origin: ChatOrigin, ref: str, text: str) -> bool:
        try:
            await self.bot.edit_message_text(text, chat_id=int(origin.chat_id), message_id=int(ref))
        except BadRequest as e:
            if "not modified" not in str(e).lower():
                raise
        return True

    @_mapped(telegram_error)
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

    @_mapped(slack_error)
    async def send(self, origin: ChatOrigin, text: str, buttons: tuple[Button, ...] = ()) -> str:
        resp = await self.client.chat_postMessage(
            channel=origin.chat_id, thread_ts=origin.thread_id, text=text, blocks=blocks(Out(text, buttons))
        )
        return str(resp["ts"])

    @_mapped(slack_error)
    async def edit(self, origin: ChatOrigin, ref: str, text: str) -> bool:
        await self.client.chat_update(channel=origin.chat_id, ts=ref, text=text, blocks=blocks(Out(text)))
        return True

    @_mapped(slack_error)
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


def _first_post_free(meta: JobMeta, *, now: datetime) -> bool:
    """No progress message yet, and nobody posting one (or whoever was has run out of time)."""
    return meta.progress_message is None and (meta.progress_posting is None or meta.progress_posting <= now)


class ChatNotifier:
    """Tells the person, in the errand's origin thread, what is happening.

    Args:
        store: the job store (meta keeps message ids and delivery markers).
        telegram_bot / slack_client: senders for each platform (either may be missing).
        person_tz: times are shown in the person's zone.
        retry: how one send is retried (``NOTIFY_RETRY``; ``storage.retry``).
        sleep: injected for tests that count waits.
    """

    def __init__(
        self,
        store: JobStore,
        *,
        telegram_bot: telegram.Bot | None = None,
        slack_client: AsyncWebClient | None = None,
        person_tz: str,
        retry: Backoff = NOTIFY_RETRY,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.store = store
        self.person_tz = person_tz
        self.retry = retry
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

    async def ask(self, job: Job, question: str, options: Sequence[str] = ()) -> bool:
        """Post a question the business asked on a live call into the errand's thread, quoted as
        theirs, with a quick reply per option; whether it was posted (never raises)."""
        sender = self._senders.get(job.request.origin.platform)
        if sender is None:
            return False
        text = render.asking_you(job.request.business_name, question)
        buttons = live_ask_buttons(job.id, tuple(options))
        sent = await self._retry(
            f"ask about {job.id}", lambda: sender.send(job.request.origin, text, buttons)
        )
        return sent is not None

    async def _progress(self, sender: _Sender, job: Job, meta: JobMeta, text: str) -> None:
        origin = job.request.origin
        ref = meta.progress_message or await self._first_post_or_ref(job.id)
        if ref:
            done = await self._retry(f"edit progress of {job.id}", lambda: sender.edit(origin, ref, text))
            if done is not None:
                return
        new_ref = await self._retry(f"post progress of {job.id}", lambda: sender.send(origin, text))
        await self.store.update_meta(job.id, progress_message=new_ref or ref, progress_posting=None)

    async def _first_post_or_ref(self, job_id: str) -> str | None:
        """``None``: this notifier may post the first progress message (it claimed that).
        Otherwise the id of the message another notifier posted while we waited for it."""
        while True:
            now = utcnow()
            claimed = await self.store.update_meta_if(
                job_id, functools.partial(_first_post_free, now=now), progress_posting=now + FIRST_POST_CLAIM
            )
            if claimed is not None:
                return None
            meta = (await self.store.get(job_id)).meta
            while (
                meta.progress_message is None and meta.progress_posting and meta.progress_posting > utcnow()
            ):
                await asyncio.sleep(FIRST_POST_POLL)  # another node is posting it: wait for its id
                meta = (await self.store.get(job_id)).meta
            if meta.progress_message is not None:
                return meta.progress_message

    async def _finish(self, sender: _Sender, job: Job, meta: JobMeta, transcript: Sequence[Turn]) -> None:
        marker = job.result_marker
        origin = job.request.origin
        if meta.result_delivered != marker:
            await self._progress(sender, job, meta, render.progress(job, "finished", self.person_tz))
            buttons = needs_you_buttons(job.id) if job.state == JobState.NEEDS_USER else ()
            text = render.result(job, self.person_tz)
            sent = await self._retry(f"post result of {job.id}", lambda: sender.send(origin, text, buttons))
            if sent is None:
                log.error("result of errand %s not delivered; it stays stored for a later notify", job.id)
                return
            await self.store.update_meta(job.id, result_delivered=marker)
        if transcript and meta.transcript_delivered != marker:
            content = render.transcript_text(job, transcript).encode("utf-8")
            name = f"transcript-{job.id}.txt"
            done = await self._retry(
                f"attach transcript of {job.id}",
                lambda: sender.document(
                    origin, name, content, f"Transcript of the call to {job.request.business_name}"
                ),
            )
            if done is not None:
                await self.store.update_meta(job.id, transcript_delivered=marker)

    async def _retry(self, what: str, attempt: Callable[[], Awaitable[T]]) -> T | None:
        """Run ``attempt`` until it succeeds, a permanent error, or the tries run out.

        Returns ``None`` on failure.
        """

        def waiting(tries: int, delay: float, error: ProviderError) -> None:
            log.info("%s failed, retrying: %s", what, error)

        try:
            return await retry(attempt, self.retry, sleep=self._sleep, on_wait=waiting)
        except ProviderError as e:
            log.warning("%s failed (%s): %s", what, "giving up" if e.retryable else "permanent", e)
            return None
