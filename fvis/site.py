"""The microscope's static site: microscope.json turned into HTML pages, and a server for them.

`fvis microscope` renders every channel of some layers and writes a manifest, microscope.json,
that names every picture it made (paths relative to the site's folder). `build` reads it and
writes, beside it, an index of the model, a page per layer (a grid of thumbnails to sort) and a
page per channel (its renders, its curve as inline SVG, its dataset examples, the command that
renders it again), from the Jinja2 templates in fvis/templates. The pages link to each other
and to the pictures by relative paths and load nothing else: no CDN, no fetch, no ES module,
so they open from file:// as they do over HTTP. Everything the manifest says is escaped.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterator
from contextlib import suppress
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Annotated, Any
from urllib.parse import quote

from jinja2 import Environment, PackageLoader, StrictUndefined
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from fvis.config import dotted_path
from fvis.display import say
from fvis.errors import UserError
from fvis.io import write_atomic

MANIFEST = "microscope.json"
FORMAT = "fvis-microscope-1"
ASSETS = ("site.css", "site.js")  # copied from fvis/templates to SITE/assets

SLUG = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")  # one folder name: not . or .., not hidden
THUMBNAIL = 64  # px: a thumbnail's width and height attributes without render or model.input
PLOT = (560, 180, 52, 22)  # an objective curve's SVG: width, height, left and bottom margins
PLOT_POINTS = 320  # the most points drawn per seed; longer curves are thinned evenly


# ----------------------------------------------------------------------------- the manifest


def _this_format(value: str) -> str:
    """The manifest's format: one this code reads."""
    if value != FORMAT:
        raise ValueError(f"{value!r}, expected {FORMAT!r}")
    return value


def _inside(value: str) -> str:
    """A path inside the site: relative, POSIX, no `..`."""
    path = PurePosixPath(value)
    if not value or "\\" in value or path.is_absolute() or ".." in path.parts:
        raise ValueError(f"{value!r} is not a relative path inside the site")
    return value


def _folder_name(value: str) -> str:
    """A layer's folder: one plain name, not the assets' folder."""
    if not SLUG.fullmatch(value) or value == "assets":
        raise ValueError(f"{value!r} is not a plain folder name")
    return value


def _per_step(values: list[float | None], info: ValidationInfo) -> list[float | None]:
    """A seed's curve: one value per step (the steps are checked first)."""
    steps = info.data.get("steps")
    if steps is not None and len(values) != len(steps):
        raise ValueError("expected a list as long as steps")
    return values


def _unique(key: str) -> AfterValidator:
    """No two items alike in `key`: each names a file of its own."""

    def check(items: list[Any]) -> list[Any]:
        counts = Counter(getattr(item, key) for item in items)
        twice = [value for value, count in counts.items() if count > 1]
        if twice:
            raise ValueError(f"two entries have the {key} {twice[0]!r}")
        return items

    return AfterValidator(check)


SitePath = Annotated[str, AfterValidator(_inside)]
Number = float | None  # a value that was not finite is written as null
Pixels = Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=2, max_length=2)]  # H, W


class Entry(BaseModel):
    """A node of the manifest: JSON's own types (no "3" for 3, no true for 1). Unknown keys are
    ignored, so a newer manifest still builds; a missing optional key reads as null."""

    model_config = ConfigDict(strict=True, extra="ignore")


class TopImage(Entry):
    """A dataset image among those that excite a channel most, and its activation."""

    image: str
    value: float


class Curve(Entry):
    """A channel's objective over the optimization steps, a list per seed."""

    steps: list[Number]
    objective: list[Annotated[list[Number], AfterValidator(_per_step)]]


class Unit(Entry):
    """A rendered channel: a render and its objective per seed, and what was found besides."""

    channel: Annotated[int, Field(ge=0)]
    renders: list[SitePath]
    objective: list[Number]
    name: str | None = None
    curve: Curve | None = None
    diversity: float | None = None
    examples: SitePath | None = None
    top: list[TopImage] | None = None
    attribution: SitePath | None = None
    command: str | None = None

    @model_validator(mode="after")
    def _a_value_per_render(self) -> Unit:
        if not self.renders or len(self.renders) != len(self.objective):
            raise ValueError("renders and objective must be lists of the same length, not empty")
        return self


class Layer(Entry):
    """A layer and its rendered channels, with its folder's name and its pictures."""

    name: str
    slug: Annotated[str, AfterValidator(_folder_name)]
    type: str
    shape: list[int]
    channels: int
    units: Annotated[list[Unit], _unique("channel")]
    sheet: SitePath | None = None
    curves: SitePath | None = None
    groups: SitePath | None = None
    atlas: SitePath | None = None


class Model(Entry):
    """The model the layers belong to."""

    description: str | None = None
    parameters: int | None = None
    input: list[int] | None = None


