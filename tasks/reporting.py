"""Reports: one builder that writes the same content to the store (markdown + PNG + CSV files) and to the
Prefect UI (a markdown artifact with the plots embedded as base64 PNGs, and table artifacts), all with keys; and
the one figure policy of every study (size, resolution, smallest font) that keeps a plot legible in the UI."""
from __future__ import annotations

import base64
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.text import Text

from storage import ArtifactRef, Store
from storage.lineage_graph import PRODUCED, REUSED, LineageGraph, graph_of, upstream_closure

# ------------------------------------------------------------------------------------------------ figure policy
# The Prefect UI (3.x, v2 UI) shows a markdown artifact in a column UI_COLUMN_PX CSS px wide (measured in headless
# Chromium at a 1400 px window, the artifact page's side panel beside it) and draws an image at its natural width,
# scaled down to the column when wider. Every report figure is FIG_WIDTH_IN wide and saved at DPI: ~830 px once
# trimmed (`bbox_inches="tight"`), shown at ~0.83 of that, so one point of the figure reads as ~1.3 pt on the page
# (`shown_pt`): the smallest font allowed, MIN_FONT_PT, reads as >= MIN_SHOWN_PT, and matplotlib's default 10 pt
# as ~13 pt. A wider window shows it up to its natural size; zoomed in, 150 dpi keeps the text sharp.
UI_COLUMN_PX = 690
FIG_WIDTH_IN = 6.0
FIG_HEIGHT_IN = {"plot": 4.0, "heatmap": 5.0, "row": 3.4}  # one plot; a square matrix + colour bar; two side by side
DPI = 150
MIN_FONT_PT = 8.0
MIN_SHOWN_PT = 9.0


def shown_pt(font_pt: float, dpi: float, natural_px: float, shown_px: float) -> float:
    """The size (CSS pt) at which text of `font_pt` in a figure saved at `dpi` appears on a page that draws the image
    `shown_px` wide (its natural width `natural_px`): font_pt / 72 in * dpi px/in * shown/natural * 0.75 pt/px."""
    return font_pt / 72.0 * dpi * (shown_px / natural_px) * 0.75


def subplots(*args, shape: str = "plot", **kwargs):
    """(figure, axes) like `pyplot.subplots`, but a bare `Figure` drawn by the Agg renderer: no pyplot state, no
    backend switch, nothing to close; safe in threads and worker processes. Every figure is FIG_WIDTH_IN wide;
    `shape` picks its height (FIG_HEIGHT_IN: "plot", "heatmap", "row")."""
    fig = Figure(figsize=(FIG_WIDTH_IN, FIG_HEIGHT_IN[shape]))
    return fig, fig.subplots(*args, **kwargs)


def value_colorbar(fig, ax, cmap, lo: float, hi: float, label: str, log: bool = False):
    """A labelled colour bar for a colour that encodes a value (lines or points coloured by width, rank, ...)."""
    lo, hi = float(lo), float(hi)
    norm = LogNorm(lo, hi if hi > lo else 2 * lo) if log and lo > 0 else Normalize(lo, hi if hi > lo else lo + 1)
    return fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=label)


def figure_policy_problems(fig) -> list[str]:
    """What keeps `fig` from the figure policy: its width, an unlabelled colour bar (after `apply_min_font`, no
    font is too small)."""
    problems = []
    w = float(fig.get_size_inches()[0])
    if abs(w - FIG_WIDTH_IN) > 1e-6:
        problems.append(f"{w:g} in wide, not {FIG_WIDTH_IN:g} (draw it with tasks.reporting.subplots)")
    for ax in fig.axes:
        if ax.get_label() == "<colorbar>" and not (ax.get_ylabel() or ax.get_xlabel()):
            problems.append("a colour bar without a label (say what its colour encodes)")
    return problems


def palette_png(png: bytes, dpi: int) -> bytes:
    """`png` with a 256-colour palette (median cut, no dithering): a plot's lines, text and colour maps look the
    same, in ~1/3 of the bytes (measured on the tiny studies' 22 plots at 150 dpi: 1,093 -> 387 KiB), which every
    report artifact embeds as base64."""
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    out = io.BytesIO()
    img.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        out, format="PNG", optimize=True, dpi=(dpi, dpi))
    return out.getvalue()


def apply_min_font(fig) -> None:
    """Raise every text of `fig` smaller than MIN_FONT_PT (legends, annotations) to MIN_FONT_PT."""
    for t in fig.findobj(Text):
        if t.get_text() and t.get_fontsize() < MIN_FONT_PT:
            t.set_fontsize(MIN_FONT_PT)


