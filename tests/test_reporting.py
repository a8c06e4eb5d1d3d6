"""Reports as the Prefect UI shows them: tables that fit its page inline, wider ones as links to their table
artifacts (the store's copy keeps every table inline); figures under one size policy that keeps their text legible
at the UI's column width; links that work in each copy; the cluster examples as short blocks; the lineage collapsed
by kind, the full graph one step away."""
from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from matplotlib.text import Text

from storage.lineage_graph import graph_of
from tasks.reporting import (DPI, FIG_WIDTH_IN, MIN_FONT_PT, MIN_SHOWN_PT, UI_COLUMN_PX, UI_TABLE_WIDTH, Report,
                             lineage_section, markdown_table, shown_pt, subplots, value_colorbar)


def test_a_table_wider_than_the_ui_page_links_to_its_table_artifact():
    rep = Report("r")
    narrow = pd.DataFrame({"k": [1, 2], "ari": [0.5, 0.9]})
    wide = pd.DataFrame({f"a_rather_long_column_name_{i}": [1.23456, 2.5] for i in range(8)})
    assert max(map(len, markdown_table(wide).splitlines())) > UI_TABLE_WIDTH
    rep.table("narrow", narrow)
    rep.table("wide", wide)
    keys = {"narrow": "study-narrow", "wide": "study-wide"}
    ui = rep.markdown(embed=True, table_keys=keys)
    assert markdown_table(narrow) in ui
    assert markdown_table(wide) not in ui
    assert "[study-wide](../key/study-wide)" in ui and "2 rows x 8 columns" in ui
    rows = [line for line in ui.splitlines() if line.startswith("|")]
    assert rows and max(map(len, rows)) <= UI_TABLE_WIDTH
    stored = rep.markdown(embed=False)
    assert markdown_table(wide) in stored and "../key/" not in stored


def test_report_tables_are_markdown_tables():
    rep = Report("t")
    rep.table("fits", pd.DataFrame({"quantity": ["alpha_N", "alpha_S"], "value": [0.412345, float("nan")],
                                    "ok": [True, False]}))
    md = rep.markdown(embed=False)
    lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    assert len(lines) == 4 and "quantity" in lines[0] and set(lines[1]) <= set("|-: ")
    assert "0.4123" in lines[2] and "n/a" in lines[3]


# ------------------------------------------------------------------------------------------ the figure policy
def _png_size_and_dpi(png: bytes) -> tuple[int, float]:
    from PIL import Image

    img = Image.open(io.BytesIO(png))
    assert img.mode == "P"  # a 256-colour palette: a third of the bytes of matplotlib's RGBA
    return img.width, float(img.info["dpi"][0])


def test_a_report_figure_is_saved_wide_and_sharp_enough_to_read_at_the_ui_column():
    fig, ax = subplots()
    ax.plot([1, 10, 100], [3, 2, 1], label="a legend asked for at 6 pt")
    ax.set(xscale="log", xlabel="rank of cluster", ylabel="fraction of tokens")
    ax.legend(fontsize=6)
    rep = Report("r")
    rep.figure("plot", fig)
    width, dpi = _png_size_and_dpi(rep.figures["plot"])
    assert dpi == pytest.approx(DPI, abs=0.5) and rep.dpi == DPI
    # trimmed by bbox_inches="tight", but never narrower than the UI's column: the UI scales it down, never up
    assert UI_COLUMN_PX <= width <= FIG_WIDTH_IN * DPI * 1.05
    shown = min(width, UI_COLUMN_PX)
    assert shown_pt(MIN_FONT_PT, dpi, width, shown) >= MIN_SHOWN_PT
    sizes = [t.get_fontsize() for t in fig.findobj(Text) if t.get_text()]
    assert min(sizes) >= MIN_FONT_PT  # the 6 pt legend was raised to the policy's smallest font


def test_the_old_thumbnails_would_fail_the_policy():
    # what the issue measured: a 5 in figure at 80 dpi, legend at 7 pt, shown at its natural width (~400 px)
    assert shown_pt(7, 80, 400, 400) < MIN_SHOWN_PT
    assert shown_pt(10, 80, 400, 400) < MIN_SHOWN_PT


def test_figures_off_the_policy_are_refused_by_name():
    rep = Report("r")
    narrow = Figure(figsize=(4, 3))
    narrow.subplots().plot([0, 1])
    with pytest.raises(ValueError, match="'narrow'.*4 in wide"):
        rep.figure("narrow", narrow)
    fig, ax = subplots(shape="heatmap")
    im = ax.imshow(np.eye(3))
    fig.colorbar(im, ax=ax)
    with pytest.raises(ValueError, match="colour bar without a label"):
        rep.figure("unlabelled", fig)
    fig, ax = subplots(shape="heatmap")
    value_colorbar(fig, ax, "viridis", 10, 500, "width (hidden units)", log=True)
    rep.figure("labelled", fig)
    assert list(rep.figures) == ["labelled"]


# ------------------------------------------------------------------------------------------ links that work in the UI
def test_a_linked_table_and_an_attached_page_link_to_what_each_copy_can_open(tmp_path):
    rep = Report("r")
    rep.table_link("examples", pd.DataFrame({"cluster": [0, 1], "token": ["a", "b"]}), "Every example:")
    rep.attach("clusters.html", "<html></html>", link="The examples as a page")
    ui = rep.markdown(embed=True, table_keys={"examples": "qdg-examples"})
    stored = rep.markdown(embed=False)
    assert "Every example: the table artifact [qdg-examples](../key/qdg-examples) (2 rows x 2 columns)." in ui
    assert "[examples.csv](examples.csv)" in stored and "../key/" not in stored
    # a relative link in the UI resolves to a page of the UI (/artifacts/artifact/clusters.html): none there
    assert "](clusters.html)" not in ui and "`clusters.html`" in ui
    assert "[The examples as a page](clusters.html)" in stored
    rep.write(tmp_path / "rep")
    assert (tmp_path / "rep/examples.csv").read_text().splitlines()[0] == "cluster,token"
    assert (tmp_path / "rep/clusters.html").exists()


