"""What every config node shares: the strict base class and the small value types (sizes,
index lists, module paths, layer names) that several node families use."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
)


def pair(value: Any) -> Any:
    """Accept `64` as shorthand for `[64, 64]`."""
    return [value, value] if isinstance(value, int) and not isinstance(value, bool) else value


def default_tag(tag: str, value: str) -> Any:
    """A validator giving a tagged-union node its default tag when the YAML leaves it out."""

    def fill(node: Any) -> Any:
        return {tag: value, **node} if isinstance(node, dict) and tag not in node else node

    return BeforeValidator(fill)


def _listify(value: Any) -> Any:
    """Accept `3` as shorthand for `[3]`."""
    return [value] if isinstance(value, int) and not isinstance(value, bool) else value


Size = Annotated[
    tuple[Annotated[int, Field(ge=8, le=4096)], Annotated[int, Field(ge=8, le=4096)]],
    BeforeValidator(pair),
]
Indices = Annotated[list[Annotated[int, Field(ge=0)]], BeforeValidator(_listify)]


class Node(BaseModel):
    """Base of every config node: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _int_to_str(value: Any) -> Any:
    """Module paths may be bare numbers (children of nn.Sequential): `2` means '2'."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


# 'package.module:function': a factory in the user's own code (the config's folder importable).
EntryPoint = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
        description="'package.module:function'; the config's folder is importable.",
    ),
]
ModulePath = Annotated[str, Field(min_length=1), BeforeValidator(_int_to_str)]
LayerName = Annotated[
    str,
    BeforeValidator(_int_to_str),
    Field(
        min_length=1,
        description="A hook alias, a dotted module path from named_modules(), 'output' (the "
        "model's output) or 'image' (the rendered image).",
    ),
]