def md_escape(s: str, limit: int = 160) -> str:
    """`s` as one markdown table cell: pipes and backslashes escaped, newlines and tabs shown as symbols, backticks
    made quotes; cut to its last `limit` characters."""
    s = s.replace("\\", "\\\\").replace("|", "\\|").replace("\n", "⏎").replace("\t", "⇥").replace("`", "'")
    return s if len(s) <= limit else "…" + s[-limit:]


def inline_code(s: str, limit: int) -> str:
    """`s` as the text of one markdown code span: backticks made quotes, newlines and tabs shown as symbols, cut to
    its last `limit` characters; never empty (an empty span is not a code span)."""
    s = s.replace("`", "'").replace("\n", "⏎").replace("\t", "⇥")
    s = s if len(s) <= limit else "…" + s[-(limit - 1):]
    return s if s.strip() else "␣" * max(1, len(s))


def artifact_key(text: str) -> str:
    """Prefect artifact keys: lowercase letters, digits and dashes only."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", text.lower())).strip("-")


# the widest markdown table row (characters) the Prefect UI's artifact page shows without running into its side
# panel; a wider table is shown there as a link to its own table artifact, which the UI lays out and scrolls
UI_TABLE_WIDTH = 110


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub-style markdown table (`DataFrame.to_markdown`, via tabulate): numbers to 4 significant digits,
    missing values as `n/a`, no index."""
    return df.astype(object).where(df.notna(), None).to_markdown(index=False, floatfmt=".4g", missingval="n/a")


