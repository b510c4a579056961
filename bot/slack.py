"""The Slack front end (slack-bolt): ``/call``, thread replies, buttons.

A slash command has no thread, so after acking within Slack's 3 seconds
("On it…") the bot posts a parent message in the channel and keeps the whole
errand — questions, confirmation, progress and result — threaded under its
``ts``. Requests reach ``POST /slack/events`` in our own aiohttp app through
Bolt's aiohttp adapter, which checks the ``v0`` signature and its 5-minute
timestamp window before any listener runs. Socket Mode is offered for
installs without a public URL.

Every node of a cluster can take Slack's requests: what a listener touches is in the
database, and an event Slack delivers again (its retry after 3 seconds without an ack
may reach another node) is acknowledged and dropped when any node has seen its
``event_id`` (``seen``).
"""

from __future__ import annotations

import logging
import re
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncRespond
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_bolt.response import BoltResponse
from slack_sdk.errors import SlackApiError
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient

from bot import render
from bot.allow import AllowList
from bot.flow import Button, ChatFlow, Out
from bot.webbody import BodyTooLarge, read_body, too_large
from storage.models import ChatOrigin, Platform

log = logging.getLogger(__name__)

EVENTS_PATH = "/slack/events"
MAX_BODY = 1 << 20
ACTION_RE = re.compile(r"^errand_")
#: The signing secret of each Bolt app built here, so the route can verify raw bytes first.
_VERIFIERS: weakref.WeakKeyDictionary[AsyncApp, SignatureVerifier] = weakref.WeakKeyDictionary()


def blocks(out: Out) -> list[dict[str, Any]]:
    """Block Kit for one message: the text, then its buttons (values carry the flow's data)."""
    result: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "plain_text", "text": out.text[:2900]}}
    ]
    if out.buttons:
        result.append(
            {"type": "actions", "block_id": "errand", "elements": [_button(b) for b in out.buttons]}
        )
    return result


def _button(b: Button) -> dict[str, Any]:
    el: dict[str, Any] = {
        "type": "button",
        "text": {"type": "plain_text", "text": b.label},
        "action_id": f"errand_{b.data.partition(':')[0]}_{b.label.lower().replace(' ', '_')}",
        "value": b.data,
    }
    if b.style:
        el["style"] = b.style
    return el


def thread_key(channel: str, thread_ts: str) -> str:
    return f"sl:{channel}:{thread_ts}"


