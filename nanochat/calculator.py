"""The calculator tool: a whitelisted AST evaluator for what the model writes between
<|python_start|> and <|python_end|>.

    evaluate("1,234 * 3")              -> "3702"
    evaluate("'strawberry'.count('r')") -> "3"
    evaluate("__import__('os')")        -> "error: function __import__ is not allowed"

What is allowed: int and float literals; + - * / // % on numbers; ** with a bounded base and
exponent; unary + and -; parentheses; string literals with + (concatenation), * (repetition) and
the methods count, lower, upper, startswith, endswith, find, replace; the functions len, abs,
round, min, max. Everything else (names, attributes other than those methods, lambdas,
comprehensions, subscripts, comparisons, keyword arguments, f-strings, ...) is rejected.

Commas. GSM8K-style text writes thousands with commas (1,234.5), Python separates arguments with
them (max(1, 2)). Outside string literals, a comma inside a number written as 1-3 digits then
groups of exactly three digits, with no spaces (1,234 or 12,345,678.9), is read as a thousands
separator; every other comma separates arguments. When that reading does not evaluate (max(1,234)
would become max(1234)) the expression is tried once more with the commas kept as written, so
max(1,234) is 234. Commas inside strings are never touched.

Limits (named below) bound the input length, AST size and depth, integer size, exponent, string
size and output length, so every call returns quickly. evaluate() never calls eval/exec, never
uses signals (safe in any thread) and never raises: every failure is a short "error: ..." string.
"""

from __future__ import annotations

import ast
import math
import re

MAX_INPUT_CHARS = 1000
MAX_NODES = 256  # AST nodes
MAX_DEPTH = 32  # AST depth, and bracket nesting checked before parsing
MAX_INT_BITS = 1024  # ~308 decimal digits
MAX_EXPONENT = 4096  # |exponent| of **
MAX_STR_CHARS = 10_000  # any intermediate string
MAX_OUTPUT_CHARS = 500  # the text forced into the model's context
MAX_ROUND_DIGITS = 50  # round(x, n) with |n| above this would build 10**n

ALLOWED_FUNCTIONS = ("len", "abs", "round", "min", "max")
ALLOWED_METHODS = ("count", "lower", "upper", "startswith", "endswith", "find", "replace")

_THOUSANDS = re.compile(r"(?<![\w.])[0-9]{1,3}(?:,[0-9]{3})+(?!\w)")


class CalculatorError(Exception):
    """A rejected or failed expression; its message becomes the "error: ..." result."""


def evaluate(expr: str) -> str:
    """Result text of a calculator expression, or a short "error: ..." string. Never raises."""
    try:
        if not isinstance(expr, str):
            return "error: expression must be text"
        expr = expr.strip()
        if not expr:
            return "error: empty expression"
        if len(expr) > MAX_INPUT_CHARS:
            return f"error: expression longer than {MAX_INPUT_CHARS} characters"
        joined = _join_thousands(expr)
        try:
            return _format(_evaluate_text(joined))
        except CalculatorError as first:
            if joined == expr:
                raise
            try:  # the commas were argument separators after all, e.g. max(1,234)
                return _format(_evaluate_text(expr))
            except CalculatorError:
                raise first from None
    except CalculatorError as e:
        return f"error: {e}"
    except OverflowError:  # e.g. a huge int meeting a float
        return "error: number too large"
    except Exception as e:  # anything unforeseen still becomes a string, never an exception
        return f"error: {type(e).__name__}"


# -------------------------------------------------------------------------------------------------
# Text level: thousands separators and a nesting pre-check (both skip string literals)


def _segments(expr: str) -> list[tuple[bool, str]]:
    """Split into (is_string_literal, text) pieces; an unterminated string runs to the end."""
    out: list[tuple[bool, str]] = []
    i, start, n = 0, 0, len(expr)
    while i < n:
        quote = expr[i]
        if quote not in "'\"":
            i += 1
            continue
        if start < i:
            out.append((False, expr[start:i]))
        j = i + 1
        while j < n and expr[j] != quote:
            j += 2 if expr[j] == "\\" else 1
        j = min(j + 1, n)
        out.append((True, expr[i:j]))
        i = start = j
    if start < n:
        out.append((False, expr[start:]))
    return out


def _join_thousands(expr: str) -> str:
    return "".join(text if is_str else _THOUSANDS.sub(lambda m: m.group(0).replace(",", ""), text)
                   for is_str, text in _segments(expr))


