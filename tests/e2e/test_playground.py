"""The playground in a real browser: a whole errand typed and played by hand, through the real product.

Headless Chromium (the system's ``chromium``, driven by Playwright; no browser is ever downloaded)
opens the page, writes the request in the chat pane, presses Confirm, answers the call as the
receptionist, offers a slot that clashes with the calendar (edited in the page) and then a free
one, and waits for "Booked" with the event link. ``PLAYGROUND_SCREENSHOT=docs/playground.png``
also saves the final screenshot there (how the README's picture is made).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from concierge.settings import Settings
from demo.playground import open_playground
from demo.runner import MESSAGE, wait_until
from sandbox import scenarios

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
STEP_MS = 45_000  # one step of the errand (a model round, a spoken turn at real-time pace)


def _browser() -> str:
    """The system Chromium; missing it is a failure in CI and a skip (saying why) elsewhere."""
    path = shutil.which("chromium") or (CHROMIUM if Path(CHROMIUM).exists() else None)
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        path = None
    if path is None:
        why = "needs the system Chromium (apt-get install chromium) and Playwright (the dev extra)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"the playground browser test {why}: .ci/run installs both")
        pytest.skip(f"the playground browser test {why}")
    return path


async def test_a_whole_errand_in_the_browser(tmp_path: Path) -> None:
    chromium = _browser()
    from playwright.async_api import async_playwright, expect

    # No key: the sandbox model answers (a developer's own ANTHROPIC_API_KEY is never used here).
    base = Settings(_env_file=None, anthropic_api_key="")  # type: ignore[call-arg]
    zone = ZoneInfo(base.person_timezone)
    sc = scenarios.build("clash", today=datetime.now(zone).date(), tz=str(zone))
    assert sc.expect_start is not None
    clash = sc.busy[0][0] + timedelta(minutes=30)  # inside the busy span (the scenario's first offer)
    free = sc.expect_start

    async with open_playground(port=0, base=base) as (pg, url), async_playwright() as p:
        assert url.startswith("http://127.0.0.1:")
        browser = await p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 1080})
            await page.goto(url)
            await expect(page.locator("#model")).to_contain_text("sandbox model")

            # The calendar, edited in the page: drop the seeded clash, add it back by hand.
            await expect(page.locator("#calendar li.busy")).to_have_count(1)
            await page.locator("#calendar li.busy button").click()
            await expect(page.locator("#calendar li.busy")).to_have_count(0)
            busy_start, busy_end = sc.busy[0]
            await page.fill("#busy-date", busy_start.date().isoformat())
            await page.fill("#busy-start", f"{busy_start:%H:%M}")
            await page.fill("#busy-end", f"{busy_end:%H:%M}")
            await page.click("#busy-form button")
            await expect(page.locator("#calendar li.busy")).to_have_count(1)
            assert pg.world.graph.busy == [(busy_start, busy_end)]

            # The chat: the request, the draft, Confirm.
            await page.fill("#chat-input", MESSAGE)
            await page.click("#chat-form button")
            await page.locator("#chat button", has_text="Confirm").click(timeout=STEP_MS)

            # The call: the assistant opens, you answer as the receptionist.
            assistant = page.locator("#call .line.assistant:not(.hearing)")
            await expect(assistant.first).to_contain_text("haircut", timeout=STEP_MS)
            await expect(page.locator("#say-input")).to_be_enabled()

            # A key on the keypad reaches the model as the callee's DTMF, through the media stream.
            await page.locator("#keypad button", has_text="5").click()
            dtmf_note = "[the callee's phone sent DTMF digits: 5]"

            async def model_heard_the_key() -> bool:
                return any(dtmf_note in json.dumps(r) for r in pg.world.anthropic.requests)

            await wait_until(model_heard_the_key, STEP_MS / 1000, "the key press to reach the model")

            async def say(text: str) -> None:
                await page.fill("#say-input", text)
                await page.press("#say-input", "Enter")
                await expect(page.locator("#call .line.callee").last).to_have_text(
                    f"Receptionist{text}", timeout=STEP_MS
                )

            await say(f"Sure. We have {scenarios.offer_text(clash)}.")
            await expect(assistant.last).to_contain_text("doesn't work", timeout=STEP_MS)
            await say(f"How about {scenarios.offer_text(free)}?")

            # The result in the chat, with the event link; the event in the calendar.
            booked = page.locator("#chat .bubble.bot", has_text=re.compile(r"^Booked: haircut"))
            await expect(booked).to_be_visible(timeout=STEP_MS)
            await expect(booked.locator("a[href*='outlook.office365.com']")).to_have_count(1)
            await expect(page.locator("#calendar li.event a")).to_have_count(1)
            created = [e for e in pg.world.graph.events]
            assert len(created) == 1
            start = datetime.fromisoformat(created[0]["start"]["dateTime"]).replace(
                tzinfo=ZoneInfo(created[0]["start"]["timeZone"])
            )
            assert start == free

            # Every word went over the sandbox phone line, and the turns were timed.
            call = next(iter(pg.world.twilio.calls.values()))
            assert call.said[0] == f"Sure. We have {scenarios.offer_text(clash)}."
            await expect(page.locator("#latency svg rect.bar").first).to_be_visible(timeout=STEP_MS)

            shot = tmp_path / "playground.png"
            await page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            if target := os.environ.get("PLAYGROUND_SCREENSHOT"):
                shutil.copyfile(shot, target)
        finally:
            await browser.close()


async def test_a_scripted_receptionist_picked_in_the_page_takes_the_call() -> None:
    chromium = _browser()
    from playwright.async_api import async_playwright, expect

    base = Settings(_env_file=None, anthropic_api_key="")  # type: ignore[call-arg]
    async with open_playground(port=0, base=base) as (pg, url), async_playwright() as p:
        browser = await p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            page = await browser.new_page()
            await page.goto(url)
            await page.select_option("#callee", "happy")
            await expect(page.locator("#callee")).to_have_value("happy")
            await page.fill("#chat-input", MESSAGE)
            await page.click("#chat-form button")
            await page.locator("#chat button", has_text="Confirm").click(timeout=STEP_MS)

            await expect(page.locator("#call-status")).to_contain_text(
                "scripted receptionist (happy)", timeout=STEP_MS
            )
            await expect(page.locator("#say-input")).to_be_disabled()  # the script talks, not you
            await expect(page.locator("#call .line.callee").first).to_have_text(
                f"Receptionist{scenarios.GREETING}", timeout=STEP_MS
            )
            booked = page.locator("#chat .bubble.bot", has_text=re.compile(r"^Booked: haircut"))
            await expect(booked).to_be_visible(timeout=STEP_MS)
            assert len(pg.world.graph.events) == 1
        finally:
            await browser.close()


async def test_the_receptionist_hangs_up_from_the_page() -> None:
    chromium = _browser()
    from playwright.async_api import async_playwright, expect

    base = Settings(_env_file=None, anthropic_api_key="")  # type: ignore[call-arg]
    async with open_playground(port=0, base=base) as (pg, url), async_playwright() as p:
        browser = await p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            page = await browser.new_page()
            await page.goto(url)
            await page.fill("#chat-input", MESSAGE)
            await page.click("#chat-form button")
            await page.locator("#chat button", has_text="Confirm").click(timeout=STEP_MS)
            # The assistant's words show while they play, then as a finished line.
            await expect(page.locator("#call .line.hearing")).to_contain_text("Hi, this is", timeout=STEP_MS)
            opening = page.locator("#call .line.assistant:not(.hearing)")
            await expect(opening.first).to_contain_text("haircut", timeout=STEP_MS)
            await page.click("#hangup")
            await expect(page.locator("#call .call-head").first).to_contain_text(
                "the receptionist hung up", timeout=STEP_MS
            )
            first = min(pg.world.twilio.calls.values(), key=lambda c: c.created_at)
            assert first.ended_by == "callee" and first.status == "completed"
        finally:
            await browser.close()
