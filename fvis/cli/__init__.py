"""The `fvis` command line: parse, call, print. Torch is imported lazily, so help is instant.

`common` holds the Typer app, its sub-apps, the options and helpers several commands share;
each `*_commands` module adds one family of commands to the app when imported, and `fvis
--help` lists them in the order imported here.
"""

# isort: off
from fvis.cli import render_commands  # noqa: F401  (registers its commands on the app)
from fvis.cli import data_commands  # noqa: F401
from fvis.cli import activation_commands  # noqa: F401
from fvis.cli import microscope_commands  # noqa: F401
from fvis.cli import zoo_commands  # noqa: F401

# isort: on
from fvis.cli.common import app, main

__all__ = ["app", "main"]
