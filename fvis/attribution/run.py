"""An attribution run: plan it from the config (every error found before any work), run every
method and its metrics, write the run folder (grid.png, attributions.safetensors,
attribution.json, config.yaml).
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import captum
import numpy as np
import torch
import yaml

import fvis
from fvis import zoo
from fvis.attribution.baselines import references
from fvis.attribution.heatmaps import PERCENTILE, Scale, grid_image, scale_of
from fvis.attribution.inputs import Images, Loader, class_index
from fvis.attribution.methods import Context, Output, Prepared, prepare
from fvis.attribution.metrics import Scores, score
from fvis.config import ZooModelSpec
from fvis.config.attribution import AttributionConfig
from fvis.config.attribution_methods import METHODS
from fvis.errors import SpecError, YamlPath
from fvis.io import png_bytes, tensors_bytes, to_json, write_atomic
from fvis.models import Network, build_network, resolve_device, torchvision_version

RESERVED = ("inputs", "targets")


@dataclass
class Plan:
    """Everything a run needs, checked: network, inputs, targets and the prepared methods."""

    config: AttributionConfig
    device: torch.device
    network: Network
    images: Images
    classes: list[str] | None
    logits: torch.Tensor
    targets: torch.Tensor
    methods: list[Prepared]


@dataclass
class MethodResult:
    """One method's attributions, colour scale and metrics."""

    prepared: Prepared
    output: Output
    scale: Scale | None
    scores: Scores | None


@dataclass
class MethodFailure:
    """A method Captum (or a function it called) refused: its one-line reason, at its line."""

    prepared: Prepared
    error: SpecError


@dataclass
class Outcome:
    """A finished run: the methods that worked, and those that failed (the run goes on)."""

    plan: Plan
    results: list[MethodResult]
    seconds: float
    failures: list[MethodFailure] = field(default_factory=list)


def build(config: AttributionConfig, base: Path) -> Plan:
    """Build the network, load the inputs, resolve targets and prepare every method."""
    device = resolve_device(config.device)
    network = build_network(config.model, base).to(device)
    prep = network.prep
    size = config.size or prep.size
    loader = Loader(base, (size[0], size[1]), prep.channels, config.fit, config.model)
    images = loader.load(config.inputs, ("inputs",))
    classes = _classes(config)
    try:
        with torch.no_grad():
            logits = network(images.tensor.to(device)).cpu()
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise SpecError(
            ("size",), f"the model fails on {list(images.tensor.shape[1:])} images: {first}"
        ) from None
    needed = any(METHODS[str(m.kind)].target for m in config.methods)  # type: ignore[attr-defined]
    targets = _targets(config, logits, classes, needed)
    ctx = Context(
        network=network,
        inputs=images.tensor,
        targets=targets,
        baseline=references(config.baseline, images.tensor, loader, ("baseline",)),
        distribution=references(config.distribution, images.tensor, loader, ("distribution",)),
        mask=config.mask,
        base=base,
        device=device,
        baselines_of=lambda spec, loc: references(spec, images.tensor, loader, loc),
    )
    methods = [prepare(spec, i, ctx) for i, spec in enumerate(config.methods)]
    _check_names(methods)
    return Plan(config, device, network, images, classes, logits, targets, methods)


def run(plan: Plan, report: Callable[[str], None] | None = None) -> Outcome:
    """Every method on every input, then its metrics; `report` gets one line per method that
    worked. A method that fails is recorded with its reason and the others still run."""
    config, inputs = plan.config, plan.images.tensor
    start = time.perf_counter()
    outcome = Outcome(plan, [], 0.0)
    for prepared in plan.methods:
        try:
            with captum_failures(prepared):
                result = _run_method(plan, prepared, config, inputs)
        except SpecError as exc:
            outcome.failures.append(MethodFailure(prepared, exc))
            continue
        outcome.results.append(result)
        if report:
            scores = result.scores
            extra = sum(scores.seconds.values()) if scores else 0.0
            report(f"{prepared.name}: {result.output.seconds:.2f}s (+{extra:.2f}s metrics)")
    outcome.seconds = time.perf_counter() - start
    return outcome


