"""Loading YAML configs: safe parsing, `--set` overrides, and every validation error reported
as one `file:line: yaml.path: message` line."""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
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
from fvis.expression import MAX_DEPTH, MAX_INT_DIGITS

MAX_CONFIG_BYTES = 1_000_000
MAX_CONFIG_NODES = 100_000
# The longest `--set` item quoted whole in a message; a longer one is cut to this many characters.
SHOWN_OVERRIDE = 60
M = TypeVar("M", bound=BaseModel)
INT_TAG = "tag:yaml.org,2002:int"
MERGE_TAG = "tag:yaml.org,2002:merge"
SELF_ALIAS = "a YAML alias inside the list or mapping it names: it nests without end"

# ----------------------------------------------------------------------------- loading


@dataclass
class Source:
    """Where a config came from: the file, the line of every YAML path, and the options that
    replaced values (`--set a.b=1`, `--data zoo:shapes`), as messages quote them."""

    path: Path
    lines: dict[YamlPath, int] = field(default_factory=dict)
    overrides: dict[YamlPath, str] = field(default_factory=dict)

    def where(self, loc: YamlPath) -> str:
        """`file:line: yaml.path` for the nearest located ancestor of loc; a place the file does
        not hold but a `--set` created (`--set transforms.x=1` made `transforms` a mapping) is
        that override's."""
        dotted = dotted_path(loc) or "(top level)"
        if loc and loc not in self.lines:
            below = [item for place, item in self.overrides.items() if place[: len(loc)] == loc]
            if below:
                return f"{self.path}: {below[0]}: {dotted}"
        for n in range(len(loc), -1, -1):
            if loc[:n] in self.overrides:
                return f"{self.path}: {self.overrides[loc[:n]]}: {dotted}"
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


def load_config(
    path: Path, overrides: Sequence[str] = (), options: Mapping[str, tuple[str, Any]] | None = None
) -> Loaded:
    """Read, parse and validate a render config, applying `--set a.b=value` overrides, then
    `options`: top-level keys set by a command's own flags, as {key: (flag, value)}, e.g.
    {"data": ("--data", "zoo:shapes")} (the value is taken as given, not parsed as YAML)."""
    config, source = validate_file(path, Config, overrides, options)
    if config.name is None:
        config = config.model_copy(update={"name": _default_name(path)})
    return Loaded(config, source)


def validate_file(
    path: Path,
    schema: type[M],
    overrides: Sequence[str] = (),
    options: Mapping[str, tuple[str, Any]] | None = None,
) -> tuple[M, Source]:
    """Any YAML file validated against a schema; every error reported as `file:line: path: msg`."""
    source = Source(path)
    data = _read_yaml(path, source)
    for item in overrides:
        loc, value = _parse_override(path, item)
        _apply_override(path, data, loc, value)
        source.overrides[loc] = f"--set {_shown(item)}"
    for key, (flag, value) in (options or {}).items():
        data[key] = value
        source.overrides[(key,)] = _shown(f"{flag} {value}")
    try:
        return schema.model_validate(data), source
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, data, source)) from None


def _default_name(path: Path) -> str:
    """A run name from the file's stem, reduced to the characters a run name allows."""
    stem = "".join(c if c.isalnum() or c in "._-" else "-" for c in path.stem).lstrip("._-")
    return stem[:128] or "run"


def _read_yaml(path: Path, source: Source) -> dict[str, Any]:
    """Parse the file (safely) and record the line of every mapping key and sequence item."""
    if not path.is_file():
        raise UserError(f"{path}: no such config file")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise UserError(f"{path}: config is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    data, problems = parse_yaml(text, (), source.lines)
    if problems:
        raise ConfigError([f"{path}{p.at}: {p.text}" for p in problems])
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}:1: the top level must be a mapping, not {type(data).__name__}")
    return data


