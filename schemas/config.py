"""Config plumbing shared by every study: strict pydantic models, TOML loading, `--set a.b=v` overrides.

Every config model forbids unknown keys, so a typo in a TOML file or in `--set` fails before anything runs,
with a message naming the field.
"""
from __future__ import annotations

import tomllib
import typing
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from schemas.errors import ConfigError


# the largest integer any config field takes: a config is a flow run's parameters, and the Prefect server cannot
# serialise an integer past 64 bits (every later read of that run fails); 2**53 - 1 also survives a JSON round trip
# through a float (the Prefect UI's forms)
MAX_CONFIG_INT = 2**53 - 1


def _too_large_int(value: Any) -> int | None:
    """The first integer in `value` (an int, or one in a list / tuple / dict) beyond +-MAX_CONFIG_INT, if any."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if abs(value) > MAX_CONFIG_INT else None
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
    return next((bad for v in items if (bad := _too_large_int(v)) is not None), None)


class StrictModel(BaseModel):
    """Base for config sections: unknown keys are errors, values are validated on assignment too, every float is
    finite (`inf` and `nan` are rejected: a TOML `lr = inf` would otherwise train and fail late) and every integer,
    in every field, is at most MAX_CONFIG_INT in magnitude."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False, allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _bounded_ints(cls, v: Any) -> Any:
        bad = _too_large_int(v)
        if bad is not None:
            raise ValueError(f"integers must be at most {MAX_CONFIG_INT:,} in magnitude")
        return v


M = TypeVar("M", bound=BaseModel)


def positive_distinct(name: str, values: list[int], empty_hint: str = "") -> list[int]:
    """Validator body for lists like widths / data sizes: non-empty, positive, distinct; returned sorted."""
    if not values:
        raise ValueError(f"{name} must not be empty{empty_hint}")
    bad = [v for v in values if v < 1]
    if bad:
        raise ValueError(f"{name} must be positive integers (got {bad[0]})")
    if len(set(values)) != len(values):
        raise ValueError(f"{name} must be distinct")
    return sorted(values)


class ReportConfig(StrictModel):
    """`[report]` of every study; studies subclass it to set their default title."""

    title: str = "quanta report"
    plots: bool = Field(True, description="draw plots (PNG in the store, embedded in the Prefect artifact)")
    dpi: int | None = Field(None, ge=30, le=300, description="PNG resolution; default: the report policy's "
                            "(tasks.reporting.DPI, legible in the Prefect UI)")


