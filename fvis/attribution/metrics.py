"""Quality metrics of an attribution, per input, computed by Captum.

* infidelity (Yeh et al. 2019): E_I[(I . a - (f(x) - f(x - I)))^2] with Gaussian perturbations I
  of standard deviation `noise`: how well the attribution predicts the change of the explained
  output when the input changes. Only for attributions of the input (primary and neuron
  methods), against the function they explain (the target's output, or the neuron).
* max-sensitivity: max over |delta| <= radius of |a(x + delta) - a(x)| / |a(x)| (Frobenius
  norms): how much the explanation itself moves under small input changes.

Both are lower-is-better and are estimated from a few samples (see the config's `metrics`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from captum.metrics import infidelity, sensitivity_max

from fvis.attribution.methods import Prepared, quiet_captum
from fvis.config.attribution import InfidelitySpec, MetricsSpec, SensitivitySpec
from fvis.hooks import Capture
from fvis.models import Network


@dataclass
class Scores:
    """Per-input metric values (None where skipped, with the reason) and their timings."""

    infidelity: torch.Tensor | None = None
    sensitivity: torch.Tensor | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def score(
    prepared: Prepared,
    raw: torch.Tensor,
    inputs: torch.Tensor,
    spec: MetricsSpec,
    network: Network,
    batch: int,
    device: torch.device,
) -> Scores:
    """The configured metrics of one method's attributions `raw` on `inputs`."""
    scores = Scores()
    infidelity_spec, sensitivity_spec = spec.infidelity, spec.sensitivity
    if infidelity_spec is not None:
        explained = explained_function(prepared, network)
        if isinstance(explained, str):
            scores.skipped["infidelity"] = explained
        else:
            scores.infidelity = _timed(
                scores,
                "infidelity",
                lambda: _infidelity(
                    prepared, explained, raw, inputs, infidelity_spec, batch, device
                ),
            )
    if sensitivity_spec is not None:
        scores.sensitivity = _timed(
            scores,
            "sensitivity",
            lambda: _sensitivity(prepared, inputs, sensitivity_spec, batch, device),
        )
    return scores


def explained_function(
    prepared: Prepared, network: Network
) -> Callable[[torch.Tensor], torch.Tensor] | str:
    """The function whose changes an input attribution predicts, or why there is none."""
    if prepared.info.family == "layer":
        return "layer attributions are not attributions of the input"
    if prepared.info.family == "primary":
        return network
    if prepared.info.target:
        return "it splits the target's attribution through a neuron: no single function"
    assert prepared.layer is not None and prepared.neuron is not None
    layer, index = prepared.layer, (slice(None), *prepared.neuron)

    def neuron(x: torch.Tensor) -> torch.Tensor:
        with Capture(network.model, [layer], network) as capture:
            return capture.run(x)[layer][index]

    return neuron


def _infidelity(
    prepared: Prepared,
    explained: Callable[[torch.Tensor], torch.Tensor],
    raw: torch.Tensor,
    inputs: torch.Tensor,
    spec: InfidelitySpec,
    batch: int,
    device: torch.device,
) -> torch.Tensor:
    def perturb(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        noise = torch.randn_like(x) * spec.noise
        return noise, x - noise

    values = []
    for rows in prepared.chunks(len(inputs), batch):
        target = prepared.kwargs(rows, device).get("target")
        with quiet_captum():
            values.append(
                infidelity(
                    explained,
                    perturb,
                    inputs[rows].to(device),
                    raw[rows].to(device),
                    target=target,
                    n_perturb_samples=spec.samples,
                    max_examples_per_batch=batch,
                    normalize=spec.normalize,
                ).cpu()
            )
    return torch.cat(values)


def _sensitivity(
    prepared: Prepared,
    inputs: torch.Tensor,
    spec: SensitivitySpec,
    batch: int,
    device: torch.device,
) -> torch.Tensor:
    def explain(x: torch.Tensor | tuple[torch.Tensor, ...], **kwargs: object) -> Any:
        """Captum's metrics pass tuples of inputs and expect tuples back."""
        if isinstance(x, tuple):
            return (prepared.attribute(x[0], **kwargs),)
        return prepared.attribute(x, **kwargs)

    values = []
    for rows in prepared.chunks(len(inputs), batch):
        with quiet_captum():
            values.append(
                sensitivity_max(
                    explain,
                    inputs[rows].to(device),
                    perturb_radius=spec.radius,
                    n_perturb_samples=spec.samples,
                    max_examples_per_batch=batch,
                    **prepared.kwargs(rows, device),
                ).cpu()
            )
    return torch.cat(values)


def _timed(scores: Scores, name: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    start = time.perf_counter()
    value = compute()
    scores.seconds[name] = time.perf_counter() - start
    return value