def build_slack_app(
    *,
    bot_token: str,
    signing_secret: str,
    flow: ChatFlow,
    allow: AllowList,
    api_base_url: str = "https://slack.com/api/",
    seen: Callable[[str], Awaitable[bool]] | None = None,
) -> AsyncApp:
    """The Bolt app with the ``/call`` command, thread replies and button actions.

    Args:
        seen: when given, marks an event id seen and says whether it is the first time on any
            node; an event seen before is acknowledged without running a listener.
    """
    client = AsyncWebClient(token=bot_token, base_url=api_base_url)
    app = AsyncApp(signing_secret=signing_secret, client=client)
    _VERIFIERS[app] = SignatureVerifier(signing_secret)

    if seen is not None:
        first_time = seen

        @app.middleware
        async def once(
            body: dict[str, Any],
            response: BoltResponse,
            next: Callable[[], Awaitable[None]],  # noqa: A002 (Bolt passes arguments by name)
        ) -> BoltResponse:
            event_id = body.get("event_id") if body.get("type") == "event_callback" else None
            if isinstance(event_id, str) and event_id and not await first_time(f"sl:{event_id}"):
                log.info("slack event %s already handled", event_id)
                return BoltResponse(status=200, body="")
            await next()
            return response  # what the request gets if no listener matches, as without this middleware

    async def post(client: AsyncWebClient, channel: str, thread_ts: str, out: Out) -> None:
        await client.chat_postMessage(channel=channel, thread_ts=thread_ts, text=out.text, blocks=blocks(out))

    @app.command("/call")
    async def on_call(
        ack: AsyncAck, command: dict[str, Any], client: AsyncWebClient, respond: AsyncRespond
    ) -> None:
        user, team, channel = command.get("user_id"), command.get("team_id"), command.get("channel_id", "")
        text = (command.get("text") or "").strip()
        if not allow.slack(user, team):
            await ack(render.NOT_ALLOWED)
            return
        if not text:
            await ack(render.HELP)
            return
        await ack(render.ACK)
        try:
            parent = await client.chat_postMessage(channel=channel, text=f"<@{user}> asked me to: {text}")
        except SlackApiError as e:
            log.warning("cannot post in %s: %s", channel, e.response.get("error"))
            await respond(f"I can't post in this channel ({e.response.get('error')}). Invite me first.")
            return
        ts = str(parent["ts"])
        origin = ChatOrigin(Platform.SLACK, chat_id=channel, user_id=str(user), thread_id=ts, team_id=team)
        await post(client, channel, ts, await flow.request(thread_key(channel, ts), origin, text))

    @app.event("message")
    async def on_message(event: dict[str, Any], body: dict[str, Any], client: AsyncWebClient) -> None:
        thread_ts, channel = event.get("thread_ts"), event.get("channel", "")
        if event.get("subtype") or event.get("bot_id") or not thread_ts:
            return
        key = thread_key(channel, thread_ts)
        if not await flow.has_draft(key):
            return
        user, team = event.get("user"), body.get("team_id")
        if not allow.slack(user, team):
            await post(client, channel, thread_ts, Out(render.NOT_ALLOWED))
            return
        origin = ChatOrigin(
            Platform.SLACK, chat_id=channel, user_id=str(user), thread_id=thread_ts, team_id=team
        )
        out = await flow.follow_up(key, origin, event.get("text") or "")
        if out is None:
            return
        if out.private:
            # Only the writer sees why their words changed nothing; the thread stays the owner's.
            await client.chat_postEphemeral(
                channel=channel, user=str(user), thread_ts=thread_ts, text=out.text
            )
        else:
            await post(client, channel, thread_ts, out)

    @app.action(ACTION_RE)
    async def on_button(
        ack: AsyncAck,
        body: dict[str, Any],
        action: dict[str, Any],
        client: AsyncWebClient,
        respond: AsyncRespond,
    ) -> None:
        await ack()
        user = (body.get("user") or {}).get("id")
        team = (body.get("team") or {}).get("id") or (body.get("user") or {}).get("team_id")
        if not allow.slack(user, team):
            await respond(text=render.NOT_ALLOWED, response_type="ephemeral", replace_original=False)
            return
        pressed = await flow.press(str(user), str(action.get("value") or ""))
        channel = (body.get("channel") or {}).get("id", "")
        message = body.get("message") or {}
        ts = str(message.get("ts", ""))
        thread_ts = str(message.get("thread_ts") or ts)
        if pressed.notice:
            await respond(text=pressed.notice, response_type="ephemeral", replace_original=False)
        if pressed.edit is not None:
            await client.chat_update(
                channel=channel, ts=ts, text=pressed.edit.text, blocks=blocks(pressed.edit)
            )
        if pressed.reply is not None:
            await post(client, channel, thread_ts, pressed.reply)

    @app.error
    async def on_error(error: Exception) -> None:
        log.error("slack listener failed", exc_info=error)

    return app


def add_slack_routes(web_app: web.Application, bolt_app: AsyncApp, *, path: str = EVENTS_PATH) -> None:
    """Mount Bolt at ``path`` in our aiohttp app.

    The signature is checked here on the raw bytes *before* anything parses the
    body (Bolt's adapter builds its request — JSON and form parsing included —
    before Bolt's own check runs, so junk could raise there), and a malformed
    timestamp is a 401 rather than the ``int()`` error inside ``slack_sdk``.
    Bolt checks the signature again; a body it cannot read is a 400.
    """
    verifier = _VERIFIERS.get(bolt_app)

    async def handle(request: web.Request) -> web.Response:
        timestamp = request.headers.get("X-Slack-Request-Timestamp", "")
        signature = request.headers.get("X-Slack-Signature", "")
        if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12) or not signature:
            return web.Response(status=401, text="invalid request")
        try:
            raw = await read_body(request, MAX_BODY)
        except BodyTooLarge:
            return too_large()
        try:
            text = raw.decode("utf-8")  # Slack sends UTF-8; slack_sdk would raise on anything else
        except UnicodeDecodeError:
            return web.Response(status=400, text="bad request")
        if verifier is not None and not verifier.is_valid(
            body=text, timestamp=timestamp, signature=signature
        ):
            return web.Response(status=401, text="invalid request")
        try:
            bolt_request = AsyncBoltRequest(body=text, query=request.query_string, headers=request.headers)  # type: ignore[arg-type]
        except (ValueError, TypeError, KeyError, AttributeError, IndexError, RecursionError) as e:
            log.warning("slack request unreadable (%s)", type(e).__name__)
            return web.Response(status=400, text="bad request")
        return await to_aiohttp_response(await bolt_app.async_dispatch(bolt_request))

    web_app.router.add_post(path, handle)


async def start_socket_mode(bolt_app: AsyncApp, app_token: str) -> AsyncSocketModeHandler:
    """Connect over Socket Mode (``SLACK_APP_TOKEN``, ``xapp-…``); close with ``close_async()``."""
    handler = AsyncSocketModeHandler(bolt_app, app_token)
    await handler.connect_async()
    return handler
