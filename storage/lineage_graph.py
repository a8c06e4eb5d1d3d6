"""The lineage graph of a store: which artifact was computed from which, walked up (producers) or down
(dependents) from an artifact, a flow run or a report, drawn as text, JSON, Mermaid or Graphviz DOT, and collapsed
by kind (`LineageGraph.by_kind`) for a view a person can follow.

Records are the store's lineage records (`Store.lineage_index()`, or read one at a time with `Store.lineage`):
dicts with `kind`, `content_hash`, `uri`, `producer`, `flow_run_id`, `inputs` ([{kind, content_hash, uri}]), ...
An edge runs from an input to the artifact computed from it. Nothing here imports Prefect.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
# how a node took part in a flow run: made by it, used from an earlier run's cache, or only upstream of those
PRODUCED, REUSED, UPSTREAM = "produced", "reused", "upstream"


def is_flow_run_id(key: str) -> bool:
    return bool(UUID_RE.match(str(key).strip().lower()))


def resolve(records: list[dict], key: str) -> dict:
    """Find one record by content-hash prefix, uri, or path (relative or absolute, as a user would paste it; a file
    inside a directory artifact, such as `.../report/<hash>.d/report.md`, names that artifact), or by kind (the
    newest artifact of that kind, e.g. `report`)."""
    key_s = str(key).rstrip("/")
    as_path = os.path.abspath(key_s) if "/" in key_s and "://" not in key_s else None
    hits = [r for r in records
            if r["content_hash"].startswith(key_s) or r.get("uri", "").rstrip("/") in (key_s, as_path)]
    if not hits:
        hits = [r for r in records if r.get("uri") and any(
            k.startswith(r["uri"].rstrip("/") + "/") for k in (key_s, as_path) if k)]
    if not hits:
        of_kind = [r for r in records if r.get("kind") == key_s]
        if of_kind:
            return max(of_kind, key=lambda r: r.get("created_at") or "")
    if not hits:
        raise KeyError(f"no artifact matches {key!r}")
    if len(hits) > 1:
        raise KeyError(f"{key!r} matches {len(hits)} artifacts; give more of the hash")
    return hits[0]


def _missing(inp: dict) -> dict:
    return {"kind": inp["kind"], "content_hash": inp["content_hash"], "uri": inp.get("uri"),
            "producer": "(record missing)", "inputs": []}


def upstream(records: list[dict], root: dict) -> list[tuple[int, dict]]:
    """Depth-first chain of producers: [(depth, record)], root first (a shared input appears under each of its
    dependents, its own inputs only the first time)."""
    by_hash = {r["content_hash"]: r for r in records}
    out, seen = [], set()

    def walk(rec, depth):
        out.append((depth, rec))
        if rec["content_hash"] in seen:
            return
        seen.add(rec["content_hash"])
        for inp in rec.get("inputs", []):
            parent = by_hash.get(inp["content_hash"])
            if parent is not None:
                walk(parent, depth + 1)
            else:
                out.append((depth + 1, _missing(inp)))

    walk(root, 0)
    return out


def downstream(records: list[dict], root: dict) -> list[tuple[int, dict]]:
    """Everything computed (directly or transitively) from `root`: [(depth, record)], depth 1 = direct dependents."""
    children = _children(records)
    out, seen = [], set()

    def walk(rec, depth):
        for child in children.get(rec["content_hash"], []):
            out.append((depth, child))
            if child["content_hash"] not in seen:
                seen.add(child["content_hash"])
                walk(child, depth + 1)

    walk(root, 1)
    return out


def _children(records: Iterable[dict]) -> dict[str, list[dict]]:
    children: dict[str, list[dict]] = {}
    for r in records:
        for inp in r.get("inputs", []):
            children.setdefault(inp["content_hash"], []).append(r)
    return children


def upstream_closure(read: Callable[[str], dict | None], hashes: Iterable[str]) -> dict[str, dict]:
    """{content_hash: record} of `hashes` and everything they were computed from, reading records one at a time
    with `read(content_hash)` (None, or KeyError/FileNotFoundError, when a record is missing: a placeholder record
    stands in). Cost: one read per artifact of the closure, not of the whole store."""
    out: dict[str, dict] = {}
    todo = [(h, None) for h in hashes]
    while todo:
        h, ref = todo.pop()
        if h in out:
            continue
        try:
            rec = read(h)
        except (KeyError, FileNotFoundError):
            rec = None
        if rec is None:
            rec = _missing(ref or {"kind": "?", "content_hash": h, "uri": None})
        out[h] = rec
        todo += [(i["content_hash"], i) for i in rec.get("inputs", [])]
    return out


def downstream_closure(records: list[dict], hashes: Iterable[str]) -> dict[str, dict]:
    """{content_hash: record} of `hashes` (those with a record) and everything computed from them."""
    by_hash = {r["content_hash"]: r for r in records}
    children = _children(records)
    out: dict[str, dict] = {}
    todo = list(hashes)
    while todo:
        h = todo.pop()
        if h in out or h not in by_hash:
            continue
        out[h] = by_hash[h]
        todo += [c["content_hash"] for c in children.get(h, [])]
    return out


def produced_by_run(records: list[dict], flow_run_id: str) -> list[dict]:
    """Records of the artifacts a flow run wrote (its own, or the same content written again by it)."""
    run = str(flow_run_id)
    return [r for r in records if r.get("flow_run_id") == run
            or any(e.get("flow_run_id") == run for e in r.get("also_produced_by") or [])]


# ------------------------------------------------------------------------------------------------- the graph
@dataclass
class LineageGraph:
    """Nodes (records by content hash, each with a role) and edges (input hash -> artifact hash)."""

    nodes: dict[str, dict]
    roles: dict[str, str] = field(default_factory=dict)
    title: str = ""

    @property
    def edges(self) -> list[tuple[str, str]]:
        return sorted({(i["content_hash"], h) for h, r in self.nodes.items() for i in r.get("inputs", [])
                       if i["content_hash"] in self.nodes})

    def ordered(self) -> list[str]:
        """Node hashes, inputs before the artifacts computed from them (then by kind and hash: stable output)."""
        indeg = {h: 0 for h in self.nodes}
        kids: dict[str, list[str]] = {h: [] for h in self.nodes}
        for a, b in self.edges:
            indeg[b] += 1
            kids[a].append(b)
        ready = sorted((h for h, d in indeg.items() if d == 0), key=self._sort_key)
        out = []
        while ready:
            h = ready.pop(0)
            out.append(h)
            for k in kids[h]:
                indeg[k] -= 1
                if indeg[k] == 0:
                    ready.append(k)
            ready.sort(key=self._sort_key)
        return out + sorted(set(self.nodes) - set(out), key=self._sort_key)  # cycles cannot happen; be total

    def _sort_key(self, h: str) -> tuple[str, str]:
        return (self.nodes[h].get("kind", ""), h)

    def to_json(self) -> dict:
        return {"title": self.title,
                "nodes": [{**self.nodes[h], "role": self.roles.get(h)} for h in self.ordered()],
                "edges": [{"input": a, "output": b} for a, b in self.edges]}

    def to_mermaid(self, detail: bool = True, direction: str | None = None) -> str:
        """A Mermaid flowchart, left to right (top to bottom past 10 artifacts, where a wide graph would be drawn
        too small to read; or `direction`, "LR" / "TB"); `detail` adds the producer task to each node."""
        lines = [f"flowchart {direction or ('LR' if len(self.nodes) <= 10 else 'TB')}"]
        for h in self.ordered():
            lines.append(f'  {_node_id(h)}["{_label(self.nodes[h], detail, "<br/>")}"]')
        for a, b in self.edges:
            lines.append(f"  {_node_id(a)} --> {_node_id(b)}")
        styles = {PRODUCED: "fill:#d9f2d9,stroke:#2e7d32", REUSED: "fill:#e3ecfa,stroke:#1f5fbf",
                  UPSTREAM: "fill:#f2f2f2,stroke:#888"}
        for role, style in styles.items():
            members = [_node_id(h) for h in self.ordered() if self.roles.get(h) == role]
            if members:
                lines.append(f"  classDef {role} {style}")
                lines.append(f"  class {','.join(members)} {role}")
        return "\n".join(lines)

    def by_kind(self) -> "LineageGraph":
        """The graph collapsed by kind: one node per artifact kind (`lm.token_losses ×4`), an edge where any artifact
        of one kind was an input of one of another; what a person can follow when the full graph has dozens of
        artifacts. A node keeps its members' role where they all share one. Edges within a kind are dropped."""
        members: dict[str, list[str]] = {}
        for h in self.ordered():
            members.setdefault(str(self.nodes[h].get("kind")), []).append(h)
        gid = {kind: hashlib.sha256(f"kind:{kind}".encode()).hexdigest() for kind in members}
        kind_of = {h: str(r.get("kind")) for h, r in self.nodes.items()}
        nodes, roles = {}, {}
        for kind, hs in members.items():
            inputs = sorted({kind_of[i["content_hash"]] for h in hs for i in self.nodes[h].get("inputs", [])
                             if i["content_hash"] in self.nodes} - {kind})
            producers = list(dict.fromkeys(str(self.nodes[h].get("producer")) for h in hs))
            nodes[gid[kind]] = {"kind": kind, "content_hash": gid[kind], "count": len(hs), "members": hs,
                                "producer": ", ".join(producers[:2]) + (", ..." if len(producers) > 2 else ""),
                                "inputs": [{"kind": k, "content_hash": gid[k]} for k in inputs]}
            shared = {self.roles.get(h) for h in hs}
            if len(shared) == 1 and None not in shared:
                roles[gid[kind]] = shared.pop()
        return LineageGraph(nodes=nodes, roles=roles, title=self.title)

    def to_dot(self) -> str:
        """A Graphviz digraph (`dot -Tsvg`)."""
        fills = {PRODUCED: "#d9f2d9", REUSED: "#e3ecfa", UPSTREAM: "#f2f2f2"}
        lines = ["digraph lineage {", "  rankdir=LR;", '  node [shape=box, style="rounded,filled", '
                 'fillcolor="#ffffff", fontname="Helvetica", fontsize=10];']
        if self.title:
            lines.append(f"  label={json.dumps(self.title)}; labelloc=t;")
        for h in self.ordered():
            fill = fills.get(self.roles.get(h, ""), "#ffffff")
            lines.append(f"  {_node_id(h)} [label={json.dumps(_label(self.nodes[h], True, chr(10)))}, "
                         f"fillcolor=\"{fill}\"];")
        for a, b in self.edges:
            lines.append(f"  {_node_id(a)} -> {_node_id(b)};")
        lines.append("}")
        return "\n".join(lines)

    def to_text(self) -> str:
        """One line per artifact, inputs first: `kind@hash  by producer (flow run, time)  <- inputs`."""
        lines = [self.title] if self.title else []
        for h in self.ordered():
            r = self.nodes[h]
            ins = [i["content_hash"][:12] for i in r.get("inputs", [])]
            role = f"[{self.roles[h]}] " if h in self.roles else ""
            lines.append(f"- {role}{describe(r)}" + (f"  <- {', '.join(ins)}" if ins else ""))
        return "\n".join(lines)


