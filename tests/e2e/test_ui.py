"""The Prefect UI, tested in a browser (`make e2e`; not in the default suite: QUANTA_E2E=1).

A `make ui` server (UI on) on a free loopback port; the tiny studies run against it (`quanta run`, as a user would);
each study's report artifact page is opened in headless Chromium: the page must show the report's title, every
embedded plot must decode and render (laid out with a size, more than a couple of colours), and the lineage
artifact's Mermaid graph must be drawn (an SVG naming the artifacts). Screenshots go to e2e-screenshots/.

And as a researcher reads them (tasks.reporting's figure policy; the tiny configs run at the reports' default
resolution, their own `dpi` line dropped): every plot at least the UI's column wide, its smallest text at least
MIN_SHOWN_PT as the page draws it; the report's lineage chart (collapsed by kind) at most MAX_LINEAGE_NODES nodes
with labels drawn at least MIN_LABEL_PX; the qdg report's cluster examples (the store's table of them) on the page,
each token and cluster; the qdg-sparse-parity headline tables inline, not links.
"""
from __future__ import annotations

import base64
import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tasks.reporting import MIN_FONT_PT, MIN_SHOWN_PT, UI_COLUMN_PX, inline_code, shown_pt
from tests.e2e.browser import Chromium, chromium_binary
from tests.prefect_servers import ROOT, clean_env, prefect_server

pytestmark = pytest.mark.skipif(os.environ.get("QUANTA_E2E") != "1", reason="browser test: make e2e (QUANTA_E2E=1)")

SHOTS = ROOT / "e2e-screenshots"
TINY = ["sparse_parity/tiny.toml", "lm/tiny.toml", "qdg/tiny.toml", "qdg/sparse_parity_tiny.toml"]
MAX_LINEAGE_NODES = 20  # a report's lineage chart: more nodes than this and a column-wide chart shrinks its labels
MIN_LABEL_PX = 12.0  # a lineage node's label as drawn (CSS px; 12 px = 9 pt)

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


def _configs(tmp_path: Path) -> Path:
    """The tiny configs, copied with their `dpi` line dropped: the reports at their default resolution, as a user's
    run draws them (the tiny configs draw small PNGs to keep the unit tests fast). Same layout: their relative
    includes (`lm_config = "../lm/tiny.toml"`) still resolve."""
    out = tmp_path / "configs"
    for rel in TINY:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text(re.sub(r"(?m)^dpi\s*=.*$", "", (ROOT / "configs" / rel).read_text()))
    return out


def _studies(tmp_path: Path) -> dict[str, list[str]]:
    cfg = _configs(tmp_path)
    sweep = tmp_path / "sweep.toml"
    sweep.write_text((cfg / "sparse_parity/tiny.toml").read_text() + "\n[sweep]\nalphas = [0.3, 0.6]\n")
    return {"sparse-parity": ["--config", str(cfg / "sparse_parity/tiny.toml")],
            "lm-losses": ["--config", str(cfg / "lm/tiny.toml")],
            "alpha-sweep": ["--config", str(sweep)],
            "qdg": ["--config", str(cfg / "qdg/tiny.toml")],
            "qdg-sparse-parity": ["--config", str(cfg / "qdg/sparse_parity_tiny.toml")]}


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
                "&& i.naturalWidth > 0 && i.getBoundingClientRect().width > 0).length")


def _shown_plots(browser, want: int, path: Path, timeout: float = 90) -> tuple[list, bytes]:
    """The report's plots as the page shows them, and a screenshot taken while all `want` of them are on it, laid
    out (both are taken again if the page re-rendered to its placeholder meanwhile)."""
    deadline = time.monotonic() + timeout
    while True:
        browser.wait_for(f"{OWN_PLOTS_JS} >= {want}", max(1.0, deadline - time.monotonic()))
        images = browser.evaluate(IMAGES_JS)
        shot = browser.screenshot(path)
        laid_out = all(i.get("shown_width", 0) > 0 for i in images)
        if len(images) >= want and laid_out and browser.evaluate(OWN_PLOTS_JS) >= want:
            return images, shot
        if time.monotonic() > deadline:
            return images, shot
        time.sleep(0.5)


