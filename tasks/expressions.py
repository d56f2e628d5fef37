"""Safe evaluation of small integer expressions (+ - * / and parentheses) with exact fractions.

Model output is never passed to `eval`: the text is parsed with `ast` and only integer literals,
the four binary operators and parentheses are accepted, so names, calls, attribute access, `**`
(a "9**9**9" would take forever) and unary minus are rejected before anything is computed.
"""

import ast
import re
from fractions import Fraction

OPERATORS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}
PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}
# Characters of a valid expression: also stops "1_0" (a Python literal for 10) and non-ASCII digits.
_EXPRESSION_CHARS = re.compile(r"[\d+\-*/() \t]+")
# Longer text is not a short arithmetic expression; the cap also bounds the parser's recursion.
MAX_EXPRESSION_CHARS = 200


class InvalidExpression(ValueError):
    """The text is not an expression of integer literals joined by the allowed operators."""


def evaluate(text: str, allowed_ops: str = "+-*/") -> tuple[Fraction, list[int]]:
    """Value of the expression and the integer literals it uses, in order of appearance.

    Raises InvalidExpression for anything outside the grammar, ZeroDivisionError for x/0.
    """
    text = text.strip()
    if len(text) > MAX_EXPRESSION_CHARS or not _EXPRESSION_CHARS.fullmatch(text):
        raise InvalidExpression(f"not an arithmetic expression: {text[:50]!r}")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as error:
        raise InvalidExpression(f"not an arithmetic expression: {text[:50]!r}") from error
    numbers: list[int] = []
    value = _evaluate_node(tree.body, allowed_ops, numbers)
    return value, numbers


def _evaluate_node(node: ast.AST, allowed_ops: str, numbers: list[int]) -> Fraction:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        numbers.append(node.value)
        return Fraction(node.value)
    symbol = OPERATORS.get(type(node.op)) if isinstance(node, ast.BinOp) else None
    if symbol is not None and symbol in allowed_ops:
        left = _evaluate_node(node.left, allowed_ops, numbers)
        right = _evaluate_node(node.right, allowed_ops, numbers)
        if symbol == "+":
            return left + right
        if symbol == "-":
            return left - right
        if symbol == "*":
            return left * right
        return left / right
    raise InvalidExpression(f"{type(node).__name__} is not allowed (operators: {allowed_ops!r})")
