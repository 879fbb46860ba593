"""Objectives: the algebra (`algebra`), the library (`activation`, `direction`, `batch`) and
the compiler from config trees (`compile`)."""

from fvis.objectives.algebra import Activations, Leaf, Objective, TermError

__all__ = ["Activations", "Leaf", "Objective", "TermError"]
