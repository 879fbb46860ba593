"""The JSON schemas editors read (fvis.schema.json, fvis.attribution.schema.json) accept every
config fvis accepts and reject the ones it rejects, at the same place, under a standard JSON
Schema validator (Draft 2020-12, without pydantic's `discriminator` extension), as the YAML
language servers of editors check a file that names its schema on a modeline."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator, ValidationError

from fvis.config import Config, ConfigError, dotted_path, validate_file
from fvis.config.attribution import AttributionConfig

ROOT = Path(__file__).resolve().parent.parent
RENDER_SCHEMA = ROOT / "fvis.schema.json"
ATTRIBUTION_SCHEMA = ROOT / "fvis.attribution.schema.json"
MODELS: dict[Path, type[Config] | type[AttributionConfig]] = {
    RENDER_SCHEMA: Config,
    ATTRIBUTION_SCHEMA: AttributionConfig,
}
MODELINE = re.compile(r"^# yaml-language-server: \$schema=(\S+)$", re.MULTILINE)
EXAMPLES = sorted(
    [*(ROOT / "configs").rglob("*.yaml"), *(ROOT / "tests/regression/configs").glob("*.yaml")]
)
TAGS = ("kind", "source")


def _validator(schema: Path) -> Draft202012Validator:
    return Draft202012Validator(json.loads(schema.read_text()))


def _ruled_out(error: ValidationError) -> bool:
    """Whether a branch's error says the node is not of that branch: another tag, no tag where
    the branch needs one, or another type altogether."""
    path = list(error.relative_path)
    return (
        (error.validator == "const" and len(path) == 1 and path[0] in TAGS)
        or (
            error.validator == "required"
            and any(t in error.validator_value and t not in error.instance for t in TAGS)
        )
        or (error.validator == "type" and not path)
    )


def _located(error: ValidationError) -> list[ValidationError]:
    """The errors an editor shows for `error`: a union (oneOf, anyOf) is followed into the
    branches that the node's tag and type leave, as YAML language servers do; when none is left,
    the errors that ruled them out (an unknown kind: at the tag)."""
    if error.validator not in ("oneOf", "anyOf"):
        return [error]
    branches: dict[Any, list[ValidationError]] = {}
    for sub in error.context or []:
        branches.setdefault(sub.relative_schema_path[0], []).append(sub)
    kept = [errors for errors in branches.values() if not any(map(_ruled_out, errors))]
    if not kept:
        return [sub for errors in branches.values() for sub in errors if _ruled_out(sub)]
    return [leaf for errors in kept for sub in errors for leaf in _located(sub)]


def _where(error: ValidationError) -> list[str]:
    """The YAML paths an error is about, as fvis writes them: an unknown or missing key is
    named, not its parent."""
    base = tuple(error.absolute_path)
    if error.validator == "additionalProperties":
        known = error.schema.get("properties", {})
        patterns = error.schema.get("patternProperties", {})
        keys = [
            k
            for k in error.instance
            if k not in known and not any(re.search(p, k) for p in patterns)
        ]
    elif error.validator == "required":
        keys = [k for k in error.validator_value if k not in error.instance]
    else:
        return [dotted_path(base) or "(top level)"]
    return [dotted_path((*base, k)) for k in keys]


def schema_errors(schema: Path, data: Any) -> list[str]:
    """`path: message` for each error an editor would show."""
    return sorted(
        {
            f"{where}: {located.message}"
            for error in _validator(schema).iter_errors(data)
            for located in _located(error)
            for where in _where(located)
        }
    )


def fvis_errors(schema: Path, data: Any, tmp_path: Path) -> list[str]:
    """`path: message` for each error fvis reports for the config written as a YAML file."""
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    try:
        validate_file(path, MODELS[schema])
    except ConfigError as exc:  # lines are `file:line: yaml.path: message`
        return sorted(line.removeprefix(str(path)).split(": ", 1)[1] for line in exc.lines)
    return []


def _paths(errors: list[str]) -> set[str]:
    return {error.split(": ", 1)[0] for error in errors}


def _named_schema(path: Path) -> Path:
    """The schema a config names on its `# yaml-language-server: $schema=...` line."""
    match = MODELINE.search(path.read_text())
    assert match, f"{path} has no '# yaml-language-server: $schema=...' line"
    return (path.parent / match[1]).resolve()


def test_schemas_are_valid_draft_2020_12() -> None:
    for schema in MODELS:
        Draft202012Validator.check_schema(json.loads(schema.read_text()))


def test_committed_attribution_schema_is_current() -> None:
    """fvis.attribution.schema.json (what editors read for `fvis attribute` configs) matches the
    code: regenerate with `fvis schema --attribution > fvis.attribution.schema.json`."""
    committed = json.loads(ATTRIBUTION_SCHEMA.read_text())
    assert committed == AttributionConfig.model_json_schema()


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(ROOT)))
def test_example_configs_match_the_schema_they_name(path: Path, tmp_path: Path) -> None:
    """Every example names a committed schema (attribution configs the attribution one), which
    accepts it, as fvis does."""
    schema = _named_schema(path)
    attribution = path.parent == ROOT / "configs" / "attribution"
    assert schema == (ATTRIBUTION_SCHEMA if attribution else RENDER_SCHEMA)
    data = yaml.safe_load(path.read_text())
    assert schema_errors(schema, data) == []
    assert fvis_errors(schema, data, tmp_path) == []


def _doc_blocks() -> list[Any]:
    """The YAML configs shown in README.md and docs/: (id, schema, text)."""
    out = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        schema = ATTRIBUTION_SCHEMA if doc.stem == "attribution" else RENDER_SCHEMA
        for i, block in enumerate(re.findall(r"```yaml\n(.*?)```", doc.read_text(), re.DOTALL)):
            if isinstance(yaml.safe_load(block), dict):  # not CI's steps
                out.append(pytest.param(schema, block, id=f"{doc.name}[{i}]"))
    return out


@pytest.mark.parametrize(("schema", "text"), _doc_blocks())
def test_documented_configs_match_the_schema(schema: Path, text: str, tmp_path: Path) -> None:
    data = yaml.safe_load(text)
    assert schema_errors(schema, data) == []
    assert fvis_errors(schema, data, tmp_path) == []


# Each shorthand fvis accepts, which the schema must accept too.
SHORTHANDS = {
    "size: one int": (RENDER_SCHEMA, {"param": {"kind": "pixel", "size": 32}}),
    "indices: one int": (RENDER_SCHEMA, {"objective": {"kind": "class_logit", "index": 5}}),
    "batch: one int": (
        RENDER_SCHEMA,
        {"objective": {"kind": "channel", "layer": "conv3", "channel": 1, "batch": 0}},
    ),
    "layer: a number": (RENDER_SCHEMA, {"objective": {"kind": "layer", "layer": 2}}),
    "hooks: a number": (RENDER_SCHEMA, {"hooks": {"mid": 2}}),
    "objective: an expression": (RENDER_SCHEMA, {"objective": "channel(conv3, 5) - l1(image)"}),
    "sum term: an expression": (
        RENDER_SCHEMA,
        {"objective": {"kind": "sum", "terms": ["class_logit(1)", {"kind": "layer", "layer": 1}]}},
    ),
    "param: no kind is fft": (RENDER_SCHEMA, {"param": {"size": 64, "decay": 1.5}}),
    "model: no source is zoo": (RENDER_SCHEMA, {"model": {"name": "shapes"}}),
    "blur sigma: one number": (RENDER_SCHEMA, {"transforms": [{"kind": "blur", "sigma": 1.5}]}),
    "decorrelate: a file name": (RENDER_SCHEMA, {"param": {"decorrelate": "stats.safetensors"}}),
    "data: the short form": (RENDER_SCHEMA, {"data": "zoo:shapes:500"}),
    "data: a folder": (RENDER_SCHEMA, {"data": "photos/**/*.jpg"}),
    "inputs: one path": (
        ATTRIBUTION_SCHEMA,
        {"inputs": "a.png", "methods": [{"kind": "saliency"}]},
    ),
    "inputs: one node": (
        ATTRIBUTION_SCHEMA,
        {"inputs": {"kind": "zoo_class", "class": "red"}, "methods": [{"kind": "saliency"}]},
    ),
    "window, stride: one int": (
        ATTRIBUTION_SCHEMA,
        {"inputs": ["a.png"], "methods": [{"kind": "occlusion", "window": 16, "stride": 8}]},
    ),
    "target: one per input": (
        ATTRIBUTION_SCHEMA,
        {"inputs": ["a.png", "b.png"], "target": [3, "red"], "methods": [{"kind": "saliency"}]},
    ),
}


@pytest.mark.parametrize(("schema", "data"), SHORTHANDS.values(), ids=SHORTHANDS.keys())
def test_shorthands_are_in_the_schema(schema: Path, data: dict, tmp_path: Path) -> None:
    assert fvis_errors(schema, data, tmp_path) == []
    assert schema_errors(schema, data) == []


SUM_TYPO = {
    "kind": "sum",
    "terms": [
        {"kind": "channel", "layer": "conv3", "channel": 1},
        {"kind": "channel", "layr": "conv3", "channel": 2},
    ],
}
# Bad configs: what is wrong, and where both fvis and the schema say so; (fvis's, the schema's)
# where they write it differently: a node without its tag (the schema names the tag), a key that
# breaks its pattern (fvis adds `.[key]`).
BAD: dict[str, tuple[Path, dict, str | tuple[str, str]]] = {
    "unknown key": (RENDER_SCHEMA, {"objectiv": "class_logit(3)"}, "objectiv"),
    "wrong type": (RENDER_SCHEMA, {"seed": "zero"}, "seed"),
    "unknown objective kind": (
        RENDER_SCHEMA,
        {"objective": {"kind": "chanel", "layer": "conv3", "channel": 1}},
        "objective.kind",
    ),
    "negative steps": (RENDER_SCHEMA, {"optim": {"steps": -5}}, "optim.steps"),
    "bad param kind": (RENDER_SCHEMA, {"param": {"kind": "fourier", "size": 64}}, "param.kind"),
    "int for a string": (RENDER_SCHEMA, {"model": {"name": 5}}, "model.name"),
    "misspelled key in a sum term": (
        RENDER_SCHEMA,
        {"objective": SUM_TYPO},
        "objective.terms[1].layr",
    ),
    "misspelled key, default param": (RENDER_SCHEMA, {"param": {"sise": 64}}, "param.sise"),
    "missing field": (RENDER_SCHEMA, {"transforms": [{"kind": "jitter"}]}, "transforms[0].pixels"),
    "negative index in a list": (
        RENDER_SCHEMA,
        {"objective": {"kind": "class_logit", "index": [1, -2]}},
        "objective.index[1]",
    ),
    "alias outside the pattern": (
        RENDER_SCHEMA,
        {"hooks": {"1mid": "conv3"}},
        ("hooks.1mid.[key]", "hooks.1mid"),
    ),
    "expression under regularizers": (
        RENDER_SCHEMA,
        {"regularizers": ["l1(image)"]},
        "regularizers[0]",
    ),
    "negative class index": (
        ATTRIBUTION_SCHEMA,
        {"inputs": "a.png", "target": -1, "methods": [{"kind": "saliency"}]},
        "target",
    ),
    "misspelled method key": (
        ATTRIBUTION_SCHEMA,
        {"inputs": "a.png", "methods": [{"kind": "occlusion", "windw": 4}]},
        "methods[0].windw",
    ),
    "no inputs": (ATTRIBUTION_SCHEMA, {"inputs": [], "methods": [{"kind": "saliency"}]}, "inputs"),
    "mask without kind": (
        ATTRIBUTION_SCHEMA,
        {"inputs": "a.png", "mask": {"size": 8}, "methods": [{"kind": "saliency"}]},
        ("mask", "mask.kind"),
    ),
}


@pytest.mark.parametrize(("schema", "data", "where"), BAD.values(), ids=BAD.keys())
def test_bad_configs_are_rejected_at_the_same_place(
    schema: Path, data: dict, where: str | tuple[str, str], tmp_path: Path
) -> None:
    fvis_at, schema_at = (where, where) if isinstance(where, str) else where
    by_fvis = fvis_errors(schema, data, tmp_path)
    by_schema = schema_errors(schema, data)
    assert fvis_at in _paths(by_fvis), by_fvis
    assert schema_at in _paths(by_schema), by_schema
    if fvis_at == schema_at:  # then every error is at the same place
        assert _paths(by_fvis) == _paths(by_schema)


# ----------------------------------------------------------------------------- the editors' own


def _language_server() -> str | None:
    """yaml-language-server (npm), where installed: FVIS_YAML_LANGUAGE_SERVER or on PATH."""
    return os.environ.get("FVIS_YAML_LANGUAGE_SERVER") or shutil.which("yaml-language-server")


# yaml-language-server's settings: validation on, no schemas from the network.
SERVER_SETTINGS = {"validate": True, "schemaStore": {"enable": False}}


class _LanguageServer:
    """Just enough of a language-server client to open files and read their diagnostics."""

    def __init__(self, command: str, root: Path) -> None:
        self.process = subprocess.Popen(
            [command, "--stdio"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self.diagnostics: dict[str, list[dict]] = {}
        self.replies: dict[int, Any] = {}
        threading.Thread(target=self._read, daemon=True).start()
        capabilities = {"workspace": {"configuration": True}}
        params = {"processId": None, "rootUri": root.as_uri(), "capabilities": capabilities}
        self._call(1, "initialize", params)
        self._send({"method": "initialized", "params": {}})
        settings = {"yaml": SERVER_SETTINGS}
        self._send({"method": "workspace/didChangeConfiguration", "params": {"settings": settings}})

    def _send(self, message: dict) -> None:
        body = json.dumps({"jsonrpc": "2.0", **message}).encode()
        assert self.process.stdin
        self.process.stdin.write(b"Content-Length: %d\r\n\r\n%b" % (len(body), body))
        self.process.stdin.flush()

    def _read(self) -> None:
        stream = self.process.stdout
        assert stream
        while header := stream.readline():
            length = int(header.split(b":")[1])
            while stream.readline().strip():
                pass
            message = json.loads(stream.read(length))
            if message.get("method") == "textDocument/publishDiagnostics":
                self.diagnostics[message["params"]["uri"]] = message["params"]["diagnostics"]
            elif "method" in message and "id" in message:  # a request: settings, registrations
                items = message.get("params", {}).get("items", [])
                result = [SERVER_SETTINGS if i.get("section") == "yaml" else None for i in items]
                self._send({"id": message["id"], "result": result or None})
            elif "id" in message:
                self.replies[message["id"]] = message.get("result")

    def _call(self, key: int, method: str, params: dict) -> Any:
        self._send({"id": key, "method": method, "params": params})
        deadline = time.monotonic() + 30
        while key not in self.replies and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.replies[key]

    def check(self, paths: list[Path]) -> dict[Path, set[int]]:
        """The lines of each file's diagnostics, once the server has settled on them."""
        uris = {path.as_uri(): path for path in paths}
        for uri, path in uris.items():
            document = {"uri": uri, "languageId": "yaml", "version": 1, "text": path.read_text()}
            self._send({"method": "textDocument/didOpen", "params": {"textDocument": document}})
        deadline = time.monotonic() + 60
        seen: dict[str, Any] = {}
        while time.monotonic() < deadline and (set(uris) - set(seen) or seen != self.diagnostics):
            seen = dict(self.diagnostics)  # until every file has some, then no news for 1 s
            time.sleep(1.0)
        for uri in uris:
            self._send(
                {"method": "textDocument/didClose", "params": {"textDocument": {"uri": uri}}}
            )
        assert set(uris) <= set(seen), "no diagnostics from yaml-language-server"
        return {
            path: {d["range"]["start"]["line"] + 1 for d in seen[uri]} for uri, path in uris.items()
        }

    def close(self) -> None:
        self.process.kill()
        self.process.wait()


