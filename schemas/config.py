"""Config plumbing shared by every study: strict pydantic models, TOML loading, `--set a.b=v` overrides.

Every config model forbids unknown keys, so a typo in a TOML file or in `--set` fails before anything runs,
with a message naming the field.
"""
from __future__ import annotations

import json
import tomllib
import typing
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from schemas.errors import ConfigError


# the largest integer any config field takes: a config is a flow run's parameters, and the Prefect server cannot
# serialise an integer past 64 bits (every later read of that run fails); 2**53 - 1 also survives a JSON round trip
# through a float (the Prefect UI's forms)
MAX_CONFIG_INT = 2**53 - 1
# the most optimizer steps any training field takes: 50 x the paper's longest sparse-parity training (2e5 steps), and
# ~3 h at this project's CPU rate for the tiny MLPs (~1,000 steps/s); beyond it a run is a typo, not a study
MAX_TRAINING_STEPS = 10_000_000


def _too_large_int(value: Any) -> int | None:
    """The first integer in `value` (an int, or one in a list / tuple / dict) beyond +-MAX_CONFIG_INT, if any."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if abs(value) > MAX_CONFIG_INT else None
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
    return next((bad for v in items if (bad := _too_large_int(v)) is not None), None)


def _holds_bool(value: Any) -> bool:
    """Whether `value` is a bool, or a list / tuple / dict holding one (at any depth)."""
    if isinstance(value, bool):
        return True
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
    return any(_holds_bool(v) for v in items)


def _leaf_types(annotation: Any) -> set:
    args = typing.get_args(annotation)
    if not args or typing.get_origin(annotation) is typing.Literal:
        return {annotation}
    return set().union(*(_leaf_types(a) for a in args))


def _numeric_without_bool(annotation: Any) -> bool:
    """Whether an annotation takes numbers (int, float and their subclasses such as ByteSize) but no bool."""
    leaves = _leaf_types(annotation)
    if bool in leaves or Any in leaves or any(typing.get_origin(t) is typing.Literal for t in leaves):
        return False
    return any(isinstance(t, type) and issubclass(t, (int, float)) for t in leaves)


class StrictModel(BaseModel):
    """Base for config sections: unknown keys are errors, values are validated on assignment too, every float is
    finite (`inf` and `nan` are rejected: a TOML `lr = inf` would otherwise train and fail late), every integer,
    in every field, is at most MAX_CONFIG_INT in magnitude, and a bool is never read as a number (`true` is not 1)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _bool_is_not_a_number(cls, v: Any, info: ValidationInfo) -> Any:
        # pydantic's lax mode reads `true` as 1 for an int field (`projection_dims = true` projected to one dim)
        field = cls.model_fields.get(info.field_name or "")
        if field is not None and _holds_bool(v) and _numeric_without_bool(field.annotation):
            raise ValueError("a bool (true / false) is not a number: give the number itself")
        return v

    @field_validator("*", mode="after")
    @classmethod
    def _bounded_ints(cls, v: Any) -> Any:
        bad = _too_large_int(v)
        if bad is not None:
            raise ValueError(f"integers must be at most {MAX_CONFIG_INT:,} in magnitude")
        return v


M = TypeVar("M", bound=BaseModel)

# the largest config file read: the paper configs are ~2 KB, and a config becomes a flow run's parameters, which the
# Prefect server refuses past MAX_PARAMETER_BYTES; a bigger file is a mistake (a data file given as --config)
MAX_CONFIG_FILE_BYTES = 1 << 20
# Prefect's server refuses a flow run whose parameters, as JSON, pass `server.api.max_parameter_size` (524,288 bytes
# by default): the config is checked against it, less room for the store URL, before the server starts
MAX_PARAMETER_BYTES = 524_288 - 8_192


def read_toml(path: Path, what: str = "config file") -> dict:
    """The TOML table in `path`, or a ConfigError naming the file: missing, a directory, larger than
    MAX_CONFIG_FILE_BYTES, not UTF-8, not TOML, or nested too deeply for the parser."""
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a directory, not a TOML file")
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_FILE_BYTES:
            raise ConfigError(f"{what} {path} is {size:,} bytes; a config is at most {MAX_CONFIG_FILE_BYTES:,} "
                              "bytes (is it the right file?)")
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{what} {path} cannot be read ({e.strerror or e})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError(f"{what} {path} is not UTF-8 text (byte 0x{raw[e.start]:02x} on line {line}): TOML files "
                          "are UTF-8; re-save it as UTF-8") from None
    return _parse_toml(text, f"{what} {path}")


def _parse_toml(text: str, source: str) -> dict:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source} is not valid TOML: {e}") from None
    except RecursionError:
        raise ConfigError(f"{source}: arrays or tables nested too deeply for the TOML parser") from None


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
        # a validator's message that already shows the value ("(got 0)") is not followed by it again
        shown = "" if isinstance(value, dict) or "(got " in msg else f" (got {_short(value)})"
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
    except RecursionError:
        raise ConfigError(f"--set {key.strip()}=...: the value's arrays or tables are nested too deeply for the TOML "
                          "parser") from None
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
            nxt = read_toml(current).get(path_key)
        except ConfigError:
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
    included = read_toml(found, f"{path_key}: config file")
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
            data = read_toml(Path(path))
    data = apply_overrides(data, overrides, model)
    context = {"config_dir": Path(path).resolve().parent, "config_path": Path(path)} if path is not None else {}
    try:
        config = model.model_validate(data, context=context)
    except ValidationError as e:
        whole = [x["ctx"]["error"] for x in e.errors() if isinstance((x.get("ctx") or {}).get("error"), ConfigError)]
        if whole:  # an error about the config files themselves (an include cycle, an unreadable include): its own line
            raise whole[0] from None
        raise ConfigError(format_validation_error(e, source)) from None
    except RecursionError:  # values nested deeper than validation recurses (a deep array given to a list field)
        raise ConfigError(f"invalid config {source}: values nested too deeply") from None
    check_parameter_size(config, source)
    return config


def check_parameter_size(config: BaseModel, source: str) -> None:
    """ConfigError when the config, as the flow run's JSON parameters, is past MAX_PARAMETER_BYTES (the Prefect server
    would refuse the run after it started), naming its largest value."""
    dumped = config.model_dump(mode="json")
    size = len(json.dumps(dumped, separators=(",", ":")).encode())
    if size <= MAX_PARAMETER_BYTES:
        return
    where, biggest = _largest_value(dumped)
    raise ConfigError(f"invalid config {source}: it is {size:,} bytes as a flow run's parameters, the Prefect server "
                      f"takes at most {MAX_PARAMETER_BYTES:,}; the largest value is {where} ({biggest:,} bytes)")


def _largest_value(data: Any, where: str = "") -> tuple[str, int]:
    """(dotted path, JSON bytes) of the largest leaf value (or list) in a dumped config."""
    if isinstance(data, dict) and data:
        return max((_largest_value(v, f"{where}.{k}" if where else str(k)) for k, v in data.items()),
                   key=lambda t: t[1])
    return where or "<config>", len(json.dumps(data, separators=(",", ":")).encode())
