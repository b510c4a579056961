"""The composition root: one aiohttp application with every route, the dispatcher and the chat bots.

``Concierge`` builds every component from ``Settings`` — each outside
service through its official SDK, pointed at the base URL the settings give —
and owns their lifetimes. ``concierge serve`` runs it until SIGINT/SIGTERM;
``concierge serve --sandbox`` and ``concierge demo`` run the same object
against ``sandbox/``, handing it the settings and the Graph credential the
sandbox needs (see the top-level ``demo`` package, which the product never imports).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import anthropic
from aiohttp import web
from azure.core.credentials_async import AsyncTokenCredential
from slack_bolt.async_app import AsyncApp

from agent.calendar import GraphCalendar, build_graph_client
from agent.conversation import ClaudeAgent, unknown_caller_message
from agent.limits import CallLimits
from agent.llm import build_anthropic
from agent.prompts import DEFAULT_TEMPLATE, load_prompt_template
from bot import slack as slack_bot
from bot import telegram as telegram_bot
from bot.allow import AllowList
from bot.flow import ChatFlow
from bot.intake import ClaudeExtractor, Intake
from bot.notify import ChatNotifier
from bot.phone import blocked_e164
from concierge import warmup
from concierge.clock import Clock, SystemClock
from concierge.dispatcher import Dispatcher
from concierge.live_ask import PendingQuestions
from concierge.settings import REQUIRED, Settings
from storage import text
from storage.chat_updates import SeenUpdates
from storage.db import Database, Singleton, open_database
from storage.drafts import DraftStore
from storage.errors import ConfigError
from storage.jobs import JobStore
from storage.live_questions import LiveQuestionStore
from storage.models import CallOutcome, CallRequest, Job
from storage.numbers import DoNotCall
from storage.redact import Redactor, secret_variants
from storage.redact import install as install_redaction
from telephony.frame_stats import MetricsSink
from telephony.session import CallSession
from telephony.speech import SpeechClient
from telephony.turns import SessionConfig
from telephony.twilio_rest import TwilioCallPlacer
from telephony.webhooks import TwilioWebhooks

log = logging.getLogger(__name__)

#: Components a server cannot place a single call without.
CALL_COMPONENTS = ("twilio", "deepgram", "anthropic", "graph")
#: The cluster-wide lock of the one node that long-polls Telegram (``Database.try_singleton``).
TELEGRAM_POLLING = "telegram-polling"
#: The lock of the node that Telegram's webhook URL points at (webhook mode).
TELEGRAM_WEBHOOK = "telegram-webhook"
#: Seconds between a node's tries to become the Telegram poller while another node is.
TELEGRAM_POLL_RETRY = 5.0


@dataclass(frozen=True)
class Listening:
    """Where the server ended up listening."""

    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def bind(host: str, port: int) -> socket.socket:
    """Bind the listening socket first, so ``PUBLIC_BASE_URL`` can name a port chosen by the OS."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


