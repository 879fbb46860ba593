"""Start-up: a render or an attribution of a built-in model imports nothing it does not use
(torchvision costs 1 to 2 s and pulls in torch._dynamo; captum brings matplotlib; matplotlib,
0.7 s, only when curves.png is written), and run.json still records torchvision's exact
version."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torchvision

from fvis.models import torchvision_version

ROOT = Path(__file__).parent.parent

# One process shows its help, renders the built-in model for one step without curves, then with
# them, then attributes one of its inputs, and prints which of these modules it imported after
# each.
CHECK = """
import json, sys
from fvis.cli import main

render_config, render_out, attribution_config, attribution_out = sys.argv[1:]

def command(*args):
    sys.argv = ["fvis", *args]
    try:
        main()
    except SystemExit as exc:
        assert not exc.code, f"fvis {args[0]} exited with {exc.code}"

def imported(*names):
    return [m for m in names if m in sys.modules]

command("--help")
after_help = imported("torch", "matplotlib")
once = ["--set", "optim.steps=1", "--quiet", "--force"]
command("render", render_config, *once, "--set", "output.curves=false", "--out", render_out)
after_render = imported("torchvision", "captum", "matplotlib")
command("render", render_config, *once, "--out", render_out + "-curves")
with_curves = imported("matplotlib")
command("attribute", attribution_config, "--out", attribution_out, "--quiet")
after_attribute = imported("torchvision")
print(json.dumps([after_help, after_render, with_curves, after_attribute]))
"""


def test_zoo_render_and_attribution_skip_torchvision_captum_matplotlib(tmp_path: Path) -> None:
    """--help imports neither torch nor matplotlib; a render with output.curves off imports no
    matplotlib (nor torchvision, captum) and writes no curves.png; one with curves does both."""
    attribution = tmp_path / "attribution.yaml"
    attribution.write_text(
        json.dumps(
            {
                "device": "cpu",
                "inputs": [{"kind": "zoo_class", "class": "red", "seed": 1}],
                "size": 32,
                "methods": [{"kind": "saliency"}],
                "metrics": None,
            }
        )
    )
    quickstart = ROOT / "configs" / "quickstart.yaml"
    args = [quickstart, tmp_path / "render", attribution, tmp_path / "attribute"]
    done = subprocess.run(
        [sys.executable, "-c", CHECK, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    after_help, after_render, with_curves, after_attribute = json.loads(
        done.stdout.strip().splitlines()[-1]
    )
    assert after_help == [], f"fvis --help imported {after_help}"
    assert after_render == [], f"a zoo render without curves imported {after_render}"
    assert with_curves == ["matplotlib"]
    assert after_attribute == [], f"a zoo attribution imported {after_attribute}"
    run = json.loads((tmp_path / "render" / "run.json").read_text())
    assert run["versions"]["torchvision"] == torchvision.__version__
    assert "curves.png" not in run["files"] and not (tmp_path / "render" / "curves.png").exists()
    assert (tmp_path / "render-curves" / "curves.png").is_file()


def test_torchvision_version_is_read_without_importing_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """The installed package's own string (build tag included), with torchvision unimported."""
    monkeypatch.delitem(sys.modules, "torchvision")
    assert torchvision_version() == torchvision.__version__
    assert "torchvision" not in sys.modules
