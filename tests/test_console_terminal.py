"""The console's terminal pane (xterm.js) in Chromium: typing, output, resizing with the pane, and
redrawing after a dropped socket and after a page reload, with the CSP intact."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.async_api import Page, async_playwright, expect

from tests.browser import launch_args
from tests.harness import TOKEN, fixture_files, make_settings, running_server
from tests.test_console import WAIT_MS, _sign_in, _wait_for, _watch_errors

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(180), pytest.mark.slow]

PROJECT = "console-term"


async def _type(page: Page, text: str) -> None:
    await page.get_by_test_id("term-box").click()
    await page.keyboard.type(text)
    await page.keyboard.press("Enter")


async def _screen_has(page: Page, text: str) -> None:
    await _wait_for(page, f"window.__console.terminalText().includes({text!r})")


async def test_console_terminal_types_resizes_and_redraws(tmp_path: Path) -> None:
    """Open a terminal in the page, type into it, resize the pane (the shell sees the new size), drop the
    socket mid-output (the screen gets exactly the rest), and reload the page (the screen is redrawn)."""
    errors: list[str] = []
    async with running_server(lambda port: make_settings(tmp_path / "root", port)) as server:
        assert (await server.provision(PROJECT, fixture_files()))["state"] == "ready"
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(**launch_args())
            try:
                page = await browser.new_page(viewport={"width": 1440, "height": 900})
                _watch_errors(page, errors)
                await _sign_in(page, server.url, TOKEN)
                await page.goto(f"{server.url}/#/w/{PROJECT}")
                await expect(page.get_by_test_id("ws-state")).to_have_text("ready", timeout=WAIT_MS)
                await page.get_by_test_id("term-open").click()
                await _wait_for(page, "window.__console.terminalId() !== null")
                terminal_id = await page.evaluate("window.__console.terminalId()")

                # Typing and output; `read` gets the next line typed.
                await _type(page, 'read NAME; echo "hi $NAME"')
                await _type(page, "world")
                await _screen_has(page, "hi world")

                # The pane's size is the terminal's: make the box taller, and `stty size` follows.
                cols, rows = await page.evaluate("window.__console.terminalSize()")
                await _type(page, "stty size")
                await _screen_has(page, f"{rows} {cols}")
                await page.evaluate("document.getElementById('term-box').style.height = '520px'")
                await _wait_for(page, f"window.__console.terminalSize()[1] > {rows}")
                cols2, rows2 = await page.evaluate("window.__console.terminalSize()")
                await _type(page, "clear; stty size")
                await _screen_has(page, f"{rows2} {cols2}")

                # Mid-output, the socket drops; the page resumes and the screen has each line once.
                await _type(page, "clear")
                await _type(page, 'for i in $(seq 1 400); do echo "row $i"; [ $i = 200 ] && read GO; done')
                await _screen_has(page, "row 200")
                await page.evaluate("window.__console.dropSocket()")
                await page.keyboard.press("Enter")  # sent once the channel is open again
                await _screen_has(page, "row 400")
                rows_seen = [line for line in (await page.evaluate("window.__console.terminalText()")).split("\n")
                             if line.startswith("row ")]
                assert rows_seen == [f"row {i}" for i in range(1, 401)]
                connections = await page.evaluate("window.__console.connections()")
                assert any(entry["state"] == "reconnecting" for entry in connections)
                await _type(page, "echo after-$((1+1))")
                await _screen_has(page, "after-2")
                await _type(page, 'for i in 1 2 3; do echo "again $i"; done')
                await _screen_has(page, "again 3")
                text = await page.evaluate("window.__console.terminalText()")
                assert text.count("again 3") == 1, text

                # A reload starts a new client from seq 0: the open terminal is adopted and redrawn.
                await page.reload()
                await _wait_for(page, f"window.__console.terminalId() === {terminal_id!r}")
                await _screen_has(page, "again 3")
                text = await page.evaluate("window.__console.terminalText()")
                assert text.count("again 3") == 1 and "after-2" in text, text
                await _type(page, "echo still-$((2+2))")
                await _screen_has(page, "still-4")
                (tmp_path / "console-terminal.png").write_bytes(await page.get_by_test_id("terminal-pane").screenshot())
                await page.get_by_test_id("term-close").click()
                await _screen_has(page, "[exited with code")
            finally:
                await browser.close()
    assert errors == []
