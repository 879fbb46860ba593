"""Objective expressions: `"channel(conv3, 5) - 1e-4 * l1(conv2)"` parsed into the YAML tree.

A small recursive-descent parser (never `eval`) that produces exactly the nodes a YAML objective
tree would hold, so both spellings are validated and compiled by the same code:

    expr    := term (("+" | "-") term)*
    term    := unary (("*" | "/") unary)*
    unary   := "-" unary | power
    power   := atom (("^" | "**") unary)?
    atom    := NUMBER | call | "(" expr ")"
    call    := NAME "(" [arg ("," arg)*] ")"
    arg     := [NAME "="] value
    value   := NUMBER | NAME | STRING | "[" [value ("," value)*] "]" | expr-call
               | "{" [NAME ":" value ("," NAME ":" value)*] "}"
               | file(STRING [, STRING]) | random(NUMBER) | image(STRING [, NAME])

Positional arguments follow each kind's order (its schema class's `positional`, passed in as
`kinds`); `weight=` and `batch=` work in every call; a mapping is written as in YAML's flow
style (`{random: 3}`, `{file: v.pt, key: dir}`). Torch-free, and free of the schema itself,
which calls it.

The limits on what a config may hold live here, the lowest module of the schema, and the YAML
reader (`fvis.config.loader`) applies the same: nesting deeper than MAX_DEPTH (the parsers
recurse once per level: a 3,000-deep expression would exhaust Python's stack) and integers of
more than MAX_INT_DIGITS digits (Python refuses to convert 4,300) are refused with a message.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

# Lists, mappings, calls and parentheses inside each other: the most a config may nest.
MAX_DEPTH = 64
# The most digits an integer may have (a seed has at most 20).
MAX_INT_DIGITS = 100

# The tensor spellings written as calls, with their arguments' keys in order: file('v.pt', 'dir')
# is {file: v.pt, key: dir}, image('cat.png', conv2) the activations of cat.png at conv2.
VALUE_CALLS = {"file": ("file", "key"), "random": ("random",), "image": ("image", "layer")}

TOKEN = re.compile(
    r"\s*(?:(?P<number>\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)"
    r"|(?P<name>[A-Za-z_][\w.]*)"
    r"|(?P<string>'[^']*'|\"[^\"]*\")"
    r"|(?P<op>\*\*|[-+*/^(),=\[\]{}:]))"
)


class ExpressionError(ValueError):
    """A syntax error in an objective expression, with its column."""


@dataclass
class Token:
    kind: str
    text: str
    column: int


def tokenize(text: str) -> list[Token]:
    tokens, pos = [], 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = TOKEN.match(text, pos)
        if not match:
            rest = text[pos:].lstrip()
            column = len(text) - len(rest) + 1
            raise ExpressionError(f"unexpected {rest[0]!r} at column {column}")
        kind = match.lastgroup or "op"
        tokens.append(Token(kind, match.group(kind), match.start(kind) + 1))
        pos = match.end()
    tokens.append(Token("end", "", len(text) + 1))
    return tokens


def parse_expression(value: Any, kinds: Mapping[str, tuple[str, ...]]) -> Any:
    """A string becomes the objective tree it spells; anything else passes through.

    `kinds` maps each kind callable in expressions to the names of its positional arguments.
    """
    if not isinstance(value, str):
        return value
    parser = _Parser(tokenize(value), kinds)
    tree = parser.expr()
    parser.expect("end")
    if not isinstance(tree, dict):
        raise ExpressionError(f"{value!r} is a number, not an objective")
    return tree


class _Parser:
    def __init__(self, tokens: list[Token], kinds: Mapping[str, tuple[str, ...]]) -> None:
        self.tokens = tokens
        self.kinds = kinds
        self.i = 0
        self.depth = 0

    @contextmanager
    def nested(self, token: Token) -> Iterator[None]:
        """One level deeper (a parenthesis, call, list, mapping, sign or exponent), refused past
        MAX_DEPTH: every recursion of the grammar passes through here."""
        if self.depth >= MAX_DEPTH:
            raise ExpressionError(
                f"nested more than {MAX_DEPTH} levels deep at column {token.column}: fvis reads "
                f"at most {MAX_DEPTH} levels of parentheses, signs, calls, lists and mappings"
            )
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1

    @property
    def peek(self) -> Token:
        return self.tokens[self.i]

    def take(self) -> Token:
        token = self.tokens[self.i]
        self.i += 1
        return token

    def accept(self, *ops: str) -> Token | None:
        if self.peek.kind == "op" and self.peek.text in ops:
            return self.take()
        return None

    def expect(self, kind: str, text: str | None = None) -> Token:
        token = self.peek
        if token.kind != kind or (text is not None and token.text != text):
            wanted = repr(text) if text else ("the end" if kind == "end" else kind)
            found = repr(token.text) if token.text else "the end"
            raise ExpressionError(f"expected {wanted}, found {found} at column {token.column}")
        return self.take()

    def expr(self) -> Any:
        out = self.term()
        while op := self.accept("+", "-"):
            right = self.term()
            out = _add(out, _scale(right, -1.0) if op.text == "-" else right, op)
        return out

    def term(self) -> Any:
        out = self.unary()
        while op := self.accept("*", "/"):
            right = self.unary()
            if op.text == "/":
                if isinstance(right, dict):
                    raise ExpressionError(f"division by an objective at column {op.column}")
                factor = _quotient(1.0, right, op)
                out = _scale(out, factor) if isinstance(out, dict) else _product(out, factor, op)
            elif isinstance(out, dict) and isinstance(right, dict):
                out = {"kind": "product", "terms": [out, right]}
            elif isinstance(out, dict) or isinstance(right, dict):
                node, factor = (out, right) if isinstance(out, dict) else (right, out)
                out = _scale(node, factor)
            else:
                out = _product(out, right, op)
        return out

    def unary(self) -> Any:
        if sign := self.accept("-"):
            with self.nested(sign):
                inner = self.unary()
            return _scale(inner, -1.0) if isinstance(inner, dict) else -inner
        return self.power()

    def power(self) -> Any:
        base = self.atom()
        if op := self.accept("^", "**"):
            with self.nested(op):
                exponent = self.unary()
            if isinstance(exponent, dict):
                raise ExpressionError(f"the exponent must be a number at column {op.column}")
            if isinstance(base, dict):
                return {"kind": "power", "term": base, "exponent": exponent}
            return _arithmetic(lambda: float(base) ** float(exponent), op)
        return base

    def atom(self) -> Any:
        token = self.peek
        if token.kind == "number":
            return _number(self.take())
        if self.accept("("):
            with self.nested(token):
                inner = self.expr()
            self.expect("op", ")")
            return inner
        if token.kind == "name":
            return self.call()
        raise ExpressionError(
            f"expected an objective or a number, found {token.text or 'the end'!r} "
            f"at column {token.column}"
        )

    def call(self) -> dict[str, Any]:
        name = self.take()
        if name.text not in self.kinds:
            close = difflib.get_close_matches(name.text, list(self.kinds), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ExpressionError(f"unknown objective {name.text!r}{hint} (column {name.column})")
        self.expect("op", "(")
        with self.nested(name):
            return self.arguments(name)

    def arguments(self, name: Token) -> dict[str, Any]:
        """A call's arguments, up to its closing parenthesis, as the node it spells."""
        node: dict[str, Any] = {"kind": name.text}
        positional = iter(self.kinds[name.text])
        while not self.accept(")"):
            if len(node) > 1 and not self.accept(","):
                found = repr(self.peek.text) if self.peek.text else "the end"
                raise ExpressionError(
                    f"expected ',' or ')', found {found} at column {self.peek.column}"
                )
            column = self.peek.column
            if self.peek.kind == "name" and self.tokens[self.i + 1].text == "=":
                key: str | None = self.take().text
                self.take()
            else:
                key = next(positional, None)
            if key is None:
                raise ExpressionError(
                    f"{name.text}() takes at most {len(self.kinds[name.text])} positional "
                    f"arguments (column {self.peek.column})"
                )
            if key in node:
                raise ExpressionError(
                    f"{name.text}() got {key!r} twice (the second at column {column})"
                )
            node[key] = self.value()
        return node

    def value(self) -> Any:
        token = self.peek
        if token.kind == "string":
            return self.take().text[1:-1]
        if self.accept("["):
            items: list[Any] = []
            with self.nested(token):
                while not self.accept("]"):
                    if items:
                        self.expect("op", ",")
                    items.append(self.value())
            return items
        if self.accept("{"):
            with self.nested(token):
                return self.mapping()
        if token.kind == "name" and self.tokens[self.i + 1].text != "(":
            return self.take().text  # a bare word: a layer name
        if token.kind == "name" and token.text in VALUE_CALLS:
            with self.nested(token):
                return self.value_call()
        return self.expr()

    def mapping(self) -> dict[str, Any]:
        """`{key: value, ...}` up to its closing brace, as in YAML's flow style."""
        out: dict[str, Any] = {}
        while not self.accept("}"):
            if out:
                self.expect("op", ",")
            key = self.peek
            if key.kind not in ("name", "string"):
                found = repr(key.text) if key.text else "the end"
                raise ExpressionError(f"expected a key, found {found} at column {key.column}")
            self.take()
            name = key.text[1:-1] if key.kind == "string" else key.text
            if name in out:
                raise ExpressionError(f"duplicate key {name!r} at column {key.column}")
            self.expect("op", ":")
            out[name] = self.value()
        return out

    def value_call(self) -> dict[str, Any]:
        token = self.take()
        keys = VALUE_CALLS[token.text]
        self.expect("op", "(")
        args = [self.value()]
        while self.accept(","):
            args.append(self.value())
        self.expect("op", ")")
        if len(args) > len(keys):
            raise ExpressionError(
                f"{token.text}() at column {token.column} takes {' and '.join(keys)}: at most "
                f"{len(keys)}, got {len(args)} arguments"
            )
        return dict(zip(keys, args, strict=False))


