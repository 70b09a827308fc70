"""End to end: the real Next.js template through the preview gateway, in Debian's chromium."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.async_api import async_playwright

from realtime.config.settings import DEFAULT_TEMPLATE
from tests.browser import launch_args
from tests.harness import make_settings, running_server

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.timeout(600)]


async def test_nextjs_preview_renders_hydrates_and_hot_reloads(tmp_path: Path) -> None:
    """The signed preview renders and hydrates the template; an API edit of app/page.js reaches the page by HMR."""
    settings = lambda port: make_settings(  # noqa: E731
        tmp_path / "root", port, template=DEFAULT_TEMPLATE, WORKSPACE_START_TIMEOUT_S="180"
    )
    async with running_server(settings) as server:
        created = await server.provision("next-e2e")
        assert created["state"] == "ready", created
        page_source = (DEFAULT_TEMPLATE / "app" / "page.js").read_text()
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(**launch_args())
            try:
                page = await browser.new_page()
                await page.goto(created["preview_url"])
                await page.wait_for_selector('[data-testid="heading"]:has-text("QAI workspace")')
                await page.wait_for_selector('[data-hydrated="true"]', timeout=60_000)
                await page.click('[data-testid="counter-button"]')
                await page.wait_for_selector('[data-testid="counter-value"]:has-text("1")')
                await page.evaluate("window.__noReload = true")

                edited = page_source.replace("QAI workspace", "Edited through the API")
                response = await server.client.put(
                    "/api/workspaces/next-e2e/files", json={"files": [{"path": "app/page.js", "content": edited}]}
                )
                assert response.status_code == 200
                await page.wait_for_selector(
                    '[data-testid="heading"]:has-text("Edited through the API")', timeout=60_000
                )
                assert await page.evaluate("window.__noReload === true")  # updated in place: HMR, not a reload
            finally:
                await browser.close()
