"""The engine: every method of the registry built and called through Captum the same way.

A `Prepared` method holds the Captum object (wrapped in NoiseTunnel when asked) and the call
arguments resolved from the config; `run` calls it on the inputs in batches and returns the raw
attributions, the map shown for each input and the convergence delta where Captum gives one.
Attribution happens in the model's [0, 1] image space: the Captum object wraps the `Network`,
preprocessing included.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import captum.attr
import torch
from captum.attr import LayerAttribution, NoiseTunnel
from torch import nn

from fvis.attribution.baselines import References
from fvis.attribution.limebase import segment_lime
from fvis.attribution.masks import feature_mask
from fvis.attribution.surrogate import linear_surrogate
from fvis.config.attribution import Mask, MethodNode, NeuronSpec, method_name
from fvis.config.attribution_methods import CALL_ARGS, METHODS, MethodInfo
from fvis.errors import SpecError, YamlPath
from fvis.hooks import IMAGE, OUTPUT, Capture, describe_shape, resolve_layer
from fvis.models import Network

# Captum classes whose constructor takes more than the model (and layer): built from the node.
CONSTRUCTORS: dict[str, Callable[[Network, Any, Path, YamlPath], Any]] = {
    "LimeBase": segment_lime,
}
# Deep-Lift-Shap-style methods average over baseline pairs and need two or more references.
LEAST_REFERENCES = {"DeepLiftShap": 2, "LayerDeepLiftShap": 2, "NeuronDeepLiftShap": 2}


@dataclass
class Context:
    """What preparing a method needs: the network, the inputs and the config's defaults."""

    network: Network
    inputs: torch.Tensor
    targets: torch.Tensor
    baseline: References
    distribution: References
    mask: Mask
    base: Path
    device: torch.device
    baselines_of: Callable[[Any, YamlPath], References]


@dataclass
class Output:
    """One method's results on every input."""

    raw: torch.Tensor
    map: torch.Tensor | None
    delta: torch.Tensor | None
    seconds: float


@dataclass
class Prepared:
    """A method ready to call: its Captum object and every argument, resolved and checked."""

    name: str
    spec: MethodNode
    info: MethodInfo
    loc: YamlPath
    attributor: Any
    fixed: dict[str, Any] = field(default_factory=dict)
    per_input: dict[str, torch.Tensor] = field(default_factory=dict)
    layer: str | None = None
    layer_module: nn.Module | None = None
    neuron: tuple[int, ...] | None = None
    delta: bool = False

    @property
    def kind(self) -> str:
        """The method's `kind` in the config (its registry key)."""
        return str(self.spec.kind)  # type: ignore[attr-defined]

    def kwargs(self, rows: slice, device: torch.device) -> dict[str, Any]:
        """Call arguments for the inputs in `rows` (per-input ones sliced), on `device`."""
        args = {k: _to(v, device) for k, v in self.fixed.items()}
        args |= {k: v[rows].to(device) for k, v in self.per_input.items()}
        return args

    def attribute(self, inputs: torch.Tensor, **kwargs: Any) -> Any:
        """Captum's attribute() on a batch (gradient methods get inputs that require grad)."""
        if self.info.approach == "gradient":
            inputs = inputs.detach().clone().requires_grad_(True)
        with quiet_captum(), torch.enable_grad():
            return self.attributor.attribute(inputs, **kwargs)

    def chunks(self, count: int, batch: int) -> Iterator[slice]:
        """Slices of the inputs per call: all at once for methods that mix the inputs."""
        step = count if self.info.across_inputs else batch
        for start in range(0, count, step):
            yield slice(start, min(start + step, count))

    def run(self, inputs: torch.Tensor, batch: int, device: torch.device) -> Output:
        """Attributions for every input, in batches; the map and delta derived from them."""
        raws, deltas = [], []
        seconds = 0.0
        for rows in self.chunks(len(inputs), batch):
            args = self.kwargs(rows, device)
            if self.delta:
                args["return_convergence_delta"] = True
            start = time.perf_counter()
            result = self.attribute(inputs[rows].to(device), **args)
            _synchronize(device)
            seconds += time.perf_counter() - start
            if self.delta:
                result, delta = result
                deltas.append(delta.detach().view(rows.stop - rows.start, -1).mean(1).cpu())
            raws.append(result.detach().float().cpu())
        raw = torch.cat(raws)
        delta_all = torch.cat(deltas) if deltas else None
        return Output(raw, display_map(raw, self.info, inputs.shape[-2:]), delta_all, seconds)