def test_cluster_examples_are_short_blocks_with_the_token_marked():
    from tasks.qdg.report import EXAMPLE_CONTEXT_CHARS, examples_markdown

    ex = pd.DataFrame({"cluster": [0, 0, 1], "size": [30, 30, 10], "row": [1, 2, 3],
                       "context": ["def f(x):\n    return", "x" * 300, ""], "token": [" x", "`y`", "\n"],
                       "predicted": [" x", "y", "\n"], "loss": [0.012, 0.05, 0.003]})
    md = examples_markdown(ex, 80)
    assert "**Cluster 0**: 30 tokens, 37.5% of the 80 clustered" in md and "**Cluster 1**: 10 tokens" in md
    assert "- `def f(x):⏎    return` **` x`** 0.012 nats" in md
    assert "**`'y'`**" in md and "**`⏎`**" in md and "`␣`" in md  # no backtick breaks a span; no empty span
    items = [ln for ln in md.splitlines() if ln.startswith("- ")]
    assert len(items) == 3 and max(map(len, items)) <= EXAMPLE_CONTEXT_CHARS + 40
    assert "…" + "x" * (EXAMPLE_CONTEXT_CHARS - 1) + "`" in md


def test_the_ground_truth_headline_fits_the_page():
    from tasks.qdg.ground_truth import headline_table

    df = pd.DataFrame([{"variant": v, "samples": s, "k": k, "seed": seed, "n_samples": 60, "n_subtasks": 3,
                        "ari_subtask": 0.5 + 0.1 * seed, "ari_label": 0.01} for v in ("plain", "aligned+control-weights")
                       for s in ("learned", "control") for k in (2, 3) for seed in (0, 1)])
    head = headline_table(df)
    assert len(head) == 4 and set(head.k) == {3} and set(head.seeds) == {2} and set(head.ARI) == {"0.550"}
    assert max(map(len, markdown_table(head).splitlines())) <= UI_TABLE_WIDTH


# ------------------------------------------------------------------------------------------ the lineage, by kind
def _rec(kind: str, h: str, inputs: list[str], producer: str) -> dict:
    return {"kind": kind, "content_hash": h * 16, "producer": producer,
            "inputs": [{"kind": "?", "content_hash": i * 16} for i in inputs]}


def test_the_lineage_collapsed_by_kind_has_one_node_per_kind():
    models = [_rec("lm.model", m, ["t"], "lm-train") for m in "abcd"]
    losses = [_rec("lm.token_losses", x, [m], "lm-token-losses") for x, m in zip("efgh", "abcd")]
    nodes = {r["content_hash"]: r for r in [_rec("lm.tokens", "t", [], "lm-tokens"), *models, *losses,
                                             _rec("report", "r", list("efgh"), "lm-report")]}
    roles = {h: ("produced" if r["kind"] == "lm.token_losses" or h.startswith("e") else "reused")
             for h, r in nodes.items()}
    full = graph_of(nodes, roles)
    small = full.by_kind()
    assert len(full.nodes) == 10 and len(small.nodes) == 4
    mermaid = small.to_mermaid()
    assert "lm.token_losses ×4<br/>by lm-token-losses" in mermaid and "lm.model ×4" in mermaid
    assert mermaid.startswith("flowchart LR") and small.to_mermaid(direction="TB").startswith("flowchart TB")
    assert f"lm.tokens<br/>{'t' * 12}" in mermaid  # a kind with one artifact keeps its hash
    kinds = {h: r["kind"] for h, r in small.nodes.items()}
    assert sorted((kinds[a], kinds[b]) for a, b in small.edges) == [
        ("lm.model", "lm.token_losses"), ("lm.token_losses", "report"), ("lm.tokens", "lm.model")]
    by = {r["kind"]: h for h, r in small.nodes.items()}
    assert small.roles.get(by["lm.token_losses"]) == "produced" and small.roles.get(by["lm.model"]) == "reused"
    assert [small.nodes[h]["kind"] for h in small.ordered()] == ["lm.tokens", "lm.model", "lm.token_losses", "report"]


def test_a_report_shows_its_lineage_by_kind_and_keeps_the_full_graph_one_step_away():
    nodes = {r["content_hash"]: r for r in [_rec("lm.tokens", "t", [], "lm-tokens"),
                                             *(_rec("lm.model", m, ["t"], "lm-train") for m in "abcdef")]}
    rep = Report("r")
    lineage_section(rep, graph_of(nodes), "lm-losses-lineage")
    ui, stored = rep.markdown(embed=True), rep.markdown(embed=False)
    for md in (ui, stored):
        first = md.split("```mermaid\n")[1].split("```")[0]
        assert first.startswith("flowchart TB") and first.count('["') == 2 and '"lm.model ×6"' in first
    assert "[lm-losses-lineage](../key/lm-losses-lineage)" in ui and "<details>" not in ui
    full = stored.split("<details>")[1]
    assert all(h[:12] in full for h in nodes) and "../key/" not in stored
