"""A Pipecat phone bot built as Pipecat's Twilio example builds one, for ``bench.compare``.

Runs in ``.venv-peer`` (``make bench-peer``), never in ours: it imports nothing from this repository.
The bench gives it a JSON spec (``--spec``): the sandbox's base URLs and keys, the system prompt
and tool schemas our product would use for the same errand, and which STT to run (``nova`` or
``flux``). It prints ``{"port": N}`` on stdout once it listens, ``{"ended": CALL_SID}`` when a
call is over and its booking written, and stops at end of stdin.

Shape (Pipecat's ``twilio-chatbot/outbound`` example): a FastAPI app with ``POST /twiml``
(answers ``<Connect><Stream url=.../ws>``) and ``/ws`` (the media stream); per call one pipeline
``transport.input() → STT → user aggregator → LLM → TTS → transport.output() → assistant
aggregator`` on ``FastAPIWebsocketTransport`` with ``TwilioFrameSerializer``, 8 kHz in and out,
all calls in this one process, as the example's ``server.py`` runs them. Every deviation from the
example is listed, with its reason, in ``bench/peers/README.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

import aiohttp
import uvicorn
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import HTMLResponse
from loguru import logger
from pipecat.adapters.llm.schemas.function_schema import FunctionSchema
from pipecat.adapters.llm.schemas.tools_schema import ToolsSchema
from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.frames.frames import EndWorkerFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMContextAggregatorPair,
    LLMUserAggregatorParams,
)
from pipecat.processors.frame_processor import FrameDirection
from pipecat.runner.utils import parse_telephony_websocket
from pipecat.serializers.twilio import TwilioFrameSerializer
from pipecat.services.anthropic.llm import AnthropicLLMService
from pipecat.services.deepgram.flux.stt import DeepgramFluxSTTService
from pipecat.services.deepgram.stt import DeepgramSTTService
from pipecat.services.deepgram.tts import DeepgramTTSService
from pipecat.services.llm_service import FunctionCallParams
from pipecat.transports.websocket.fastapi import FastAPIWebsocketParams, FastAPIWebsocketTransport
from pipecat.workers.runner import WorkerRunner

SILENT = frozenset((0x7F, 0xFF))  # µ-law zero (both signs)


class SandboxSpeechSileroVAD(SileroVADAnalyzer):
    """Silero VAD that also hears the sandbox's synthetic speech.

    The sandbox callee speaks bytes that carry their own text (``sandbox/speech.py``), not a human
    voice; Silero's network scores them as non-speech (checked: every frame QUIET). A bot whose VAD
    never fires would wait for timeouts a real call never hits, so a non-silent buffer counts as
    voice. The model still runs on every buffer, so its CPU cost is the real one.
    """

    def voice_confidence(self, buffer: bytes) -> float:
        confidence = super().voice_confidence(buffer)
        return 1.0 if any(abs(s) > 64 for s in memoryview(buffer).cast("h")) else confidence


class Tools:
    """The product's calendar tools over the sandbox Graph, answered in the product's words."""

    def __init__(self, spec: dict[str, Any], http: aiohttp.ClientSession) -> None:
        self.graph = spec["graph_base_url"].rstrip("/") + "/users/" + spec["graph_user_id"]
        self.headers = {"Authorization": f"Bearer {spec['graph_token']}"}
        self.tz = spec["business_tz"]
        self.http = http
        self.booking: dict[str, Any] | None = None

    async def _busy(self, start: str, end: str) -> bool:
        body = {
            "Schedules": [self.graph.rsplit("/", 1)[1]],
            "StartTime": {"dateTime": start, "timeZone": self.tz},
            "EndTime": {"dateTime": end, "timeZone": self.tz},
            "AvailabilityViewInterval": 30,
        }
        async with self.http.post(f"{self.graph}/calendar/getSchedule", json=body, headers=self.headers) as r:
            r.raise_for_status()
            data = await r.json()
        return any(item.get("scheduleItems") for item in data.get("value", []))

    async def check_availability(self, params: FunctionCallParams) -> None:
        a = params.arguments
        head = f"Slot {a['start']}–{a['end'][-5:]} ({self.tz}):"
        if await self._busy(a["start"], a["end"]):
            await params.result_callback(f"{head} verdict: DOES NOT FIT. The person is not free then.")
        else:
            await params.result_callback(f"{head} verdict: FITS.")

    async def confirm_booking(self, params: FunctionCallParams) -> None:
        a = params.arguments
        if self.booking is not None or await self._busy(a["start"], a["end"]):
            await params.result_callback("REFUSED: the person is busy then. Ask for another time.")
            return
        # Recorded now, written to the calendar once the call is over, as our dispatcher does: the
        # bench's concurrent calls share one sandbox calendar and are all offered the same slot.
        self.booking = {
            "subject": a.get("service", "appointment"),
            "start": {"dateTime": a["start"], "timeZone": self.tz},
            "end": {"dateTime": a["end"], "timeZone": self.tz},
        }
        await params.result_callback(
            f"CONFIRMED: {a.get('service')} on {a['start']}–{a['end'][-5:]} ({self.tz}). "
            "Confirm the details with the callee, then end the call as booked."
        )

    async def write_booking(self) -> None:
        """The confirmed booking as a calendar event, once, when the call is over."""
        event, self.booking = self.booking, None
        if event is not None:
            async with self.http.post(f"{self.graph}/events", json=event, headers=self.headers) as r:
                r.raise_for_status()

    async def send_dtmf(self, params: FunctionCallParams) -> None:
        await params.result_callback(f"Pressed {params.arguments.get('digits', '')}.")

    async def end_call(self, params: FunctionCallParams) -> None:
        # Pipecat's way to hang up from a tool: end the pipeline after what is queued has played;
        # the serializer's auto hang-up then ends the call over Twilio's REST API.
        await params.result_callback("Call ended.")
        await params.llm.push_frame(EndWorkerFrame(), FrameDirection.UPSTREAM)


def tools_schema(spec: dict[str, Any]) -> ToolsSchema:
    """The product's Anthropic tool definitions as Pipecat ``FunctionSchema``s."""
    return ToolsSchema(
        standard_tools=[
            FunctionSchema(
                name=t["name"],
                description=t["description"],
                properties=t["input_schema"].get("properties", {}),
                required=t["input_schema"].get("required", []),
            )
            for t in spec["tools"]
        ]
    )


