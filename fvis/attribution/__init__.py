"""Attribution: which input pixels drove a decision, computed by Captum from a YAML file.

Its schema lives with the others, in `fvis.config.attribution` (the table of methods in
`fvis.config.attribution_methods`); `inputs`, `baselines` and `masks` build tensors from it,
`methods` runs Captum (`limebase` builds its LimeBase), `metrics` scores the results, `heatmaps`
draws them and `run` ties it together and writes the run folder.

Importing this package keeps matplotlib out of the user's home (see `private_matplotlib_dir`):
it runs before any of its modules imports Captum.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile


def private_matplotlib_dir() -> str | None:
    """Point matplotlib at a temporary folder, removed at exit; returns it (None: left alone).

    Captum imports matplotlib, which on import creates ~/.config/matplotlib and writes its font
    list to ~/.cache/matplotlib: fvis writes nowhere but its output folder. A folder the user
    chose (MPLCONFIGDIR) is kept, and so is matplotlib's choice once it has been imported.
    """
    if os.environ.get("MPLCONFIGDIR") or "matplotlib" in sys.modules:
        return None
    folder = tempfile.mkdtemp(prefix="fvis-matplotlib-")
    os.environ["MPLCONFIGDIR"] = folder
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


private_matplotlib_dir()