def _run_method(
    plan: Plan, prepared: Prepared, config: AttributionConfig, inputs: torch.Tensor
) -> MethodResult:
    """One method's attributions, colour scale and metrics."""
    reseed(config.seed)  # sampling methods draw the same numbers in any order
    output = prepared.run(inputs, config.batch, plan.device)
    scores = None
    if config.metrics is not None and prepared.spec.metrics:
        reseed(config.seed)
        scores = score(
            prepared, output.raw, inputs, config.metrics, plan.network, config.batch, plan.device
        )
    scale = None if output.map is None else scale_of(output.map, prepared.spec.display)
    return MethodResult(prepared, output, scale, scores)


def write(run_dir: Path, outcome: Outcome) -> list[str]:
    """grid.png, attributions.safetensors, config.yaml and attribution.json; returns names.

    The methods that failed have no column or tensors, and their reasons are recorded in
    attribution.json (the command then reports each one and exits 1).
    """
    plan = outcome.plan
    tensors = {"inputs": plan.images.tensor, "targets": plan.targets}
    for result in outcome.results:
        tensors[result.prepared.name] = result.output.raw
        if result.output.map is not None:
            tensors[f"{result.prepared.name}/map"] = result.output.map
    resolved = resolved_config(plan.config)
    files = {
        "grid.png": png_bytes(_grid(outcome)),
        "attributions.safetensors": tensors_bytes({k: v.contiguous() for k, v in tensors.items()}),
        "config.yaml": yaml.safe_dump(resolved, sort_keys=False).encode(),
    }
    files["attribution.json"] = to_json(_metadata(outcome, resolved, sorted(files)))
    for name, data in files.items():
        write_atomic(run_dir / name, data)
    return list(files)


def resolved_config(config: AttributionConfig) -> dict[str, Any]:
    """The config with every default filled in, as plain data (each method's kind first)."""
    data = config.model_dump(mode="json", by_alias=True)
    data["methods"] = [{"kind": m.pop("kind"), **m} for m in data["methods"]]
    return data


# ----------------------------------------------------------------------------- planning


@contextmanager
def captum_failures(prepared: Prepared) -> Iterator[None]:
    """Captum refusing a model or an argument (e.g. DeepLift on a ReLU module used twice), or
    anything else failing in a method, becomes one line at the method's YAML path (SpecError)
    rather than a traceback. Ctrl-C is not caught."""
    try:
        yield
    except SpecError:
        raise
    except Exception as exc:
        text = str(exc).strip()
        first = text.splitlines()[0] if text else type(exc).__name__
        raise SpecError(
            prepared.loc, f"{prepared.kind} failed in Captum ({type(exc).__name__}): {first}"
        ) from None