def prepare(spec: MethodNode, index: int, ctx: Context) -> Prepared:
    """Build one method from its config node: Captum object, layer, neuron and arguments."""
    kind = str(spec.kind)  # type: ignore[attr-defined]
    info = METHODS[kind]
    loc: YamlPath = ("methods", index)
    network = ctx.network
    layer = layer_module = None
    if "layer" in info.params:
        layer = _layer_path(spec.layer, network, (*loc, "layer"))  # type: ignore[attr-defined]
        layer_module = network.model.get_submodule(layer)
    build = CONSTRUCTORS.get(info.captum)
    if build is not None:
        attributor = build(network, spec, ctx.base, loc)
    else:
        cls = getattr(captum.attr, info.captum)
        attributor = cls(network) if layer_module is None else cls(network, layer_module)
        if hasattr(attributor, "interpretable_model"):  # Lime, KernelShap: fit without sklearn
            attributor.interpretable_model = linear_surrogate()
    if info.across_inputs and len(ctx.inputs) < 2:
        raise SpecError(
            (*loc, "kind"),
            f"{kind} shuffles features across the inputs: it needs 2 or more (there is 1)",
        )
    prepared = Prepared(method_name(spec), spec, info, loc, attributor)
    prepared.layer, prepared.layer_module = layer, layer_module
    if info.target:
        prepared.per_input["target"] = ctx.targets
    for param in info.params:
        _ARGUMENTS.get(param, _plain)(prepared, param, ctx)
    if spec.noise_tunnel is not None:
        _noise_tunnel(prepared)
    prepared.delta = bool(prepared.attributor.has_convergence_delta())
    return prepared


# ----------------------------------------------------------------------------- arguments


def _plain(prepared: Prepared, param: str, ctx: Context) -> None:
    """A parameter passed as it is, unless unset (None: Captum's default)."""
    value = getattr(prepared.spec, param)
    if value is not None:
        prepared.fixed[CALL_ARGS[param]] = value


def _nothing(prepared: Prepared, param: str, ctx: Context) -> None:
    """Handled elsewhere (the layer, and LimeBase's options, go to the constructor)."""


def _baseline(prepared: Prepared, param: str, ctx: Context) -> None:
    """One reference per input: the method's own baseline or the top-level one."""
    spec = prepared.spec.baseline  # type: ignore[attr-defined]
    loc = (*prepared.loc, "baseline") if spec is not None else ("baseline",)
    refs = ctx.baseline if spec is None else ctx.baselines_of(spec, loc)
    prepared.per_input["baselines"] = refs.per_input(len(ctx.inputs), loc, prepared.kind)


def _distribution(prepared: Prepared, param: str, ctx: Context) -> None:
    """References sampled by the method: the method's own or the top-level distribution."""
    spec = prepared.spec.baseline  # type: ignore[attr-defined]
    loc = (*prepared.loc, "baseline") if spec is not None else ("distribution",)
    refs = ctx.distribution if spec is None else ctx.baselines_of(spec, loc)
    least = LEAST_REFERENCES.get(prepared.info.captum, 1)
    prepared.fixed["baselines"] = refs.distribution(loc, prepared.kind, least)


def _mask(prepared: Prepared, param: str, ctx: Context) -> None:
    """The feature mask: the method's own or the top-level one, at the inputs' size."""
    spec = prepared.spec.mask  # type: ignore[attr-defined]
    loc = (*prepared.loc, "mask") if spec is not None else ("mask",)
    size = (ctx.inputs.shape[-2], ctx.inputs.shape[-1])
    prepared.fixed["feature_mask"] = feature_mask(spec or ctx.mask, size, ctx.base, loc)


def _window(prepared: Prepared, param: str, ctx: Context) -> None:
    """Occlusion's window and stride span every channel: [C, h, w]."""
    h, w = getattr(prepared.spec, param)
    channels, height, width = ctx.inputs.shape[1:]
    if param == "window" and (h > height or w > width):
        raise SpecError(
            (*prepared.loc, "window"), f"[{h}, {w}] is larger than the images ({height}x{width})"
        )
    prepared.fixed[CALL_ARGS[param]] = (channels, h, w) if param == "window" else (1, h, w)


def _neuron(prepared: Prepared, param: str, ctx: Context) -> None:
    assert prepared.layer is not None
    shape = _layer_shape(ctx, prepared.layer, (*prepared.loc, "layer"))
    spec: NeuronSpec = prepared.spec.neuron  # type: ignore[attr-defined]
    prepared.neuron = neuron_selector(spec, shape, prepared.layer, (*prepared.loc, "neuron"))
    prepared.fixed["neuron_selector"] = prepared.neuron


