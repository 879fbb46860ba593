"""curves.png: the objective and its terms over the optimization steps, drawn by matplotlib."""

from __future__ import annotations

import math
import os
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from io import BytesIO
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.axes import Axes

FILE = "curves.png"
SIZE = (6.4, 3.6)  # inches: 640 x 360 pixels at DPI
DPI = 100
MAX_LEGEND = 10
"""Thin lines get a legend entry only when there are at most this many (a sweep's items)."""
SPREAD = 20
"""Lines whose peak magnitudes differ more than this many times get a symlog axis."""
MAX_TITLE = 90
MAX_LABEL = 32
"""Characters at most in the title and in a legend entry (a long one narrows the plot)."""

Line = tuple[Sequence[int], Sequence[float]]
"""One series: its steps and its value at each."""


def png(
    title: str,
    lines: Mapping[str, Line],
    thin: Mapping[str, Line] | None = None,
    terms: Mapping[str, Line] | None = None,
) -> bytes:
    """curves.png's bytes: `lines` bold and `thin` lines (one per item) in one panel, and,
    given `terms`, a second panel below it (regularizers are often on another scale than the
    objective, which would flatten one or the other in a shared panel); labelled by their keys.

    The same input gives the same bytes in one environment: matplotlib's defaults, not the
    user's matplotlibrc, and no version stamp in the file. Non-finite values leave gaps.
    """
    with private_matplotlib():
        # Deliberately lazy: matplotlib costs about 0.7 s to import (its font list built anew
        # in the private folder included), paid only by a process that draws curves.
        import matplotlib.style  # lazy: start-up time
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # lazy: start-up time
        from matplotlib.figure import Figure  # lazy: start-up time

    with matplotlib.style.context("default"):  # ignore any matplotlibrc the user has
        figure = Figure(figsize=SIZE, dpi=DPI, layout="constrained")
        FigureCanvasAgg(figure)
        panels = figure.subplots(2 if terms else 1, 1, sharex=True, squeeze=False)[:, 0]
        _panel(panels[0], lines, thin or {})
        if terms:
            _panel(panels[1], terms, {})
        panels[-1].set_xlabel("step")
        figure.suptitle(_shown(title, MAX_TITLE), fontsize="medium")
        buffer = BytesIO()
        figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _panel(axes: Axes, lines: Mapping[str, Line], thin: Mapping[str, Line]) -> None:
    """One axes: thin lines first (under), then bold ones (black over thin ones, whose colours
    they would share otherwise), a legend and a light grid."""
    few = len(thin) <= MAX_LEGEND
    for label, (steps, values) in thin.items():
        shown = _shown(label, MAX_LABEL) if few else None
        axes.plot(steps, _finite(values), linewidth=0.8, alpha=0.6, label=shown)
    for label, (steps, values) in lines.items():
        colour = "black" if thin else None  # None: the next colour of the cycle
        axes.plot(
            steps, _finite(values), color=colour, linewidth=2.0, label=_shown(label, MAX_LABEL)
        )
    axes.set_ylabel("value")
    linear = _linear_range([*thin.values(), *lines.values()])
    if linear is not None:
        axes.set_yscale("symlog", linthresh=linear)
    axes.grid(True, alpha=0.3)
    axes.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="x-small", frameon=False)


def _linear_range(lines: Sequence[Line]) -> float | None:
    """Where lines' peak magnitudes differ more than SPREAD times (an unweighted regularizer
    beside a logit), a symlog axis shows them all, linear within this of 0 (a tenth of the
    smallest peak); None: they share a linear axis."""
    peaks = [max((abs(v) for v in values if math.isfinite(v)), default=0.0) for _, values in lines]
    peaks = [peak for peak in peaks if peak > 0]
    if len(peaks) < 2 or max(peaks) <= SPREAD * min(peaks):
        return None
    return min(peaks) / 10


def _finite(values: Sequence[float]) -> list[float]:
    """Infinities as NaN, which matplotlib draws as a gap (an infinity breaks the autoscale)."""
    return [v if math.isfinite(v) else math.nan for v in values]


def _shown(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


@contextmanager
def private_matplotlib() -> Iterator[None]:
    """Matplotlib's first import in the process with MPLCONFIGDIR pointed at a temporary folder,
    removed afterwards, and the variable restored: that import creates a config folder and
    writes its font list (by default under ~/.config and ~/.cache), and fvis writes nowhere but
    its output folders. Once imported, matplotlib keeps the folder it chose: nothing to do; a
    folder the user chose (MPLCONFIGDIR set) is theirs to use, and saves the font list's build.
    curves.png imports it so; `fvis.attribution` too, before Captum (which imports it)."""
    if "matplotlib" in sys.modules or os.environ.get("MPLCONFIGDIR"):
        yield  # imported already, or a folder the user chose (its font list then kept)
        return
    before = os.environ.get("MPLCONFIGDIR")
    with tempfile.TemporaryDirectory(prefix="fvis-matplotlib-") as folder:
        os.environ["MPLCONFIGDIR"] = folder
        try:
            yield
        finally:
            if before is None:
                os.environ.pop("MPLCONFIGDIR", None)
            else:
                os.environ["MPLCONFIGDIR"] = before