def describe(r: dict) -> str:
    """`kind@hash12  by producer (flow run 1a2b3c4d, 2026-01-01T00:00:00, code 0.1.0+g...)`."""
    return (f"{r.get('kind')}@{r['content_hash'][:12]}  by {r.get('producer')} "
            f"(flow run {str(r.get('flow_run_id'))[:8]}, {(r.get('created_at') or '')[:19]}, "
            f"code {r.get('code_version', '?')})")


def _node_id(h: str) -> str:
    return f"a{h[:16]}"


def _label(r: dict, detail: bool, br: str) -> str:
    if r.get("count", 1) > 1:  # a node of a graph collapsed by kind (`by_kind`)
        text = f"{r.get('kind')} ×{r['count']}"
    else:
        text = f"{r.get('kind')}{br}{(r.get('members') or [r['content_hash']])[0][:12]}"
    if detail:
        text += f"{br}by {r.get('producer')}"
    # Mermaid labels are quoted: no double quotes, no markup characters from task names
    return re.sub(r'["<>{}\[\]]', "", text.replace(br, "\0")).replace("\0", br)


def graph_of(nodes: dict[str, dict], roles: dict[str, str] | None = None, title: str = "") -> LineageGraph:
    return LineageGraph(nodes=dict(nodes), roles=dict(roles or {}), title=title)
