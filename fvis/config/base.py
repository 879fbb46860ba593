"""What every config node shares: the strict base class, the small value types (sizes, index
lists, module paths, layer names) that several node families use, and the two annotations that
keep the JSON schema editors read as permissive as fvis itself: `Shorthand` and `Tagged`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, core_schema


@dataclass(frozen=True, eq=False)  # hashed by identity: metadata of unions
class Shorthand:
    """A shorter spelling of a value, declared once: `expand` turns it into the full form before
    validation, and the JSON schema offers it beside the full form (`anyOf`), so that editors
    checking a config against `fvis schema` accept what fvis accepts.

    `schema` is the short form's JSON schema; None: one item of the full form (a number for a
    pair, an index for a list of indices)."""

    expand: Callable[[Any], Any]
    description: str
    schema: dict[str, Any] | None = None

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        return core_schema.no_info_before_validator_function(self.expand, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        full = handler(schema)
        if self.schema is not None:
            short = dict(self.schema)
        else:  # the schema of one item: `items` of a list, the first of a pair's `prefixItems`
            short = dict(full["items"] if "items" in full else full["prefixItems"][0])
        return {"anyOf": [full, {**short, "description": self.description}]}


@dataclass(frozen=True, eq=False)  # hashed by identity: metadata of unions
class Tagged:
    """A union of nodes told apart by their `tag` key (`kind`, `source`): pydantic's discriminated
    union, whose JSON schema any JSON Schema validator resolves without pydantic's
    `discriminator` extension. Every branch holds its tag as a `const`, so at most one matches,
    and the tag is required; with a `default`, a node without the tag is that branch (the YAML
    may leave the tag out) in validation and in the schema alike."""

    tag: str
    default: str | None = None

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        union = handler.generate_schema(Annotated[source, Field(discriminator=self.tag)])
        if self.default is None:
            return union
        return core_schema.no_info_before_validator_function(self._fill, union)

    def _fill(self, node: Any) -> Any:
        """The default tag, given to a node that leaves it out."""
        return (
            {self.tag: self.default, **node}
            if isinstance(node, dict) and self.tag not in node
            else node
        )

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        union = handler(schema)
        if self.default is None:
            return {**union, "required": [self.tag]}
        # The default branch may leave its tag out (as a class default for the tag also says).
        branch = handler.resolve_ref_schema(
            {"$ref": union["discriminator"]["mapping"][self.default]}
        )
        required = [name for name in branch.pop("required", []) if name != self.tag]
        if required:
            branch["required"] = required
        return union


def pair(value: Any) -> Any:
    """Accept `64` as shorthand for `[64, 64]`."""
    return [value, value] if isinstance(value, int) and not isinstance(value, bool) else value


def _listify(value: Any) -> Any:
    """Accept `3` as shorthand for `[3]`."""
    return [value] if isinstance(value, int) and not isinstance(value, bool) else value


Size = Annotated[
    tuple[Annotated[int, Field(ge=8, le=4096)], Annotated[int, Field(ge=8, le=4096)]],
    Shorthand(pair, "One number n: a square, [n, n]."),
]
Indices = Annotated[
    list[Annotated[int, Field(ge=0)]],
    Field(min_length=1),
    Shorthand(_listify, "One index: a list of one."),
]

# The longest path and path component the operating system looks up (Linux's PATH_MAX and
# NAME_MAX); a longer one fails with ENAMETOOLONG wherever fvis checks that the file exists.
MAX_PATH_CHARS = 4096
MAX_NAME_BYTES = 255


def _lookable(path: Path) -> Path:
    """A path no longer than the operating system can look up."""
    if len(str(path)) > MAX_PATH_CHARS:
        raise ValueError(
            f"path of {len(str(path))} characters is too long (at most {MAX_PATH_CHARS})"
        )
    for part in path.parts:
        if len(part.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
            raise ValueError(
                f"path component {part[:20]!r}... is too long (at most {MAX_NAME_BYTES} bytes)"
            )
    return path


# A file named in a config: refused in validation when no file could have that name.
FilePath = Annotated[Path, AfterValidator(_lookable)]


class Node(BaseModel):
    """Base of every config node: unknown keys are errors, values are immutable, and every
    number is finite (a NaN or infinity in a config is a typo, never a setting)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _int_to_str(value: Any) -> Any:
    """Module paths may be bare numbers (children of nn.Sequential): `2` means '2'."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


# A bare number where a module path is expected: the child of that index in an nn.Sequential.
_CHILD_INDEX = Shorthand(
    _int_to_str, "A bare number: that child of an nn.Sequential (2 means '2').", {"type": "integer"}
)

# 'package.module:function': a factory in the user's own code (the config's folder importable).
EntryPoint = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
        description="'package.module:function'; the config's folder is importable.",
    ),
]
ModulePath = Annotated[str, Field(min_length=1), _CHILD_INDEX]
LayerName = Annotated[
    str,
    Field(
        min_length=1,
        description="A hook alias, a dotted module path from named_modules(), 'output' (the "
        "model's output) or 'image' (the rendered image).",
    ),
    _CHILD_INDEX,
]


class TensorFile(Node):
    """A tensor from a file: .pt/.pth (weights_only), .npy or .safetensors. Shared by the
    objectives (vectors, weights, transforms) and `param.decorrelate` (a colour matrix)."""

    file: FilePath = Field(description="The file; relative paths are from the config's folder.")
    key: str | None = Field(None, description="Entry to take from a dict or .safetensors file.")
    index: int | None = Field(
        None, ge=0, description="Row to take, e.g. one class's row of a classifier's weights."
    )