def format_validation_error(err: ValidationError, source: str) -> str:
    """One line: the config's source, then each bad field with what is wrong and its value, `; `-separated."""
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        value = e.get("input")
        shown = "" if isinstance(value, dict) else f" (got {_short(value)})"
        parts.append(f"{loc}: {msg}{shown}" if loc else msg)
    return f"invalid config {source}: " + "; ".join(parts)


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b=v` -> (["a", "b"], v) with v parsed as a TOML value (numbers, bools, arrays), else a string."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected section.key=value")
    key, raw = item.split("=", 1)
    path = [p.strip() for p in key.strip().split(".")]
    if not all(path):
        raise ConfigError(f"--set {item!r}: empty key part in {key!r}")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return path, value


def apply_overrides(data: dict, overrides: list[str] | None, model: type[BaseModel] | None = None) -> dict:
    """Apply `--set` overrides to a raw config dict. Unknown sections/keys are rejected here when `model`
    is given (so the message says which --set was wrong), and again by the model's validation."""
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for item in overrides or []:
        path, value = parse_override(item)
        if model is not None:
            _check_path(model, path, item)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is not a section")
        node[path[-1]] = value
    return data


def _check_path(model: type[BaseModel], path: list[str], item: str) -> None:
    current: Any = model
    for i, part in enumerate(path):
        fields = getattr(current, "model_fields", None)
        if fields is None:
            raise ConfigError(f"--set {item!r}: {'.'.join(path[:i])!r} is not a section")
        if part not in fields:
            where = ".".join(path[:i]) or "top level"
            raise ConfigError(f"--set {item!r}: unknown key {part!r} in {where}; known: {sorted(fields)}")
        current = _model_in(fields[part].annotation)
        if current is None and i < len(path) - 1:
            raise ConfigError(f"--set {item!r}: {part!r} is a value, not a section")


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation (`Model`, `Model | None`, `Optional[Model]`), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def deep_merge(base: dict, top: dict) -> dict:
    """`top` over `base`, recursively for nested tables."""
    out = dict(base)
    for k, v in top.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _shown(path: Path) -> str:
    """A path as a user would type it: relative to the working directory when under it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _find_included(raw: Any, path_key: str, config_dir: Path | None) -> Path:
    p = Path(str(raw)).expanduser()
    candidates = [p] if p.is_absolute() else [*([config_dir / p] if config_dir else []), Path.cwd() / p]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise ValueError(f"{path_key}: config file not found: {raw} (looked in {', '.join(map(str, candidates))})")
    return found.resolve()


def _check_include_cycle(first: Path, path_key: str, including: Path | None) -> None:
    """ConfigError "A includes itself (A → B → A)" when following `path_key` from `first` (included by
    `including`) comes back to a file already in the chain."""
    chain = [including.resolve()] if including is not None else []
    current = first
    while current not in chain:
        chain.append(current)
        try:
            nxt = tomllib.loads(current.read_text()).get(path_key)
        except (OSError, tomllib.TOMLDecodeError):
            return  # reported where it is read
        if nxt is None:
            return
        try:
            current = _find_included(nxt, path_key, current.parent)
        except ValueError:
            return
    cycle = chain[chain.index(current):] + [current]
    raise ConfigError(f"{_shown(current)} includes itself ({' → '.join(_shown(c) for c in cycle)})")


def include_section(data: Any, section: str, path_key: str, config_dir: Path | None,
                    including: Path | None = None) -> Any:
    """A study config may name another study's config instead of inlining it: `path_key = "../lm/tiny.toml"`
    (relative to the including file, else to the working directory) becomes the `section` table, with any inline
    `[section]` values (e.g. from --set) on top. A chain of includes that comes back to a file already in it (the
    `including` file itself, or A → B → A) is a ConfigError naming the cycle."""
    if not isinstance(data, dict) or path_key not in data:
        return data
    data = dict(data)
    found = _find_included(data.pop(path_key), path_key, config_dir)
    _check_include_cycle(found, path_key, including)
    try:
        included = tomllib.loads(found.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path_key}: {found} is not valid TOML: {e}") from None
    data[section] = deep_merge(included, data.get(section) or {})
    return data


def load_config(model: type[M], path: str | Path | None = None, overrides: list[str] | None = None,
                data: dict | None = None) -> M:
    """Load a TOML file (or a dict), apply overrides, validate. Raises ConfigError naming the bad field."""
    source = str(path) if path is not None else "<dict>"
    if data is None:
        if path is None:
            data = {}
        else:
            p = Path(path)
            if not p.is_file():
                raise ConfigError(f"config file not found: {p}")
            try:
                data = tomllib.loads(p.read_text())
            except tomllib.TOMLDecodeError as e:
                raise ConfigError(f"config file {p} is not valid TOML: {e}") from None
    data = apply_overrides(data, overrides, model)
    context = {"config_dir": Path(path).resolve().parent, "config_path": Path(path)} if path is not None else {}
    try:
        return model.model_validate(data, context=context)
    except ValidationError as e:
        whole = [x["ctx"]["error"] for x in e.errors() if isinstance((x.get("ctx") or {}).get("error"), ConfigError)]
        if whole:  # an error about the config files themselves (an include cycle): its own line
            raise whole[0] from None
        raise ConfigError(format_validation_error(e, source)) from None
