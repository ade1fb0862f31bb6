"""The demo report in a real browser: headless Chromium (the Debian package, installed by
`scripts/services.sh install`) driven by Playwright. Every picture loads, nothing is wider
than the window or than its container, the pictures of one grid row line up, at a desktop
and at a phone width. A full-page screenshot is kept: in pytest's tmp dir and as
out/test-artifacts/report.png (git-ignored)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from skewless.demo_report import write_html
from tests.skewless.test_report import make_inputs

ROOT = Path(__file__).resolve().parents[2]
ARTIFACT = ROOT / "out" / "test-artifacts" / "report.png"

#: what the page looks like to a reader, measured in the page itself
MEASURE = """() => {
  const r = (e) => e.getBoundingClientRect();
  const name = (e) => e.tagName.toLowerCase() + (e.className ? '.' + e.className : '')
    + (e.alt ? '[' + e.alt + ']' : '') + ' "' + (e.textContent || '').trim().slice(0, 40) + '"';
  const images = [...document.images].map((i) => ({
    alt: i.alt, complete: i.complete, natural: i.naturalWidth,
    top: Math.round(r(i).top), height: Math.round(r(i).height), width: r(i).width}));
  const overflowing = [];
  for (const e of document.body.querySelectorAll('*')) {
    const p = e.parentElement, a = r(e), b = r(p);
    if (a.width === 0 && a.height === 0) continue;
    if (a.left < b.left - 1 || a.right > b.right + 1) overflowing.push(
      name(e) + ' ' + Math.round(a.width) + 'px in ' + name(p) + ' ' + Math.round(b.width) + 'px');
  }
  return {scrollWidth: document.documentElement.scrollWidth, viewport: window.innerWidth,
          images, overflowing};
}"""


def _chromium() -> str:
    exe = os.environ.get("PLAYWRIGHT_CHROMIUM_EXECUTABLE") or next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None
    )
    if not exe:
        pytest.fail("chromium is not installed: run `scripts/services.sh install`")
    return exe


@pytest.fixture(scope="module")
def browser() -> Any:
    from playwright import sync_api  # a dev dependency: `make test` installs it

    exe = _chromium()
    with sync_api.sync_playwright() as pw:
        # root in a container: Chromium's sandbox needs user namespaces it may not have
        b = pw.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def report_html(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("report")
    report, latencies, model_dir = make_inputs(tmp)
    return write_html(tmp, report, latencies, model_dir)


@pytest.mark.parametrize(("width", "columns"), [(1280, 3), (820, 2), (400, 1)])
def test_report_renders_whole_and_aligned(
    browser: Any, report_html: Path, tmp_path: Path, width: int, columns: int
) -> None:
    page = browser.new_page(viewport={"width": width, "height": 900})
    page.goto(report_html.as_uri(), wait_until="load")
    seen = page.evaluate(MEASURE)
    shot = tmp_path / f"report-{width}.png"
    page.screenshot(path=str(shot), full_page=True)
    page.close()
    if width == 1280:
        ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, ARTIFACT)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    images = seen["images"]
    assert all(i["complete"] and i["natural"] > 0 for i in images), images
    assert seen["scrollWidth"] <= seen["viewport"], seen["scrollWidth"]
    assert seen["overflowing"] == []
    # the grid: `columns` pictures per row, each row on one top line, all the same size
    rows: dict[int, list[dict[str, Any]]] = {}
    for i in images:
        rows.setdefault(i["top"], []).append(i)
    assert [len(r) for r in rows.values()] == [
        min(columns, len(images) - k) for k in range(0, len(images), columns)
    ], rows
    assert len({(i["width"], i["height"]) for i in images}) == 1, images
    assert [i["alt"] for i in images] == [
        "scoring latency histogram", "roc.png", "pr.png", "reliability diagram",
        "feature importance",
    ]  # fmt: skip
