"""Reports: one builder that writes the same content to the store (markdown + PNG + CSV files) and to the
Prefect UI (a markdown artifact with the plots embedded as base64 PNGs, and table artifacts), all with keys."""
from __future__ import annotations

import base64
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from storage import ArtifactRef, Store


def subplots(*args, figsize=(5, 3.6), **kwargs):
    """(figure, axes) like `pyplot.subplots`, but a bare `Figure` drawn by the Agg renderer: no pyplot state, no
    backend switch, nothing to close; safe in threads and worker processes."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*args, **kwargs)


def artifact_key(text: str) -> str:
    """Prefect artifact keys: lowercase letters, digits and dashes only."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", text.lower())).strip("-")


def _fmt(x) -> str:
    if isinstance(x, (float, np.floating)):
        if np.isnan(x):
            return "n/a"
        return f"{x:.4g}"
    return str(x)


@dataclass
class Report:
    title: str
    dpi: int = 80
    blocks: list[tuple[str, object]] = field(default_factory=list)
    figures: dict[str, bytes] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)

    def text(self, md: str) -> None:
        self.blocks.append(("text", md))

    def table(self, name: str, df: pd.DataFrame, max_rows: int = 40, show: bool = True) -> None:
        self.tables[name] = df
        if show:
            self.blocks.append(("table", (name, df.head(max_rows), len(df))))

    def figure(self, name: str, fig) -> None:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=self.dpi, bbox_inches="tight")
        self.figures[name] = buf.getvalue()
        self.blocks.append(("figure", name))

    def markdown(self, embed: bool) -> str:
        out = [f"# {self.title}", ""]
        for kind, payload in self.blocks:
            if kind == "text":
                out += [str(payload), ""]
            elif kind == "table":
                name, df, total = payload
                out.append(f"**{name}**" + (f" (first {len(df)} of {total} rows)" if total > len(df) else ""))
                out.append("")
                out.append("| " + " | ".join(map(str, df.columns)) + " |")
                out.append("|" + "---|" * len(df.columns))
                for row in df.itertuples(index=False):
                    out.append("| " + " | ".join(_fmt(v) for v in row) + " |")
                out.append("")
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


def publish(report: Report, store: Store, key_prefix: str, *, inputs: list[ArtifactRef],
            params: dict | None = None) -> ArtifactRef:
    """Write the report into the store and, inside a Prefect run, as keyed Prefect artifacts."""
    ref = store.write_dir("report", report.write, inputs=inputs, params=params)
    try:
        from prefect.artifacts import create_markdown_artifact, create_table_artifact
        from prefect.context import TaskRunContext, FlowRunContext

        if TaskRunContext.get() or FlowRunContext.get():
            md = report.markdown(embed=True) + f"\n\n_Store copy: `{ref.uri}` (content {ref.content_hash[:12]})_\n"
            create_markdown_artifact(markdown=md, key=artifact_key(f"{key_prefix}-report"),
                                     description=report.title)
            for name, df in report.tables.items():
                records = df.replace({np.nan: None}).to_dict(orient="records")
                create_table_artifact(table=records, key=artifact_key(f"{key_prefix}-{name}"),
                                      description=f"{report.title}: {name}")
    except ImportError:  # pragma: no cover
        pass
    return ref
