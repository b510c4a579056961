"""Right before every dial: do-not-call, destination policy, the callee's local hours; and a
create whose answer was lost is looked for before anything is dialled again."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from dispatcher_harness import harness, local, request

from bot.phone import DestinationPolicy
from concierge.calling_window import DailyWindow
from storage.errors import ProviderConnectionError, ProviderTimeoutError
from storage.models import Booking, CallOutcome, JobState, OutcomeKind
from storage.numbers import DoNotCall
from storage.ports import FoundCall, JobEvent

NY, LA = "America/New_York", "America/Los_Angeles"
MONDAY_8_NY = local(NY, 2026, 6, 8, 8, 0)
MONDAY_9_NY = local(NY, 2026, 6, 8, 9, 0)
MONDAY_8_LA = local(LA, 2026, 6, 8, 8, 0)  # 11:00 in New York
WINDOW = DailyWindow.parse("08:00-21:00")


async def test_a_new_york_business_is_not_called_before_8_in_the_callees_los_angeles(tmp_path: Path) -> None:
    async with harness(tmp_path / "db", MONDAY_8_NY, callee_window=WINDOW) as h:
        job = await h.dispatcher.submit(request(tz=NY))  # +1 415: rings in Los Angeles
        assert job.next_attempt_at == MONDAY_8_LA  # the shop opens at 9 NY = 6 LA: too early
        await h.run_until(MONDAY_9_NY + timedelta(hours=1))
        assert h.placer.calls == []
        await h.run_until(MONDAY_8_LA)
        assert [c.at for c in h.placer.calls] == [MONDAY_8_LA]


async def test_callee_window_closed_at_dial_time_requeues_uncounted(tmp_path: Path) -> None:
    async with harness(tmp_path / "db", MONDAY_9_NY) as h:
        job = await h.dispatcher.submit(request(tz=NY))  # planned without the callee window
        await h.stop()
        h.dispatcher = h.new_dispatcher(callee_window=WINDOW)
        await h.start()
        stored = await h.store.get(job.id)
        assert h.placer.calls == [] and stored.state is JobState.QUEUED
        assert stored.next_attempt_at == MONDAY_8_LA and stored.calls_made == 0


async def test_a_number_put_on_do_not_call_while_queued_is_never_dialled(tmp_path: Path) -> None:
    async with harness(tmp_path / "db", MONDAY_8_NY, start_loop=False) as h:
        dnc = DoNotCall(h.db, clock=h.clock.now)
        h.dispatcher = h.new_dispatcher(do_not_call=dnc)
        job = await h.dispatcher.submit(request(tz=NY, phone="+14155550100"))
        await dnc.add("+14155550100", "asked not to be called")
        await h.start()
        await h.run_until(MONDAY_9_NY + timedelta(hours=1))
        stored = await h.store.get(job.id)
        assert h.placer.calls == []
        assert stored.state is JobState.FAILED and stored.outcome is not None
        assert "do-not-call" in stored.outcome.summary
        assert h.notifier.events(job.id)[-1] is JobEvent.FINISHED


async def test_a_destination_refused_by_policy_at_dial_time_ends_the_errand(tmp_path: Path) -> None:
    policy = DestinationPolicy(countries=frozenset({"GB"}), home_region="GB")
    async with harness(tmp_path / "db", MONDAY_9_NY, destinations=policy) as h:
        job = await h.dispatcher.submit(request(tz=NY))
        await h.idle()
        stored = await h.store.get(job.id)
        assert h.placer.calls == [] and stored.state is JobState.FAILED
        assert stored.outcome is not None and "won't call" in stored.outcome.summary


async def test_lost_create_answer_adopts_the_call_it_placed(tmp_path: Path) -> None:
    async with harness(tmp_path / "db", MONDAY_9_NY, start_loop=False) as h:
        h.placer.store = h.store
        h.placer.errors = [ProviderTimeoutError("twilio create call: timed out", provider="twilio")]
        h.placer.found = [FoundCall("CA" + "e" * 32, "ringing", MONDAY_9_NY)]
        job = await h.dispatcher.submit(request(tz=NY))
        await h.start()
        stored = await h.store.get(job.id)
        assert len(h.placer.calls) == 1 and h.placer.finds == 1
        assert stored.state is JobState.DIALING and stored.current_call_sid == "CA" + "e" * 32


async def test_lost_create_answer_with_no_call_found_is_requeued_uncounted(tmp_path: Path) -> None:
    async with harness(tmp_path / "db", MONDAY_9_NY, start_loop=False) as h:
        h.placer.store = h.store
        h.placer.errors = [ProviderConnectionError("twilio create call: reset", provider="twilio")]
        job = await h.dispatcher.submit(request(tz=NY))
        await h.start()
        stored = await h.store.get(job.id)
        assert len(h.placer.calls) == 1  # looked, found nothing: the claim is given back, uncounted
        assert stored.state is JobState.QUEUED and stored.calls_made == 0
        # ... due after the first retry delay, not at once (a failing provider is not hammered)
        assert stored.next_attempt_at == MONDAY_9_NY + timedelta(minutes=30)
        await h.run_until(MONDAY_9_NY + timedelta(minutes=31))
        stored = await h.store.get(job.id)
        assert len(h.placer.calls) == 2 and stored.attempts == 2 and stored.calls_made == 1


async def test_lost_create_answer_while_twilio_is_unreachable_keeps_the_lease(tmp_path: Path) -> None:
    async with harness(tmp_path / "db", MONDAY_9_NY, start_loop=False) as h:
        h.placer.store = h.store
        h.placer.errors = [ProviderTimeoutError("twilio create call: timed out", provider="twilio")]
        h.placer.find_error = ProviderConnectionError("twilio list calls: down", provider="twilio")
        job = await h.dispatcher.submit(request(tz=NY))
        await h.start()
        await h.run_until(MONDAY_9_NY + timedelta(hours=2))  # the lease runs out; recovery looks again
        stored = await h.store.get(job.id)
        assert len(h.placer.calls) == 1 and h.placer.finds >= 2  # never redialled blind
        assert stored.state is JobState.DIALING and stored.lease_owner == "disp-1"


async def test_an_opt_out_lists_the_number_and_ends_every_other_errand_to_it(tmp_path: Path) -> None:
    async with harness(tmp_path / "db", MONDAY_9_NY, start_loop=False, max_concurrent=1) as h:
        dnc = DoNotCall(h.db, clock=h.clock.now)
        h.dispatcher = h.new_dispatcher(do_not_call=dnc)
        first = await h.dispatcher.submit(request(tz=NY, user="u1", phone="+14155550100"))
        second = await h.dispatcher.submit(request(tz=NY, user="u2", phone="+14155550100"))
        await h.start()
        [call] = h.placer.calls  # one at a time: the second waits queued
        words = 'They said: "Please take us off your list."'
        await h.dispatcher.call_answered(call.job_id, call.call_sid)
        await h.dispatcher.report_outcome(call.job_id, CallOutcome(OutcomeKind.OPTED_OUT, summary=words))
        await h.idle()
        other = second.id if call.job_id == first.id else first.id
        listed = await dnc.get("+14155550100")
        assert listed is not None and words in listed.reason
        for job_id in (first.id, second.id):
            job = await h.store.get(job_id)
            assert job.state is JobState.DECLINED and job.outcome is not None
            assert job.outcome.kind is OutcomeKind.OPTED_OUT and job.outcome.summary == words
            assert h.notifier.events(job_id)[-1] is JobEvent.FINISHED
        assert len(h.placer.calls) == 1 and (await h.store.get(other)).calls_made == 0


async def test_a_booking_confirmed_on_the_phone_survives_a_later_decline(tmp_path: Path) -> None:
    async with harness(tmp_path / "db", MONDAY_9_NY) as h:
        job = await h.dispatcher.submit(request(tz=NY))
        await h.idle()
        [call] = h.placer.calls
        await h.dispatcher.call_answered(job.id, call.call_sid)
        slot = MONDAY_9_NY + timedelta(days=1)
        await h.dispatcher.booking_confirmed(job.id, Booking(slot, slot + timedelta(minutes=30), "haircut"))
        await h.dispatcher.report_outcome(job.id, CallOutcome(OutcomeKind.DECLINED, summary="full after all"))
        stored = await h.store.get(job.id)
        assert stored.state is JobState.BOOKED and stored.outcome is not None
        assert stored.outcome.booking is not None and stored.outcome.booking.start == slot
        assert "declined" in stored.outcome.summary and "booking stands" in stored.outcome.summary
