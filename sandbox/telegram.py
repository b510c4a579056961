"""A local stand-in for the Telegram Bot API, plus a driver that plays the users.

Speaks the documented wire format — ``/bot{token}/{method}`` with form-encoded,
JSON or multipart parameters, answers ``{"ok":true,"result":…}`` or
``{"ok":false,"error_code":…,"description":…}`` — so python-telegram-bot runs
against it unchanged (long polling with ``getUpdates`` included). Tests make
users write and press buttons with ``user_message`` / ``press_button`` and read
everything the bot said from ``sent``. Faults can be injected per method.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

#: Parameters that arrive JSON-encoded in form posts (numbers and nested objects).
_JSON_PARAMS = {
    "chat_id", "message_id", "message_thread_id", "reply_markup", "reply_parameters", "offset",
    "timeout", "limit", "allowed_updates", "reply_to_message_id", "show_alert", "drop_pending_updates",
}  # fmt: skip


@dataclass
class Sent:
    """One thing the bot sent or changed (sendMessage, editMessageText, sendDocument)."""

    method: str
    chat_id: int
    message_id: int
    text: str | None = None
    message_thread_id: int | None = None
    reply_markup: dict[str, Any] | None = None
    reply_to_message_id: int | None = None
    document: tuple[str, bytes] | None = None  # (file name, content)
    caption: str | None = None

    @property
    def buttons(self) -> list[tuple[str, str]]:
        """(label, callback_data) of every inline button."""
        rows = (self.reply_markup or {}).get("inline_keyboard", [])
        return [(b["text"], b.get("callback_data", "")) for row in rows for b in row]


@dataclass
class _Fault:
    count: int
    error_code: int
    retry_after: int | None


@dataclass
class SandboxTelegram:
    """The sandbox Bot API server.

    Args:
        token: the only bot token accepted (others get 404, as Telegram does).
        username: what ``getMe`` answers.
        host: interface to bind (loopback in tests).
    """

    token: str
    username: str = "concierge_sandbox_bot"
    bot_id: int = 777000
    host: str = "127.0.0.1"
    sent: list[Sent] = field(default_factory=list)
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    answered_callbacks: list[dict[str, Any]] = field(default_factory=list)
    webhook: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._updates: list[dict[str, Any]] = []
        self._update_ids = itertools.count(1)
        self._message_ids = itertools.count(100)
        self._messages: dict[tuple[int, int], dict[str, Any]] = {}
        self._faults: dict[str, _Fault] = {}
        self._changed = asyncio.Condition()
        self._closing = False
        self._wakers: set[asyncio.Task[None]] = set()
        self._runner: web.AppRunner | None = None
        self._port = 0

    # -- server lifecycle ---------------------------------------------------------
    async def start(self) -> None:
        app = web.Application(client_max_size=20 * 1024 * 1024)
        app.router.add_route("*", "/bot{token}/{method}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        self._port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        self._closing = True
        async with self._changed:
            self._changed.notify_all()
        if self._runner:
            await self._runner.cleanup()
            self._runner = None

    @property
    def base_url(self) -> str:
        """The API root; python-telegram-bot wants ``f"{base_url}/bot"``."""
        return f"http://{self.host}:{self._port}"

    def fail_next(
        self, method: str, count: int = 1, error_code: int = 500, retry_after: int | None = None
    ) -> None:
        """The next ``count`` calls of ``method`` fail with ``error_code`` (429 carries ``retry_after``)."""
        self._faults[method] = _Fault(count, error_code, retry_after)

    # -- driver: what users do ------------------------------------------------------
    def user_message(
        self,
        chat_id: int,
        user_id: int,
        text: str,
        thread_id: int | None = None,
        *,
        chat_type: str | None = None,
    ) -> int:
        """A user writes ``text`` in a chat (a forum topic when ``thread_id``); returns its message id."""
        msg: dict[str, Any] = {
            "message_id": next(self._message_ids),
            "date": int(time.time()),
            "chat": self._chat(chat_id, chat_type, thread_id),
            "from": {"id": user_id, "is_bot": False, "first_name": f"User{user_id}"},
            "text": text,
        }
        if thread_id is not None:
            msg["message_thread_id"] = thread_id
            msg["is_topic_message"] = True
        if text.startswith("/"):
            msg["entities"] = [{"type": "bot_command", "offset": 0, "length": len(text.split()[0])}]
        self._messages[(chat_id, msg["message_id"])] = msg
        self._push({"message": msg})
        return int(msg["message_id"])

    def press_button(self, chat_id: int, user_id: int, message_id: int, callback_data: str) -> str:
        """A user presses an inline button under one of the bot's messages; returns the query id."""
        message = self._messages[(chat_id, message_id)]
        qid = f"cq{next(self._update_ids)}"
        self._push(
            {
                "callback_query": {
                    "id": qid,
                    "from": {"id": user_id, "is_bot": False, "first_name": f"User{user_id}"},
                    "chat_instance": f"ci{chat_id}",
                    "message": message,
                    "data": callback_data,
                }
            }
        )
        return qid

    def update_json(self, chat_id: int, user_id: int, text: str) -> dict[str, Any]:
        """An Update body (not queued) for posting to a webhook."""
        msg = {
            "message_id": next(self._message_ids),
            "date": int(time.time()),
            "chat": self._chat(chat_id, None, None),
            "from": {"id": user_id, "is_bot": False, "first_name": f"User{user_id}"},
            "text": text,
        }
        if text.startswith("/"):
            msg["entities"] = [{"type": "bot_command", "offset": 0, "length": len(text.split()[0])}]
        return {"update_id": next(self._update_ids), "message": msg}

    async def wait_for(
        self,
        predicate: Callable[[Sent], bool],
        timeout: float = 5.0,  # noqa: ASYNC109 (the driver API the tests share)
        *,
        since: int = 0,
    ) -> Sent:
        """The first entry of ``sent[since:]`` matching ``predicate``, waiting up to ``timeout`` s.

        Raises:
            TimeoutError: nothing matched in time.
        """

        def find() -> Sent | None:
            return next((s for s in self.sent[since:] if predicate(s)), None)

        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: find() is not None), timeout)
        found = find()
        assert found is not None
        return found

    async def wait_for_callback_answer(
        self,
        predicate: Callable[[dict[str, Any]], bool],
        timeout: float = 5.0,  # noqa: ASYNC109 (the driver API the tests share)
    ) -> dict[str, Any]:
        """The first ``answerCallbackQuery`` whose parameters match ``predicate``."""

        def find() -> dict[str, Any] | None:
            return next((c for c in self.answered_callbacks if predicate(c)), None)

        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: find() is not None), timeout)
        found = find()
        assert found is not None
        return found

    def _chat(self, chat_id: int, chat_type: str | None, thread_id: int | None) -> dict[str, Any]:
        kind = chat_type or ("private" if chat_id > 0 else "supergroup")
        chat: dict[str, Any] = {"id": chat_id, "type": kind}
        if kind == "private":
            chat["first_name"] = f"User{chat_id}"
        else:
            chat["title"] = f"Group {chat_id}"
            if thread_id is not None:
                chat["is_forum"] = True
        return chat

    def _push(self, update: dict[str, Any]) -> None:
        update["update_id"] = next(self._update_ids)
        self._updates.append(update)
        self._notify()

    def _notify(self) -> None:
        async def wake() -> None:
            async with self._changed:
                self._changed.notify_all()

        # Driver methods are sync; waking waiters needs the condition's lock.
        task = asyncio.get_running_loop().create_task(wake())
        self._wakers.add(task)
        task.add_done_callback(self._wakers.discard)

    # -- the Bot API ----------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return _error(404, "Not Found")
        method = request.match_info["method"]
        params, files = await _params(request)
        self.calls.append((method, params))
        fault = self._faults.get(method) or self._faults.get(method.lower())
        if fault and fault.count > 0:
            fault.count -= 1
            extra = {"retry_after": fault.retry_after} if fault.retry_after is not None else None
            return _error(
                fault.error_code, "Too Many Requests" if fault.error_code == 429 else "Internal", extra
            )
        handler = getattr(self, f"_m_{method.lower()}", None)
        if handler is None:
            return _error(404, "Not Found: method not found")
        result = await handler(params, files)
        if isinstance(result, web.Response):
            return result
        return web.json_response({"ok": True, "result": result})

    async def _m_getme(self, p: dict[str, Any], f: Any) -> Any:
        return {"id": self.bot_id, "is_bot": True, "first_name": "Concierge", "username": self.username}

    async def _m_deletewebhook(self, p: dict[str, Any], f: Any) -> Any:
        self.webhook = {}
        return True

    async def _m_setwebhook(self, p: dict[str, Any], f: Any) -> Any:
        self.webhook = dict(p)
        return True

    async def _m_getupdates(self, p: dict[str, Any], f: Any) -> Any:
        offset = int(p.get("offset") or 0)
        if offset:
            self._updates = [u for u in self._updates if u["update_id"] >= offset]
        timeout = float(p.get("timeout") or 0)
        if not self._updates and timeout > 0 and not self._closing:
            async with self._changed:
                try:
                    await asyncio.wait_for(
                        self._changed.wait_for(lambda: bool(self._updates) or self._closing), timeout
                    )
                except TimeoutError:
                    pass
        return list(self._updates[: int(p.get("limit") or 100)])

    async def _m_sendmessage(self, p: dict[str, Any], f: Any) -> Any:
        msg = self._bot_message(p)
        msg["text"] = str(p.get("text", ""))
        return await self._record("sendMessage", msg, p)

    async def _m_senddocument(self, p: dict[str, Any], f: dict[str, tuple[str, bytes]]) -> Any:
        doc = f.get("document")
        if doc is None:
            return _error(400, "Bad Request: there is no document in the request")
        msg = self._bot_message(p)
        msg["document"] = {"file_id": f"doc{msg['message_id']}", "file_unique_id": "u", "file_name": doc[0]}
        if p.get("caption"):
            msg["caption"] = str(p["caption"])
        return await self._record("sendDocument", msg, p, document=doc)

    async def _m_editmessagetext(self, p: dict[str, Any], f: Any) -> Any:
        key = (int(p.get("chat_id", 0)), int(p.get("message_id", 0)))
        msg = self._messages.get(key)
        if msg is None:
            return _error(400, "Bad Request: message to edit not found")
        markup = p.get("reply_markup")
        if msg.get("text") == p.get("text") and msg.get("reply_markup") == markup:
            return _error(400, "Bad Request: message is not modified")
        msg = {**msg, "text": str(p.get("text", "")), "edit_date": int(time.time())}
        msg.pop("reply_markup", None)
        if markup:
            msg["reply_markup"] = markup
        return await self._record("editMessageText", msg, p)

    async def _m_answercallbackquery(self, p: dict[str, Any], f: Any) -> Any:
        self.answered_callbacks.append(p)
        async with self._changed:
            self._changed.notify_all()
        return True

    def _bot_message(self, p: dict[str, Any]) -> dict[str, Any]:
        chat_id = int(p["chat_id"])
        thread = p.get("message_thread_id")
        msg: dict[str, Any] = {
            "message_id": next(self._message_ids),
            "date": int(time.time()),
            "chat": self._chat(chat_id, None, int(thread) if thread is not None else None),
            "from": {"id": self.bot_id, "is_bot": True, "first_name": "Concierge", "username": self.username},
        }
        if thread is not None:
            msg["message_thread_id"] = int(thread)
            msg["is_topic_message"] = True
        if p.get("reply_markup"):
            msg["reply_markup"] = p["reply_markup"]
        reply_to = (p.get("reply_parameters") or {}).get("message_id") or p.get("reply_to_message_id")
        if reply_to and (chat_id, int(reply_to)) in self._messages:
            msg["reply_to_message"] = self._messages[(chat_id, int(reply_to))]
        return msg

    async def _record(
        self, method: str, msg: dict[str, Any], p: dict[str, Any], document: tuple[str, bytes] | None = None
    ) -> dict[str, Any]:
        chat_id = int(msg["chat"]["id"])
        self._messages[(chat_id, msg["message_id"])] = msg
        reply_to = msg.get("reply_to_message", {}).get("message_id")
        self.sent.append(
            Sent(
                method=method,
                chat_id=chat_id,
                message_id=msg["message_id"],
                text=msg.get("text"),
                message_thread_id=msg.get("message_thread_id"),
                reply_markup=msg.get("reply_markup"),
                reply_to_message_id=reply_to,
                document=document,
                caption=msg.get("caption"),
            )
        )
        async with self._changed:
            self._changed.notify_all()
        return msg


async def _params(request: web.Request) -> tuple[dict[str, Any], dict[str, tuple[str, bytes]]]:
    params: dict[str, Any] = dict(request.query)
    files: dict[str, tuple[str, bytes]] = {}
    if request.method == "POST" and request.can_read_body:
        if request.content_type == "application/json":
            params.update(await request.json())
        else:
            form = await request.post()
            for k, v in form.items():
                if isinstance(v, web.FileField):
                    files[k] = (v.filename, v.file.read())
                else:
                    params[k] = v
    for k in _JSON_PARAMS & params.keys():
        if isinstance(params[k], str):
            try:
                params[k] = json.loads(params[k])
            except ValueError:
                pass
    return params, files


def _error(code: int, description: str, parameters: dict[str, Any] | None = None) -> web.Response:
    body: dict[str, Any] = {"ok": False, "error_code": code, "description": description}
    if parameters:
        body["parameters"] = parameters
    return web.json_response(body, status=code)