@dataclass
class Problem:
    """Something in a YAML text that fvis refuses before reading it: where, and why."""

    loc: YamlPath
    line: int | None
    message: str

    @property
    def at(self) -> str:
        """`:line`, or nothing where the whole text is to blame."""
        return "" if self.line is None else f":{self.line}"

    @property
    def text(self) -> str:
        """`yaml.path: message`, the path cut after a few parts (a depth bomb's is thousands
        long); the message alone at the top level."""
        if not self.loc:
            return self.message
        return f"{dotted_path(self.loc[:8])}{'...' if len(self.loc) > 8 else ''}: {self.message}"


def parse_yaml(
    text: str, prefix: YamlPath = (), lines: dict[YamlPath, int] | None = None
) -> tuple[Any, list[Problem]]:
    """The data a YAML text holds, or what is wrong with it, each problem at its line.

    Parsed safely, and checked before anything is built from it: nesting deeper than MAX_DEPTH
    (PyYAML's composer recurses once per level, so 20,000 `[` would exhaust Python's stack),
    more than MAX_CONFIG_NODES values once aliases are expanded ("billion laughs"), integers of
    more than MAX_INT_DIGITS digits (Python refuses to convert 4300) and duplicate keys (PyYAML
    keeps the last one silently). `prefix` is where the text goes in the config (a `--set`
    value's path); `lines` receives the line of every key and item."""
    try:
        loader = _Loader(text, prefix)  # reading starts here: it refuses control characters
    except yaml.YAMLError as exc:
        return None, [_invalid(exc, prefix)]
    try:
        node = loader.get_single_node()
        if node is None:
            return None, []
        if _expanded_size(node, {}, set()) > MAX_CONFIG_NODES:
            message = f"expands to more than {MAX_CONFIG_NODES} values (YAML anchors and aliases)"
            return None, [Problem(prefix, None, message)]
        problems: list[Problem] = []
        _walk(node, prefix, {} if lines is None else lines, problems, set())
        if problems:
            return None, problems
        return loader.construct_document(node), []
    except _Refused as exc:
        return None, [Problem(exc.loc, exc.line, exc.message)]
    except yaml.YAMLError as exc:
        return None, [_invalid(exc, prefix)]
    finally:
        loader.dispose()


def _invalid(exc: yaml.YAMLError, prefix: YamlPath) -> Problem:
    """PyYAML's error as one problem, at its line where it has one."""
    mark = getattr(exc, "problem_mark", None)
    line = mark.line + 1 if mark is not None else None
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return Problem(prefix, line, f"invalid YAML: {problem}")


class _Refused(Exception):
    """A YAML text refused while composing, before the composer recurses any deeper."""

    def __init__(self, loc: YamlPath, line: int, message: str) -> None:
        super().__init__(message)
        self.loc = loc
        self.line = line
        self.message = message


def _too_deep(how: str = "") -> str:
    return (
        f"nested more than {MAX_DEPTH} levels deep{how}: fvis reads at most {MAX_DEPTH} levels "
        "of lists and mappings"
    )


class _Loader(yaml.SafeLoader):
    """yaml.SafeLoader that counts the nesting as it composes and stops at MAX_DEPTH levels,
    where the composer's recursion is still shallow; aliases count with what they stand for."""

    def __init__(self, text: str, prefix: YamlPath) -> None:
        super().__init__(text)
        self.loc: list[str | int] = list(prefix)
        self.depth = 0
        # Levels of lists and mappings in each composed collection (aliases expanded).
        self.heights: dict[int, int] = {}

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        """One node, refused when it would nest deeper than MAX_DEPTH."""
        if parent is not None:
            part = index.value if isinstance(index, yaml.ScalarNode) else index
            self.loc.append(part if isinstance(part, str | int) else "?")
        try:
            event = self.peek_event()
            line = event.start_mark.line + 1
            collection = isinstance(event, yaml.CollectionStartEvent)
            if collection and self.depth >= MAX_DEPTH:
                raise _Refused(tuple(self.loc), line, _too_deep())
            target = self.anchors.get(event.anchor) if isinstance(event, yaml.AliasEvent) else None
            if isinstance(target, yaml.CollectionNode) and id(target) not in self.heights:
                raise _Refused(tuple(self.loc), line, SELF_ALIAS)
            self.depth += collection
            node = super().compose_node(parent, index)
            self.depth -= collection
            if collection:
                children = (
                    [part for pair in node.value for part in pair]
                    if isinstance(node, yaml.MappingNode)
                    else node.value
                )
                height = 1 + max((self.heights.get(id(c), 0) for c in children), default=0)
                if height + self.depth > MAX_DEPTH:  # only aliases reach this far
                    message = _too_deep(" once YAML aliases are expanded")
                    raise _Refused(tuple(self.loc), line, message)
                self.heights[id(node)] = height
            return node
        finally:
            if parent is not None:
                self.loc.pop()


