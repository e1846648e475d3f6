"""What a person does on the page at `/`, for the browser tests: open it, pick, type, read."""

from __future__ import annotations

from pathlib import Path

from playwright.async_api import Page

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
TRANSPORTS = ["sse", "ws", "openai"]


async def open_page(page: Page, url: str, api_key: str | None = None) -> None:
    """Load the page, enter the key (as a person would: typed, then leaving the field), and wait
    for the model picker to be filled (or to say why not)."""
    await page.goto(url + "/")
    if api_key is not None:
        await page.fill("#api-key", api_key)
        await page.dispatch_event("#api-key", "change")
    await page.wait_for_function(  # the page's CSP forbids eval: a function, not an expression
        "() => !document.getElementById('model-note').textContent.startsWith('loading')"
    )


async def ask(page: Page, text: str, transport: str | None = None) -> None:
    """Type a question and press Enter."""
    if transport is not None:
        await page.check(f"input[name=transport][value={transport}]")
    await page.fill("#prompt", text)
    await page.press("#prompt", "Enter")


async def settled(page: Page, state: str = "done", timeout: float = 10_000) -> None:
    """Wait until the answer streaming now ends as `state` (done, failed, stopped)."""
    await page.wait_for_selector(".msg.assistant:last-child:not([data-state=streaming])", timeout=timeout)
    ended = await page.get_attribute(".msg.assistant:last-child", "data-state")
    error = await page.text_content(".msg.assistant:last-child .error")
    assert ended == state, f"the answer ended {ended}, not {state} (error shown: {error!r})"
    assert await page.get_attribute("body", "data-state") == state


async def last_answer(page: Page) -> str:
    return await page.text_content(".msg.assistant:last-child .text") or ""


async def last_error(page: Page) -> str:
    return await page.text_content(".msg.assistant:last-child .error") or ""


async def metrics(page: Page) -> dict[str, str]:
    """The metrics line under the last answer, by item: model, finish, ttft, tps, tokens, cost."""
    items: dict[str, str] = await page.eval_on_selector_all(
        ".msg.assistant:last-child .metrics [data-m]",
        "spans => Object.fromEntries(spans.map(s => [s.dataset.m, s.textContent]))",
    )
    return items


async def screenshot(page: Page, name: str, full_page: bool = True) -> None:
    """Into artifacts/, to look at. `full_page=False`: what the viewport shows now (the composer sticks
    to the viewport's bottom, so a full-page picture of a long page shows it over the middle)."""
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=full_page)
