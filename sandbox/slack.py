"""A local stand-in for Slack: the Web API the bot calls, and a driver playing Slack's side.

Web API at ``/api/{method}`` (``auth.test``, ``chat.postMessage``, ``chat.update``,
``chat.postEphemeral`` and the three-step ``files_upload_v2`` flow:
``files.getUploadURLExternal`` → raw POST to the returned upload URL →
``files.completeUploadExternal``), plus ``response_url`` endpoints. The driver
sends what Slack would send to the app — slash commands, ``block_actions``
payloads and ``message`` events — signed with the ``v0`` HMAC-SHA256 scheme,
and records the app's HTTP answers.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web


@dataclass
class Posted:
    """One message the app posted or changed (``method`` is postMessage / update / file / ephemeral)."""

    method: str
    channel: str
    ts: str
    text: str = ""
    thread_ts: str | None = None
    blocks: list[dict[str, Any]] = field(default_factory=list)
    file: dict[str, Any] | None = None  # {"filename", "title", "content": bytes}
    user: str | None = None  # whom an ephemeral message is shown to

    @property
    def buttons(self) -> list[tuple[str, str, str]]:
        """(label, action_id, value) of every button in the message."""
        out = []
        for b in self.blocks:
            for e in b.get("elements", []) if b.get("type") == "actions" else []:
                out.append((e["text"]["text"], e["action_id"], e.get("value", "")))
        return out


@dataclass
class Answer:
    """The app's HTTP answer to something the driver sent."""

    status: int
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


