"""fvis: feature visualization for PyTorch, driven by a YAML file."""

__version__ = "0.1.0"
