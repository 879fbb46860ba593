"""`python -m fvis` runs the command-line interface."""

from fvis.cli import main

main()
