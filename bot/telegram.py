"""The Telegram front end (python-telegram-bot): commands, free text, buttons, webhook.

Only translates: Telegram updates become ``ChatFlow`` calls and ``Out`` answers
become replies in the same chat and forum topic (``do_quote`` keeps the
``message_thread_id`` and sets ``reply_parameters``). Long polling is the
default because it needs no public URL; webhook mode puts
``POST /telegram/webhook`` into our own aiohttp application, guarded by the
secret-token header.

With several nodes on one database, webhook mode works on every node (each update is
handled by the node it reaches; everything it touches is in the database), while long
polling runs on exactly one node: Telegram allows one ``getUpdates`` at a time, so
:class:`Poller` polls only while this node holds a cluster-wide lock and the others
retry until the holder dies. An update already handled by any node (a webhook
redelivery, or the last unconfirmed batch after a takeover) is skipped (``seen``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from aiohttp import web
from telegram import InlineKeyboardButton, InlineKeyboardMarkup, Message, Update
from telegram.ext import (
    Application,
    ApplicationHandlerStop,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    TypeHandler,
    filters,
)

from bot import render
from bot.allow import AllowList
from bot.flow import Button, ChatFlow, Out
from bot.webbody import BodyTooLarge, read_body, too_large
from storage.models import ChatOrigin, Platform

log = logging.getLogger(__name__)

WEBHOOK_PATH = "/telegram/webhook"
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
MAX_WEBHOOK_BODY = 1 << 20

TgApp = Application  # type: ignore[type-arg]


def markup(buttons: tuple[Button, ...]) -> InlineKeyboardMarkup | None:
    """One row of inline buttons, or ``None`` (which also removes buttons on edit)."""
    if not buttons:
        return None
    return InlineKeyboardMarkup([[InlineKeyboardButton(b.label, callback_data=b.data) for b in buttons]])


def thread_key(message: Message, user_id: int) -> str:
    """Drafts live per chat, forum topic and person."""
    topic = message.message_thread_id if message.is_topic_message else 0
    return f"tg:{message.chat_id}:{topic}:{user_id}"


def origin_of(message: Message, user_id: int) -> ChatOrigin:
    return ChatOrigin(
        platform=Platform.TELEGRAM,
        chat_id=str(message.chat_id),
        user_id=str(user_id),
        thread_id=str(message.message_thread_id) if message.is_topic_message else None,
        message_id=str(message.message_id),
    )


class _Handlers:
    def __init__(self, flow: ChatFlow, allow: AllowList) -> None:
        self.flow = flow
        self.allow = allow

    async def _allowed(self, update: Update) -> bool:
        user = update.effective_user
        if user is not None and self.allow.telegram(user.id):
            return True
        log.info("refused telegram user %s", user.id if user else None)
        if update.callback_query is not None:
            await update.callback_query.answer(render.NOT_ALLOWED, show_alert=True)
        elif update.effective_message is not None:
            await update.effective_message.reply_text(render.NOT_ALLOWED, do_quote=True)
        return False

    async def _say(self, message: Message, out: Out) -> None:
        await message.reply_text(out.text, reply_markup=markup(out.buttons), do_quote=True)

    async def help(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        if update.effective_message is not None:
            await self._say(update.effective_message, Out(render.HELP))

    async def call(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        msg, user = update.effective_message, update.effective_user
        if msg is None or user is None or not await self._allowed(update):
            return
        args = (msg.text or "").partition(" ")[2].strip()
        if not args:
            await self._say(msg, Out(render.HELP))
            return
        await self._say(msg, await self.flow.request(thread_key(msg, user.id), origin_of(msg, user.id), args))

    async def status(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        msg, user = update.effective_message, update.effective_user
        if msg is None or user is None or not await self._allowed(update):
            return
        await self._say(msg, await self.flow.status(str(user.id)))

    async def cancel(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        msg, user = update.effective_message, update.effective_user
        if msg is None or user is None or not await self._allowed(update):
            return
        job_id = (msg.text or "").partition(" ")[2].strip()
        await self._say(msg, await self.flow.cancel(str(user.id), job_id))

    async def text(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        msg, user = update.effective_message, update.effective_user
        if msg is None or user is None or not msg.text:
            return
        key = thread_key(msg, user.id)
        private = msg.chat.type == "private"
        if not private and not await self.flow.has_draft(key):
            return  # group chatter that is not an answer to us
        if not await self._allowed(update):
            return
        origin = origin_of(msg, user.id)
        out = await self.flow.follow_up(key, origin, msg.text)
        if out is None:
            out = await self.flow.request(key, origin, msg.text)
        await self._say(msg, out)

    async def button(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        query = update.callback_query
        if query is None or not await self._allowed(update):
            return
        pressed = await self.flow.press(str(query.from_user.id), query.data or "")
        # Answered after the press, so a refused press is explained to the presser alone (an
        # alert) instead of in the chat; otherwise this just stops the button's spinner.
        await query.answer(pressed.notice or None, show_alert=bool(pressed.notice))
        if pressed.edit is not None:
            await query.edit_message_text(pressed.edit.text, reply_markup=markup(pressed.edit.buttons))
        if pressed.reply is not None and isinstance(query.message, Message):
            await self._say(query.message, pressed.reply)

    async def error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        log.error("telegram handler failed", exc_info=context.error)


#: Marks an update key seen; whether it is the first time on any node (``storage.chat_updates``).
Seen = Callable[[str], Awaitable[bool]]


def build_application(
    *,
    token: str,
    api_base_url: str,
    flow: ChatFlow,
    allow: AllowList,
    webhook: bool = False,
    seen: Seen | None = None,
) -> TgApp:
    """The python-telegram-bot application with every handler.

    Args:
        api_base_url: Bot API root ("https://api.telegram.org" or a sandbox).
        webhook: build without an updater; updates then come from ``add_webhook_route``.
        seen: when given, an update whose id any node has already seen is dropped before
            any handler runs.
    """
    root = api_base_url.rstrip("/")
    builder = Application.builder().token(token).base_url(f"{root}/bot").base_file_url(f"{root}/file/bot")
    if webhook:
        builder = builder.updater(None)
    app = builder.build()
    h = _Handlers(flow, allow)
    if seen is not None:

        async def once(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
            if not await seen(f"tg:{update.update_id}"):
                log.info("telegram update %s already handled", update.update_id)
                raise ApplicationHandlerStop

        app.add_handler(TypeHandler(Update, once), group=-1)
    app.add_handler(CommandHandler(["start", "help"], h.help))
    app.add_handler(CommandHandler("call", h.call))
    app.add_handler(CommandHandler("status", h.status))
    app.add_handler(CommandHandler("cancel", h.cancel))
    app.add_handler(CallbackQueryHandler(h.button))
    app.add_handler(MessageHandler(filters.TEXT & ~filters.COMMAND, h.text))
    app.add_error_handler(h.error)
    return app


async def start_polling(app: TgApp, *, poll_timeout: int = 10) -> None:
    """Initialise, start and long-poll (each ``getUpdates`` waits up to ``poll_timeout`` s)."""
    await app.initialize()
    await app.start()
    assert app.updater is not None, "built for webhook mode"
    await app.updater.start_polling(timeout=poll_timeout, poll_interval=0.0)


async def start_processing(app: TgApp) -> None:
    """Initialise and start handling updates (and sending), without polling for them."""
    await app.initialize()
    await app.start()


class Held(Protocol):
    """A held cluster-wide lock (``storage`` ``Singleton``): ``lost`` is set if it slips away."""

    lost: asyncio.Event

    async def release(self) -> None: ...


class _Leader:
    """Work that runs on exactly one node: the one holding the lock ``acquire`` takes.

    A node without the lock tries again every ``retry_every`` seconds, so when the holder
    dies (its lock is dropped with its database connection) another node takes over within
    that time. A holder whose lock is ``lost`` stops at once. Subclasses say what the work is.

    Args:
        app: a started application.
        acquire: tries to take the lock; ``None`` when another node holds it.
        retry_every: seconds between tries while another node leads.
    """

    def __init__(
        self, app: TgApp, acquire: Callable[[], Awaitable[Held | None]], *, retry_every: float
    ) -> None:
        self._app = app
        self._acquire = acquire
        self._retry_every = retry_every
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        """Make :meth:`run` stop polling, release the lock and return."""
        self._stopping.set()

    async def run(self) -> None:
        """Take the lock when free, poll while holding it; until :meth:`stop`."""
        while not self._stopping.is_set():
            try:
                held = await self._acquire()
            except Exception:
                log.warning("cannot tell whether another node polls Telegram", exc_info=True)
                held = None
            if held is not None:
                try:
                    await self._lead_while(held)
                    continue
                except Exception:
                    log.warning("telegram %s failed; trying again", self._what, exc_info=True)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._retry_every):
                    await self._stopping.wait()

    _what = "leadership"

    async def _lead_while(self, held: Held) -> None:
        """Do the work until the lock is lost or :meth:`stop`; always releases the lock."""
        raise NotImplementedError


class Poller(_Leader):
    """Long polling on exactly one node (Telegram allows one ``getUpdates`` at a time).

    Args:
        app: a started application (:func:`start_processing`) built with an updater.
        acquire: tries to take the lock; ``None`` when another node holds it.
        retry_every: seconds between tries while another node polls.
        poll_timeout: seconds each ``getUpdates`` waits.
    """

    _what = "long polling"

    def __init__(
        self,
        app: TgApp,
        acquire: Callable[[], Awaitable[Held | None]],
        *,
        retry_every: float,
        poll_timeout: int = 10,
    ) -> None:
        super().__init__(app, acquire, retry_every=retry_every)
        self._poll_timeout = poll_timeout
        #: Set while this node long-polls.
        self.polling = asyncio.Event()

    async def _lead_while(self, held: Held) -> None:
        """Poll until the lock is lost or :meth:`stop`; always stops polling and releases it."""
        updater = self._app.updater
        assert updater is not None, "built for webhook mode"
        try:
            await updater.start_polling(timeout=self._poll_timeout, poll_interval=0.0)
            self.polling.set()
            log.info("this node long-polls Telegram")
            await _first(held.lost, self._stopping)
            if held.lost.is_set():
                log.warning("lost the Telegram polling lock: this node stops polling")
        finally:
            self.polling.clear()
            try:
                if updater.running:
                    await updater.stop()
            finally:
                await held.release()


class WebhookRegistrar(_Leader):
    """Telegram's one webhook URL points at a live node: the one holding the lock.

    Telegram keeps a single webhook URL per bot. Every node serves the webhook route, but
    only the lock holder registers its own URL; when it dies, the next holder registers
    its own, so updates follow the live nodes without a shared load balancer. (Behind one
    shared URL, every holder registers the same URL: nothing changes.)

    Args:
        app: a started application (:func:`start_webhook_mode` without a URL).
        acquire: tries to take the lock; ``None`` when another node holds it.
        url: this node's public webhook URL.
        secret: the secret token Telegram sends back in a header.
        retry_every: seconds between tries while another node holds it.
    """

    _what = "webhook registration"

    def __init__(
        self,
        app: TgApp,
        acquire: Callable[[], Awaitable[Held | None]],
        *,
        url: str,
        secret: str,
        retry_every: float,
    ) -> None:
        super().__init__(app, acquire, retry_every=retry_every)
        self._url = url
        self._secret = secret
        #: Set while Telegram's webhook points at this node.
        self.registered = asyncio.Event()

    async def _lead_while(self, held: Held) -> None:
        try:
            await self._app.bot.set_webhook(url=self._url, secret_token=self._secret or None)
            self.registered.set()
            log.info("Telegram's webhook points at this node: %s", self._url)
            await _first(held.lost, self._stopping)
        finally:
            self.registered.clear()
            await held.release()


async def _first(*events: asyncio.Event) -> None:
    """Return when any of ``events`` is set."""
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


async def start_webhook_mode(app: TgApp, *, url: str | None = None, secret: str = "") -> None:
    """Initialise and start processing; registers ``url`` with Telegram when given."""
    await app.initialize()
    await app.start()
    if url:
        await app.bot.set_webhook(url=url, secret_token=secret or None)


async def stop(app: TgApp) -> None:
    """Stop polling, processing and the HTTP client, in that order."""
    if app.updater is not None and app.updater.running:
        await app.updater.stop()
    if app.running:
        await app.stop()
    await app.shutdown()


def add_webhook_route(
    web_app: web.Application,
    tg_app: TgApp,
    secret: str,
    *,
    path: str = WEBHOOK_PATH,
    max_body: int = MAX_WEBHOOK_BODY,
) -> None:
    """Serve Telegram's webhook at ``path`` in our aiohttp app.

    Anything without the exact secret-token header gets 403 and is never parsed.
    """
    if not secret:
        raise ValueError("a Telegram webhook needs a secret token")

    async def handle(request: web.Request) -> web.Response:
        given = request.headers.get(SECRET_HEADER, "")
        if not hmac.compare_digest(given.encode(), secret.encode()):
            return web.Response(status=403, text="forbidden")
        try:
            raw = await read_body(request, max_body)
        except BodyTooLarge:
            return too_large()
        try:
            data = json.loads(raw)
            if not isinstance(data, dict) or not isinstance(data.get("update_id"), int):
                raise ValueError("an Update is a JSON object with an integer update_id")
            # PTB's de_json trusts the shape it is given (KeyError, AttributeError, TypeError
            # on a wrong one); only the secret holder can get here, but a 500 is still wrong.
            update = Update.de_json(data, tg_app.bot)
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as e:
            log.warning("telegram webhook: unusable update (%s)", type(e).__name__)
            return web.Response(status=400, text="bad update")
        await tg_app.update_queue.put(update)
        return web.Response(text="ok")

    web_app.router.add_post(path, handle)
