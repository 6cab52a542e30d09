"""A multi grader's `calculate_output`: arithmetic over sub-grader scores, parsed with `ast`, never eval().

Allowed: numbers, the sub-graders' names, + - * / and ** (OpenAI writes power as ^, read as **), unary
minus, parentheses and min max abs floor ceil exp sqrt log. Anything else (attributes,
subscripts, calls of other names, keyword arguments, strings) is refused when the grader is validated.
"""

from __future__ import annotations

import ast
import math
import operator

FUNCTIONS = {
    "min": min,
    "max": max,
    "abs": abs,
    "floor": math.floor,
    "ceil": math.ceil,
    "exp": math.exp,
    "sqrt": math.sqrt,
    "log": math.log,
}
BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
          ast.Pow: operator.pow}
UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}
ARITY = {"min": (2, 16), "max": (2, 16), "abs": (1, 1), "floor": (1, 1), "ceil": (1, 1), "exp": (1, 1),
         "sqrt": (1, 1), "log": (1, 2)}
MAX_LENGTH = 1000
MAX_EXPONENT = 64.0  # 2 ** huge would take a while and prove nothing about a reward


class FormulaError(ValueError):
    pass


def parse_formula(text: str, names: set[str]) -> ast.Expression:
    """The checked syntax tree of `text`; FormulaError names the first thing that is not allowed."""
    if not isinstance(text, str) or not text.strip():
        raise FormulaError("must be a non-empty formula, e.g. '0.5 * a + 0.5 * b'")
    if len(text) > MAX_LENGTH:
        raise FormulaError(f"is longer than {MAX_LENGTH} characters")
    try:
        # OpenAI writes power as ^; read as ** it also binds tighter than * and +, as a power should.
        tree = ast.parse(text.strip().replace("^", "**"), mode="eval")
    except SyntaxError as exc:
        raise FormulaError(f"is not a valid formula ({exc.msg})") from None
    for node in ast.walk(tree):
        _check_node(node, names)
    return tree


def _check_node(node: ast.AST, names: set[str]) -> None:
    if isinstance(node, (ast.Expression, ast.Load, *BINARY, *UNARY)):
        return
    if isinstance(node, ast.BinOp):
        if type(node.op) not in BINARY:
            raise FormulaError(f"uses an operator that is not allowed ({type(node.op).__name__}); use + - * / ^")
        return
    if isinstance(node, ast.UnaryOp):
        if type(node.op) not in UNARY:
            raise FormulaError(f"uses an operator that is not allowed ({type(node.op).__name__})")
        return
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise FormulaError(f"may hold only numbers, not {node.value!r}")
        return
    if isinstance(node, ast.Name):
        if node.id not in names and node.id not in FUNCTIONS:
            known = ", ".join(sorted(names)) or "none"
            raise FormulaError(f"refers to {node.id!r}, which is not a grader (graders: {known})")
        return
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
            raise FormulaError(f"may call only {', '.join(FUNCTIONS)}")
        if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
            raise FormulaError(f"{node.func.id}(...) takes plain positional arguments")
        low, high = ARITY[node.func.id]
        if not low <= len(node.args) <= high:
            wanted = str(low) if low == high else f"{low} to {high}"
            raise FormulaError(f"{node.func.id}(...) takes {wanted} arguments, got {len(node.args)}")
        return
    raise FormulaError(f"contains {type(node).__name__}, which is not arithmetic")


def evaluate_formula(tree: ast.Expression, scores: dict[str, float]) -> float:
    """The value of a tree from `parse_formula` given each grader's score (ArithmeticError/ValueError propagate)."""
    return float(_value(tree.body, scores))


def _value(node: ast.AST, scores: dict[str, float]) -> float:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        if node.id in FUNCTIONS:
            raise ValueError(f"{node.id} is a function; call it as {node.id}(...)")
        return scores[node.id]
    if isinstance(node, ast.UnaryOp):
        return UNARY[type(node.op)](_value(node.operand, scores))
    if isinstance(node, ast.BinOp):
        left, right = _value(node.left, scores), _value(node.right, scores)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise ValueError(f"exponent {right:g} is larger than {MAX_EXPONENT:g}")
        result = BINARY[type(node.op)](left, right)
        if isinstance(result, complex):
            raise ValueError(f"{left:g} ^ {right:g} is not a real number")
        return result
    if isinstance(node, ast.Call):
        return FUNCTIONS[node.func.id](*(_value(a, scores) for a in node.args))
    raise ValueError(f"cannot evaluate {type(node).__name__}")  # parse_formula refused it already