class Manifest(Entry):
    """microscope.json: what `fvis microscope` rendered, and how."""

    format: Annotated[str, AfterValidator(_this_format)]
    title: str
    layers: Annotated[list[Layer], _unique("slug")]
    command: str | None = None
    config: SitePath | None = None
    versions: dict[str, str] | None = None
    model: Model = Field(default_factory=Model)
    data: str | None = None
    render: Pixels | None = None  # the renders' size
    seeds: list[int] | None = None
    steps: int | None = None
    seconds: dict[str, float] | None = None

    @field_validator("model", mode="before")
    @classmethod
    def _null_model(cls, value: object) -> object:
        """A null model tells as little as an empty one."""
        return {} if value is None else value


# A value of the wrong kind, by pydantic's error type: the kind expected.
EXPECTED = {
    "string_type": "a string",
    "int_type": "a whole number",
    "float_type": "a number",
    "list_type": "a list",
    "dict_type": "an object",
    "model_type": "an object",
}


def load(path: Path) -> Manifest:
    """The manifest at `path`, checked: a mistake is one line naming the file and the place."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: no such file: run `fvis microscope` first") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({_one_line(exc)})") from None
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        raise UserError(f"{path}: {_mistake(exc.errors(include_url=False)[0])}") from None


def _mistake(error: ErrorDetails) -> str:
    """One of pydantic's errors as `place: what is wrong`; a missing key's place is its node."""
    loc, kind = error["loc"], error["type"]
    if kind == "missing":
        return f"{dotted_path(loc[:-1]) or 'the manifest'}: missing {loc[-1]!r}"
    if kind in EXPECTED:
        message = f"expected {EXPECTED[kind]}, got {_kind(error['input'])}"
    else:
        message = error["msg"].removeprefix("Value error, ")
    return f"{dotted_path(loc) or 'the manifest'}: {message}"


def _kind(value: object) -> str:
    """A JSON value's kind, for messages."""
    names = {bool: "a boolean", dict: "an object", list: "a list", str: "a string"}
    if value is None:
        return "null"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return "a number"
    return names.get(type(value), type(value).__name__)


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


# ----------------------------------------------------------------------------- what pages show


def score(unit: dict[str, Any]) -> float | None:
    """The objective a channel reached: the mean over its seeds (None if none was finite)."""
    values = [v for v in unit["objective"] if v is not None and math.isfinite(v)]
    return sum(values) / len(values) if values else None


def number(value: float | None) -> str:
    """A value as a person reads it: four significant digits, a dash for none."""
    if value is None:
        return "—"
    if not math.isfinite(value):
        return str(value)
    if abs(value) >= 10_000:
        return f"{value:,.0f}"
    return f"{value:.4g}"


def duration(seconds: float) -> str:
    """Seconds as 42.1 s, 3 min 05 s or 1 h 02 min."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def href(path: str) -> str:
    """A site path as a URL path: characters a URL gives meaning to (# ? % space) escaped."""
    return quote(path, safe="/=,+@")


def curve_plot(curve: dict[str, Any] | None) -> dict[str, Any] | None:
    """An objective curve as SVG geometry: one polyline per seed, the axes' ranges."""
    if curve is None:
        return None
    width, height, left, bottom = PLOT
    series = [
        [(s, v) for s, v in zip(curve["steps"], values, strict=True) if _finite(s, v)]
        for values in curve["objective"]
    ]
    points = [p for line in series for p in line]
    if not points:
        return None
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = min(p[1] for p in points), max(p[1] for p in points)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)

    def at(step: float, value: float) -> str:
        x = left + (step - x0) / (x1 - x0) * (width - left - 8)
        y = 8 + (y1 - value) / (y1 - y0) * (height - bottom - 8)
        return f"{x:.1f},{y:.1f}"

    lines = [" ".join(at(*p) for p in _thinned(line)) for line in series]
    return {
        "width": width,
        "height": height,
        "left": left,
        "bottom": height - bottom,
        "lines": lines,
        "x": (number(x0), number(x1)),
        "y": (number(y0), number(y1)),
    }


def _finite(*values: float | None) -> bool:
    return all(v is not None and math.isfinite(v) for v in values)