async def run_bot(websocket: WebSocket, spec: dict[str, Any], http: aiohttp.ClientSession) -> None:
    """One call: Pipecat's pipeline on this media stream."""
    _, call_data = await parse_telephony_websocket(websocket)
    serializer = TwilioFrameSerializer(
        stream_sid=call_data["stream_id"],
        call_sid=call_data["call_id"],
        account_sid=spec["twilio_account_sid"],
        auth_token=spec["twilio_auth_token"],
        base_url=spec["twilio_base_url"],
    )
    transport = FastAPIWebsocketTransport(
        websocket=websocket,
        params=FastAPIWebsocketParams(
            audio_in_enabled=True, audio_out_enabled=True, add_wav_header=False, serializer=serializer
        ),
    )
    key = spec["deepgram_api_key"]
    if spec["stt"] == "flux":
        stt: Any = DeepgramFluxSTTService(api_key=key, url=spec["deepgram_ws_url"].rstrip("/") + "/v2/listen")
    else:
        stt = DeepgramSTTService(api_key=key, base_url=spec["deepgram_ws_url"])
    tts = DeepgramTTSService(
        api_key=key,
        base_url=spec["deepgram_ws_url"],
        settings=DeepgramTTSService.Settings(voice=spec["tts_voice"]),
    )
    llm = AnthropicLLMService(
        api_key=spec["anthropic_api_key"],
        settings=AnthropicLLMService.Settings(model=spec["model"], system_instruction=spec["system_prompt"]),
    )
    tools = Tools(spec, http)
    for name in ("check_availability", "confirm_booking", "send_dtmf", "end_call"):
        llm.register_function(name, getattr(tools, name))
    context = LLMContext(tools=tools_schema(spec))
    user_aggregator, assistant_aggregator = LLMContextAggregatorPair(
        context, user_params=LLMUserAggregatorParams(vad_analyzer=SandboxSpeechSileroVAD())
    )
    pipeline = Pipeline(
        [transport.input(), stt, user_aggregator, llm, tts, transport.output(), assistant_aggregator]
    )
    worker = PipelineWorker(
        pipeline,
        params=PipelineParams(
            audio_in_sample_rate=8000,
            audio_out_sample_rate=8000,
            enable_metrics=True,
            enable_usage_metrics=True,
        ),
    )

    @transport.event_handler("on_client_disconnected")
    async def on_client_disconnected(transport: Any, client: Any) -> None:
        await worker.cancel()

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    try:
        await runner.run()
    finally:
        await tools.write_booking()
        print(json.dumps({"ended": call_data["call_id"]}), flush=True)  # the bench counts these


def build_app(spec: dict[str, Any], port_box: list[int], http: aiohttp.ClientSession) -> FastAPI:
    app = FastAPI()

    @app.post("/twiml")
    async def twiml(request: Request) -> HTMLResponse:
        ws_url = f"ws://127.0.0.1:{port_box[0]}/ws"
        stream = f'<Connect><Stream url="{ws_url}"/></Connect>'
        body = f'<?xml version="1.0" encoding="UTF-8"?><Response>{stream}</Response>'
        return HTMLResponse(content=body, media_type="application/xml")

    @app.websocket("/ws")
    async def websocket_endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            await run_bot(websocket, spec, http)
        except Exception as e:  # as the example: log, close
            logger.error(f"Error in WebSocket endpoint: {e!r}")
            await websocket.close()

    return app


async def serve(spec: dict[str, Any]) -> None:
    os.environ["ANTHROPIC_BASE_URL"] = spec["anthropic_base_url"]  # the SDK's own base-URL variable
    port_box = [0]
    http = aiohttp.ClientSession()  # the tools' Graph client, shared by the calls
    app = build_app(spec, port_box, http)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            await task
            return
        await asyncio.sleep(0.02)
    port_box[0] = server.servers[0].sockets[0].getsockname()[1]
    print(json.dumps({"port": port_box[0], "pid": os.getpid()}), flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while await reader.readline():
        pass
    server.should_exit = True
    await task
    await http.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--spec", required=True, help="JSON file written by bench.compare")
    p.add_argument("--log-level", default="WARNING")
    args = p.parse_args()
    logger.remove()
    logger.add(sys.stderr, level=args.log_level)
    with open(args.spec) as f:
        spec = json.load(f)
    asyncio.run(serve(spec))


if __name__ == "__main__":
    main()
