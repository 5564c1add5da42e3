"""Helpers for the browser tests: Debian's headless Chromium under Playwright, the web tier on a fixed port.

Chromium missing: the test is skipped locally and fails in CI (``CI=true``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from binormal.web.settings import WebSettings

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def chromium_or_skip() -> str:
    """The Chromium binary; skipped when it is missing (a failure in CI)."""
    if not Path(CHROMIUM).exists():
        reason = f"{CHROMIUM} not installed (apt-get install chromium)"
        if IN_CI:
            pytest.fail(f"required in CI: {reason}")
        pytest.skip(reason)
    return CHROMIUM


class WebTier:
    """``web.app.create_app`` served on 127.0.0.1:``port``; can be stopped and started again."""

    def __init__(self, settings: WebSettings, port: int) -> None:
        self.settings = settings
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.runner: web.AppRunner | None = None
        self.app: web.Application | None = None

    async def start(self) -> str:
        from binormal.web.app import create_app

        self.app = create_app(self.settings)
        self.runner = web.AppRunner(self.app, shutdown_timeout=1.0)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self.base

    async def stop(self) -> None:
        if self.runner is not None:
            runner, self.runner = self.runner, None
            await runner.cleanup()


async def start_tier(stack: contextlib.AsyncExitStack, settings: WebSettings, port: int) -> WebTier:
    """A started :class:`WebTier` on ``port``, stopped when ``stack`` closes."""
    tier = WebTier(settings, port)
    await tier.start()
    stack.push_async_callback(tier.stop)
    return tier


async def launch_chromium(stack: contextlib.AsyncExitStack, executable: str) -> Any:
    """Headless Chromium under Playwright, closed (browser, then Playwright) when ``stack`` closes."""
    from playwright.async_api import async_playwright

    pw = await stack.enter_async_context(async_playwright())
    browser = await pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
    stack.push_async_callback(browser.close)
    return browser


async def wait_js(page: Any, expr: str, timeout_s: float = 20.0) -> None:
    """Wait until the page's JS expression ``expr`` is truthy."""
    await page.wait_for_function(expr, timeout=timeout_s * 1000)


PIXELS_JS = """() => {
  const c = document.getElementById('matrix');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let red = 0, green = 0;
  for (let i = 0; i < d.length; i += 4) {
    const r = d[i], g = d[i + 1], b = d[i + 2];
    if (r > 110 && g < 90 && b < 90) red++;
    else if (g > 90 && r < 80) green++;
  }
  return {red, green};
}"""


async def counters(page: Any) -> dict[str, Any]:
    result: dict[str, Any] = await page.evaluate("() => ({...window.binormal.counters})")
    return result


async def pixels_until(page: Any, predicate: Any, timeout_s: float = 15.0) -> dict[str, int]:
    """Poll the canvas pixel counts until ``predicate(counts)``; returns the last counts."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        px: dict[str, int] = await page.evaluate(PIXELS_JS)
        if predicate(px) or asyncio.get_running_loop().time() > deadline:
            return px
        await asyncio.sleep(0.2)


async def set_slider(page: Any, slider: str, value: float) -> None:
    await page.evaluate(
        "([id, v]) => { const el = document.getElementById(id); el.value = String(v);"
        " el.dispatchEvent(new Event('input', {bubbles: true})); }",
        [slider, value],
    )


async def select_scope(page: Any, level: str, value: str) -> None:
    await wait_js(page, f"() => [...document.getElementById('scope-{level}').options].some(o => o.value === {value!r})")
    await page.select_option(f"#scope-{level}", value)
