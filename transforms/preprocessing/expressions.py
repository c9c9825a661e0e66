"""A tiny, safe expression language over rows, for filters and computed columns given as text.

``Expr("speed_kmh > 120 and car_id in ('car-1', 'car-2')")`` is a callable ``row -> value``. It lets
a pipeline flag or a config file carry a KSQL-like ``WHERE`` without running arbitrary Python:
the text is parsed with :mod:`ast` and only these forms are accepted —

* field names (``speed_kmh``), constants (numbers, strings, ``True``/``False``/``None``), tuples
  and lists of them;
* ``and`` ``or`` ``not``; ``== != < <= > >= in not in is is not``; ``+ - * / // %`` and unary
  ``-``/``+``;
* calls of ``abs``, ``round``, ``min``, ``max``, ``len``, ``lower``, ``upper``, ``coalesce``.

No attribute access, subscripts, lambdas or other calls, so nothing outside the row is reachable.
Python semantics apply: ``amount > 100`` with ``amount`` null raises ``TypeError`` — write
``amount is not None and amount > 100``, or ``coalesce(amount, 0) > 100``.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from typing import Any

__all__ = ["Expr", "FUNCTIONS"]


def _coalesce(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


#: Functions an expression may call.
FUNCTIONS = {
    "abs": abs,
    "round": round,
    "min": min,
    "max": max,
    "len": len,
    "lower": str.lower,
    "upper": str.upper,
    "coalesce": _coalesce,
}

_ALLOWED = (
    ast.Expression,
    ast.BoolOp,
    ast.And,
    ast.Or,
    ast.UnaryOp,
    ast.Not,
    ast.USub,
    ast.UAdd,
    ast.BinOp,
    ast.Add,
    ast.Sub,
    ast.Mult,
    ast.Div,
    ast.FloorDiv,
    ast.Mod,
    ast.Compare,
    ast.Eq,
    ast.NotEq,
    ast.Lt,
    ast.LtE,
    ast.Gt,
    ast.GtE,
    ast.In,
    ast.NotIn,
    ast.Is,
    ast.IsNot,
    ast.Name,
    ast.Load,
    ast.Constant,
    ast.Tuple,
    ast.List,
    ast.Call,
)


class Expr:
    """A compiled, validated expression; call it with a row. Picklable (re-parsed on load)."""

    def __init__(self, text: str) -> None:
        if not isinstance(text, str) or not text.strip():
            raise ValueError("an expression must be a non-empty string")
        try:
            tree = ast.parse(text.strip(), mode="eval")
        except SyntaxError as err:
            raise ValueError(f"expression {text!r} does not parse: {err.msg}") from err
        for node in ast.walk(tree):
            if not isinstance(node, _ALLOWED):
                raise ValueError(f"expression {text!r}: {type(node).__name__} is not allowed")
            if isinstance(node, ast.Call):
                if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
                    raise ValueError(
                        f"expression {text!r}: only {', '.join(FUNCTIONS)} may be called"
                    )
                if node.keywords:
                    raise ValueError(f"expression {text!r}: keyword arguments are not allowed")
        self.text = text
        self._code = compile(tree, "<expr>", "eval")
        self._globals = {"__builtins__": {}, **FUNCTIONS}

    def __call__(self, row: Mapping[str, Any]) -> Any:
        # An unknown field raises NameError naming it.
        return eval(self._code, self._globals, row)  # noqa: S307 - validated AST only

    def __reduce__(self):
        return (Expr, (self.text,))

    def __repr__(self) -> str:
        return f"Expr({self.text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Expr) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)
