"""Did a create whose answer never came place a call? Asked before anything is dialled again.

Twilio has no idempotency key for calls: a create that timed out, lost its
connection, or whose process died before the CallSid was stored may have placed
a call that rings all the same. Dialling again would ring the business twice
(the first call to dead air). So the attempt's call is looked for, in order:

1. the CallSid its ``initiated`` callback recorded (the callback URLs carry the
   attempt's nonce, see ``telephony.webhooks``);
2. Twilio's Calls list: our calls to the number since just before the attempt's
   create (``JobMeta.dial_started_at``), not attributed to any errand's attempt.

An attempt that stored no nonce never sent its create: there is nothing to find.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from storage.errors import ProviderError
from storage.jobs import JobStore
from storage.models import Job
from storage.ports import CallPlacer

log = logging.getLogger(__name__)

#: Twilio's clock and ours may disagree a little; look this far before the attempt's start.
CLOCK_SKEW = timedelta(seconds=30)


@dataclass(frozen=True)
class Lookup:
    """What became of the attempt's create.

    Attributes:
        call_sid: the call it placed; ``None`` if none was found.
        known: ``False`` when the provider could not be asked: the call may exist.
    """

    call_sid: str | None
    known: bool = True


UNKNOWN = Lookup(None, known=False)


async def find_lost_call(store: JobStore, placer: CallPlacer, job: Job) -> Lookup:
    """Look for the call of ``job``'s current attempt (see the module docstring)."""
    job = await store.get(job.id)
    if job.current_call_sid is not None:
        return Lookup(job.current_call_sid)
    started = job.meta.dial_started_at
    if job.dial_nonce is None or started is None:
        return Lookup(None)  # the create was never sent
    try:
        found = await placer.find_calls(job.request.phone, started_after=started - CLOCK_SKEW)
    except ProviderError as e:
        log.warning("errand %s: cannot list calls to look for its lost call (%s)", job.id, e)
        return UNKNOWN
    for call in found:
        if await store.find_by_call_sid(call.sid) is None:  # not another attempt's call
            log.info("errand %s: its create's answer was lost but call %s exists", job.id, call.sid)
            return Lookup(call.sid)
    job = await store.get(job.id)  # the callback may have recorded it meanwhile
    return Lookup(job.current_call_sid)
