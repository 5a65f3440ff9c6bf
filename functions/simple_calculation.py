"""Evaluate an arithmetic expression with a whitelisting `ast` walker, never `eval`."""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import Field

from runner import PermanentError, function, progress

MAX_EXPRESSION_LENGTH = 1000
MAX_DEPTH = 100
MAX_NODES = 1000
# Every int we hold stays this small, so each single operation on it is cheap.
MAX_INT_BITS = 4096

Number = int | float

BINARY_OPERATORS: dict[type[ast.operator], tuple[str, Callable[[Any, Any], Any]]] = {
    ast.Add: ("+", operator.add), ast.Sub: ("-", operator.sub), ast.Mult: ("*", operator.mul),
    ast.Div: ("/", operator.truediv), ast.FloorDiv: ("//", operator.floordiv), ast.Mod: ("%", operator.mod),
    ast.Pow: ("**", operator.pow),
}
UNARY_OPERATORS: dict[type[ast.unaryop], Callable[[Any], Any]] = {ast.USub: operator.neg, ast.UAdd: operator.pos}
OPERATOR_SYMBOLS: dict[type[ast.AST], str] = {
    ast.LShift: "<<", ast.RShift: ">>", ast.BitOr: "|", ast.BitXor: "^", ast.BitAnd: "&",
    ast.MatMult: "@", ast.Not: "not", ast.Invert: "~",
}
# Human names for the constructs people most often try; anything else falls back to the node's class name.
REJECTED_NODES: dict[type[ast.AST], str] = {
    ast.Name: "names are not allowed",
    ast.Call: "function calls are not allowed",
    ast.Attribute: "attribute access is not allowed",
    ast.Subscript: "indexing is not allowed",
    ast.Compare: "comparisons are not allowed",
    ast.BoolOp: "'and'/'or' are not allowed",
    ast.Lambda: "lambda expressions are not allowed",
    ast.IfExp: "conditional expressions are not allowed",
    ast.NamedExpr: "assignments are not allowed",
}


@function(queue="demo_tasks", timeout=30, retries=0)
def simple_calculation(
    expression: Annotated[str, Field(min_length=1, max_length=MAX_EXPRESSION_LENGTH)],
) -> dict[str, Any]:
    """Evaluate an arithmetic expression safely (no eval)."""
    tree = _parse(expression)
    _check_tree(tree, expression.strip())
    _check_parentheses(expression)
    # One report is enough for sub-millisecond work; the worker marks the job 100% "finished" itself.
    progress(50, "evaluating")
    evaluator = _Evaluator()
    result = evaluator.evaluate(tree.body)
    return {"expression": expression, "result": result, "operations": evaluator.operations}


def _parse(expression: str) -> ast.Expression:
    # No length check here: the input schema caps it and the worker re-validates before calling.
    if not expression.strip():
        raise PermanentError("Malformed expression: the expression is empty")
    source = expression.strip()
    try:
        # Stripped because leading spaces are an IndentationError to the parser.
        return ast.parse(source, mode="eval")
    except SyntaxError as exc:
        raise PermanentError(f"Malformed expression: {exc.msg}{_position(exc, expression, source)}") from None
    except (ValueError, MemoryError, RecursionError) as exc:
        raise PermanentError(f"Malformed expression: {exc}") from None


def _position(exc: SyntaxError, expression: str, source: str) -> str:
    """Where the parser stopped, as a column of the original (unstripped) text."""
    if exc.offset is None or (exc.lineno or 1) > 1:
        return ""
    if exc.offset < 1 or exc.offset > len(source):  # the parser reports the end of input as 0
        return " at the end of the expression"
    return f" at column {exc.offset + len(expression) - len(expression.lstrip())}"


def _check_tree(tree: ast.Expression, source: str) -> None:
    """Reject every node outside the whitelist before evaluating anything."""
    count = 0
    stack: list[tuple[ast.AST, int]] = [(tree.body, 1)]  # iterative, so a deep tree cannot blow the stack
    while stack:
        node, depth = stack.pop()
        count += 1
        if depth > MAX_DEPTH:
            raise PermanentError(f"Expression too deeply nested: more than {MAX_DEPTH} levels")
        if count > MAX_NODES:
            raise PermanentError(f"Expression too complex: more than {MAX_NODES} numbers and operators")
        if isinstance(node, ast.BinOp):
            if type(node.op) not in BINARY_OPERATORS:
                raise PermanentError(f"Unsupported syntax: operator {_symbol(node.op)} is not allowed")
            stack += [(node.left, depth + 1), (node.right, depth + 1)]
        elif isinstance(node, ast.UnaryOp):
            if type(node.op) not in UNARY_OPERATORS:
                raise PermanentError(f"Unsupported syntax: operator {_symbol(node.op)} is not allowed")
            stack.append((node.operand, depth + 1))
        elif isinstance(node, ast.Constant):
            _check_constant(node.value)
        else:
            reason = REJECTED_NODES.get(type(node), f"{type(node).__name__} is not allowed")
            found = ast.get_source_segment(source, node) or ast.unparse(node)
            raise PermanentError(f"Unsupported syntax: {reason} (found {found[:50]!r})")