@pytest.mark.skipif(
    _language_server() is None,
    reason="yaml-language-server not installed (npm install -g yaml-language-server, or set "
    "FVIS_YAML_LANGUAGE_SERVER to its path)",
)
def test_yaml_language_server_agrees(tmp_path: Path) -> None:
    """The editors' own checker: no diagnostic on any example, and on each bad config one on a
    line where fvis reports an error."""
    bad: dict[Path, set[int]] = {}
    for name, (schema, data, _) in BAD.items():
        path = tmp_path / f"{name.replace(' ', '-')}.yaml"
        text = yaml.safe_dump(data, sort_keys=False)
        path.write_text(f"# yaml-language-server: $schema={schema.as_uri()}\n{text}")
        with pytest.raises(ConfigError) as caught:
            validate_file(path, MODELS[schema])
        bad[path] = {int(line.split(":")[1]) for line in caught.value.lines}
    server = _LanguageServer(str(_language_server()), ROOT)
    try:
        lines = server.check([*EXAMPLES, *bad])
    finally:
        server.close()
    assert {str(p.relative_to(ROOT)): n for p, n in lines.items() if p in EXAMPLES and n} == {}
    assert {p.stem: lines[p] for p, fvis_lines in bad.items() if not lines[p] & fvis_lines} == {}