def reseed(seed: int) -> None:
    """Seed the generators Captum samples from: torch's and numpy's global ones."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def _classes(config: AttributionConfig) -> list[str] | None:
    """Class names where fvis knows them (the built-in models)."""
    if isinstance(config.model, ZooModelSpec):
        return list(zoo.get(config.model.name).classes)
    return None


def _targets(
    config: AttributionConfig, logits: torch.Tensor, classes: list[str] | None, needed: bool
) -> torch.Tensor:
    """The class explained for each input: predicted, one for all, or one per input."""
    count = len(logits)
    if logits.dim() != 2:
        if needed:
            raise SpecError(
                ("target",), f"the model outputs {list(logits.shape)}; targets need [B, classes]"
            )
        return torch.zeros(count, dtype=torch.long)
    n_classes = logits.shape[1]
    names = classes if classes and len(classes) == n_classes else None
    target = config.target
    if target == "predicted":
        return logits.argmax(1)
    if isinstance(target, list):
        if len(target) != count:
            raise SpecError(("target",), f"{len(target)} targets for {count} inputs")
        locs: list[YamlPath] = [("target", j) for j in range(count)]
        labels = target
    else:
        locs, labels = [("target",)] * count, [target] * count
    picked = [class_index(label, names, loc) for label, loc in zip(labels, locs, strict=True)]
    for index, loc in zip(picked, locs, strict=True):
        if index >= n_classes:
            raise SpecError(loc, f"class {index} is out of range: the model has {n_classes}")
    return torch.tensor(picked, dtype=torch.long)


def _check_names(methods: list[Prepared]) -> None:
    seen: dict[str, int] = {}
    for i, prepared in enumerate(methods):
        loc = ("methods", i, "name" if prepared.spec.name else "kind")
        if prepared.name in RESERVED:
            raise SpecError(loc, f"{prepared.name!r} is reserved; give the method another name")
        if prepared.name in seen:
            raise SpecError(
                loc,
                f"methods[{seen[prepared.name]}] is also called {prepared.name!r}; give each "
                "a different `name`",
            )
        seen[prepared.name] = i


# ----------------------------------------------------------------------------- writing


def _label(index: int, classes: list[str] | None) -> str:
    return classes[index] if classes and index < len(classes) else str(index)


def _grid(outcome: Outcome) -> Any:
    plan = outcome.plan
    rows = [
        (name, f"-> {_label(int(t), plan.classes)}")
        for name, t in zip(plan.images.names, plan.targets, strict=True)
    ]
    columns = [(r.prepared.name, r.output.map, r.scale) for r in outcome.results]
    return grid_image(plan.images.tensor, rows, columns, plan.config.output.cell)


def _numbers(values: torch.Tensor | None) -> list[float] | None:
    return None if values is None else [float(f"{float(v):.6g}") for v in values]


def _method_metadata(result: MethodResult) -> dict[str, Any]:
    prepared, output, scores = result.prepared, result.output, result.scores
    seconds = {"attribution": round(output.seconds, 4)}
    if scores:
        seconds |= {k: round(v, 4) for k, v in scores.seconds.items()}
    return {
        **_identity(prepared),
        "status": "complete",
        "shape": list(output.raw.shape),
        "scale": (
            {"signed": result.scale.signed, "value": float(f"{result.scale.value:.6g}")}
            if result.scale
            else None
        ),
        "seconds": seconds,
        "delta": _numbers(output.delta),
        "infidelity": _numbers(scores.infidelity) if scores else None,
        "sensitivity": _numbers(scores.sensitivity) if scores else None,
        "skipped": scores.skipped if scores else {},
    }


def _methods_metadata(outcome: Outcome) -> list[dict[str, Any]]:
    """Every method of the config, in its order: its results, or why it failed."""
    done = {id(r.prepared): _method_metadata(r) for r in outcome.results}
    failed = {id(f.prepared): _failure_metadata(f) for f in outcome.failures}
    return [done.get(id(p)) or failed[id(p)] for p in outcome.plan.methods]


def _failure_metadata(failure: MethodFailure) -> dict[str, Any]:
    return {**_identity(failure.prepared), "status": "failed", "error": failure.error.message}


def _identity(prepared: Prepared) -> dict[str, Any]:
    """What a method is: name, kind, Captum class, layer, neuron, noise tunnel."""
    return {
        "name": prepared.name,
        "kind": prepared.kind,
        "captum": prepared.info.captum,
        "family": prepared.info.family,
        "layer": prepared.layer,
        "neuron": list(prepared.neuron) if prepared.neuron else None,
        "noise_tunnel": prepared.spec.noise_tunnel.type if prepared.spec.noise_tunnel else None,
    }


def _metadata(outcome: Outcome, resolved: dict[str, Any], files: list[str]) -> dict[str, Any]:
    plan = outcome.plan
    predicted = plan.logits.argmax(1) if plan.logits.dim() == 2 else None
    inputs = []
    for i, name in enumerate(plan.images.names):
        entry: dict[str, Any] = {"name": name}
        if predicted is not None:
            t = int(plan.targets[i])
            entry |= {
                "target": t,
                "target_name": _label(t, plan.classes),
                "target_score": float(f"{float(plan.logits[i, t]):.6g}"),
                "predicted": int(predicted[i]),
                "predicted_name": _label(int(predicted[i]), plan.classes),
            }
        inputs.append(entry)
    failed = [f.prepared.name for f in outcome.failures]
    return {
        "name": plan.config.name,
        "status": "failed" if failed else "complete",
        **(
            {"error": f"{len(failed)} of {len(plan.methods)} methods failed: {', '.join(failed)}"}
            if failed
            else {}
        ),
        "versions": {
            "fvis": fvis.__version__,
            "torch": torch.__version__,
            "torchvision": torchvision_version(),
            "captum": captum.__version__,
            "python": platform.python_version(),
        },
        "device": str(plan.device),
        "seed": plan.config.seed,
        "size": list(plan.images.tensor.shape[-2:]),
        "preprocessing": {
            k: v for k, v in vars(plan.network.prep).items() if k != "color_correlation"
        },
        "scale": {
            "percentile": PERCENTILE,
            "about": "per method: s = this percentile of |map| over all pixels of all inputs; "
            "signed maps span -s..s, absolute maps 0..s; beyond is clipped",
        },
        "inputs": inputs,
        "methods": _methods_metadata(outcome),
        "wall_seconds": round(outcome.seconds, 4),
        "files": [*files, "attribution.json"],
        "config": resolved,
    }
