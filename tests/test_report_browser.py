"""Open report.html in headless Chromium at a laptop and a phone width.

Chromium is driven through the DevTools protocol over ``--remote-debugging-pipe`` (JSON
messages ending in NUL on file descriptors 3 and 4), so no Python package is needed and the
phone width is a real mobile emulation: a plain ``--window-size=390,...`` is widened to 500 px
by headless Chromium. The page's own ``#selfcheck`` script reports how many images there are,
how many failed to decode and whether the page is wider than the viewport.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from browser import VIEWPORTS, DevTools, chromium_binary, open_page, screenshot, selfcheck
from ferlab.report import build_report
from fixtures_report import make_fake_experiment

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    exp = make_fake_experiment(tmp_path_factory.mktemp("browser"))
    return build_report(exp)


@pytest.mark.parametrize("name", list(VIEWPORTS))
def test_report_renders_cleanly(report: Path, name: str, tmp_path: Path) -> None:
    binary = chromium_binary()
    viewport = VIEWPORTS[name]
    tools = DevTools(binary, tmp_path / "profile")
    try:
        session = open_page(tools, report.as_uri() + "#selfcheck", viewport)
        check = selfcheck(tools, session)
        shot = screenshot(tools, session, tmp_path / f"report_{name}.png")
        full = screenshot(tools, session, tmp_path / f"report_{name}_full.png", full_page=True)
    finally:
        tools.close()

    target = os.environ.get("FERLAB_SCREENSHOT_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        for p in (shot, full):
            shutil.copy(p, Path(target) / p.name)

    html = report.read_text(encoding="utf-8")
    assert int(check["data-images"]) == html.count("<img "), check
    assert int(check["data-images"]) > 10, check
    assert check["data-broken"] == "0", f"images that did not load at {name} width: {check}"
    assert int(check["data-inner-width"]) == viewport["width"], check
    assert check["data-overflow"] == "false", (
        f"the page is wider than the {name} viewport: {check} (widest elements: {check['data-wide']})"
    )
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 10_000