def _check_constant(value: object) -> Number:
    # Exact type checks: bool is an int subclass and must not slip through as 1/0.
    if type(value) is int:
        return _check_int(value)
    if type(value) is float:
        if not math.isfinite(value):
            raise PermanentError("Result too large: number literal overflows a float")
        return value
    if type(value) is complex:
        raise PermanentError(f"Unsupported syntax: complex numbers are not allowed (found {value!r})")
    if type(value) is bool:
        raise PermanentError(f"Unsupported syntax: booleans are not allowed (found {value!r})")
    if isinstance(value, (str, bytes)):
        raise PermanentError(f"Unsupported syntax: strings are not allowed (found {value[:50]!r})")
    raise PermanentError(f"Unsupported syntax: {value!r} is not a number")


def _check_parentheses(expression: str) -> None:
    # Grouping parentheses leave no trace in the AST, so their depth is measured in the text.
    # Only called after _check_tree, when no string literal can hold a stray parenthesis.
    depth = deepest = 0
    for char in expression:
        depth += (char == "(") - (char == ")")
        deepest = max(deepest, depth)
    if deepest > MAX_DEPTH:
        raise PermanentError(f"Expression too deeply nested: more than {MAX_DEPTH} levels of parentheses")


def _symbol(op: ast.AST) -> str:
    return repr(OPERATOR_SYMBOLS.get(type(op), type(op).__name__))


def _check_int(value: int) -> int:
    if value.bit_length() > MAX_INT_BITS:
        raise PermanentError(f"Result too large: integers are limited to {MAX_INT_BITS} bits")
    return value


def _check_power(base: Number, exponent: Number) -> None:
    """Refuse an int power whose result would exceed MAX_INT_BITS, before computing it."""
    if type(base) is not int or type(exponent) is not int or exponent <= 0 or abs(base) <= 1:
        return  # float results overflow with an OverflowError instead; 0, 1 and -1 stay small
    # |base| >= 2**(bits-1), so the result has at least (bits-1)*exponent+1 bits.
    if (base.bit_length() - 1) * exponent >= MAX_INT_BITS or exponent > MAX_INT_BITS:
        raise PermanentError(f"Result too large: integers are limited to {MAX_INT_BITS} bits")


class _Evaluator:
    """Evaluates a checked tree, counting the operations it applies."""

    def __init__(self) -> None:
        self.operations = 0

    def evaluate(self, node: ast.expr) -> Number:
        """Value of `node`; recursion is safe because _check_tree capped the depth."""
        if isinstance(node, ast.Constant):
            value = _check_constant(node.value)
        elif isinstance(node, ast.UnaryOp):
            operand = self.evaluate(node.operand)
            value = self._apply(UNARY_OPERATORS[type(node.op)], operand)
        elif isinstance(node, ast.BinOp):
            left, right = self.evaluate(node.left), self.evaluate(node.right)
            symbol, func = BINARY_OPERATORS[type(node.op)]
            if symbol == "**":
                _check_power(left, right)
            value = self._apply(func, left, right)
        else:  # unreachable after _check_tree; kept so a gap in the whitelist fails closed
            raise PermanentError(f"Unsupported syntax: {type(node).__name__} is not allowed")
        return value

    def _apply(self, func: Callable[..., Any], *operands: Number) -> Number:
        self.operations += 1
        try:
            value: object = func(*operands)
        except ZeroDivisionError:
            raise PermanentError("Division by zero") from None
        except OverflowError:
            raise PermanentError("Result too large: it overflows a float") from None
        if type(value) is int:
            return _check_int(value)
        if type(value) is float:
            if not math.isfinite(value):
                raise PermanentError("Result too large: it overflows a float")
            return value
        raise PermanentError("Result is not a real number")  # e.g. (-8) ** 0.5 is complex in Python
