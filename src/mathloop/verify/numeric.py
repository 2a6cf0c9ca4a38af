"""A small exact-syntax evaluator for constant LaTeX answers, used to *disprove* equivalence without sympy.

Most wrong answers that reach the symbolic layer are constants that differ in value (3\\sqrt{13} vs 3\\sqrt{14},
6-5i vs 6-6i). Evaluating both sides as complex numbers settles those in microseconds. The evaluator only ever
says "these differ" (with a margin far above floating-point error); "these are equal" is left to the exact
symbolic layer, so floating point can never create a false positive.

Supported: integers and decimals, + - * / ^, \\cdot, \\times, implicit multiplication, parentheses and braces,
\\frac/\\dfrac/\\tfrac, \\sqrt{x}, \\sqrt[n]{x}, \\pi, the imaginary unit i. Anything else (variables, e, !, units,
text, mixed numbers like 2\\frac{1}{2}) returns None.
"""

from __future__ import annotations

import cmath
import math
import re

_TOKEN = re.compile(r"\\[a-zA-Z]+|\d+\.\d*|\.\d+|\d+|[a-zA-Z]|[-+*/^(){}\[\]]|\S")
_FRACTIONS = ("\\frac", "\\dfrac", "\\tfrac")
_MAX_EXPONENT = 200.0


class _GiveUp(Exception):
    pass


def evaluate_constant(latex: str) -> complex | None:
    """The value of a constant LaTeX expression, or None when it is not one this evaluator reads.

    >>> evaluate_constant(r"3\\sqrt{4} - \\frac{1}{2}")
    (5.5+0j)
    >>> evaluate_constant(r"2 + 3i")
    (2+3j)
    >>> evaluate_constant("x + 1") is None, evaluate_constant(r"2\\frac{1}{2}") is None
    (True, True)
    """
    if len(latex) > 300:
        return None
    text = latex.replace("\\left", "").replace("\\right", "").replace("\\!", "").replace("\\,", "")
    tokens = _TOKEN.findall(text)
    if not tokens:
        return None
    parser = _Parser(tokens)
    try:
        value = parser.expression()
        if parser.pos != len(tokens):
            return None
    except (_GiveUp, ZeroDivisionError, OverflowError, ValueError, IndexError):
        return None
    if not (math.isfinite(value.real) and math.isfinite(value.imag)):
        return None
    return value


def clearly_different(a: complex, b: complex, decimals: int | None = None) -> bool:
    """True when a and b differ by far more than rounding: a decimal answer with `decimals` places may round.

    >>> clearly_different(3.0, 3.0000000001), clearly_different(0.577, 3 ** 0.5 / 3, decimals=3)
    (False, False)
    >>> clearly_different(6 - 5j, 6 - 6j)
    True
    """
    scale = max(1.0, abs(a), abs(b))
    allowed = 1e-9 * scale
    if decimals is not None:
        allowed += 0.5 * 10.0 ** -decimals
    return abs(a - b) > 2 * allowed


class _Parser:
    """Recursive descent over tokens: expression := term (+|- term)*; term := factor (op? factor)*."""

    def __init__(self, tokens: list[str]):
        self.tokens, self.pos = tokens, 0

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, expected: str | None = None) -> str:
        token = self.peek()
        if token is None or (expected is not None and token != expected):
            raise _GiveUp
        self.pos += 1
        return token

    def expression(self) -> complex:
        value = self.term()
        while self.peek() in ("+", "-"):
            value = value + self.term() if self.take() == "+" else value - self.term()
        return value

    def term(self) -> complex:
        value = self.unary()
        while True:
            token = self.peek()
            if token in ("*", "\\cdot", "\\times"):
                self.take()
                value *= self.unary()
            elif token == "/":
                self.take()
                value /= self.unary()
            elif token is not None and self._starts_atom(token):
                if token in _FRACTIONS and self._last_was_number():
                    raise _GiveUp  # 2\frac{1}{2} is a mixed number to some writers, a product to others
                if token[0].isdigit() and self._last_was_number():
                    raise _GiveUp  # "1 000" is a thousands separator, not 1 * 000
                value *= self.power()
            else:
                return value

    def unary(self) -> complex:
        if self.peek() == "-":
            self.take()
            return -self.unary()
        if self.peek() == "+":
            self.take()
            return self.unary()
        return self.power()

    def power(self) -> complex:
        base = self.atom()
        if self.peek() == "^":
            self.take()
            exponent = self.group() if self.peek() == "{" else self.single()
            if abs(exponent) > _MAX_EXPONENT or (base == 0 and exponent.real <= 0):
                raise _GiveUp
            if exponent.imag == 0 and exponent.real == int(exponent.real) and base.imag == 0:
                return complex(base.real ** int(exponent.real))
            return base ** exponent
        return base

    def single(self) -> complex:
        """The exponent of x^2 or the radicand of \\sqrt2: one digit or one atom."""
        token = self.peek()
        if token is not None and token.isdigit():
            self.take()
            if len(token) > 1:  # x^23 means x^2 * 3: put the rest back
                self.tokens[self.pos - 1:self.pos] = [token[0], token[1:]]
            return complex(int(token[0]))
        return self.atom()

    def group(self) -> complex:
        self.take("{")
        value = self.expression()
        self.take("}")
        return value

    def atom(self) -> complex:
        token = self.take()
        if token[0].isdigit() or token[0] == ".":
            return complex(float(token))
        if token == "(":
            value = self.expression()
            self.take(")")
            return value
        if token == "{":
            value = self.expression()
            self.take("}")
            return value
        if token in _FRACTIONS:
            numerator = self.group() if self.peek() == "{" else self.single()
            denominator = self.group() if self.peek() == "{" else self.single()
            return numerator / denominator
        if token == "\\sqrt":
            index = complex(2)
            if self.peek() == "[":
                self.take("[")
                index = self.expression()
                self.take("]")
            radicand = self.group() if self.peek() == "{" else self.single()
            if index == 2:
                return cmath.sqrt(radicand) if radicand.real < 0 or radicand.imag else complex(math.sqrt(radicand.real))
            if radicand.imag == 0 and radicand.real >= 0:
                return complex(radicand.real ** (1 / index.real))
            raise _GiveUp
        if token == "\\pi":
            return complex(math.pi)
        if token == "i":
            return 1j
        raise _GiveUp

    def _starts_atom(self, token: str) -> bool:
        return token[0].isdigit() or token in ("(", "{", "\\pi", "i", "\\sqrt", ".") or token in _FRACTIONS

    def _last_was_number(self) -> bool:
        previous = self.tokens[self.pos - 1] if self.pos else ""
        return bool(previous) and previous[0].isdigit()