def _number(token: Token) -> int | float:
    """A number token's value; an integer of more than MAX_INT_DIGITS digits is refused."""
    if not token.text.isdigit():
        return float(token.text)
    if len(token.text) > MAX_INT_DIGITS:
        raise ExpressionError(
            f"integer with {len(token.text)} digits at column {token.column} is too large "
            f"(at most {MAX_INT_DIGITS})"
        )
    return int(token.text)


def _arithmetic(compute: Callable[[], float], op: Token) -> float:
    """A constant computed in floating point (so `2 ** 3 ** 4 ** 5` cannot build a huge
    integer); one that has no finite value is an ExpressionError at its operator."""
    try:
        value = compute()
    except (ZeroDivisionError, OverflowError):
        value = math.inf
    if not math.isfinite(value):
        raise ExpressionError(f"{op.text!r} at column {op.column} gives no finite number")
    return value


def _product(a: float, b: float, op: Token) -> float:
    return _arithmetic(lambda: float(a) * float(b), op)


def _quotient(a: float, b: float, op: Token) -> float:
    return _arithmetic(lambda: float(a) / float(b), op)


def _scale(node: Any, factor: float) -> Any:
    if not isinstance(node, dict):
        return node * factor
    return {**node, "weight": node.get("weight", 1.0) * factor}


def _add(left: Any, right: Any, op: Token) -> dict[str, Any]:
    if not isinstance(left, dict) or not isinstance(right, dict):
        raise ExpressionError(
            f"a number alone is not an objective: cannot add it at column {op.column}"
        )
    terms = left["terms"] if left["kind"] == "sum" and set(left) == {"kind", "terms"} else [left]
    return {"kind": "sum", "terms": [*terms, right]}