DRAWN_CHARTS_JS = ("[...document.querySelectorAll('svg[id^=\"mermaid\"]')].filter(s => "
                   "s.getBoundingClientRect().width > 100 && s.querySelectorAll('g.node').length >= 2).length")


def _drawn_charts(browser, want: int, path: Path, timeout: float = 120) -> None:
    """Wait until all `want` Mermaid charts of the page are drawn (the UI draws them one after another and can
    swap the markdown back to its placeholder meanwhile), then take the screenshot while they still are."""
    deadline = time.monotonic() + timeout
    while True:
        browser.wait_for(f"{DRAWN_CHARTS_JS} >= {want}", max(1.0, deadline - time.monotonic()))
        time.sleep(1)  # let the layout settle before the screenshot
        browser.screenshot(path)
        if browser.evaluate(DRAWN_CHARTS_JS) >= want:
            return
        assert time.monotonic() < deadline, f"{path.name}: the page's {want} charts did not stay drawn"


# the report page's Mermaid charts as drawn: nodes, and a node label's size on the screen (its font size in the
# chart's units x the chart's scale: a wide chart is shrunk to the column)
MERMAID_JS = """[...document.querySelectorAll('svg[id^="mermaid"]')].map(s => {
  const vb = s.viewBox && s.viewBox.baseVal, r = s.getBoundingClientRect();
  const label = s.querySelector('g.node .nodeLabel, g.node text');
  const font = label ? parseFloat(getComputedStyle(label).fontSize) : NaN;
  return {nodes: s.querySelectorAll('g.node').length, width: r.width, font,
          label_px: vb && vb.width ? font * r.width / vb.width : font, text: s.textContent};
})"""


def _png_dpi(report_md: str) -> dict[str, float]:
    """{alt: dpi} of the report's embedded PNGs (the resolution matplotlib wrote into each)."""
    from PIL import Image

    return {alt: float(Image.open(io.BytesIO(base64.b64decode(b))).info["dpi"][0])
            for alt, b in re.findall(r"!\[([^\]]*)\]\(data:image/png;base64,([^)]+)\)", report_md)}


def _check_plots_legible(study: str, images: list[dict], dpi: dict[str, float]) -> None:
    for img in images:
        assert img["width"] >= UI_COLUMN_PX, f"{study}: plot {img['alt']} is a thumbnail: {img}"
        pt = shown_pt(MIN_FONT_PT, dpi[img["alt"]], img["width"], img["shown_width"])
        assert pt >= MIN_SHOWN_PT, f"{study}: plot {img['alt']}'s smallest text is drawn at {pt:.1f} pt: {img}"


def _check_lineage_chart(study: str, charts: list[dict]) -> dict:
    """The report's first chart (the lineage by kind) can be read: few nodes, labels drawn large enough."""
    assert charts, f"{study}: the report's lineage chart is not drawn"
    chart = charts[0]
    assert 2 <= chart["nodes"] <= MAX_LINEAGE_NODES, f"{study}: lineage chart with {chart['nodes']} nodes"
    assert chart["label_px"] >= MIN_LABEL_PX, f"{study}: lineage labels drawn at {chart['label_px']:.1f} px"
    return {"nodes": chart["nodes"], "label_px": round(chart["label_px"], 1)}


def _check_cluster_examples(report_dir: Path, text: str) -> int:
    """Every example of the qdg report's table (the store's copy, whole): its token on the page, under its cluster."""
    import pandas as pd

    ex = pd.read_csv(report_dir / "cluster_examples.csv", keep_default_na=False)
    assert len(ex), "no cluster examples in the qdg report"
    for c, group in ex.groupby("cluster"):
        assert f"Cluster {c}: {int(group['size'].iloc[0])} tokens" in text, f"cluster {c}'s block is not on the page"
    for token in ex.token:
        shown = inline_code(str(token), 16).strip()  # tasks.qdg.report.EXAMPLE_TOKEN_CHARS
        assert shown in text, f"the example token {token!r} is not on the qdg report's page"
    return len(ex)