class Concierge:
    """Everything the server runs, built from settings.

    Args:
        settings: configuration (``settings.public_base_url`` must be final).
        clock: wall clock for the queue and the dispatcher (the demo fast-forwards it).
        graph_credential: token source for Microsoft Graph; ``None`` uses the app-only
            client-secret credential from settings. The sandbox's token is injected here
            by whoever starts the sandbox, so the product knows nothing of it.
        owner: lease name of this server; ``None``: ``settings.node`` (``NODE_ID``). Unique
            among the nodes sharing the database, stable across restarts so a restart adopts
            its own unfinished calls.
        call_metrics: receives each call's ``CallMetrics`` when it ends (the benchmark subscribes).
        telegram_poll_retry: seconds between tries to take over Telegram long polling while
            another node holds it.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock | None = None,
        graph_credential: AsyncTokenCredential | None = None,
        owner: str | None = None,
        call_metrics: MetricsSink | None = None,
        telegram_poll_retry: float = TELEGRAM_POLL_RETRY,
    ) -> None:
        settings.require(*CALL_COMPONENTS)
        settings.check()  # again: model_copy'd settings (sandbox, demo) skip validation
        if settings.telegram_mode == "webhook" and settings.configured("telegram"):
            if not settings.telegram_webhook_secret:
                raise ConfigError("Telegram webhook mode needs TELEGRAM_WEBHOOK_SECRET")
        self.settings = settings
        self.clock: Clock = clock or SystemClock()
        self.owner = owner or settings.node
        self._graph_credential = graph_credential
        self._call_metrics = call_metrics
        self._telegram_poll_retry = telegram_poll_retry
        #: Long polling or webhook registration, on exactly one node at a time.
        self.tg_leader: telegram_bot.Poller | telegram_bot.WebhookRegistrar | None = None
        self._tg_leading: asyncio.Task[None] | None = None
        self.db: Database | None = None
        self._node_lock: Singleton | None = None
        self.web_app = web.Application(client_max_size=256 * 1024)
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closers: list[Any] = []
        self.listening: Listening | None = None
        self._unredact: Any = None
        # Read now: a missing or broken prompt file (evals only) fails at start-up, not mid-call.
        prompt_file = settings.agent_prompt_file
        self._prompt_template = load_prompt_template(prompt_file) if prompt_file else DEFAULT_TEMPLATE

    # -- building ---------------------------------------------------------------------------

    async def start(self, sock: socket.socket | None = None) -> Listening:
        """Open the database, build every component, start listening and dispatching."""
        s = self.settings
        # First, so nothing below can log a secret: covers every handler configured by now.
        self._unredact = install_redaction(Redactor(log_secrets(s)))
        self.db = await open_database(s.database_url)
        # Two nodes under one name would each take the other's live calls for its own (at
        # start-up a node reconciles the calls leased under its name as left by its last run).
        self._node_lock = await self.db.try_singleton(f"node:{self.owner}")
        if self._node_lock is None:
            await self.db.close()
            self.db = None
            raise ConfigError(
                f"another running node is already named {self.owner!r} on this database:"
                " give each node its own NODE_ID"
            )
        self.store = JobStore(self.db, clock=self.clock.now)
        self.do_not_call = DoNotCall(self.db, clock=self.clock.now)
        await self.do_not_call.seed(blocked_e164(s.blocked_numbers, s.person_region))
        self.llm: anthropic.AsyncAnthropic = build_anthropic(s.anthropic_api_key, s.anthropic_base_url)
        graph = build_graph_client(
            s.graph_tenant_id,
            s.graph_client_id,
            s.graph_client_secret,
            s.graph_base_url,
            credential=self._graph_credential,
        )
        self.calendar = GraphCalendar(graph, s.graph_user_id)
        self.placer = TwilioCallPlacer(
            self.store,
            account_sid=s.twilio_account_sid,
            auth_token=s.twilio_auth_token,
            from_number=s.twilio_from_number,
            public_base_url=s.public_base_url,
            api_base_url=s.twilio_api_base_url,
            max_call_seconds=s.max_call_seconds,
        )
        self.speech = SpeechClient(
            api_key=s.deepgram_api_key,
            http_url=s.deepgram_http_url,
            ws_url=s.deepgram_ws_url,
            stt_model=s.deepgram_stt_model,
            tts_model=s.deepgram_tts_model,
            stt_chunk_ms=s.stt_chunk_ms,
            eot_threshold=s.deepgram_eot_threshold,
            eager_eot_threshold=s.deepgram_eager_eot_threshold,
        )
        self.questions = PendingQuestions(
            self._post_question, LiveQuestionStore(self.db), timeout=s.live_ask_timeout, node=self.owner
        )
        self.seen_updates = SeenUpdates(self.db)
        self.flow = self._build_flow()
        self.tg_app = self._build_telegram() if s.configured("telegram") else None
        self.bolt: AsyncApp | None = self._build_slack() if s.configured("slack") else None
        self.notifier = ChatNotifier(
            self.store,
            telegram_bot=self.tg_app.bot if self.tg_app else None,
            slack_client=self.bolt.client if self.bolt else None,
            person_tz=s.person_timezone,
        )
        self.dispatcher = Dispatcher(
            self.store,
            self.placer,
            self.notifier,
            owner=self.owner,
            clock=self.clock,
            default_hours=s.default_business_hours,
            max_concurrent=s.max_concurrent_calls,
            max_attempts=s.max_attempts,
            lease_seconds=s.lease_seconds,
            retry_backoff=timedelta(minutes=s.retry_backoff_minutes),
            max_queued_per_user=s.max_queued_per_user,
            errands_per_user_per_hour=s.errands_per_user_per_hour,
            max_calls_per_number_per_day=s.max_calls_per_number_per_day,
            on_booked=self._create_event,
            callee_window=s.callee_window,
            do_not_call=self.do_not_call,
            destinations=s.destination_policy,
            queue_poll=timedelta(seconds=s.queue_poll_seconds),
        )
        self.flow.desk = self.dispatcher
        self.session_config = SessionConfig(
            silence_timeout=s.silence_timeout_seconds,
            hold_max=s.hold_max,
            max_call_seconds=float(s.max_call_seconds),
        )
        self.webhooks = TwilioWebhooks(
            self.store,
            self.dispatcher,
            auth_token=s.twilio_auth_token,
            public_base_url=s.public_base_url,
            session_factory=self._new_session,
            placer=self.placer,
            voicemail_message=s.voicemail_message,
            receiver=self.dispatcher,
            unknown_caller_message=unknown_caller_message(s.assistant_name),
            node=self.owner,
        )
        self._add_routes()
        # Before the site listens: the SDKs' first-use costs (msgraph's ~1,000 lazy model imports,
        # anthropic's stream schemas) off the first calls' audio path (concierge.warmup).
        await warmup.warm_up()
        self._runner = web.AppRunner(self.web_app, handle_signals=False, shutdown_timeout=5.0)
        await self._runner.setup()
        sock = sock or bind(s.host, s.port)
        site = web.SockSite(self._runner, sock)
        await site.start()
        host, port = sock.getsockname()[:2]
        self.listening = Listening(host, port)
        await self._start_chats()
        log.info("node %s listening on %s:%d (public %s)", self.owner, host, port, s.public_base_url)
        self._spawn(self.dispatcher.run(), "dispatcher")
        return self.listening

    def _build_telegram(self) -> Any:
        s = self.settings
        return telegram_bot.build_application(
            token=s.telegram_bot_token,
            api_base_url=s.telegram_api_base_url,
            flow=self.flow,
            allow=self.allow,
            webhook=s.telegram_mode == "webhook",
            seen=self.seen_updates.first_time,
        )

    def _build_slack(self) -> AsyncApp:
        s = self.settings
        return slack_bot.build_slack_app(
            bot_token=s.slack_bot_token,
            signing_secret=s.slack_signing_secret,
            flow=self.flow,
            allow=self.allow,
            api_base_url=s.slack_api_base_url,
            seen=self.seen_updates.first_time,
        )

    def _build_flow(self) -> ChatFlow:
        """The chat conversation logic shared by Telegram and Slack.

        The bots need the flow, the notifier needs the bots and the dispatcher needs the
        notifier, so the flow starts with a placeholder desk and gets the dispatcher once
        it exists (before anything can reach the flow: nothing listens yet).
        """
        s = self.settings
        assert self.db is not None, "the database opens first"
        intake = Intake(
            extractor=ClaudeExtractor(self.llm, model=s.anthropic_model),
            person_name=s.person_name,
            person_tz=s.person_timezone,
            region=s.person_region,
            blocked_numbers=s.blocked_numbers,
            destinations=s.destination_policy,
            do_not_call=self.do_not_call,
            clock=self.clock.now,
        )
        self.drafts = DraftStore(self.db, clock=self.clock.now)
        return ChatFlow(
            intake=intake, desk=_LateDesk(), drafts=self.drafts, clock=self.clock.now, live=self.questions
        )

    async def _post_question(self, job: Job, question: str, options: Sequence[str]) -> bool:
        """A live call's question into the errand's thread (the notifier exists by the first call)."""
        return await self.notifier.ask(job, question, options)

    @property
    def allow(self) -> AllowList:
        s = self.settings
        return AllowList.build(
            telegram_users=s.telegram_allowed_users,
            slack_users=s.slack_allowed_users,
            slack_teams=s.slack_allowed_teams,
        )

    def _add_routes(self) -> None:
        self.web_app.router.add_get("/healthz", self._healthz)
        self.webhooks.add_routes(self.web_app)
        if self.bolt is not None:
            slack_bot.add_slack_routes(self.web_app, self.bolt)
        if self.tg_app is not None and self.settings.telegram_mode == "webhook":
            telegram_bot.add_webhook_route(self.web_app, self.tg_app, self.settings.telegram_webhook_secret)

    async def _start_chats(self) -> None:
        s = self.settings
        if self.tg_app is not None:
            if s.telegram_mode == "webhook":
                # Every node serves the route; the one holding the lock registers its URL.
                await telegram_bot.start_webhook_mode(self.tg_app)
                self.tg_leader = telegram_bot.WebhookRegistrar(
                    self.tg_app,
                    functools.partial(self._try_lock, TELEGRAM_WEBHOOK),
                    url=f"{s.public_base_url.rstrip('/')}{telegram_bot.WEBHOOK_PATH}",
                    secret=s.telegram_webhook_secret,
                    retry_every=self._telegram_poll_retry,
                )
                self._tg_leading = self._spawn(self.tg_leader.run(), "telegram-webhook")
            else:
                # Long polling on exactly one node; every node sends (telegram_bot.Poller).
                await telegram_bot.start_processing(self.tg_app)
                self.tg_leader = telegram_bot.Poller(
                    self.tg_app,
                    functools.partial(self._try_lock, TELEGRAM_POLLING),
                    retry_every=self._telegram_poll_retry,
                )
                self._tg_leading = self._spawn(self.tg_leader.run(), "telegram-polling")
        if self.bolt is not None and s.slack_app_token:
            handler = await slack_bot.start_socket_mode(self.bolt, s.slack_app_token)
            self._closers.append(handler.close_async)

    # -- per call ---------------------------------------------------------------------------

    def _new_session(self, job: Job, call_sid: str) -> CallSession:
        agent = ClaudeAgent(
            self.llm,
            model=self.settings.anthropic_model,
            request=with_answers(job),
            calendar=self.calendar,
            assistant_name=self.settings.assistant_name,
            clock=self.clock.now,
            on_booking=functools.partial(self.dispatcher.booking_confirmed, job.id),
            prefetch_calendar=True,  # the session is made while the phone rings: fetch free/busy now
            first_clause_words=4,  # the callee waits for the first clause: ~40 ms of words, not a sentence
            limits=call_limits(self.settings),
            transcript_notice=self.settings.transcript_notice,
            min_lead=timedelta(minutes=self.settings.min_lead_minutes),
            fixed_opening=self.settings.fixed_opening,
            acknowledgements=self.settings.acknowledgements,
            prompt_template=self._prompt_template,
            callback_number=self.settings.twilio_from_number if self.settings.voicemail_message else None,
            called_back=job.meta.inbound_call_sid == call_sid,
            ask=self.questions.asker(job) if self.settings.live_ask_timeout > 0 else None,
        )
        return CallSession(
            job,
            call_sid,
            agent=agent,
            speech=self.speech,
            placer=self.placer,
            config=self.session_config,
            metrics=self._call_metrics,
            on_hold=functools.partial(self.dispatcher.call_on_hold, job.id),
        )

    async def _create_event(self, job: Job, outcome: CallOutcome) -> CallOutcome:
        """After a booked call: the calendar event (idempotent on the job id) and its link."""
        assert outcome.booking is not None, "a booked outcome carries its booking"
        link = await self.calendar.create_event(
            transaction_id=job.id, request=job.request, booking=outcome.booking
        )
        return outcome.with_event_link(link)

    async def _healthz(self, _request: web.Request) -> web.Response:
        assert self.db is not None
        active = await self.store.count_active()
        return web.json_response(
            {
                "ok": True,
                "node": self.owner,
                "active_calls": active,
                "live_sessions": self.webhooks.active_calls(),
            }
        )

    # -- lifetime ---------------------------------------------------------------------------

    async def _try_lock(self, name: str) -> telegram_bot.Held | None:
        assert self.db is not None
        return await self.db.try_singleton(name)

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_log_crash)
        return task

    async def stop(self, *, grace: float = 30.0) -> None:
        """Graceful shutdown: take no new calls, let live calls finish (up to ``grace``), release.

        Calls still running after ``grace`` are hung up and reported as interrupted, so
        their errands go back to the queue instead of being lost.
        """
        if hasattr(self, "dispatcher"):
            self.dispatcher.stop()
        if hasattr(self, "webhooks") and self.webhooks.active_calls():
            log.info("waiting up to %.0f s for %d live call(s)", grace, self.webhooks.active_calls())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await self.webhooks.join()
        if self.tg_leader is not None and self._tg_leading is not None:
            self.tg_leader.stop()  # stops polling / leading and releases the lock for another node
            await asyncio.gather(self._tg_leading, return_exceptions=True)
        tg_app = getattr(self, "tg_app", None)
        if tg_app is not None:
            await telegram_bot.stop(tg_app)
        for close in self._closers:
            with contextlib.suppress(Exception):
                await close()
        if self._runner is not None:
            await self._runner.cleanup()  # on_shutdown: webhooks.close() hangs up what is left
            self._runner = None
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for name in ("placer", "calendar", "llm", "speech"):
            obj = getattr(self, name, None)
            closer = getattr(obj, "aclose", None) or getattr(obj, "close", None)
            if closer is not None:
                with contextlib.suppress(Exception):
                    await closer()
        if self._node_lock is not None:
            await self._node_lock.release()
            self._node_lock = None
        if self.db is not None:
            await self.db.close()
            self.db = None
        if self._unredact is not None:
            self._unredact()
            self._unredact = None


def call_limits(settings: Settings) -> CallLimits:
    """The per-call caps from settings (``MAX_TURNS_PER_CALL`` and friends)."""
    return CallLimits(
        max_turns=settings.max_turns_per_call,
        max_tool_calls_per_round=settings.max_tool_calls_per_round,
        max_tool_calls=settings.max_tool_calls_per_call,
        max_dtmf_presses=settings.max_dtmf_presses_per_call,
    )


def with_answers(job: Job) -> CallRequest:
    """The errand as the next call should know it: with the person's answers to earlier questions.

    Only the person's answers go into the next call's notes (the person's own words in the
    prompt). The question came from the business: written there it would pass callee words off as
    the person's instructions. (The stored request is immutable; ``ErrandDesk.answer`` keeps
    answers in ``JobMeta.user_answers``.)
    """
    answers = job.meta.user_answers
    if not answers:
        return job.request
    lines = [
        f"{job.request.person_name}'s answer to the business's question on an earlier call: "
        f"{text.bounded(a.answer, text.NOTES)}."
        for a in answers
        if a.answer
    ]
    notes = " ".join(filter(None, [job.request.notes, *lines]))
    return dataclasses.replace(job.request, notes=notes)


class _LateDesk:
    """Placeholder desk until the dispatcher exists (the flow is built before it)."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError("the errand desk is not ready yet")


def _log_crash(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("%s crashed", task.get_name(), exc_info=task.exception())


#: Settings whose values never appear in logs (the from-number is masked as a phone number).
_NOT_SECRET = {"TWILIO_FROM_NUMBER", "PUBLIC_BASE_URL"}
_ALSO_SECRET = ("TELEGRAM_WEBHOOK_SECRET", "SLACK_APP_TOKEN")


def log_secrets(settings: Settings) -> list[str]:
    """Every credential value (and the Graph mailbox) in the forms a log line could show them."""
    names = {n for names in REQUIRED.values() for n in names} - _NOT_SECRET | set(_ALSO_SECRET)
    values = [str(getattr(settings, n.lower()) or "") for n in sorted(names)]
    values.append(urlsplit(settings.database_url).password or "")  # a PostgreSQL password
    basic = [(settings.twilio_account_sid, settings.twilio_auth_token)]
    return secret_variants(values, basic_auth=basic)
