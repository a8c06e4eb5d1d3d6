"""Representation transforms (schemas.qdg_transform.Transform), one module for both paths: the parity MLP
(tasks.qdg.parity_representations) and language models (tasks.qdg.gradients, tasks.qdg.lm_representations).

A parameter-space row is the concatenation of blocks, one per parameter tensor, in `names` order with `sizes`
entries each. `transform_rows` applies, in order: `keep` (only the blocks whose name matches one of the regexes),
`power` (|g|^p) or `support` (1 where |g| > threshold x the row's largest |g|), `normalise` (each tensor's, or each
module's, block divided by its L2 norm; an all-zero block stays zero). Each step commutes with a positive scale of
the row, so applying it to a unit row gives the transform of the raw row up to scale: exact after the row's L2 norm.

Why (the known-quanta benchmark, docs/qdg.md): |g|'s magnitudes are dominated by the first layer's block (active
units x input bits: most of the dims, mostly about the irrelevant bits); a power p < 1 flattens those magnitudes
toward the support (which units and inputs a sample touches), and per-block normalisation keeps the small blocks
(biases, output layer) from being drowned by the large one.
"""
from __future__ import annotations

import re

import torch

from schemas.qdg_transform import Transform


def kept_blocks(names: list[str], sizes: list[int], transform: Transform) -> list[tuple[str, int, int]]:
    """(name, start, stop) of each block the transform keeps, as column ranges of the untransformed row. Refused
    when `keep` leaves nothing."""
    if len(names) != len(sizes):
        raise ValueError(f"{len(names)} parameter names for {len(sizes)} block sizes")
    out, start = [], 0
    for name, size in zip(names, sizes):
        if not transform.keep or any(re.search(p, name) for p in transform.keep):
            out.append((name, start, start + int(size)))
        start += int(size)
    if not out:
        raise ValueError(f"transform keep = {list(transform.keep)} matches none of the parameters {names}")
    return out


def transformed_layout(names: list[str], sizes: list[int], transform: Transform) -> tuple[list[str], list[int]]:
    """The (names, sizes) of the transformed row's blocks."""
    kept = kept_blocks(names, sizes, transform)
    return [n for n, _, _ in kept], [b - a for _, a, b in kept]


def module_of(name: str) -> str:
    """'layers.0.mlp.dense_4h_to_h.weight' -> 'layers.0.mlp.dense_4h_to_h'; '0.weight' -> '0'."""
    return name.rsplit(".", 1)[0] if "." in name else name


def block_groups(names: list[str], sizes: list[int], unit: str) -> list[list[tuple[int, int]]]:
    """Column ranges grouped into the blocks `normalise` divides: one group per tensor, or per module (tensors
    sharing a module, contiguous or not)."""
    ranges, start = [], 0
    for size in sizes:
        ranges.append((start, start + int(size)))
        start += int(size)
    if unit == "tensor":
        return [[r] for r in ranges]
    if unit != "module":
        raise ValueError(f"block unit must be 'tensor' or 'module' (got {unit!r})")
    groups: dict[str, list[tuple[int, int]]] = {}
    for name, r in zip(names, ranges):
        groups.setdefault(module_of(name), []).append(r)
    return list(groups.values())


def transform_rows(raw: torch.Tensor, names: list[str], sizes: list[int], transform: Transform) -> torch.Tensor:
    """The transformed rows (n, kept dims), a new tensor of raw's dtype (raw (n, sum(sizes)) is not changed);
    the identity returns raw itself."""
    if raw.ndim != 2 or raw.shape[1] != sum(int(s) for s in sizes):
        raise ValueError(f"rows of shape {tuple(raw.shape)} do not match the blocks' {sum(sizes)} columns")
    if transform.is_identity():
        return raw
    kept = kept_blocks(names, sizes, transform)
    x = torch.cat([raw[:, a:b] for _, a, b in kept], dim=1) if transform.keep else raw.clone()
    if transform.power is not None:
        x = x.abs_().pow_(transform.power) if transform.power != 1 else x.abs_()
    elif transform.support:
        mag = x.abs()
        x = (mag > transform.support_threshold * mag.amax(dim=1, keepdim=True)).to(raw.dtype)
    if transform.normalise != "none":
        knames, ksizes = [n for n, _, _ in kept], [b - a for _, a, b in kept]
        for group in block_groups(knames, ksizes, transform.normalise):
            norm = torch.sqrt(sum((x[:, a:b].double() ** 2).sum(dim=1) for a, b in group))
            scale = torch.where(norm > 0, 1.0 / norm, torch.zeros_like(norm)).to(x.dtype)[:, None]
            for a, b in group:
                x[:, a:b] *= scale
    return x