@dataclass
class Report:
    title: str
    dpi: int | None = None  # None: the policy's DPI
    blocks: list[tuple[str, object]] = field(default_factory=list)
    figures: dict[str, bytes] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        self.dpi = DPI if self.dpi is None else int(self.dpi)

    def attach(self, name: str, text: str, link: str | None = None) -> None:
        """A text file written beside report.md (e.g. a standalone HTML page), linked from the store's markdown as
        `link`; the UI's copy names the file instead (a relative link there would lead to a page of the UI)."""
        self.files[name] = text
        if link:
            self.blocks.append(("file", (name, link)))

    def table_link(self, name: str, df: pd.DataFrame, note: str) -> None:
        """A table kept whole (a CSV beside report.md, a Prefect table artifact) and not drawn on the page: a link to
        it (the table artifact in the UI, the CSV in the store's copy) after `note`."""
        self.tables[name] = df
        self.blocks.append(("table_link", (name, note, df.shape)))

    def text(self, md: str) -> None:
        self.blocks.append(("text", md))

    def table(self, name: str, df: pd.DataFrame, max_rows: int = 40, show: bool = True) -> None:
        self.tables[name] = df
        if show:
            self.blocks.append(("table", (name, df.head(max_rows), len(df))))

    def mermaid(self, heading: str, chart: str) -> None:
        """A Mermaid chart under a heading (the Prefect UI and most markdown viewers draw it)."""
        self.blocks.append(("text", heading))
        self.blocks.append(("mermaid", chart))

    def figure(self, name: str, fig) -> None:
        """Save `fig` as `name`.png at the report's dpi, under the figure policy (no text below MIN_FONT_PT; a figure
        off the policy's width or with an unlabelled colour bar is refused: ValueError)."""
        problems = figure_policy_problems(fig)
        if problems:
            raise ValueError(f"figure {name!r}: " + "; ".join(problems))
        apply_min_font(fig)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=self.dpi, bbox_inches="tight")
        self.figures[name] = palette_png(buf.getvalue(), self.dpi)
        self.blocks.append(("figure", name))

    def markdown(self, embed: bool, table_keys: dict[str, str] | None = None) -> str:
        """The report as markdown: plots embedded as data URIs (`embed`, for the Prefect UI) or linked as PNG files
        beside it (the store's copy). `table_keys` (table name -> its Prefect table artifact's key): a table wider
        than the UI's page (`UI_TABLE_WIDTH`) is shown as a link to that artifact instead of inline."""
        out = [f"# {self.title}", ""]
        for kind, payload in self.blocks:
            if kind == "text":
                out += [str(payload), ""]
            elif kind == "table":
                name, df, total = payload
                md = markdown_table(df)
                key = (table_keys or {}).get(name)
                if key and max(map(len, md.splitlines())) > UI_TABLE_WIDTH:
                    out += [f"**{name}**: {total} rows x {df.shape[1]} columns, too wide for this page: the table "
                            f"artifact [{key}](../key/{key}) (Artifacts page) shows it whole.", ""]
                    continue
                out.append(f"**{name}**" + (f" (first {len(df)} of {total} rows)" if total > len(df) else ""))
                out.append("")
                out.append(md)
                out.append("")
            elif kind == "table_link":
                name, note, (rows, cols) = payload
                key = (table_keys or {}).get(name)
                where = f"the table artifact [{key}](../key/{key})" if key and embed else f"[{name}.csv]({name}.csv)"
                out += [f"{note} {where} ({rows} rows x {cols} columns).", ""]
            elif kind == "file":
                name, link = payload
                out += [f"[{link}]({name})" if not embed else
                        f"{link}: `{name}`, beside report.md in the store's copy of this report (named at the end).",
                        ""]
            elif kind == "ui_text":
                if embed:
                    out += [str(payload), ""]
            elif kind == "details":
                summary, chart = payload
                if not embed:  # the UI's copy links to the lineage artifact instead
                    out += [f"<details><summary>{summary}</summary>", "", "```mermaid", chart, "```", "",
                            "</details>", ""]
            elif kind == "mermaid":
                out += ["```mermaid", str(payload), "```", ""]
            elif kind == "figure":
                if embed:
                    b64 = base64.b64encode(self.figures[payload]).decode()
                    out.append(f"![{payload}](data:image/png;base64,{b64})")
                else:
                    out.append(f"![{payload}]({payload}.png)")
                out.append("")
        return "\n".join(out)

    def write(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        (path / "report.md").write_text(self.markdown(embed=False))
        for name, png in self.figures.items():
            (path / f"{name}.png").write_bytes(png)
        for name, df in self.tables.items():
            df.to_csv(path / f"{name}.csv", index=False)
        for name, text in self.files.items():
            (path / name).write_text(text)


def lineage_graph(st: Store, inputs: list[ArtifactRef]) -> LineageGraph:
    """The lineage closure of a report's inputs (the artifacts its plots and tables come from, and everything they
    were computed from), read record by record from the store's lineage index."""
    return graph_of(upstream_closure(st.lineage, [r.content_hash for r in inputs]))


def publish(report: Report, st: Store, key_prefix: str, *, inputs: list[ArtifactRef],
            params: dict | None = None) -> ArtifactRef:
    """Write the report into the store and, inside a Prefect run, as keyed Prefect artifacts: the report
    (`<key_prefix>-report`, markdown with embedded plots), its tables (`<key_prefix>-<table>`) and its lineage
    (`<key_prefix>-lineage`: a Mermaid graph of every artifact it was computed from, and a table of them); and emit
    Prefect asset events for the artifacts this flow run wrote.

    The report itself ends with the same graph (kinds, hashes and producing tasks only, so that the report's
    content, hence its hash, does not change with run ids or times)."""
    graph = lineage_graph(st, inputs)
    lineage_section(report, graph, artifact_key(f"{key_prefix}-lineage"))
    ref = st.write_dir("report", report.write, inputs=inputs, params=params)
    from prefect.context import FlowRunContext, TaskRunContext

    if not (TaskRunContext.get() or FlowRunContext.get()):
        return ref
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    table_keys = {name: artifact_key(f"{key_prefix}-{name}") for name in report.tables}
    md = report.markdown(embed=True, table_keys=table_keys)
    md += f"\n\n_Store copy: `{ref.uri}` (content {ref.content_hash[:12]})_\n"
    create_markdown_artifact(markdown=md, key=artifact_key(f"{key_prefix}-report"), description=report.title)
    for name, df in report.tables.items():
        records = df.replace({np.nan: None}).to_dict(orient="records")
        create_table_artifact(table=records, key=table_keys[name], description=f"{report.title}: {name}")
    nodes = dict(graph.nodes)
    nodes[ref.content_hash] = st.lineage(ref.content_hash)
    run_id = _current_flow_run_id()
    roles = {h: PRODUCED if _written_by(r, run_id) else REUSED for h, r in nodes.items()}
    full = graph_of(nodes, roles, f"{report.title}: lineage")
    create_markdown_artifact(markdown=lineage_markdown(full, ref), key=artifact_key(f"{key_prefix}-lineage"),
                             description=f"{report.title}: where each plot and table came from")
    emit_asset_events([r for h, r in nodes.items() if roles[h] == PRODUCED], run_id)
    return ref


def by_kind_chart(graph: LineageGraph) -> str:
    """The lineage collapsed by kind as a Mermaid chart that stays readable at the column's width: top to bottom
    (a left-to-right chain of five kinds is already wider than the column, and shrinks its labels), kinds and counts
    only (producers are in the lineage artifact)."""
    return graph.by_kind().to_mermaid(detail=False, direction="TB")


def lineage_section(report: Report, graph: LineageGraph, lineage_key: str) -> None:
    """"Where this report comes from": the lineage collapsed by kind (one node per kind, `lm.token_losses ×4`: a
    chart whose labels stay readable at the column's width), then the full graph, artifact by artifact: behind a
    <details> toggle in the store's copy, in the lineage artifact (`lineage_key`) in the UI."""
    report.mermaid(f"**Where this report comes from**: the {len(graph.nodes)} artifacts it was computed from, by kind "
                   "(a kind's hash where it has one artifact; `quanta lineage <hash>` shows one in full)",
                   by_kind_chart(graph))
    report.blocks.append(("details", (f"The full graph: {len(graph.nodes)} artifacts by content hash",
                                      graph.to_mermaid())))
    report.blocks.append(("ui_text", f"The full graph, artifact by artifact, with producers and times: the lineage "
                                     f"artifact [{lineage_key}](../key/{lineage_key})."))


def lineage_markdown(graph: LineageGraph, report_ref: ArtifactRef) -> str:
    """The lineage artifact: the graph (green: written by this run; blue: reused from earlier runs) and a table of
    every artifact with its producer, flow run and time (uris: `quanta lineage <hash>`; they do not fit the UI)."""
    rows = pd.DataFrame([{"kind": r.get("kind"), "hash": r["content_hash"][:12], "producer": r.get("producer"),
                          "flow run": str(r.get("flow_run_id") or "")[:8], "created": (r.get("created_at") or "")[:19],
                          "this run": graph.roles.get(h) == PRODUCED}
                         for h in graph.ordered() for r in [graph.nodes[h]]])
    return "\n".join([
        f"# {graph.title}", "",
        f"The report `{report_ref.uri}` and every artifact it was computed from (green: written by this flow run; "
        "blue: reused from an earlier run's cache). `quanta lineage <hash>` shows any of them in full; "
        "`quanta lineage <flow run id> --format mermaid` draws a whole run.", "",
        "```mermaid", graph.to_mermaid(), "```", "", markdown_table(rows), ""])


def _current_flow_run_id() -> str | None:
    from prefect.context import FlowRunContext, TaskRunContext

    trc = TaskRunContext.get()
    if trc is not None and trc.task_run.flow_run_id:
        return str(trc.task_run.flow_run_id)
    frc = FlowRunContext.get()
    return str(frc.flow_run.id) if frc is not None and frc.flow_run is not None else None


def _written_by(record: dict, run_id: str | None) -> bool:
    return run_id is not None and (record.get("flow_run_id") == run_id or any(
        e.get("flow_run_id") == run_id for e in record.get("also_produced_by") or []))


def asset_key(uri: str) -> str:
    """A Prefect asset key for an artifact: its uri, with `file://` for a local path."""
    return uri if "://" in uri else "file://" + Path(uri).resolve().as_posix()


def emit_asset_events(records: list[dict], flow_run_id: str | None) -> int:
    """Prefect asset events for artifacts written in this flow run, as `@materialize` emits them
    (`prefect.asset.materialization.succeeded`, the artifact's asset key as the resource, its inputs as related
    `asset`s; `prefect.asset.referenced` for each input), plus the producing task and content hash in the payload.
    (`@materialize` itself needs the asset keys when the task is defined; ours are content-addressed.)
    Returns the number of materialization events sent."""
    from prefect.assets import Asset
    from prefect.events import emit_event

    def valid(uri):
        try:
            return Asset(key=asset_key(uri)).key
        except ValueError:  # a uri with characters an asset key may not hold: no event for it
            return None

    sent = 0
    run = [{"prefect.resource.id": f"prefect.flow-run.{flow_run_id}", "prefect.resource.role": "flow-run"}] \
        if flow_run_id else []
    for r in records:
        key = valid(r.get("uri") or "")
        if key is None:
            continue
        upstream = [k for k in (valid(i.get("uri") or "") for i in r.get("inputs", [])) if k]
        for k in upstream:
            emit_event(event="prefect.asset.referenced", resource={"prefect.resource.id": k}, related=[])
        emit_event(event="prefect.asset.materialization.succeeded",
                   resource={"prefect.resource.id": key,
                             "prefect.resource.name": f"{r.get('kind')}@{r['content_hash'][:12]}"},
                   related=[{"prefect.resource.id": k, "prefect.resource.role": "asset"} for k in upstream]
                   + [{"prefect.resource.id": f"quanta.task.{r.get('producer')}",
                       "prefect.resource.role": "asset-materialized-by"}] + run,
                   payload={"kind": r.get("kind"), "content_hash": r["content_hash"], "producer": r.get("producer")})
        sent += 1
    return sent
