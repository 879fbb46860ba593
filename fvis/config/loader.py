"""Loading YAML configs: safe parsing, `--set` overrides, and every validation error reported
as one `file:line: yaml.path: message` line."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ValidationError,
)

from fvis.config.render import Config
from fvis.errors import SpecError, UserError, YamlPath

MAX_CONFIG_BYTES = 1_000_000
MAX_CONFIG_NODES = 100_000
M = TypeVar("M", bound=BaseModel)

# ----------------------------------------------------------------------------- loading


@dataclass
class Source:
    """Where a config came from: the file, the line of every YAML path, the --set overrides."""

    path: Path
    lines: dict[YamlPath, int] = field(default_factory=dict)
    overrides: dict[YamlPath, str] = field(default_factory=dict)

    def where(self, loc: YamlPath) -> str:
        """`file:line: yaml.path` for the nearest located ancestor of loc."""
        dotted = dotted_path(loc) or "(top level)"
        for n in range(len(loc), -1, -1):
            if loc[:n] in self.overrides:
                return f"{self.path}: --set {self.overrides[loc[:n]]}: {dotted}"
            if loc[:n] in self.lines:
                return f"{self.path}:{self.lines[loc[:n]]}: {dotted}"
        return f"{self.path}: {dotted}"

    def error(self, err: SpecError) -> str:
        """One line for a build-time error at a YAML location."""
        return f"{self.where(err.loc)}: {err.message}"


@dataclass
class Loaded:
    """A validated config with the source that reports errors against it."""

    config: Config
    source: Source


class ConfigError(UserError):
    """One or more errors in a config file, each already formatted as one line."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


def dotted_path(loc: YamlPath) -> str:
    """('objective', 'terms', 0, 'layer') -> 'objective.terms[0].layer'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def load_config(path: Path, overrides: Sequence[str] = ()) -> Loaded:
    """Read, parse and validate a render config, applying `--set a.b=value` overrides."""
    config, source = validate_file(path, Config, overrides)
    if config.name is None:
        config = config.model_copy(update={"name": _default_name(path)})
    return Loaded(config, source)


def validate_file(path: Path, schema: type[M], overrides: Sequence[str] = ()) -> tuple[M, Source]:
    """Any YAML file validated against a schema; every error reported as `file:line: path: msg`."""
    source = Source(path)
    data = _read_yaml(path, source)
    for item in overrides:
        loc, value = _parse_override(path, item)
        _apply_override(path, data, loc, value)
        source.overrides[loc] = item
    try:
        return schema.model_validate(data), source
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, data, source)) from None


def _default_name(path: Path) -> str:
    """A run name from the file's stem, reduced to the characters a run name allows."""
    stem = "".join(c if c.isalnum() or c in "._-" else "-" for c in path.stem).lstrip("._-")
    return stem[:128] or "run"


def _read_yaml(path: Path, source: Source) -> dict[str, Any]:
    """safe_load the file and record the line of every mapping key and sequence item."""
    if not path.is_file():
        raise UserError(f"{path}: no such config file")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise UserError(f"{path}: config is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None and _expanded_size(node, {}, set()) > MAX_CONFIG_NODES:
            raise UserError(
                f"{path}: expands to more than {MAX_CONFIG_NODES} values (YAML anchors and aliases)"
            )
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"{path}{line}: invalid YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}:1: the top level must be a mapping, not {type(data).__name__}")
    _record_lines(node, (), source.lines)
    return data


def _expanded_size(node: yaml.Node, sizes: dict[int, int], stack: set[int]) -> int:
    """How many values a YAML node stands for once every alias is expanded (memoized, so a
    "billion laughs" file is measured without being expanded)."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in stack:
        return MAX_CONFIG_NODES + 1  # a recursive alias never ends
    stack.add(key)
    children: list[yaml.Node] = []
    if isinstance(node, yaml.MappingNode):
        children = [part for pair in node.value for part in pair]
    elif isinstance(node, yaml.SequenceNode):
        children = list(node.value)
    size = 1 + sum(_expanded_size(child, sizes, stack) for child in children)
    stack.discard(key)
    sizes[key] = size
    return size


def _record_lines(node: yaml.Node, loc: YamlPath, lines: dict[YamlPath, int]) -> None:
    lines.setdefault(loc, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            child = (*loc, key.value)
            lines[child] = key.start_mark.line + 1
            _record_lines(value, child, lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _record_lines(item, (*loc, i), lines)


def _parse_override(path: Path, item: str) -> tuple[YamlPath, Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise UserError(f"{path}: --set {item}: expected dotted.path=value, e.g. optim.steps=64")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        raise UserError(f"{path}: --set {item}: the value is not valid YAML") from None
    loc = tuple(int(p) if p.isdigit() else p for p in key.split("."))
    return loc, value


def _apply_override(path: Path, data: dict[str, Any], loc: YamlPath, value: Any) -> None:
    node: Any = data
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(node, dict) and isinstance(part, str):
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            if last:
                node[part] = value
            else:
                node = node[part]
        else:
            raise UserError(f"{path}: --set {dotted_path(loc)}: no such place in the config")


def _format_errors(exc: ValidationError, data: dict[str, Any], source: Source) -> list[str]:
    out: list[str] = []
    for error in exc.errors(include_url=False):
        loc = _data_loc(error["loc"], data)
        if error["type"] == "union_tag_invalid":
            loc = (*loc, str(error["ctx"]["discriminator"]).strip("'"))
        line = f"{source.where(loc)}: {_message(error)}"
        if line not in out:
            out.append(line)
    return out


def _data_loc(loc: tuple[Any, ...], data: Any) -> YamlPath:
    """Drop the union tags pydantic inserts into error locations, keeping the YAML path."""
    out: list[str | int] = []
    node = data
    tag_skipped = False
    for i, part in enumerate(loc):
        is_tag = isinstance(node, dict) and part in (node.get("kind"), node.get("source"))
        if is_tag and not tag_skipped:
            tag_skipped = True
            continue
        tag_skipped = False
        if (isinstance(node, dict) and part in node) or (
            isinstance(node, list) and isinstance(part, int) and part < len(node)
        ):
            node = node[part]
        elif i < len(loc) - 1 and not isinstance(part, int):
            continue
        else:
            node = None
        out.append(part)
    return tuple(out)


def _message(error: Any) -> str:
    """pydantic's message, made specific where it helps (unknown kinds, unknown keys)."""
    ctx = error.get("ctx") or {}
    if error["type"] == "union_tag_invalid":
        tag = ctx.get("tag")
        expected = [t.strip(" '") for t in str(ctx.get("expected_tags", "")).split(",")]
        hint = difflib.get_close_matches(str(tag), expected, n=3)
        suggestion = f"; did you mean {', '.join(map(repr, hint))}?" if hint else ""
        return f"unknown {tag!r}{suggestion} (choose from {', '.join(expected)})"
    if error["type"] == "extra_forbidden":
        return "unknown key"
    return str(error["msg"]).removeprefix("Value error, ")
