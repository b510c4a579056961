"""The media-stream side of a sandbox Twilio call: one audio clock for both directions.

Why one clock: every 20 ms / pace (``sandbox.frame_clock`` steps every call of the process) the
pump plays up to 160 bytes of the app's buffered audio to the callee and sends the callee's next
160-byte frame to the app. Marks, the callee script, the time limit and the stream drop all count
these frames, so results never depend on pace or load.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
from typing import TYPE_CHECKING, Any

import aiohttp

from sandbox.callee import FRAME_BYTES

if TYPE_CHECKING:
    from sandbox.twilio_call import CallRunner

_DROP_GRACE_SECONDS = 2.0


def _new_stream_sid() -> str:
    import secrets

    return "MZ" + secrets.token_hex(16)


class MediaPump:
    """The stream websocket: one task receives the app's messages, the pump runs the audio clock."""

    def __init__(self, runner: CallRunner, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.runner = runner
        self.call = runner.call
        self.ws = ws
        self.stream_sid = _new_stream_sid()
        self.buffer = bytearray()
        self.played = 0  # bytes of app audio played so far
        self.enqueued = 0  # bytes of app audio received so far (after clears: as if played)
        self.marks: list[tuple[int, str]] = []
        self.seq = 0
        self.app_closed = False
        self.time_limit = float(self.call.param("TimeLimit") or 14400)
        self.drop_after = self.call.program.drop_stream_after

    async def send(self, message: dict[str, Any]) -> None:
        self.seq += 1
        message = {"event": message.pop("event"), "sequenceNumber": str(self.seq), **message}
        if message["event"] == "connected":
            del message["sequenceNumber"]
            self.seq -= 1
        await self.ws.send_str(json.dumps(message))

    async def echo_mark(self, name: str) -> None:
        """Echo a played mark; an app that went away (crash, drop) just ends the stream."""
        self.call.marks_echoed.append(name)
        try:
            await self.send({"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name}})
        except (ConnectionError, aiohttp.ClientError):
            self.app_closed = True

    async def run(self) -> None:
        call = self.call
        await self.send({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        await self.send({
            "event": "start", "streamSid": self.stream_sid,
            "start": {
                "accountSid": call.account_sid, "streamSid": self.stream_sid, "callSid": call.sid,
                "tracks": ["inbound"], "customParameters": dict(call.stream_params),
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            },
        })  # fmt: skip
        receiver = self.runner.spawn(self._receive())
        dropped = await self.runner.clock.play(self)
        if dropped:
            await self._abort()
            receiver.cancel()
            call.ended_by = (
                "api" if await self.runner.wait_hangup(_DROP_GRACE_SECONDS / self.runner.pace) else "drop"
            )
            return
        if not self.app_closed:
            with contextlib.suppress(ConnectionError, aiohttp.ClientError):
                await self.send({
                    "event": "stop", "streamSid": self.stream_sid,
                    "stop": {"accountSid": call.account_sid, "callSid": call.sid},
                })  # fmt: skip
            await self.ws.close()
        receiver.cancel()

    async def _abort(self) -> None:
        """Network loss: the TCP connection goes away without a close frame or ``stop``."""
        conn = self.ws._conn  # aiohttp exposes no public abort for client websockets
        if conn is not None and conn.transport is not None:
            conn.transport.abort()
        with contextlib.suppress(Exception):
            await self.ws.close()

    async def step(self) -> bool | None:
        """One frame of the audio clock (``FrameClock``): None to go on, else True if the stream
        was dropped (network loss) and False if the call ended another way."""
        call, callee = self.call, self.call.callee
        played = bytes(self.buffer[:FRAME_BYTES])
        del self.buffer[: len(played)]
        self.played += len(played)
        while self.marks and self.marks[0][0] <= self.played:
            await self.echo_mark(self.marks.pop(0)[1])
        frame = callee.tick(played)
        if callee.take_beeped() and call.param("MachineDetection") and call.param("AsyncAmd") == "true":
            self.runner.spawn(self.runner.amd_callback(delay=0.0))  # Twilio reports right after the beep
        for digit in callee.take_pressed():  # keys the callee pressed: Twilio sends events, not tones
            with contextlib.suppress(ConnectionError, aiohttp.ClientError):
                await self.send({
                    "event": "dtmf", "streamSid": self.stream_sid,
                    "dtmf": {"track": "inbound_track", "digit": digit},
                })  # fmt: skip
        if frame is None:
            call.ended_by = "callee"
            return False
        # One formatted string, not a dict through json.dumps: every call sends 50 of these a
        # second (the same message as send() builds; sids and numbers need no escaping).
        payload = binascii.b2a_base64(frame, newline=False).decode("ascii")
        self.seq += 1
        chunk = callee.frames
        message = (
            f'{{"event":"media","streamSid":"{self.stream_sid}","sequenceNumber":"{self.seq}",'
            f'"media":{{"track":"inbound","chunk":"{chunk}","timestamp":"{(chunk - 1) * 20}",'
            f'"payload":"{payload}"}}}}'
        )
        try:
            await self.ws.send_str(message)
        except (ConnectionError, aiohttp.ClientError):
            self.app_closed = True
        # The ear times the wait from here: the frame is on its way to the app.
        call.ear.callee_frame(frame, played=played, said=callee.said[-1] if callee.said else "")
        if self.app_closed:
            call.ended_by = "stream_closed"
            return False
        if self.drop_after is not None and callee.seconds >= self.drop_after:
            return True
        if callee.seconds >= self.time_limit:
            call.ended_by = "time_limit"
            return False
        if call.hangup_requested.is_set():
            call.ended_by = "api"
            return False
        return None

    async def _receive(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            event = data.get("event")
            if event != "media":  # audio is kept as the callee heard it, not as 1,600-byte messages
                self.call.received.append(data)
            if event == "media":
                audio = base64.b64decode(data.get("media", {}).get("payload", ""))
                self.call.ear.assistant_audio(audio)
                self.buffer += audio
                self.enqueued += len(audio)
            elif event == "mark":
                name = str(data.get("mark", {}).get("name", ""))
                if self.enqueued <= self.played:
                    await self.echo_mark(name)
                else:
                    self.marks.append((self.enqueued, name))
            elif event == "clear":
                self.call.clears += 1
                self.buffer.clear()
                self.enqueued = self.played
                pending, self.marks = self.marks, []
                for _, name in pending:
                    await self.echo_mark(name)
        self.app_closed = True