def _thinned(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """At most PLOT_POINTS of `points`, evenly spaced, the last one kept."""
    if len(points) <= PLOT_POINTS:
        return points
    stride = math.ceil(len(points) / PLOT_POINTS)
    return [*points[::stride], *points[-1:]] if (len(points) - 1) % stride else points[::stride]


# ----------------------------------------------------------------------------- the pages


def environment() -> Environment:
    """The templates, every value escaped, a missing name an error rather than a blank."""
    env = Environment(
        loader=PackageLoader("fvis", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(number=number, count="{:,}".format, duration=duration, href=href)
    return env


def unit_page(unit: dict[str, Any]) -> str:
    """A channel's page, beside its layer's index.html: 0005.html."""
    return f"{unit['channel']:04d}.html"


def pages(folder: Path, manifest: Manifest, env: Environment) -> Iterator[tuple[Path, str]]:
    """Every page of the site: (its path, its text)."""
    site = shown(folder, manifest)
    layers = site["layers"]
    yield folder / "index.html", env.get_template("index.html").render(site=site, up="")
    layer_template, unit_template = env.get_template("layer.html"), env.get_template("unit.html")
    for i, layer in enumerate(layers):
        near = {"prev": _at(layers, i - 1), "next": _at(layers, i + 1)}
        text = layer_template.render(site=site, layer=layer, up="../", **near)
        yield folder / layer["slug"] / "index.html", text
        units = layer["units"]
        for j, unit in enumerate(units):
            near = {"prev": _at(units, j - 1), "next": _at(units, j + 1)}
            plot = curve_plot(unit["curve"])
            text = unit_template.render(
                site=site, layer=layer, unit=unit, plot=plot, up="../", **near
            )
            yield folder / layer["slug"] / unit["page"], text


def shown(folder: Path, manifest: Manifest) -> dict[str, Any]:
    """The manifest as the templates read it (dicts), with what they show besides: the
    thumbnails' size (the renders', else the model's input), the config's text; per layer its
    noun; per channel its page, score and seeds."""
    size = manifest.render or (manifest.model.input or [])[-2:]
    seeds = manifest.seeds or []
    site = manifest.model_dump()
    for layer in site["layers"]:
        layer["noun"] = "unit" if len(layer["shape"]) == 1 else "channel"
        for unit in layer["units"]:
            count = len(unit["renders"])
            unit["page"] = unit_page(unit)
            unit["score"] = score(unit)
            unit["seeds"] = seeds if len(seeds) == count else list(range(count))
    return {
        **site,
        "thumb": size if len(size) == 2 else [THUMBNAIL, THUMBNAIL],
        "config_text": _config_text(folder, manifest.config),
    }


def _at(items: list[dict[str, Any]], index: int) -> dict[str, Any] | None:
    """The item at `index`, None past either end (no wrapping around)."""
    return items[index] if 0 <= index < len(items) else None


def _config_text(folder: Path, config: str | None) -> str | None:
    """The config's text, shown on the index page where the file is there to read."""
    if config is None:
        return None
    try:
        return (folder / config).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def assets(folder: Path) -> Iterator[tuple[Path, str]]:
    """The stylesheet and the script, copied from the package to SITE/assets."""
    templates = resources.files("fvis") / "templates"
    for name in ASSETS:
        yield folder / "assets" / name, (templates / name).read_text(encoding="utf-8")


def build(folder: Path) -> list[Path]:
    """Write the site of `folder`/microscope.json beside it; the files written, in order.

    A page whose text is already on disk is left alone, so a rebuild after one channel changed
    writes one page, and the files' times say what changed.
    """
    manifest = load(folder / MANIFEST)
    written = []
    for path, text in [*pages(folder, manifest, environment()), *assets(folder)]:
        data = text.encode("utf-8")
        if _unchanged(path, data):
            continue
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"{path.parent}: cannot create the folder ({exc.strerror})") from None
        write_atomic(path, data)
        written.append(path)
    return written


def _unchanged(path: Path, data: bytes) -> bool:
    try:
        return path.read_bytes() == data
    except OSError:
        return False


# ----------------------------------------------------------------------------- serving


class QuietHandler(SimpleHTTPRequestHandler):
    """Serves files as they are, with no line per request on stderr."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


def server(folder: Path, host: str, port: int) -> ThreadingHTTPServer:
    """An HTTP server of `folder`, bound and not yet serving (port 0: a free port)."""
    if not (folder / "index.html").is_file():
        raise UserError(f"{folder}: no index.html: build it with `fvis microscope`")
    handler = partial(QuietHandler, directory=str(folder))
    try:
        return ThreadingHTTPServer((host, port), handler)
    except OSError as exc:
        raise UserError(f"{host}:{port}: cannot listen ({exc.strerror or exc})") from None


def url(httpd: ThreadingHTTPServer) -> str:
    """The address to open: localhost where the server listens on every interface."""
    host, port = httpd.server_address[:2]
    shown = "localhost" if host in ("0.0.0.0", "") else str(host)
    return f"http://{shown}:{port}/"


def serve(folder: Path, host: str, port: int) -> None:
    """Serve the site in `folder` until Ctrl-C, printing its address first."""
    with server(folder, host, port) as httpd:
        say(url(httpd))
        with suppress(KeyboardInterrupt):  # Ctrl-C: the way to stop it, not an error
            httpd.serve_forever()
