"""Objectives from the user's own code: `kind: plugin` calls a factory that returns one."""

from __future__ import annotations

from typing import Any

from fvis.config import PluginObjective
from fvis.errors import SpecError, YamlPath
from fvis.factories import call, load_callable
from fvis.objectives.algebra import Objective
from fvis.objectives.compile import Context


class Plugin:
    """Builds a plugin node: `factory(layer=<resolved spec>, **other keys)` -> an Objective."""

    @classmethod
    def from_node(cls, node: PluginObjective, loc: YamlPath, ctx: Context) -> Objective:
        factory = load_callable(node.factory, ctx.base, (*loc, "factory"))
        kwargs: dict[str, Any] = dict(node.model_extra or {})
        if node.layer is not None:
            kwargs["layer"] = ctx.layer(loc)
        objective = call(factory, loc, **kwargs)
        if not isinstance(objective, Objective):
            raise SpecError(
                (*loc, "factory"),
                f"{node.factory} returned {type(objective).__name__!r}, not an fvis Objective "
                "(subclass fvis.objectives.Leaf)",
            )
        return objective
