"""web/static/panel.js in a real browser: alerts appear in the panel of the viewers of their org, as text.

The real stack: private redis-server, an in-process worker firing alerts through alert.lua, the web
tier with a tokens file (two viewers, each limited to one org), and two headless Chromium pages
(separate browser contexts, each logged in with its own token through the page's form).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from binormal.common.alerts import add_alert_rule, parse_alert_rule
from binormal.common.auth import hash_token
from binormal.common.embedded import free_port
from binormal.common.keys import Keyspace, Scope
from binormal.web.live import HUB_KEY
from binormal.web.settings import WebSettings
from tests.support.browser import ARTIFACTS, chromium_or_skip, launch_chromium, start_tier, wait_js
from tests.support.events import crossing_events
from tests.support.redis_state import xadd_events
from tests.support.waiting import wait_for
from tests.support.workers import running_worker, worker_settings

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]

XSS_ID = "<img src=x onerror=alert(1)>"
HTML_RULE = "<b>bold</b>"
HTML_ACTION = "<i>GET /x</i>"


async def open_as(browser: Any, base: str, token: str, errors: list[str], dialogs: list[str]) -> Any:
    """A page in its own browser context, logged in through the form with ``token``."""
    context = await browser.new_context(viewport={"width": 1280, "height": 760})
    page = await context.new_page()

    async def on_dialog(dialog: Any) -> None:
        dialogs.append(dialog.message)  # an alert() from an injected id would land here
        await dialog.dismiss()

    page.on("dialog", on_dialog)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None)
    await page.goto(base + "/")
    await page.locator("#login").wait_for(state="visible")
    await page.fill("#login-token", token)
    await page.click("#login-submit")
    await page.locator("#login").wait_for(state="hidden")
    await wait_js(page, "() => document.getElementById('conn').textContent === 'connected'")
    return page


def alert_ids_js() -> str:
    return "() => [...document.querySelectorAll('#alerts-list a.alert-id')].map(a => a.textContent)"


async def alert_ids(page: Any) -> list[str]:
    got: list[str] = await page.evaluate(alert_ids_js())
    return got


async def test_alerts_show_in_the_panel_of_their_orgs_viewers_only_and_as_text(
    redis_url: str, prefix: str, aredis: aioredis.Redis, tmp_path: Path
) -> None:
    executable = chromium_or_skip()
    tokens = tmp_path / "tokens"
    people = {"acme-viewer": "acme", "beta-viewer": "beta"}
    tokens.write_text("".join(f"{n} viewer {o} sha256:{hash_token('tok-' + n).hex()}\n" for n, o in people.items()))
    port = free_port()
    settings = WebSettings(redis_url=redis_url, prefix=prefix, port=port, tokens_file=str(tokens))
    keys: Keyspace = settings.keys
    for org in ("acme", "beta"):
        # min_events 7: only the prober gets there (the ordinary individuals have 6 events each).
        rule = {"name": f"{org}-scan", "scope": f"{org}/web/*", "min_zscore": 2.5, "min_events": 7}
        rule["webhook"] = "http://127.0.0.1:9/h"
        await add_alert_rule(aredis, keys, parse_alert_rule(rule, by="test"))
    errors: list[str] = []
    dialogs: list[str] = []
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(
            running_worker(worker_settings(redis_url, prefix, min_events=1, min_individuals=1, snapshot_max_age_ms=0))
        )
        tier = await start_tier(stack, settings, port)
        assert tier.app is not None
        hub = tier.app[HUB_KEY]
        await wait_for(lambda: hub.alert_feed_up, what="alert feed")
        browser = await launch_chromium(stack, executable)
        acme = await open_as(browser, tier.base, "tok-acme-viewer", errors, dialogs)
        beta = await open_as(browser, tier.base, "tok-beta-viewer", errors, dialogs)
        try:
            assert await acme.locator("#alerts-empty").is_visible()
            # -- an acme individual whose id is an HTML injection attempt crosses the rule: the worker fires
            await xadd_events(aredis, keys, crossing_events(Scope("acme", "web", "shop"), XSS_ID))
            await wait_js(acme, f"() => ({alert_ids_js()})().includes({XSS_ID!r})")
            item = acme.locator("#alerts-list li", has=acme.locator("a.alert-id", has_text="onerror")).first
            assert await item.locator(".alert-rule").text_content() == "acme-scan"
            assert await item.locator(".alert-scope").text_content() == "acme / web / shop"
            z = await item.locator(".alert-z").text_content()
            assert z and z.startswith("z ") and float(z[2:]) >= 2.5, z
            reasons = await item.locator(".alert-reason").all_text_contents()
            # its top three reasons: GET / missing, and probes nobody else makes
            assert len(reasons) == 3 and "GET /" in reasons[0] and "GET /probe/" in reasons[1], reasons
            assert await item.locator("time").text_content()
            href = await item.locator("a.alert-id").get_attribute("href")
            assert href and href.startswith("/api/individual?org=acme&source=web&pop=shop&id=%3Cimg"), href
            # -- an alert whose rule and reason hold HTML (the stream is a contract other programs may write)
            plain = Scope("acme", "web", "shop")
            body = {"rule": HTML_RULE, "scope": "/".join(plain), "id": "plain-id", "zscore": 9.5, "pscore": 1.0}
            body.update(score=1.0, count=9, reasons=[{"action": HTML_ACTION, "kind": "over", "bits": 4.0}], profile="")
            await aredis.xadd(keys.alert_stream(keys.shard(plain)), {"alert": orjson.dumps(body)})
            await wait_js(acme, f"() => ({alert_ids_js()})()[0] === 'plain-id'")  # newest first
            first = acme.locator("#alerts-list li").first
            assert await first.locator(".alert-rule").text_content() == HTML_RULE
            assert HTML_ACTION in (await first.locator(".alert-reason").text_content() or "")
            injected = "() => document.querySelectorAll('#alerts-list img, #alerts-list b, #alerts-list i').length"
            assert await acme.evaluate(injected) == 0
            assert await acme.evaluate("() => document.querySelectorAll('img').length") == 0
            # -- clicking the id opens its profile in the panel
            await item.locator("a.alert-id").click()
            await wait_js(acme, f"() => document.getElementById('profile-title').textContent === {XSS_ID!r}")
            await wait_js(acme, "() => document.querySelectorAll('#profile-chart .prow').length > 0")
            await acme.screenshot(path=str(ARTIFACTS / "live-page-alerts.png"))
            # -- beta's viewer: its own alert arrives, acme's (which fired first) never does
            await xadd_events(aredis, keys, crossing_events(Scope("beta", "web", "shop"), "beta-scanner"))
            await wait_js(beta, f"() => ({alert_ids_js()})().includes('beta-scanner')")
            assert await alert_ids(beta) == ["beta-scanner"]
            assert "beta-scanner" not in await alert_ids(acme)
            # -- a reload: the panel is filled again from /api/alerts, still of the viewer's org only
            await beta.reload()
            await wait_js(beta, f"() => ({alert_ids_js()})().includes('beta-scanner')")
            assert await alert_ids(beta) == ["beta-scanner"]
            await acme.reload()
            await wait_js(acme, f"() => ({alert_ids_js()})().length === 2")
            assert await alert_ids(acme) == ["plain-id", XSS_ID]
        except BaseException:
            with contextlib.suppress(Exception):
                await acme.screenshot(path=str(ARTIFACTS / "live-page-alerts-failure.png"))
            raise
    assert dialogs == [], dialogs  # the injected id never ran
    assert errors == [], errors
