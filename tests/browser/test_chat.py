"""The page as a chat, in real headless Chromium: the conversation goes with every request, over each
transport; the model picker, the parameters, Stop, the API key (and errors in words), the keyboard,
and model text shown as text."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.async_api import Page

from streamgate.bridges.app import BridgeServer
from streamgate.core.auth import Keyring
from streamgate.testing.upstream import FakeUpstream, Scenario, token
from tests.browser.pagekit import (
    TRANSPORTS,
    ask,
    last_answer,
    last_error,
    metrics,
    open_page,
    screenshot,
    settled,
)
from tests.conftest import BridgeFactory, eventually

KEY = "page-secret-key-0123"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_second_question_carries_the_first_turn_and_the_settings(
    bridge: BridgeServer, upstream: FakeUpstream, page: Page, transport: str
) -> None:
    upstream.default = Scenario(tokens=6, delay=0.03, words=("Paris", " is", " the", " capital", " of", " France."))
    await open_page(page, bridge.url)
    await page.fill("#system", "You answer briefly.")
    await page.fill("#temperature", "0.3")
    await page.fill("#max-tokens", "6")
    await ask(page, "What is the capital of France?", transport)
    await settled(page)
    first = await last_answer(page)
    await ask(page, "And its population?")
    await settled(page)

    assert first == "Paris is the capital of France."
    sent = upstream.counters.bodies[-1]
    assert sent["messages"] == [
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": first},
        {"role": "user", "content": "And its population?"},
    ]
    assert sent["temperature"] == 0.3 and sent["max_tokens"] == 6
    shown = await page.locator(".msg .text").all_text_contents()
    assert shown == ["What is the capital of France?", first, "And its population?", first]
    assert (await metrics(page))["tokens"] == "tokens 18 in / 6 out", "the upstream counted the whole conversation"
    await screenshot(page, f"chat-{transport}")
    if transport == "sse":
        await page.set_viewport_size({"width": 420, "height": 800})  # a phone: settings above, then the chat
        await page.evaluate("() => window.scrollTo(0, document.body.scrollHeight)")
        await screenshot(page, "chat-narrow", full_page=False)

    await page.click("#new-chat")
    await ask(page, "Hello again")
    await settled(page)
    assert upstream.counters.bodies[-1]["messages"][1:] == [{"role": "user", "content": "Hello again"}]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_the_model_picker_lists_the_models_of_v1_models_and_the_pick_is_used(
    make_bridge: BridgeFactory, upstream: FakeUpstream, page: Page, transport: str
) -> None:
    bridge = await make_bridge(core_allowed_models=("openai/other",))
    await open_page(page, bridge.url)
    await screenshot(page, "page-empty")

    options = await page.locator("#model option").all_text_contents()
    assert options == ["openai/fake", "openai/other"]
    assert await page.input_value("#model") == "openai/fake", "the default first"
    await page.select_option("#model", "openai/other")
    await ask(page, "hi", transport)
    await settled(page)

    assert upstream.counters.bodies[-1]["model"] == "other", "litellm sends openai/other upstream as 'other'"
    assert (await metrics(page))["model"] == "openai/other"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_stop_ends_the_answer_and_its_metrics_line_shows(
    bridge: BridgeServer, upstream: FakeUpstream, page: Page, transport: str
) -> None:
    upstream.default = Scenario(tokens=500, delay=0.02)
    await open_page(page, bridge.url)
    await ask(page, "Tell me a long story", transport)
    await page.wait_for_function(
        "() => document.querySelector('.msg.assistant .text').textContent.split(' ').length > 5", timeout=5000
    )
    await page.click("#stop")
    await settled(page, "stopped", timeout=2500)  # by the stream's own end, not the page's 3 s fallback

    answer = await last_answer(page)
    assert 5 < len(answer.split()) < 500
    shown = await metrics(page)
    assert shown["finish"] == "stopped"
    if transport == "openai":  # OpenAI's API has no cancel: the page leaves, and measured what it saw
        assert re.fullmatch(r"first token ≈\d+ ms \(seen here\)", shown["ttft"]), shown
        assert re.fullmatch(r"\d+ chunks received", shown["tokens"]), shown
    else:  # the stream's final frame, with the gateway's own numbers
        assert re.fullmatch(r"first token \d+ ms", shown["ttft"]), shown
    if transport == "sse":  # a DELETE's final frame has the usage too (a WebSocket cancel's has not)
        assert re.fullmatch(r"\d+\.\d tokens/s", shown["tps"]), shown
        assert re.fullmatch(r"tokens 5 in / \d+ out", shown["tokens"]), shown
    assert await last_error(page) == ""
    assert await page.is_enabled("#send") and not await page.is_enabled("#stop")
    await eventually(lambda: upstream.counters.disconnects == 1, within=3.0)  # the upstream request was closed
    assert upstream.counters.finished == 0
    await screenshot(page, f"chat-stopped-{transport}")

    upstream.default = Scenario(tokens=3)
    await ask(page, "Go on")
    await settled(page)
    assert upstream.counters.bodies[-1]["messages"][1] == {"role": "assistant", "content": answer}, (
        "what was received before Stop is part of the conversation"
    )


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_stop_before_the_first_token_closes_the_upstream_at_once(
    bridge: BridgeServer, upstream: FakeUpstream, page: Page, transport: str
) -> None:
    upstream.default = Scenario(tokens=5, first_token_delay=30)
    await open_page(page, bridge.url)
    await ask(page, "Think hard", transport)
    await eventually(lambda: upstream.counters.active == 1, within=5.0)
    await page.click("#stop")
    await settled(page, "stopped", timeout=2500)

    # Not after the resumable stream's grace (10 s) with nobody reading it: now.
    await eventually(lambda: upstream.counters.disconnects == 1, within=1.5)
    assert await last_answer(page) == "" and await last_error(page) == ""
    assert await page.input_value("#prompt") == "Think hard", "the question is given back"


@pytest.fixture
async def secured(make_bridge: BridgeFactory) -> BridgeServer:
    return await make_bridge(core_keyring=Keyring.from_lines([f"web: {KEY}"]))


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_with_auth_on_the_page_streams_with_its_key(
    secured: BridgeServer, upstream: FakeUpstream, page: Page, transport: str
) -> None:
    upstream.default = Scenario(tokens=4)
    await open_page(page, secured.url, api_key=KEY)
    assert await page.locator("#model option").all_text_contents() == ["openai/fake"], "listed with the key"
    await ask(page, "hi", transport)
    await settled(page)
    await ask(page, "and again", transport)
    await settled(page)

    assert await last_answer(page) == "".join(token(i) for i in range(4))
    assert upstream.counters.started == 2
    assert len(upstream.counters.bodies[-1]["messages"]) == 3


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    ("key", "message"),
    [("", "missing credentials: send 'Authorization: Bearer <API key>'"), ("wrong-key-0000", "invalid API key")],
)
async def test_without_a_valid_key_the_page_says_why_in_words(
    secured: BridgeServer, upstream: FakeUpstream, page: Page, transport: str, key: str, message: str
) -> None:
    await open_page(page, secured.url, api_key=key)
    assert await page.text_content("#model-note") == f"models could not be listed: {message}"
    await ask(page, "hi", transport)
    await settled(page, "failed")

    assert await last_error(page) == message
    assert await page.text_content(".msg.assistant:last-child .metrics") == "", "no metrics: nothing started"
    assert await page.input_value("#prompt") == "hi", "the question is given back, to send again with a key"
    assert upstream.counters.started == 0
    await screenshot(page, f"chat-{'wrong' if key else 'no'}-key-{transport}")

    await page.fill("#api-key", KEY)  # then, with the key, the same page works
    await page.dispatch_event("#api-key", "change")
    await page.press("#prompt", "Enter")
    await settled(page)
    sent = upstream.counters.bodies[-1]["messages"]
    assert sent == [{"role": "user", "content": "hi"}], "the failed turn is not part of the conversation"


async def test_the_key_is_kept_in_the_browser_only_when_remember_is_ticked(secured: BridgeServer, page: Page) -> None:
    stored = "() => localStorage.getItem('streamgate.apiKey')"
    await open_page(page, secured.url, api_key=KEY)
    assert await page.evaluate(stored) is None
    await page.reload()
    assert await page.input_value("#api-key") == ""

    await page.fill("#api-key", KEY)
    await page.check("#remember")
    assert await page.evaluate(stored) == KEY
    await page.reload()
    assert await page.input_value("#api-key") == KEY and await page.is_checked("#remember")
    await page.wait_for_function("() => document.getElementById('model-note').textContent.endsWith('offered')")

    await page.uncheck("#remember")
    assert await page.evaluate(stored) is None


async def test_model_text_is_shown_as_text_never_as_html(
    bridge: BridgeServer, upstream: FakeUpstream, page: Page
) -> None:
    words = ('<img src=x onerror="window.pwned=1">', " <b>bold</b>", " &amp;")
    upstream.default = Scenario(tokens=3, words=words)
    await open_page(page, bridge.url)
    await ask(page, "<i>hi</i>")
    await settled(page)

    assert await last_answer(page) == "".join(words)
    assert await page.locator(".msg img, .msg b, .msg i").count() == 0
    assert await page.evaluate("() => window.pwned") is None
    assert await page.text_content(".msg.user .text") == "<i>hi</i>"


async def test_enter_sends_and_shift_enter_starts_a_new_line(
    bridge: BridgeServer, upstream: FakeUpstream, page: Page
) -> None:
    await open_page(page, bridge.url)
    await page.click("#prompt")
    await page.keyboard.type("line one")
    await page.keyboard.press("Shift+Enter")
    await page.keyboard.type("line two")
    assert upstream.counters.started == 0 and await page.input_value("#prompt") == "line one\nline two"
    await page.keyboard.press("Enter")
    await settled(page)

    assert upstream.counters.bodies[-1]["messages"] == [{"role": "user", "content": "line one\nline two"}]
    assert await page.input_value("#prompt") == ""


async def test_the_page_shows_what_the_key_in_use_spent_today(
    make_bridge: BridgeFactory, upstream: FakeUpstream, page: Page, tmp_path: Path
) -> None:
    keys = Keyring.from_lines([f"web: {KEY}", "other: other-key-0123456789"])
    bridge = await make_bridge(
        core_keyring=keys, core_ledger="sqlite", core_data_dir=str(tmp_path), core_model="openai/gpt-4o-mini"
    )
    upstream.default = Scenario(tokens=4)
    await open_page(page, bridge.url, api_key=KEY)
    await page.wait_for_function("() => document.getElementById('spend').textContent.startsWith('spent')")
    assert await page.text_content("#spend") == "spent today: $0.000000 over 0 streams"
    await ask(page, "hi", "sse")
    await settled(page)
    await page.wait_for_function("() => document.getElementById('spend').textContent.includes('over 1 stream')")
    spent = await page.text_content("#spend") or ""
    dollars = float(re.search(r"\$([0-9.]+)", spent).group(1))  # type: ignore[union-attr]
    assert 0 < dollars < 0.001, spent  # the stream's cost, priced (gpt-4o-mini)
    await screenshot(page, "chat-spend")

    await page.fill("#api-key", "other-key-0123456789")  # another key: its own spend, not web's
    await page.dispatch_event("#api-key", "change")
    await page.wait_for_function("() => document.getElementById('spend').textContent.includes('over 0 streams')")
