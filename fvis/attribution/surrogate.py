"""The linear surrogate Lime and KernelShap fit, solved in closed form with torch.

Captum's defaults fit it with scikit-learn (Lasso for Lime, plain least squares for KernelShap);
fvis solves the weighted least-squares problem directly, so no scikit-learn is needed:
beta = argmin sum_i w_i (y_i - b - x_i . beta)^2 + ridge |beta|^2, intercept b unpenalized.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from captum._utils.models.linear_model import LinearModel
from torch.utils.data import DataLoader

RIDGE = 1e-3
"""The default L2 penalty (samples weigh about 1 each): keeps the solve well posed with few
samples. LimeBase's `ridge` sets it per method."""


def _fit(
    model: LinearModel, dataloader: DataLoader, ridge: float = RIDGE, **_: Any
) -> dict[str, float]:
    """Weighted ridge regression on every (x, y, w) batch of the loader; sets model's weights."""
    xs, ys, ws = [], [], []
    for batch in dataloader:
        x, y = batch[0], batch[1]
        w = batch[2] if len(batch) == 3 else torch.ones(len(x), device=x.device)
        xs.append(x.double())
        ys.append(y.double().reshape(len(x)))
        ws.append(w.double().reshape(len(x)))
    x, y, w = torch.cat(xs), torch.cat(ys), torch.cat(ws)
    if not bool(torch.isfinite(w).all()) or float(w.sum()) <= 0 or bool((w < 0).any()):
        raise ValueError(
            "the similarity kernel gave every sample weight 0 (or a negative or non-finite "
            "weight): widen the kernel (kernel.width) or use kernel: {kind: uniform}"
        )
    x_mean, y_mean = (w @ x) / w.sum(), (w @ y) / w.sum()
    xc, yc = x - x_mean, y - y_mean
    gram = xc.T @ (w[:, None] * xc) + ridge * torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    beta = torch.linalg.solve(gram, xc.T @ (w * yc))
    bias = y_mean - x_mean @ beta
    model._construct_model_params(
        norm_type=None, weight_values=beta.float()[None], bias_value=bias.float().reshape(1)
    )
    return {}


def linear_surrogate(ridge: float = RIDGE) -> LinearModel:
    """A fresh surrogate model for Lime, KernelShap or LimeBase, with this L2 penalty."""
    return LinearModel(train_fn=partial(_fit, ridge=ridge))
