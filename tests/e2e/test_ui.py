"""The Prefect UI, tested in a browser (`make e2e`; not in the default suite: QUANTA_E2E=1).

A `make ui` server (UI on) on a free loopback port; the tiny studies run against it (`quanta run`, as a user would);
each study's report artifact page is opened in headless Chromium: the page must show the report's title, every
embedded plot must decode and render (laid out with a size, more than a couple of colours), and the lineage
artifact's Mermaid graph must be drawn (an SVG naming the artifacts). Screenshots go to e2e-screenshots/.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.browser import Chromium, chromium_binary
from tests.prefect_servers import ROOT, clean_env, prefect_server

pytestmark = pytest.mark.skipif(os.environ.get("QUANTA_E2E") != "1", reason="browser test: make e2e (QUANTA_E2E=1)")

SHOTS = ROOT / "e2e-screenshots"
TINY_SP = ROOT / "configs/sparse_parity/tiny.toml"
TINY_LM = ROOT / "configs/lm/tiny.toml"

# every embedded PNG: decoded, drawn on a canvas, colours counted on a sample of its pixels, laid out size
IMAGES_JS = """(async () => {
  const out = [];
  for (const img of [...document.images].filter(i => i.src.startsWith('data:image/png'))) {
    try { await img.decode(); } catch (e) { out.push({alt: img.alt, decoded: false}); continue; }
    const c = document.createElement('canvas');
    c.width = img.naturalWidth; c.height = img.naturalHeight;
    const ctx = c.getContext('2d'); ctx.drawImage(img, 0, 0);
    const d = ctx.getImageData(0, 0, c.width, c.height).data;
    const colours = new Set();
    for (let i = 0; i < d.length; i += 4 * 7) colours.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
    const r = img.getBoundingClientRect();
    out.push({alt: img.alt, decoded: true, width: img.naturalWidth, height: img.naturalHeight,
              colours: colours.size, shown_width: r.width, shown_height: r.height});
  }
  return out;
})()"""


def _studies(tmp_path: Path) -> dict[str, list[str]]:
    sweep = tmp_path / "sweep.toml"
    sweep.write_text(TINY_SP.read_text() + "\n[sweep]\nalphas = [0.3, 0.6]\n")
    return {"sparse-parity": ["--config", str(TINY_SP)],
            "lm-losses": ["--config", str(TINY_LM)],
            "alpha-sweep": ["--config", str(sweep)],
            "qdg": ["--config", str(ROOT / "configs/qdg/tiny.toml")],
            "qdg-sparse-parity": ["--config", str(ROOT / "configs/qdg/sparse_parity_tiny.toml")]}


def _latest(api: str, key: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                                     sort=ArtifactSort.CREATED_DESC, limit=1)
    assert arts, f"no artifact with key {key!r}"
    return arts[0]


def _non_blank(png: bytes) -> int:
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    return len(set(img.resize((200, 200)).getdata()))


OWN_PLOTS_JS = ("[...document.images].filter(i => i.src.startsWith('data:image/png') && i.complete "
                "&& i.naturalWidth > 0).length")


def _shown_plots(browser, want: int, path: Path, timeout: float = 90) -> tuple[list, bytes]:
    """The report's plots as the page shows them, and a screenshot taken while all `want` of them are on it (the
    screenshot is retaken if the page re-rendered to its placeholder meanwhile)."""
    deadline = time.monotonic() + timeout
    while True:
        browser.wait_for(f"{OWN_PLOTS_JS} >= {want}", max(1.0, deadline - time.monotonic()))
        images = browser.evaluate(IMAGES_JS)
        shot = browser.screenshot(path)
        if len(images) >= want and browser.evaluate(OWN_PLOTS_JS) >= want:
            return images, shot
        if time.monotonic() > deadline:
            return images, shot
        time.sleep(0.5)


def test_each_study_report_renders_in_the_prefect_ui(tmp_path):
    assert chromium_binary(), "chromium is not installed (make e2e installs it)"
    SHOTS.mkdir(exist_ok=True)
    with prefect_server(tmp_path, ui=True) as api:
        ui = api.removesuffix("/api") + "/v2"  # the default UI (v2; the v1 UI does not draw Mermaid)
        env = clean_env(tmp_path / "client-home", PREFECT_API_URL=api)
        for study, args in _studies(tmp_path).items():
            proc = subprocess.run([sys.executable, "-m", "flows.cli", "run", study, *args, "--store",
                                   str(tmp_path / "store"), "--json"], cwd=ROOT, env=env, capture_output=True,
                                  text=True, timeout=900)
            assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
            json.loads(proc.stdout.strip().splitlines()[-1])
        seen = {}
        with Chromium(tmp_path / "browser") as browser:
            for study in _studies(tmp_path):
                report = _latest(api, f"{study}-report")
                title = report.description
                browser.open(f"{ui}/artifacts/artifact/{report.id}")
                browser.wait_for(f"document.body && document.body.innerText.includes({json.dumps(title)})", 120)
                # the report's own plots (its data URIs), not any image: the UI's icons load before the markdown,
                # and the UI can swap the rendered markdown back to a loading placeholder while it refetches
                want = report.data.count("](data:image/png;base64,")
                assert want, f"{study}: the report artifact embeds no plot"
                images, shot = _shown_plots(browser, want, SHOTS / f"{study}-report.png")
                assert len(images) >= want, f"{study}: {len(images)} of the report's {want} plots on the page"
                for img in images:
                    assert img["decoded"], f"{study}: plot {img['alt']} does not decode"
                    assert img["width"] > 50 and img["height"] > 50, img
                    assert img["colours"] > 8, f"{study}: plot {img['alt']} is blank: {img}"
                    assert img["shown_width"] > 50 and img["shown_height"] > 50, f"{study}: not laid out: {img}"
                assert _non_blank(shot) > 50, f"{study}: the screenshot is blank"

                lineage = _latest(api, f"{study}-lineage")
                browser.open(f"{ui}/artifacts/artifact/{lineage.id}")
                # Mermaid draws into an <svg id="mermaid-..."> once rendered (a grey placeholder before that)
                drawn = browser.wait_for(
                    "[...document.querySelectorAll('svg[id^=\"mermaid\"]')].filter(s => "
                    "s.getBoundingClientRect().width > 100 && s.querySelectorAll('g.node').length >= 3"
                    " && s.textContent.includes('report')).length", 120)
                time.sleep(1)  # let the layout settle before the screenshot
                browser.screenshot(SHOTS / f"{study}-lineage.png")
                seen[study] = {"title": title, "plots": len(images), "mermaid_svgs": drawn, "ui": browser.evaluate(
                    "location.pathname")}
    print("e2e:", json.dumps(seen))
    assert set(seen) == set(_studies(tmp_path))