def _walk(
    node: yaml.Node,
    loc: YamlPath,
    lines: dict[YamlPath, int],
    problems: list[Problem],
    seen: set[int],
) -> None:
    """Record the line of every key and item, and report duplicate keys and integers too long
    (once each: a node reached again through an alias was reported the first time)."""
    lines.setdefault(loc, node.start_mark.line + 1)
    report = id(node) not in seen
    seen.add(id(node))
    if isinstance(node, yaml.ScalarNode) and node.tag == INT_TAG and report:
        digits = _int_digits(node.value)
        if digits > MAX_INT_DIGITS:
            message = f"integer with {digits} digits is too large (at most {MAX_INT_DIGITS})"
            problems.append(Problem(loc, node.start_mark.line + 1, message))
    elif isinstance(node, yaml.MappingNode):
        first: dict[tuple[str, str], int] = {}
        for key, value in node.value:
            scalar = isinstance(key, yaml.ScalarNode)
            child = (*loc, key.value if scalar else "?")
            line = key.start_mark.line + 1
            lines.setdefault(child, line)
            if scalar and key.tag != MERGE_TAG and report:
                if (key.tag, key.value) in first:
                    where = f"first at line {first[key.tag, key.value]}"
                    problems.append(Problem(child, line, f"duplicate key ({where})"))
                first.setdefault((key.tag, key.value), line)
            _walk(key, child, {}, problems, seen)
            _walk(value, child, lines, problems, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, (*loc, i), lines, problems, seen)


def _int_digits(text: str) -> int:
    """The digits of a YAML integer literal (sign, `_`, `0x`, `0o` and `0b` not counted)."""
    body = text.lstrip("+-").replace("_", "")
    return len(body[2:] if body[:2].lower() in ("0x", "0o", "0b") else body)


def _expanded_size(node: yaml.Node, sizes: dict[int, int], stack: set[int]) -> int:
    """How many values a YAML node stands for once every alias is expanded (memoized, so a
    "billion laughs" file is measured without being expanded; its depth is already bounded)."""
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


def _shown(item: str) -> str:
    """A `--set` item as messages quote it: whole, or its start when it is very long."""
    return item if len(item) <= SHOWN_OVERRIDE else item[:SHOWN_OVERRIDE] + "..."


def _parse_override(path: Path, item: str) -> tuple[YamlPath, Any]:
    """`a.b=value` -> (('a', 'b'), the YAML value), checked as the file's values are."""
    shown = _shown(item)
    key, sep, raw = item.partition("=")
    parts = key.split(".")
    if not sep or not key or any(not part for part in parts):
        raise UserError(f"{path}: --set {shown}: expected dotted.path=value, e.g. optim.steps=64")
    if len(parts) > MAX_DEPTH:
        raise UserError(f"{path}: --set {shown}: the path has more than {MAX_DEPTH} parts")
    loc = tuple(int(p) if p.isascii() and p.isdigit() and len(p) < 10 else p for p in parts)
    value, problems = parse_yaml(raw, loc)
    if problems:
        raise UserError(f"{path}: --set {shown}: {problems[0].text}")
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
