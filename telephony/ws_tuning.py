"""Websocket tuning for the Deepgram sockets (audio out every 20 ms per call).

The Deepgram SDK opens its sockets with ``websockets``' defaults, which offer permessage-deflate,
and gives no way to turn it off. Deflating µ-law audio saves almost nothing (it is already
companded noise to zlib) yet costs ~30 µs of CPU per 20 ms frame here and as much again to inflate
at the other end — about a sixth of the per-frame cost of a call. RFC 7692 lets a sender send any
message uncompressed (RSV1 clear) on a deflate-enabled connection, so we stop compressing what we
send and still inflate what Deepgram sends.
"""

from __future__ import annotations

from typing import Any

from websockets.extensions.permessage_deflate import PerMessageDeflate
from websockets.frames import Frame


def _as_is(frame: Frame) -> Frame:
    return frame


def send_uncompressed(conn: Any) -> bool:
    """Stop deflating outgoing messages of an SDK socket client; True if it was compressing.

    Reaches for the SDK client's websocket (``_websocket``) defensively: should a future SDK
    rename it, nothing changes but the CPU cost.
    """
    ws = getattr(conn, "_websocket", None)
    changed = False
    for ext in getattr(ws, "extensions", None) or ():
        if isinstance(ext, PerMessageDeflate):
            ext.encode = _as_is  # type: ignore[method-assign]
            changed = True
    return changed