def _bracket_depth(expr: str) -> int:
    depth = deepest = 0
    for is_str, text in _segments(expr):
        if is_str:
            continue
        for ch in text:
            if ch in "([{":
                depth += 1
                deepest = max(deepest, depth)
            elif ch in ")]}":
                depth -= 1
    return deepest


# -------------------------------------------------------------------------------------------------
# AST level


def _evaluate_text(expr: str):
    # the parser recurses on nesting: refuse deep input before it sees it
    if _bracket_depth(expr) > MAX_DEPTH:
        raise CalculatorError("expression nested too deeply")
    try:
        tree = ast.parse(expr, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise CalculatorError("invalid syntax") from None
    _check_size(tree)
    return _eval(tree.body)


def _check_size(tree: ast.AST) -> None:
    """Count nodes and depth iteratively (no recursion on untrusted structure)."""
    count, stack = 0, [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise CalculatorError("expression too long")
        if depth > MAX_DEPTH:
            raise CalculatorError("expression nested too deeply")
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))


def _check_value(value):
    """Every intermediate value passes through here: only bounded int, finite float, bounded str."""
    if isinstance(value, bool):
        return value  # only from startswith/endswith, as a final result
    if isinstance(value, int):
        if value.bit_length() > MAX_INT_BITS:
            raise CalculatorError("number too large")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise CalculatorError("number too large")
        return value
    if isinstance(value, str):
        if len(value) > MAX_STR_CHARS:
            raise CalculatorError("string too long")
        return value
    raise CalculatorError(f"unsupported value of type {type(value).__name__}")


def _number(value, op: str):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CalculatorError(f"{op} needs numbers")
    return value