@dataclass
class SandboxSlack:
    """The sandbox Slack server and driver.

    Args:
        bot_token: the only ``xoxb-`` token the Web API accepts.
        signing_secret: used to sign what the driver sends to the app.
        team_id: the workspace id reported by ``auth.test`` and in payloads.
    """

    bot_token: str
    signing_secret: str
    team_id: str
    bot_user_id: str = "UBOT0001"
    host: str = "127.0.0.1"
    posted: list[Posted] = field(default_factory=list)
    responses: list[dict[str, Any]] = field(default_factory=list)  # posts to response_url
    answers: list[Answer] = field(default_factory=list)
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._ts = itertools.count(1)
        self._ids = itertools.count(1)
        self._messages: dict[tuple[str, str], Posted] = {}
        self._uploads: dict[str, dict[str, Any]] = {}
        self._faults: dict[str, list[int]] = {}
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None
        self._port = 0

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/api/{method}", self._api)
        app.router.add_post("/upload/{file_id}", self._upload)
        app.router.add_post("/response/{rid}", self._response_url)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        self._port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._http = aiohttp.ClientSession()

    async def stop(self) -> None:
        if self._http:
            await self._http.close()
            self._http = None
        if self._runner:
            await self._runner.cleanup()
            self._runner = None

    @property
    def root(self) -> str:
        return f"http://{self.host}:{self._port}"

    @property
    def base_url(self) -> str:
        """What ``AsyncWebClient(base_url=…)`` takes (ends with ``/api/``)."""
        return f"{self.root}/api/"

    def fail_next(self, method: str, count: int = 1, status: int = 500) -> None:
        """The next ``count`` calls of ``method`` answer HTTP ``status`` (429 carries Retry-After: 0)."""
        self._faults[method] = [status] * count

    # -- driver: Slack → app -----------------------------------------------------
    def sign(self, body: str, timestamp: int | None = None) -> dict[str, str]:
        ts = str(int(time.time()) if timestamp is None else timestamp)
        digest = hmac.new(
            self.signing_secret.encode(), f"v0:{ts}:{body}".encode(), hashlib.sha256
        ).hexdigest()
        return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": f"v0={digest}"}

    async def post_raw(self, url: str, body: str, headers: dict[str, str]) -> Answer:
        """POST ``body`` to the app as is (for signature tests)."""
        assert self._http is not None, "start() first"
        async with self._http.post(url, data=body.encode(), headers=headers) as resp:
            answer = Answer(resp.status, await resp.text())
        self.answers.append(answer)
        return answer

    async def _signed(self, url: str, body: str, content_type: str) -> Answer:
        return await self.post_raw(url, body, {**self.sign(body), "Content-Type": content_type})

    async def slash_command(
        self,
        url: str,
        *,
        text: str,
        user_id: str,
        channel_id: str,
        command: str = "/call",
        team_id: str | None = None,
    ) -> Answer:
        """Slack delivering a slash command (form-encoded, signed)."""
        rid = next(self._ids)
        form = {
            "token": "legacy-verification-token",
            "team_id": team_id or self.team_id,
            "team_domain": "sandbox",
            "channel_id": channel_id,
            "channel_name": "general",
            "user_id": user_id,
            "user_name": f"user{user_id}",
            "command": command,
            "text": text,
            "api_app_id": "A0SANDBOX",
            "response_url": f"{self.root}/response/{rid}",
            "trigger_id": f"trig{rid}",
        }
        return await self._signed(url, urllib.parse.urlencode(form), "application/x-www-form-urlencoded")

    async def click(
        self, url: str, *, user_id: str, message: Posted, action_id: str, team_id: str | None = None
    ) -> Answer:
        """A user pressing the button ``action_id`` on a posted message (a ``block_actions`` payload)."""
        button = next(b for b in message.buttons if b[1] == action_id)
        rid = next(self._ids)
        team = team_id or self.team_id
        msg = {"type": "message", "ts": message.ts, "text": message.text, "blocks": message.blocks}
        if message.thread_ts:
            msg["thread_ts"] = message.thread_ts
        payload = {
            "type": "block_actions",
            "user": {"id": user_id, "username": f"user{user_id}", "team_id": team},
            "api_app_id": "A0SANDBOX",
            "token": "legacy-verification-token",
            "container": {"type": "message", "message_ts": message.ts, "channel_id": message.channel},
            "trigger_id": f"trig{rid}",
            "team": {"id": team, "domain": "sandbox"},
            "channel": {"id": message.channel, "name": "general"},
            "message": msg,
            "response_url": f"{self.root}/response/{rid}",
            "actions": [
                {
                    "type": "button",
                    "action_id": action_id,
                    "block_id": "errand",
                    "value": button[2],
                    "text": {"type": "plain_text", "text": button[0]},
                    "action_ts": str(time.time()),
                }
            ],
        }
        body = urllib.parse.urlencode({"payload": json.dumps(payload)})
        return await self._signed(url, body, "application/x-www-form-urlencoded")

    async def message_event(
        self, url: str, *, user_id: str, channel: str, text: str, thread_ts: str | None = None
    ) -> Answer:
        """A user writing in a channel or thread (an Events API ``message`` event)."""
        ts = self._next_ts()
        event: dict[str, Any] = {
            "type": "message",
            "user": user_id,
            "text": text,
            "ts": ts,
            "channel": channel,
            "channel_type": "channel",
            "event_ts": ts,
        }
        if thread_ts:
            event["thread_ts"] = thread_ts
        body = {
            "token": "legacy-verification-token",
            "team_id": self.team_id,
            "api_app_id": "A0SANDBOX",
            "event": event,
            "type": "event_callback",
            "event_id": f"Ev{next(self._ids)}",
            "event_time": int(time.time()),
            "authorizations": [{"team_id": self.team_id, "user_id": self.bot_user_id, "is_bot": True}],
        }
        return await self._signed(url, json.dumps(body), "application/json")

    async def wait_for(self, predicate: Callable[[Posted], bool], timeout: float = 5.0) -> Posted:  # noqa: ASYNC109
        """The first posted entry matching ``predicate``, waiting up to ``timeout`` s."""

        def find() -> Posted | None:
            return next((p for p in self.posted if predicate(p)), None)

        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: find() is not None), timeout)
        found = find()
        assert found is not None
        return found

    async def wait_for_response(
        self,
        predicate: Callable[[dict[str, Any]], bool],
        timeout: float = 5.0,  # noqa: ASYNC109
    ) -> dict[str, Any]:
        """The first ``response_url`` post matching ``predicate``."""
        async with self._changed:
            await asyncio.wait_for(
                self._changed.wait_for(lambda: any(predicate(r) for r in self.responses)), timeout
            )
        return next(r for r in self.responses if predicate(r))

    # -- the Web API -------------------------------------------------------------
    def _next_ts(self) -> str:
        return f"{1700000000 + next(self._ts)}.000100"

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        params = await _params(request)
        self.calls.append((method, params))
        auth = request.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ").strip() if auth else str(params.get("token", ""))
        if not token:
            return web.json_response({"ok": False, "error": "not_authed"})
        if token != self.bot_token:
            return web.json_response({"ok": False, "error": "invalid_auth"})
        faults = self._faults.get(method)
        if faults:
            status = faults.pop(0)
            headers = {"Retry-After": "0"} if status == 429 else None
            err = "ratelimited" if status == 429 else "internal_error"
            return web.json_response({"ok": False, "error": err}, status=status, headers=headers)
        handler = getattr(self, "_m_" + method.replace(".", "_"), None)
        if handler is None:
            return web.json_response({"ok": False, "error": "unknown_method"})
        body = await handler(params)
        return web.json_response({"ok": True, **body}) if "error" not in body else web.json_response(body)

    async def _m_auth_test(self, p: dict[str, Any]) -> dict[str, Any]:
        return {
            "url": "https://sandbox.slack.com/",
            "team": "Sandbox",
            "user": "concierge",
            "team_id": self.team_id,
            "user_id": self.bot_user_id,
            "bot_id": "B0SANDBOX",
            "is_enterprise_install": False,
        }

    async def _m_chat_postMessage(self, p: dict[str, Any]) -> dict[str, Any]:
        if not p.get("channel"):
            return {"ok": False, "error": "channel_not_found"}
        posted = Posted(
            method="postMessage",
            channel=str(p["channel"]),
            ts=self._next_ts(),
            text=str(p.get("text") or ""),
            thread_ts=p.get("thread_ts") or None,
            blocks=_blocks(p.get("blocks")),
        )
        await self._record(posted)
        return {"channel": posted.channel, "ts": posted.ts, "message": {"text": posted.text, "ts": posted.ts}}

    async def _m_chat_postEphemeral(self, p: dict[str, Any]) -> dict[str, Any]:
        if not p.get("channel") or not p.get("user"):
            return {"ok": False, "error": "invalid_arguments"}  # Slack needs both
        posted = Posted("ephemeral", str(p.get("channel")), self._next_ts(), str(p.get("text") or ""))
        posted.thread_ts = p.get("thread_ts") or None
        posted.user = str(p["user"])
        await self._record(posted, keep=False)
        return {"message_ts": posted.ts}

    async def _m_chat_update(self, p: dict[str, Any]) -> dict[str, Any]:
        key = (str(p.get("channel")), str(p.get("ts")))
        old = self._messages.get(key)
        if old is None:
            return {"ok": False, "error": "message_not_found"}
        posted = Posted(
            "update", old.channel, old.ts, str(p.get("text") or ""), old.thread_ts, _blocks(p.get("blocks"))
        )
        await self._record(posted)
        return {"channel": posted.channel, "ts": posted.ts, "text": posted.text}

    async def _m_files_getUploadURLExternal(self, p: dict[str, Any]) -> dict[str, Any]:
        if not p.get("filename") or not p.get("length"):
            return {"ok": False, "error": "invalid_arguments"}
        file_id = f"F{next(self._ids):08d}"
        self._uploads[file_id] = {"filename": p["filename"], "length": int(p["length"]), "content": None}
        return {"upload_url": f"{self.root}/upload/{file_id}", "file_id": file_id}

    async def _upload(self, request: web.Request) -> web.Response:
        up = self._uploads.get(request.match_info["file_id"])
        if up is None:
            return web.Response(status=404, text="unknown upload")
        up["content"] = await request.read()
        return web.Response(text=f"OK - {len(up['content'])}")

    async def _m_files_completeUploadExternal(self, p: dict[str, Any]) -> dict[str, Any]:
        files = p.get("files")
        items = json.loads(files) if isinstance(files, str) else files or []
        out = []
        for item in items:
            up = self._uploads.get(item.get("id", ""))
            if up is None or up["content"] is None:
                return {"ok": False, "error": "file_not_found"}
            out.append(
                {"id": item["id"], "title": item.get("title") or up["filename"], "name": up["filename"]}
            )
            if p.get("channel_id"):
                posted = Posted(
                    method="file",
                    channel=str(p["channel_id"]),
                    ts=self._next_ts(),
                    text=str(p.get("initial_comment") or ""),
                    thread_ts=p.get("thread_ts") or None,
                    file={"filename": up["filename"], "title": item.get("title"), "content": up["content"]},
                )
                await self._record(posted)
        return {"files": out}

    async def _response_url(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.responses.append({"rid": request.match_info["rid"], **body})
        async with self._changed:
            self._changed.notify_all()
        return web.Response(text="ok")

    async def _record(self, posted: Posted, *, keep: bool = True) -> None:
        if keep:
            self._messages[(posted.channel, posted.ts)] = posted
        self.posted.append(posted)
        async with self._changed:
            self._changed.notify_all()


async def _params(request: web.Request) -> dict[str, Any]:
    params: dict[str, Any] = dict(request.query)
    if request.can_read_body:
        if request.content_type == "application/json":
            params.update(await request.json())
        elif request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
            params.update({k: v for k, v in (await request.post()).items() if isinstance(v, str)})
    return params


def _blocks(raw: Any) -> list[dict[str, Any]]:
    if isinstance(raw, str):
        return list(json.loads(raw))
    return list(raw or [])