def _as_table_shows(cell: str) -> str:
    """A CSV cell as a markdown table shows it (tasks.reporting.markdown_table: numbers to 4 significant digits)."""
    try:
        return f"{float(cell):.4g}"
    except ValueError:
        return cell


def _check_inline_tables(report_dir: Path, text: str, names: list[str]) -> list[str]:
    """The named tables of the report are drawn on the page (not replaced by a link): each cell of theirs shows."""
    import pandas as pd

    shown = []
    for name in names:
        if not (report_dir / f"{name}.csv").exists():
            continue
        assert not re.search(rf"{name}: \d+ rows x \d+ columns, too wide", text), f"{name} is a link, not a table"
        df = pd.read_csv(report_dir / f"{name}.csv", keep_default_na=False, dtype=str)
        for cell in [*df.columns, *df.to_numpy().ravel()]:
            assert str(cell) in text or _as_table_shows(cell) in text, f"{name}'s {cell!r} is not on the page"
        shown.append(name)
    return shown


def test_each_study_report_renders_in_the_prefect_ui(tmp_path):
    assert chromium_binary(), "chromium is not installed (make e2e installs it)"
    SHOTS.mkdir(exist_ok=True)
    with prefect_server(tmp_path, ui=True) as api:
        ui = api.removesuffix("/api") + "/v2"  # the default UI (v2; the v1 UI does not draw Mermaid)
        env = clean_env(tmp_path / "client-home", PREFECT_API_URL=api)
        report_dirs = {}
        for study, args in _studies(tmp_path).items():
            proc = subprocess.run([sys.executable, "-m", "flows.cli", "run", study, *args, "--store",
                                   str(tmp_path / "store"), "--json"], cwd=ROOT, env=env, capture_output=True,
                                  text=True, timeout=900)
            assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
            out = json.loads(proc.stdout.strip().splitlines()[-1])
            report_dirs[study] = Path(out["artifacts"]["report"]["uri"])
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
                _check_plots_legible(study, images, _png_dpi(report.data))
                _drawn_charts(browser, report.data.count("```mermaid"), SHOTS / f"{study}-report.png")
                lineage_chart = _check_lineage_chart(study, browser.evaluate(MERMAID_JS))
                text = browser.evaluate("document.body.innerText")
                examples = _check_cluster_examples(report_dirs[study], text) if study == "qdg" else 0
                inline = _check_inline_tables(report_dirs[study], text, ["ground_truth_headline", "benchmark"])
                if study == "qdg-sparse-parity":
                    assert "ground_truth_headline" in inline, inline

                lineage = _latest(api, f"{study}-lineage")
                browser.open(f"{ui}/artifacts/artifact/{lineage.id}")
                # Mermaid draws into an <svg id="mermaid-..."> once rendered (a grey placeholder before that): the
                # lineage by kind and the full graph, which names the report
                _drawn_charts(browser, lineage.data.count("```mermaid"), SHOTS / f"{study}-lineage.png")
                drawn = browser.wait_for(
                    "[...document.querySelectorAll('svg[id^=\"mermaid\"]')].filter(s => "
                    "s.getBoundingClientRect().width > 100 && s.querySelectorAll('g.node').length >= 3"
                    " && s.textContent.includes('report')).length", 120)
                seen[study] = {"title": title, "plots": len(images), "mermaid_svgs": drawn,
                               "report_kib": round(len(report.data.encode()) / 1024, 1),
                               "lineage_kib": round(len(lineage.data.encode()) / 1024, 1),
                               "plot_px": {i["alt"]: [i["width"], round(i["shown_width"])] for i in images},
                               "lineage_chart": lineage_chart, "examples_on_page": examples, "inline": inline,
                               "ui": browser.evaluate("location.pathname")}
    print("e2e:", json.dumps(seen))
    assert set(seen) == set(_studies(tmp_path))
