"""Attribution: which input pixels drove a decision, computed by Captum from a YAML file.

Its schema lives with the others, in `fvis.config.attribution` (the table of methods in
`fvis.config.attribution_methods`); `inputs`, `baselines` and `masks` build tensors from it,
`methods` runs Captum (`limebase` builds its LimeBase), `metrics` scores the results, `heatmaps`
draws them and `run` ties it together and writes the run folder.

Importing this package keeps matplotlib out of the user's home (`fvis.curves.private_matplotlib`):
it imports matplotlib, which Captum imports, in a temporary config folder first.
"""

from __future__ import annotations

from fvis.curves import private_matplotlib

with private_matplotlib():
    import matplotlib.font_manager  # noqa: F401  (Captum imports it: its font list built here)