def _eval(node: ast.AST):
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float, str)):
            raise CalculatorError(f"literal {node.value!r} is not allowed"[:80])
        return _check_value(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        value = _number(_eval(node.operand), "unary sign")
        return _check_value(-value if isinstance(node.op, ast.USub) else +value)
    if isinstance(node, ast.BinOp):
        return _check_value(_binop(node.op, _eval(node.left), _eval(node.right)))
    if isinstance(node, ast.Call):
        return _check_value(_call(node))
    if isinstance(node, ast.Name):
        raise CalculatorError(f"name {node.id[:40]} is not allowed")
    if isinstance(node, ast.Attribute):
        raise CalculatorError("attribute access is not allowed (only string methods can be called)")
    raise CalculatorError(f"{type(node).__name__} is not allowed")


def _binop(op: ast.operator, a, b):
    if isinstance(op, ast.Add):
        if isinstance(a, str) and isinstance(b, str):
            if len(a) + len(b) > MAX_STR_CHARS:
                raise CalculatorError("string too long")
            return a + b
        return _number(a, "+") + _number(b, "+")
    if isinstance(op, ast.Mult):
        if isinstance(a, str) or isinstance(b, str):
            s, n = (a, b) if isinstance(a, str) else (b, a)
            if isinstance(n, bool) or not isinstance(n, int):
                raise CalculatorError("a string can only be repeated an integer number of times")
            if len(s) * max(n, 0) > MAX_STR_CHARS:
                raise CalculatorError("string too long")
            return s * n
        return _number(a, "*") * _number(b, "*")
    if isinstance(op, ast.Sub):
        return _number(a, "-") - _number(b, "-")
    if isinstance(op, (ast.Div, ast.FloorDiv, ast.Mod)):
        # str % ... would be printf-style formatting: numbers only
        symbol = {ast.Div: "/", ast.FloorDiv: "//", ast.Mod: "%"}[type(op)]
        a, b = _number(a, symbol), _number(b, symbol)
        if b == 0:
            raise CalculatorError("division by zero")
        if isinstance(op, ast.Div):
            return a / b
        return a // b if isinstance(op, ast.FloorDiv) else a % b
    if isinstance(op, ast.Pow):
        return _power(_number(a, "**"), _number(b, "**"))
    raise CalculatorError(f"operator {type(op).__name__} is not allowed")


def _power(base, exponent):
    if abs(exponent) > MAX_EXPONENT:
        raise CalculatorError(f"exponent larger than {MAX_EXPONENT}")
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0:
        # bits of the result ~ bits(base) * exponent: refuse before computing it
        if (abs(base).bit_length() - 1) * exponent > MAX_INT_BITS:
            raise CalculatorError("number too large")
    if base == 0 and exponent < 0:
        raise CalculatorError("division by zero")
    if base < 0 and not float(exponent).is_integer():
        raise CalculatorError("fractional power of a negative number")
    try:
        return base ** exponent
    except OverflowError:
        raise CalculatorError("number too large") from None


def _call(node: ast.Call):
    if node.keywords:
        raise CalculatorError("keyword arguments are not allowed")
    if any(isinstance(arg, ast.Starred) for arg in node.args):
        raise CalculatorError("* arguments are not allowed")
    func = node.func
    if isinstance(func, ast.Name):
        if func.id not in ALLOWED_FUNCTIONS:
            raise CalculatorError(f"function {func.id[:40]} is not allowed")
        return _function(func.id, [_eval(arg) for arg in node.args])
    if isinstance(func, ast.Attribute):
        if func.attr not in ALLOWED_METHODS:
            raise CalculatorError(f"method {func.attr[:40]} is not allowed")
        obj = _eval(func.value)
        if not isinstance(obj, str):
            raise CalculatorError(f".{func.attr}() needs a string")
        return _method(obj, func.attr, [_eval(arg) for arg in node.args])
    raise CalculatorError("only len, abs, round, min, max and string methods can be called")


def _function(name: str, args: list):
    if name == "len":
        if len(args) != 1 or not isinstance(args[0], str):
            raise CalculatorError("len() takes one string")
        return len(args[0])
    if name == "abs":
        if len(args) != 1:
            raise CalculatorError("abs() takes one number")
        return abs(_number(args[0], "abs()"))
    if name == "round":
        if len(args) not in (1, 2):
            raise CalculatorError("round() takes a number and optionally a digit count")
        x = _number(args[0], "round()")
        if len(args) == 1:
            return round(x)
        digits = args[1]
        if isinstance(digits, bool) or not isinstance(digits, int) or abs(digits) > MAX_ROUND_DIGITS:
            raise CalculatorError(f"round() digits must be an integer within ±{MAX_ROUND_DIGITS}")
        return round(x, digits)
    # min / max: two or more numbers, or two or more strings, or the characters of one string
    if len(args) == 1 and isinstance(args[0], str) and args[0]:
        return min(args[0]) if name == "min" else max(args[0])
    if len(args) < 2:
        raise CalculatorError(f"{name}() takes at least two values")
    if all(isinstance(a, str) for a in args):
        return min(args) if name == "min" else max(args)
    nums = [_number(a, f"{name}()") for a in args]
    return min(nums) if name == "min" else max(nums)


def _method(s: str, name: str, args: list):
    def need(types: tuple, lo: int, hi: int) -> None:
        if not lo <= len(args) <= hi:
            raise CalculatorError(f".{name}() takes {lo}-{hi} arguments" if lo != hi else
                                  f".{name}() takes {lo} argument{'s' if lo != 1 else ''}")
        for i, a in enumerate(args):
            want = types[min(i, len(types) - 1)]
            if isinstance(a, bool) or not isinstance(a, want):
                raise CalculatorError(f"bad argument {i + 1} for .{name}()")

    if name in ("lower", "upper"):
        need((str,), 0, 0)
        return s.lower() if name == "lower" else s.upper()
    if name in ("count", "find", "startswith", "endswith"):
        need((str, int), 1, 3)  # substring, optional start and end
        return getattr(s, name)(*args)
    # replace(old, new[, count]): bound the result size before building it
    need((str, str, int), 2, 3)
    old, new = args[0], args[1]
    limit = args[2] if len(args) == 3 else -1
    hits = s.count(old) if old else len(s) + 1
    if limit >= 0:
        hits = min(hits, limit)
    if len(s) + hits * (len(new) - len(old)) > MAX_STR_CHARS:
        raise CalculatorError("string too long")
    return s.replace(old, new, limit)


def _format(value) -> str:
    """Integral floats print as integers (12/2 -> 6), others with 12 significant digits, which hides
    binary noise (0.1+0.2 -> 0.3)."""
    if isinstance(value, float):
        text = str(int(value)) if value.is_integer() and abs(value) < 1e15 else f"{value:.12g}"
    else:
        text = str(value)
    if len(text) > MAX_OUTPUT_CHARS:
        raise CalculatorError(f"result longer than {MAX_OUTPUT_CHARS} characters")
    return text