def _ablate(prepared: Prepared, param: str, ctx: Context) -> None:
    """Layer feature ablation's groups of units: per position, per channel, or each unit."""
    assert prepared.layer is not None
    shape = _layer_shape(ctx, prepared.layer, (*prepared.loc, "layer"))
    group = prepared.spec.ablate  # type: ignore[attr-defined]
    if group == "unit" or len(shape) != 4:
        return
    _, c, h, w = shape
    if group == "position":
        prepared.fixed["layer_mask"] = torch.arange(h * w).view(1, 1, h, w)
    else:
        prepared.fixed["layer_mask"] = torch.arange(c).view(1, c, 1, 1)


_ARGUMENTS: dict[str, Callable[[Prepared, str, Context], None]] = {
    "layer": _nothing,
    "space": _nothing,
    "kernel": _nothing,
    "ridge": _nothing,
    "baseline": _baseline,
    "distribution": _distribution,
    "mask": _mask,
    "window": _window,
    "stride": _window,
    "neuron": _neuron,
    "ablate": _ablate,
}


def _noise_tunnel(prepared: Prepared) -> None:
    """Wrap in NoiseTunnel; its `stdevs` is the noise level (Captum uses one name for both)."""
    tunnel = prepared.spec.noise_tunnel
    assert tunnel is not None
    if "stdevs" in prepared.fixed:
        raise SpecError(
            (*prepared.loc, "stdevs"),
            "cannot be combined with noise_tunnel (Captum passes noise_tunnel.stdev as stdevs)",
        )
    prepared.attributor = NoiseTunnel(prepared.attributor)
    prepared.fixed |= {
        "nt_type": tunnel.type,
        "nt_samples": tunnel.samples,
        "stdevs": tunnel.stdev,
        "nt_samples_batch_size": tunnel.batch,
    }


# ----------------------------------------------------------------------------- layers


def _layer_path(name: str, network: Network, loc: YamlPath) -> str:
    path = resolve_layer(name, {}, network.model, loc)
    if path in (IMAGE, OUTPUT):
        raise SpecError(loc, f"{path!r} is not a module; layer methods need a named_modules() path")
    return path


def _layer_shape(ctx: Context, layer: str, loc: YamlPath) -> tuple[int, ...]:
    """The layer's output shape for one input (a dry forward, stopped after the layer)."""
    with torch.no_grad(), Capture(ctx.network.model, [layer], ctx.network) as capture:
        output = capture.run(ctx.inputs[:1].to(ctx.device))[layer]
    if not isinstance(output, torch.Tensor):
        raise SpecError(loc, f"{layer} outputs {describe_shape(output)}, not one tensor")
    return tuple(output.shape)


def neuron_selector(
    spec: NeuronSpec, shape: tuple[int, ...], layer: str, loc: YamlPath
) -> tuple[int, ...]:
    """Captum's neuron index (without the batch) for a [B, C, H, W] or [B, N] layer."""
    if len(shape) not in (2, 4):
        raise SpecError(loc, f"{layer} gives {list(shape)}: neurons need [B, C, H, W] or [B, N]")
    channels = shape[1]
    if spec.channel >= channels:
        raise SpecError(
            (*loc, "channel"),
            f"{layer}: channel {spec.channel} is out of range: the layer has {channels} "
            f"channels (0..{channels - 1})",
        )
    if len(shape) == 2:
        if spec.x is not None or spec.y is not None:
            raise SpecError(loc, f"{layer} gives {list(shape)}: it has no x or y")
        return (spec.channel,)
    h, w = shape[2:]
    x = w // 2 if spec.x is None else spec.x
    y = h // 2 if spec.y is None else spec.y
    for axis, value, size in (("x", x, w), ("y", y, h)):
        if value >= size:
            raise SpecError((*loc, axis), f"{layer}: {axis}={value} is outside 0..{size - 1}")
    return (spec.channel, y, x)


# ----------------------------------------------------------------------------- maps


def display_map(raw: torch.Tensor, info: MethodInfo, size: torch.Size) -> torch.Tensor | None:
    """[B, H, W]: the attribution summed over channels; layer maps upsampled (bilinear).

    Summing is the natural reduction for additive attributions (a pixel's share is the sum of
    its channels' shares). Layer attributions that are not [B, C, h, w] have no map.
    """
    if info.family != "layer":
        return raw.sum(1)
    if raw.dim() != 4:
        return None
    summed = raw.sum(1, keepdim=True)
    upsampled = LayerAttribution.interpolate(summed, tuple(size), interpolate_mode="bilinear")
    return upsampled[:, 0]


# ----------------------------------------------------------------------------- helpers


@contextmanager
def quiet_captum() -> Iterator[None]:
    """Silence Captum's advisory warnings (hooks set on ReLUs, inputs made to require grad)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"captum(\.|$)")
        warnings.filterwarnings("ignore", message=r".*requires_grad.*", category=UserWarning)
        yield


def _to(value: Any, device: torch.device) -> Any:
    return value.to(device) if isinstance(value, torch.Tensor) else value


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
