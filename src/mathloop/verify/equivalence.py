"""Mathematical equivalence of a predicted answer and a gold answer.

Two layers:

1. ``fast_equivalent`` (in-process, no sympy, cannot hang): normalises both strings (``$``, ``\\text{}`` units, ``\\%``,
   degrees, ``\\dfrac``, thousands commas, "9 (apples)", ``x=`` prefixes, ...) and decides identical strings, plain numbers
   (exactly, with ``fractions.Fraction``), tuples/intervals/sets of plain numbers, and option letters. Returns None when
   it cannot decide. Before any of that, two answers whose units differ are unequal unless a conversion table relates
   them (``units.py``: a unit is ignored only when the other side has none).
2. ``symbolic_equivalent`` (meant to run in a worker process that the parent kills on timeout, see ``pool.py``):
   math-verify's ``parse``/``verify`` with its signal-based timeouts disabled, behind an exact layer for numbers.

Number rule (both layers): numbers compare exactly. The one tolerance, rounding: a decimal written with at least
``MIN_DECIMALS_FOR_ROUNDING`` (3) digits after the point equals an exact value (fraction, surd, pi, ...) when it is that
value rounded to the written digits, i.e. within half a unit in its last place (0.333 == 1/3, 0.33 != 1/3,
2.9999 != 3). It applies when the gold is the decimal (the question asked for a rounding: an exact response that rounds
to it is correct), and to a decimal response only when ``rounding`` is set, i.e. the question asks for a decimal or a
rounding (``question_allows_rounding``): otherwise 3.1416 for pi or 0.333 for 1/3 is an approximation, incorrect.
Two decimals, or a decimal and an integer, compare exactly (18.00 == 18, 1000000 != 1000050). There is no
percentage rule (900 != 9) and no relative tolerance.

Why not math-verify alone: ``verify`` rounds floats to 6 places, so 1/2004! == 1/2006! (both round to 0); the exact
layer decides numbers without floats symbolically/at 60 digits before math-verify is asked. And ``parse`` of a gold
written without ``$`` falls back to the first bare number (``1-\\frac{1}{e}`` parses as ``1``, so it "equals"
``1+\\frac{1}{e}``); here every answer is normalised and parsed wrapped in ``$...$``.
"""

from __future__ import annotations

import re
from fractions import Fraction
from functools import lru_cache, partial

from mathloop.verify.latex import _LETTERS, clean_answer, final_boxes, option_letter
from mathloop.verify.numeric import clearly_different, evaluate_constant
from mathloop.verify.units import answer_unit, conversion

TYPE_CHECKING = False  # typing is only needed by type checkers: not imported at run time (cold start)
if TYPE_CHECKING:
    from typing import Any

MIN_DECIMALS_FOR_ROUNDING = 3
# Bounds that keep every in-process path linear and fast: an answer longer than MAX_ANSWER_CHARS (after extraction) is
# compared as text only (equal after stripping spaces, or not); lists longer than MAX_LIST_ITEMS are compared as
# multisets of normalised items, without the pairwise (quadratic) matching.
MAX_ANSWER_CHARS = 4096
MAX_LIST_ITEMS = 64

# Multi-letter unit words stripped after a plain number. Single letters (m, a, s) are never units here: "a+b" != "b".
_UNIT_WORDS = (
    "cm|mm|km|(?:centi|milli|kilo)?(?:meters?|metres?)|kilograms?|ounces?|oz|yards?|yd|inch(?:es)?|feet|foot|ft|miles?|yards?|units?|square units|sq units|degrees?|"
    "dollars?|cents?|hours?|hrs?|minutes?|mins?|seconds?|secs?|days?|weeks?|months?|years?|kg|grams?|pounds?|lbs?|"
    "liters?|litres?|ml|mph|people|students|apples|cookies|times|ways|points|percent(?:age)?|pct"
)
_NUMBER_WITH_UNIT = re.compile(rf"^(-?[\d.,/]+)\s*(?:{_UNIT_WORDS})(?:\^?\{{?[23]\}}?)?$", re.IGNORECASE)
_PAREN_WORDS = re.compile(r"^(-?[\d.,/]+)\s*\(\s*[A-Za-z][A-Za-z ]*\)$")  # asdiv: "9 (apples)"
# Thousands separators. LaTeX's ``14{,}916`` always is one; a comma directly between digit groups (``1,000``, also
# MATH's ``1,\!000``) is one when the other answer is not a list; a comma followed by a space separates list items
# (``32, 349`` is two numbers, never 32349); spaces (``1 000``, ``1\,000``) join digit groups only when every group
# after the first has exactly 3 digits, so ``1 2`` stays two numbers (an answer that nothing reads, not 12).
_THOUSANDS = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_LATEX_THOUSANDS_COMMA = re.compile(r"(?<=\d)\s*\{\s*,\s*\}\s*(?=\d)")
_COMMA_NEGATIVE_SPACE = re.compile(r",\s*\\!\s*")  # MATH's 16,\!386.20: the negative space takes the comma's space back
_SPACE_THOUSANDS = re.compile(r"(?<![\d.,])\d{1,3}(?: +\d{3})+(?!\d| +\d)")
_THREE_DIGITS = re.compile(r"\d{3}(?!\d)")
_BASE_NUMBER = re.compile(r"(\w+)_\{?(\d+)\}?")
# A name (x, V_1, S_{MBCN}) or a ratio of names (V_{1}:V_{2}) set equal to (or in) a value.
_SINGLE_VAR_EQ = re.compile(
    r"^\s*([a-zA-Z](?:_\{?\w+\}?)?(?:\s*:\s*[a-zA-Z](?:_\{?\w+\}?)?)*)\s*(?:=|\\in\b)\s*(.+)$", re.DOTALL
)
_SET_BUILDER = re.compile(
    r"^\\\{\s*[a-z]\s*(?:\||\\mid|:)\s*(-?[\w.\\{}]+)\s*(<|\\leq?|\\le)\s*[a-z]\s*(<|\\leq?|\\le)\s*(-?[\w.\\{}]+)\s*\\\}$"
)


# ----------------------------------------------------------------------------------------------------------------
# Normalisation (pure string functions)


_TEXT_COMMAND = re.compile(r"\\(?:text|textbf|textrm|mbox|mathrm)\s*\{([^{}]*)\}")
_NON_SPACE = re.compile(r"\S")
_UNIT_TAIL = re.compile(r"\s*+(?:\^\s*\{?[23]\}?)?\s*+$")
_CONNECTIVE = re.compile(r"^\s*(?:,|;)?\s*(?:and|or|&)\s*$", re.IGNORECASE)
_HALF_DAY = re.compile(r"\s*[ap]\.?\s*m\.?\s*", re.IGNORECASE)  # "a.m." / "p.m." after a time: kept, never a unit


def _strip_text_commands(s: str) -> str:
    """``5 \\text{ cm}`` -> ``5``; ``\\text{Evelyn}`` -> ``Evelyn``; ``6 \\text{ and } 8`` -> ``6,8``.

    Text right after a number or a closing brace, at the end of the answer (or before a ``^2``/``^3``), is a unit and is
    dropped (except "a.m."/"p.m.": ``4:30 \\text{ p.m.}`` is not ``4:30 a.m.``); a connective ("and", "or") between two parts is a list separator; any other text keeps its words, so two
    numbers are never glued together. One left-to-right pass (linear in the length).
    """
    out: list[str] = []
    last, tail = 0, ""  # tail: the last non-space character written so far
    for match in _TEXT_COMMAND.finditer(s):
        between = s[last : match.start()]
        out.append(between)
        tail = between.rstrip()[-1:] or tail
        last = match.end()
        words = match.group(1)
        if tail and _CONNECTIVE.match(words) and _NON_SPACE.search(s, match.end()):
            if tail not in ",;":
                out.append(",")
                tail = ","
            continue
        unit_tail = _UNIT_TAIL.match(s, match.end())
        if tail and tail in "0123456789}" and (len(words.strip()) >= 2 or words.strip().isalpha()) and unit_tail and not _HALF_DAY.fullmatch(words):
            last = len(s)
            break
        out.append(f" {words} " if tail else words)
        tail = words.rstrip()[-1:] or tail
    out.append(s[last:])
    return "".join(out)


def normalize(answer: str) -> str:
    """A canonical string form of an answer, without any math parsing.

    >>> normalize(r"$\\dfrac12$")
    '\\\\frac{1}{2}'
    >>> normalize(r"5 \\text{ cm}"), normalize(r"10\\%"), normalize(r"50^\\circ"), normalize("9 (apples)")
    ('5', '10', '50', '9')
    """
    if len(answer) > MAX_ANSWER_CHARS:
        return _as_text(answer)
    s = clean_answer(answer)
    if "\\boxed" in s or "\\fbox" in s:  # a gold written as a solution: its boxes are the answer
        boxes = [clean_answer(box) for box in final_boxes(s)]
        s = ",".join(boxes if len(set(boxes)) > 1 else boxes[:1]) or s  # the same value boxed twice is one answer
    if s.startswith("{") and s.endswith("}") and _balanced(s[1:-1]) and len(split_top_level(s[1:-1])) > 1:
        s = f"\\{{{s[1:-1]}\\}}"  # bare braces around a list: a set
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\displaystyle", "")
    s = re.sub(r"\\left\s*|\\right\s*", "", s)
    s = _LATEX_THOUSANDS_COMMA.sub("", s)
    s = _COMMA_NEGATIVE_SPACE.sub(",", s)
    s = re.sub(r"(?<!\\)\\[,;:! ]|~", " ", s)
    s = _SPACE_THOUSANDS.sub(lambda m: "".join(m.group().split()), s)
    s = _TRIG_OF_DEGREES.sub(lambda m: f"\\{m.group(1)}(\\frac{{{m.group(2)}\\pi}}{{180}})", s)  # \sin 60^\circ
    s = re.sub(r"\^\s*\{?\\circ\}?|°|\\degree", "", s)
    s = _LOG_BASE.sub(r"\\log_{\1}", s)  # \log_2 8: the base is one character, the space ends it
    s = s.replace("\\varnothing", "\\emptyset")
    s = _REPEATING.sub(_repeating_as_fraction, s)
    s = s.replace("\\%", "").replace("%", "").replace("\\$", "").replace("$", "")
    s = _strip_text_commands(s)
    s = re.sub(r"(?<=[\w)\]}])\s*,?\s*\b(?:and|or)\b\s*(?=[-+\w(\[\\{])", ",", s)  # "1 and 2", "(1,2) or (2,1)"
    s = s.replace(";", ",") if ";" in s and "," not in s.replace("\\,", "") or _only_semicolons_at_top(s) else s
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac\{([^{}]*)\}(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\sqrt(\d)", r"\\sqrt{\1}", s)
    s = clean_answer(s)
    for pattern in (_NUMBER_WITH_UNIT, _PAREN_WORDS):
        match = pattern.match(s)
        if match:
            s = match.group(1)
    paren_letter = re.fullmatch(r"\(([A-J])\)", s)
    if paren_letter:
        s = paren_letter.group(1)
    s = _set_builder_to_interval(s)
    s = _mixed_number(s)
    s = _NUMBER_WORDS.get(s.lower(), s)
    return _squeeze_spaces(s)


_TRIG_OF_DEGREES = re.compile(
    r"\\(sin|cos|tan|cot|sec|csc)\s*+\(?\s*+(\d+(?:\.\d+)?)\s*+(?:\^\s*+\{?\s*+\\circ\s*+\}?|°|\\degree)\s*+\)?"
)
_LOG_BASE = re.compile(r"\\log_(\w)\s+")
_REPEATING = re.compile(r"(-?)(\d*)\.(\d*)\\overline\{(\d+)\}")
_MIXED = re.compile(r"(-?)(\d+)(?:\s+(\d+)/(\d+)|\s*\\frac\{(\d+)\}\{(\d+)\})")
_NUMBER_WORDS = {word: str(value) for value, word in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen "
    "eighteen nineteen twenty".split())}
_NUMBER_WORDS.update({"thirty": "30", "forty": "40", "fifty": "50", "sixty": "60", "seventy": "70", "eighty": "80",
                      "ninety": "90", "hundred": "100", "a hundred": "100", "one hundred": "100"})


def _repeating_as_fraction(match: re.Match[str]) -> str:
    """``0.\\overline{3}`` -> ``\\frac{1}{3}``, ``1.1\\overline{6}`` -> ``\\frac{7}{6}``: a repeating decimal is exact."""
    sign, whole, fixed, period = match.groups()
    value = int(whole or "0") + Fraction(int(fixed + period) - int(fixed or "0"), 10 ** len(fixed) * (10 ** len(period) - 1))
    return f"{sign}\\frac{{{value.numerator}}}{{{value.denominator}}}" if value.denominator > 1 else f"{sign}{value}"


def _mixed_number(s: str) -> str:
    """A whole answer written as a mixed number: an integer, then a proper fraction of integers (``4 1/2``,
    ``4\\frac{1}{2}``) -> ``\\frac{9}{2}``. Anything else is unchanged.

    >>> _mixed_number("4 1/2"), _mixed_number(r"-2\\frac{1}{3}"), _mixed_number(r"2\\frac{3}{2}")
    ('\\\\frac{9}{2}', '-\\\\frac{7}{3}', '2\\\\frac{3}{2}')
    """
    match = _MIXED.fullmatch(s.strip()) if len(s) <= 60 else None
    if not match:
        return s
    sign, whole, num, den = match.group(1), int(match.group(2)), match.group(3) or match.group(5), match.group(4) or match.group(6)
    if not 0 < int(num) < int(den):
        return s
    value = whole + Fraction(int(num), int(den))
    return f"{sign}\\frac{{{value.numerator}}}{{{value.denominator}}}"


def _as_text(answer: str) -> str:
    """An over-long answer compared as text: its characters without whitespace (linear)."""
    return "".join(answer.split())


def _only_semicolons_at_top(s: str) -> bool:
    """``(0;-2;0),(4;0;6)``: semicolons separate coordinates inside brackets, commas the items."""
    return ";" in s and all(";" not in part or part[:1] in "([" for part in split_top_level(s))


def _squeeze_spaces(s: str) -> str:
    """Drop spaces except between two letters (``\\cdot x`` must not become ``\\cdotx``) and where they keep two
    numbers apart: between two digits (``1 2`` is not 12; thousands groups were joined before) and after a comma that a
    group of three digits follows (``32, 349`` is a list of two numbers, not 32349).
    """
    return re.sub(r"\s+", lambda m: " " if _space_matters(s, m) else "", s).strip()


def _space_matters(s: str, match: re.Match[str]) -> bool:
    left = s[match.start() - 1 : match.start()]
    right = s[match.end() : match.end() + 1]
    if left.isalpha() and right.isalpha() or left.isdigit() and right.isdigit():
        return True
    return left == "," and s[match.start() - 2 : match.start() - 1].isdigit() and _THREE_DIGITS.match(s, match.end()) is not None


def _set_builder_to_interval(s: str) -> str:
    r"""``\{x|-2\leq x < 1\}`` -> ``[-2,1)``."""
    match = _SET_BUILDER.match(s) if len(s) <= 200 and s.startswith("\\{") else None
    if not match:
        return s
    low, low_op, high_op, high = match.groups()
    left = "(" if low_op == "<" else "["
    right = ")" if high_op == "<" else "]"
    return f"{left}{low},{high}{right}"


def drop_thousands_commas(answer: str, other: str) -> str:
    """``1,000`` -> ``1000``, unless the other answer is a list (then ``48,384`` means two answers).

    >>> drop_thousands_commas("1,000", "1000"), drop_thousands_commas("48,384", "48, 384")
    ('1000', '48,384')
    """
    if _THOUSANDS.match(answer) and len(split_top_level(other)) == 1:
        return answer.replace(",", "")
    return answer


def strip_variable(answer: str, other: str) -> str:
    """``x=3`` -> ``3`` (also ``x \\in [1,2]`` -> ``[1,2]``) when the other answer does not name the variable.

    >>> strip_variable("x=3", "3"), strip_variable("y=2x+3", "y=2x+4"), strip_variable("x+y=3", "3")
    ('3', '2x+3', 'x+y=3')
    """
    match = _SINGLE_VAR_EQ.match(answer)
    if not match or "=" in match.group(2):
        return answer
    other_match = _SINGLE_VAR_EQ.match(other)
    if "=" not in other and "\\in" not in other:
        return match.group(2).strip()
    if other_match and other_match.group(1) == match.group(1):
        return match.group(2).strip()  # x=5 vs x=6, y=2x+3 vs y=2x+4: same variable, compare the values
    return answer


def align_forms(gold: str, pred: str) -> tuple[str, str]:
    """Write two normalised answers in the same form where one is a rewriting of the other's notation: thousands
    commas, named values (``p=5,q=2`` as ``(5,2)``), a variable prefix (``x=3``), an inequality in one variable against an interval (``x>2`` vs
    ``(2,\\infty)``), ``a \\pm b`` against a two-item set or list.
    """
    gold, pred = drop_thousands_commas(gold, pred), drop_thousands_commas(pred, gold)
    gold, pred = named_values(gold, pred)
    gold, pred = strip_variable(gold, pred), strip_variable(pred, gold)
    gold, pred = inequality_as_interval(gold, pred), inequality_as_interval(pred, gold)
    gold, pred = excluded_value_as_union(gold, pred), excluded_value_as_union(pred, gold)
    gold, pred = absolute_inequality_as_set(gold, pred), absolute_inequality_as_set(pred, gold)
    gold, pred = plus_minus_as_pair(gold, pred), plus_minus_as_pair(pred, gold)
    return gold, pred


_ASSIGNMENT = re.compile(r"([a-zA-Z](?:_\{?\w+\}?)?)\s*=\s*([^=]+)")


def _named_groups(answer: str) -> tuple[list[str], list[list[str]]] | None:
    """``p=5,q=2;p=7,q=2`` -> (["p", "q"], [["5", "2"], ["7", "2"]]): ``;``-separated groups of at least two
    comma-separated ``name=value`` items, the same names in the same order in every group; None for anything else."""
    if "=" not in answer or len(answer) > 1000:
        return None
    names: list[str] | None = None
    groups = []
    for group in split_top_level(answer, ";"):
        items = [_ASSIGNMENT.fullmatch(item) for item in split_top_level(group)]
        if len(items) < 2 or not all(items):
            return None
        group_names = [item.group(1).replace("{", "").replace("}", "") for item in items]  # type: ignore[union-attr]
        if names is not None and group_names != names:
            return None
        names = group_names
        groups.append([item.group(2).strip() for item in items])  # type: ignore[union-attr]
    return (names, groups) if names is not None else None


def named_values(gold: str, pred: str) -> tuple[str, str]:
    """Named solutions as the tuples of their values, in the order named: ``p=5,q=2;p=7,q=2`` -> ``(5,2),(7,2)``
    (a set of solutions: the groups in any order), when the other answer names no variable or the same ones in the same
    order. Against a bare list of as many values, one group is a tuple and the list is read as one (``y_1=a, y_2=b`` vs
    ``a, b``: in order, never ``b, a``). Anything else is unchanged.

    >>> named_values("p=5,q=2;p=7,q=2", "(5,2),(7,2)"), named_values("x=1,y=2", "2,1"), named_values("x=1,y=2", "y=2,x=1")
    (('(5,2),(7,2)', '(5,2),(7,2)'), ('(1,2)', '(2,1)'), ('x=1,y=2', 'y=2,x=1'))
    """
    named_gold, named_pred = _named_groups(gold), _named_groups(pred)
    if named_gold and named_pred:
        if named_gold[0] != named_pred[0]:
            return gold, pred  # other names or another order: item by item, as written
        return _as_tuples(named_gold[1]), _as_tuples(named_pred[1])
    if named_gold and "=" not in pred:
        return _as_tuples(named_gold[1]), _tuple_if_bare_list(pred, named_gold[1])
    if named_pred and "=" not in gold:
        return _tuple_if_bare_list(gold, named_pred[1]), _as_tuples(named_pred[1])
    return gold, pred


def _as_tuples(groups: list[list[str]]) -> str:
    return ",".join(f"({','.join(values)})" for values in groups)


def _tuple_if_bare_list(answer: str, groups: list[list[str]]) -> str:
    if len(groups) == 1 and _brackets(answer)[0] == "" and len(split_top_level(answer)) == len(groups[0]):
        return f"({answer})"
    return answer


_PLUS_MINUS = re.compile(r"^([^,]*?)\\pm\s*([^,]+)$")
_ATOM = re.compile(r"[\w\\{}^.]+")


def _plus_minus_vs_tuple(answer: str, other: str) -> bool:
    return "\\pm" in answer and _PLUS_MINUS.match(answer) is not None and _brackets(other)[0] in ("(", "[")


def plus_minus_as_pair(answer: str, other: str) -> str:
    """``\\pm 2021`` -> ``-2021,2021`` (``a \\pm b`` -> ``a-b,a+b``) in the brackets of the other answer when that is a
    set or list of two items; else unchanged (``\\pm 2021`` is not ``2021``).

    >>> plus_minus_as_pair(r"\\pm 2", r"\\{-2,2\\}"), plus_minus_as_pair(r"1\\pm\\sqrt{2}", "a,b"), plus_minus_as_pair(r"\\pm 2", "2")
    ('\\\\{-2,2\\\\}', '1-\\\\sqrt{2},1+\\\\sqrt{2}', '\\\\pm 2')
    """
    match = _PLUS_MINUS.match(answer) if len(answer) <= 200 and "\\pm" in answer else None
    opening, inner, closing = _brackets(other)
    if not match or opening not in ("", "{") or len(split_top_level(inner)) != 2 or "\\pm" in other:
        return answer
    center, offset = match.group(1).strip(), match.group(2).strip()
    offset = offset if _ATOM.fullmatch(offset) else f"({offset})"
    pair = f"{center}-{offset},{center}+{offset}" if center else f"-{offset},{offset}"
    return f"\\{{{pair}\\}}" if opening == "{" else pair

_RELATION = re.compile(r"(<|>|\\\\?(?:leqslant|geqslant|leq?|geq?)(?![a-zA-Z]))")
_NAME = re.compile(r"[a-zA-Z](?:_\{?\w+\}?)?")


def inequality_as_interval(answer: str, other: str) -> str:
    """``x>2`` -> ``(2,\\infty)``, ``-1\\le x\\le 3`` -> ``[-1,3]`` when the other answer is an interval; else unchanged.

    Only one variable, one or two bounds, a chain in one direction (``3 > x > -1``, not ``1 < x > 0``); the variable's
    name is dropped only against an interval, which names none (``x>2`` vs ``y>2`` stays a comparison of relations).
    Like math-verify, an open interval ``(2,5)`` is read as the set ``2<x<5``, not as a point. ``\\\\le`` (a doubled
    backslash, as in some of Math-Verify's own cases) is read as ``\\le``.

    >>> inequality_as_interval(r"-1\\le x<3", "[-1,3)"), inequality_as_interval("x>2", "x>2")
    ('[-1,3)', 'x>2')
    """
    if len(answer) > 200 or not _is_interval(other):
        return answer
    parts = _RELATION.split(answer)
    if len(parts) not in (3, 5):
        return answer
    terms, ops = [part.strip() for part in parts[0::2]], [op.lstrip("\\")[:2] for op in parts[1::2]]
    if all(op in ("<", "le") for op in ops):
        strict = [op == "<" for op in ops]
    elif all(op in (">", "ge") for op in ops):
        terms, strict = terms[::-1], [op == ">" for op in ops[::-1]]  # b > x > a reads a < x < b
    else:
        return answer
    names = [bool(_NAME.fullmatch(term)) for term in terms]
    if not all(terms) or sum(names) != 1:
        return answer
    if len(terms) == 3:
        if not names[1]:
            return answer
        low, high, low_strict, high_strict = terms[0], terms[2], strict[0], strict[1]
    elif names[0]:  # x < b
        low, high, low_strict, high_strict = "-\\infty", terms[1], True, strict[0]
    else:  # a < x
        low, high, low_strict, high_strict = terms[0], "\\infty", strict[0], True
    return f"{'(' if low_strict else '['}{low},{high}{')' if high_strict else ']'}"


_NOT_EQUAL = re.compile(r"([a-zA-Z])\s*(?:\\neq?|\\ne)(?![a-zA-Z])\s*([^,<>=]+)")
_ABSOLUTE = re.compile(r"\|\s*([a-zA-Z])\s*\|\s*(<|>|\\\\?(?:leqslant|geqslant|leq?|geq?)(?![a-zA-Z]))\s*([^,<>=]+)")


def excluded_value_as_union(answer: str, other: str) -> str:
    """``x \\neq 2`` -> ``(-\\infty,2)\\cup(2,\\infty)`` when the other answer is a union of intervals; else unchanged.

    >>> excluded_value_as_union(r"x\\neq2", r"(-\\infty,2)\\cup(2,\\infty)")
    '(-\\\\infty,2)\\\\cup(2,\\\\infty)'
    """
    match = _NOT_EQUAL.fullmatch(answer.strip()) if len(answer) <= 200 and "\\cup" in other else None
    if not match:
        return answer
    value = match.group(2).strip()
    return f"(-\\infty,{value})\\cup({value},\\infty)"


def absolute_inequality_as_set(answer: str, other: str) -> str:
    """``|x| < 2`` -> ``(-2,2)`` (``\\le``: ``[-2,2]``) against an interval; ``|x| > 2`` ->
    ``(-\\infty,-2)\\cup(2,\\infty)`` against a union; else unchanged. The bound must be a plain positive number or one
    symbol (``|x| < a``).

    >>> absolute_inequality_as_set("|x|<2", "(-2,2)"), absolute_inequality_as_set(r"|x|\\geq3", r"(-\\infty,-3]\\cup[3,\\infty)")
    ('(-2,2)', '(-\\\\infty,-3]\\\\cup[3,\\\\infty)')
    """
    text = answer.replace("\\lvert", "|").replace("\\rvert", "|").replace("\\vert", "|")
    match = _ABSOLUTE.fullmatch(text.strip()) if len(text) <= 200 and "|" in text else None
    if not match:
        return answer
    relation, bound = match.group(2).lstrip("\\"), match.group(3).strip()
    number = parse_plain_number(bound)
    if not (number and number[0] > 0 or re.fullmatch(r"[a-zA-Z]|\\[a-zA-Z]+", bound)):
        return answer
    strict = relation in ("<", ">")
    if relation in ("<", "le", "leq", "leqslant") and _is_interval(other):
        return f"{'(' if strict else '['}-{bound},{bound}{')' if strict else ']'}"
    if relation in (">", "ge", "geq", "geqslant") and "\\cup" in other:
        return f"(-\\infty,-{bound}{')' if strict else ']'}\\cup{'(' if strict else '['}{bound},\\infty)"
    return answer


def _is_interval(answer: str) -> bool:
    return len(answer) >= 5 and answer[0] in "([" and answer[-1] in ")]" and _balanced(answer[1:-1]) and len(
        split_top_level(answer[1:-1])) == 2


def split_top_level(s: str, separator: str = ",") -> list[str]:
    """Split on commas (or ``separator``) outside any brackets.

    >>> split_top_level(r"(1,2),\\frac{1}{2},3")
    ['(1,2)', '\\\\frac{1}{2}', '3']
    """
    parts, depth, current = [], 0, []
    i = 0
    while i < len(s):
        char = s[i]
        if s.startswith("\\{", i) or s.startswith("\\}", i):
            depth += 1 if char == "\\" and s[i + 1] == "{" else -1
            current.append(s[i : i + 2])
            i += 2
            continue
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        if char == separator and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(char)
        i += 1
    parts.append("".join(current).strip())
    return parts


_TRAILING_OPERATOR = re.compile(r"(?:[-+*/^_=<>]|\\(?:cdot|times|div|pm|mp|le|leq|ge|geq|ne|neq|to|frac|sqrt))\s*$")
_LEADING_OPERATOR = re.compile(r"^\s*(?:[*/^_=<>]|\\(?:cdot|times|div|to)(?![a-zA-Z]))")
_ARROW = re.compile(r"\\(?:to|rightarrow|Rightarrow|longrightarrow|Longrightarrow|mapsto|implies|iff|leftarrow)(?![a-zA-Z])")
_EMPTY_GROUP = re.compile(r"\\(?:frac|sqrt|binom)\s*(?:\[[^\]]*\])?\s*\{\s*\}|\\frac\s*\{[^{}]*\}\s*\{\s*\}|[\^_]\s*\{\s*\}")
_DIGITS_APART = re.compile(r"\d\s+\d")
_CLOCK = re.compile(r"(\d{1,2}):(\d{2})(?::(\d{2}))?\s*((?:[ap]\.?\s*m\.?)?)", re.IGNORECASE)


def is_malformed(answer: str) -> bool:
    """An unfinished or broken answer that no parse may read a prefix of: a trailing or leading operator, an empty
    ``\\frac{}{}``/``\\sqrt{}``/``^{}``, an arrow (``12 \\to 13`` is a change, not a value), two numbers with only a
    space between them (``1 2``), unbalanced brackets.

    >>> is_malformed(r"2 \\cdot"), is_malformed(r"4 \\sqrt{}"), is_malformed(r"12 \\to 13"), is_malformed(r"2\\sqrt{3}")
    (True, True, True, False)
    """
    if _TRAILING_OPERATOR.search(answer) or _LEADING_OPERATOR.search(answer) or _EMPTY_GROUP.search(answer):
        return True
    if _DIGITS_APART.search(answer):
        return True  # "1 2": two numbers with nothing between them (thousands groups were joined by normalize)
    if _ARROW.search(answer) and "\\lim" not in answer:
        return True
    return answer.count("{") - answer.count("\\{") != answer.count("}") - answer.count("\\}") or not _balanced(answer)


def time_of_day(answer: str) -> tuple[int, int, int] | None:
    """(hour 0-23, minute, second) of a time that says which half of the day it is: with a.m./p.m. (``3:45 p.m.``), or
    in 24-hour form (an hour from 13 to 23, or written with a leading zero: ``15:45``, ``03:45``, ``00:30``). None for
    anything else, such as ``3:45`` or ``12:30`` without a.m./p.m. (either half of the day).

    >>> time_of_day("3:45 p.m."), time_of_day("15:45"), time_of_day("12:30 a.m."), time_of_day("3:45")
    ((15, 45, 0), (15, 45, 0), (0, 30, 0), None)
    """
    match = _CLOCK.fullmatch(answer.strip())
    if not match:
        return None
    hours, minutes, seconds, half = match.groups()
    hour, minute, second = int(hours), int(minutes), int(seconds or 0)
    if minute > 59 or second > 59:
        return None
    half = re.sub(r"[\s.]", "", half).lower()
    if half:
        return (hour % 12 + (12 if half == "pm" else 0), minute, second) if 1 <= hour <= 12 else None
    if 13 <= hour <= 23 or (hours.startswith("0") and len(hours) == 2):
        return hour, minute, second
    return None


def _clock_or_ratio(answer: str) -> tuple[Any, ...] | None:
    """``4:30`` / ``4:30 p.m.`` / ``11:21``: the parts of a time of day or a ratio, compared part by part (never as a
    division: ``12:00`` is not ``12/0``). None for anything else.
    """
    match = _CLOCK.fullmatch(answer.strip())
    if match:
        hours, minutes, seconds, half = match.groups()
        return int(hours), int(minutes), int(seconds or 0), re.sub(r"[\s.]", "", half).lower()
    parts = answer.split(":")
    if len(parts) >= 2 and all(parse_plain_number(part.strip()) for part in parts):
        return tuple(parse_plain_number(part.strip())[0] for part in parts)  # type: ignore[index]
    return None


# ----------------------------------------------------------------------------------------------------------------
# Plain numbers, compared exactly


def parse_plain_number(s: str) -> tuple[Fraction, int | None] | None:
    """A plain integer, decimal or integer fraction as (value, digits after the point or None if exact).

    >>> parse_plain_number(r"-\\frac{1}{2}"), parse_plain_number("0.50")
    ((Fraction(-1, 2), None), (Fraction(1, 2), 2))
    """
    if len(s) > 200:
        return None
    match = re.fullmatch(r"([+-]?)(\d*)\.(\d+)|([+-]?)(\d+)\.?", s)
    if match:
        if match.group(3) is not None:
            sign, whole, frac = match.group(1), match.group(2) or "0", match.group(3)
            return Fraction(f"{sign}{whole}.{frac}"), len(frac)
        return Fraction(int(match.group(4) + match.group(5))), None
    match = re.fullmatch(r"([+-]?)\\frac\{([+-]?\d+)\}\{([+-]?\d+)\}|([+-]?\d+)/(\d+)", s)
    if match:
        if match.group(2) is not None:
            sign, num, den = match.group(1), int(match.group(2)), int(match.group(3))
            value = Fraction(num, den) if den else None
            if value is None:
                return None
            return (-value if sign == "-" else value), None
        den = int(match.group(5))
        return (Fraction(int(match.group(4)), den), None) if den else None
    return None


_ASKS_FOR_DECIMAL = re.compile(
    r"decimal|round(?:ed|ing)?\b|nearest|approximat|estimate|significant (?:figure|digit)|"
    r"to (?:the )?(?:\w+ )?(?:tenth|hundredth|thousandth|place)|\bcents?\b",
    re.IGNORECASE,
)


def question_allows_rounding(question: str | None) -> bool:
    """Whether a question asks for a decimal or a rounding, so that a rounded decimal answers it.

    >>> question_allows_rounding("Express your answer as a decimal to the nearest tenth."), question_allows_rounding("Find x.")
    (True, False)
    """
    return bool(question) and _ASKS_FOR_DECIMAL.search(question) is not None  # type: ignore[arg-type]


def decimal_matches_exact(decimal: Fraction, digits: int, exact: Any, rounding: bool = True) -> bool:
    """The rounding rule: a decimal with >= 3 digits matches an exact value within half a unit in its last place.

    >>> decimal_matches_exact(Fraction("0.333"), 3, Fraction(1, 3)), decimal_matches_exact(Fraction("0.33"), 2, Fraction(1, 3))
    (True, False)
    >>> decimal_matches_exact(Fraction("0.333"), 3, Fraction(1, 3), rounding=False)
    False
    """
    if digits < MIN_DECIMALS_FOR_ROUNDING or not rounding:
        return decimal == exact
    return abs(decimal - exact) <= Fraction(1, 2 * 10**digits)


def plain_numbers_equal(gold: tuple[Fraction, int | None], pred: tuple[Fraction, int | None],
                        rounding: bool = False) -> bool:
    """Exact equality, except the rounding rule when exactly one side is a decimal (a decimal pred: only with
    ``rounding``)."""
    (value_a, digits_a), (value_b, digits_b) = gold, pred
    if (digits_a is None) == (digits_b is None):
        return value_a == value_b
    if digits_a is not None:
        return decimal_matches_exact(value_a, digits_a, value_b)
    return decimal_matches_exact(value_b, digits_b or 0, value_a, rounding)


# ----------------------------------------------------------------------------------------------------------------
# Fast layer: decide without sympy, or say None


def fast_equivalent(gold: str, pred: str, answer_type: str = "math", rounding: bool = False) -> bool | None:
    """Decide cheap cases in-process: True/False, or None when sympy is needed.

    >>> fast_equivalent("0.5", r"\\frac{1}{2}"), fast_equivalent("900", "9"), fast_equivalent("[1,2]", "(1,2)")
    (True, False, False)
    >>> fast_equivalent(r"\\sqrt{12}", r"2\\sqrt{3}") is None
    True
    """
    if answer_type == "mc":  # a digit gold is a 0-based option index (MMLU files store 2 for "C")
        gold = _LETTERS[int(gold)] if gold.strip().isdigit() and int(gold) < len(_LETTERS) else gold
        letter_gold = option_letter(gold) or clean_answer(gold).upper()
        letter_pred = option_letter(pred) or clean_answer(pred).upper()
        return letter_gold == letter_pred
    if len(gold) > MAX_ANSWER_CHARS or len(pred) > MAX_ANSWER_CHARS:
        return _as_text(gold) == _as_text(pred)  # bounded: no normalisation rule or parse runs on 1 MB
    if answer_type == "math":
        by_units = units_verdict(gold, pred)
        if by_units is not None:
            return by_units
    gold_n, pred_n = normalize(gold), normalize(pred)
    equal = partial(_fast_one, rounding=rounding)
    if answer_type == "list":
        return _match_lists(split_top_level(gold_n), split_top_level(pred_n), equal)
    return equal(gold_n, pred_n)


def units_verdict(gold: str, pred: str) -> bool | None:
    """False when both answers carry units that differ and no conversion relates them (``5 cm`` vs ``5 km``); with a
    conversion (``2 hours`` vs ``120 minutes``, plain numbers only), the exact comparison of the converted values. None
    when at most one side has a unit or both have the same one: the unit is then ignored (see ``units``).

    >>> units_verdict("5 cm", "5 km"), units_verdict(r"\\$5", "500 cents"), units_verdict(r"5\\text{ cm}", "5")
    (False, True, None)
    """
    unit_gold, unit_pred = answer_unit(gold), answer_unit(pred)
    if unit_gold is None or unit_pred is None or unit_gold == unit_pred:
        return None
    factors = conversion(unit_gold, unit_pred)
    if factors is None:
        return False
    gold_n, pred_n = normalize(gold), normalize(pred)
    number_gold = parse_plain_number(drop_thousands_commas(gold_n, pred_n))
    number_pred = parse_plain_number(drop_thousands_commas(pred_n, gold_n))
    if number_gold is None or number_pred is None:
        return False
    return number_gold[0] * factors[0] == number_pred[0] * factors[1]


def _fast_one(gold: str, pred: str, rounding: bool = False) -> bool | None:
    if gold == pred:
        return True
    if not gold or not pred:
        return False
    gold, pred = align_forms(gold, pred)
    if gold == pred:
        return True
    if _plus_minus_vs_tuple(gold, pred) or _plus_minus_vs_tuple(pred, gold):
        return False  # two values are not a tuple or an interval (math-verify reads \pm 2 == (-2,2))
    number_gold, number_pred = parse_plain_number(gold), parse_plain_number(pred)
    if number_gold and number_pred:
        return plain_numbers_equal(number_gold, number_pred, rounding)
    clock_gold, clock_pred = _clock_or_ratio(gold), _clock_or_ratio(pred)
    if clock_gold is not None or clock_pred is not None:
        if clock_gold != clock_pred:
            day_gold, day_pred = time_of_day(gold), time_of_day(pred)
            if day_gold is not None and day_pred is not None:
                return day_gold == day_pred  # 15:45 is 3:45 p.m.
        return clock_gold == clock_pred
    base_g, base_p = _BASE_NUMBER.fullmatch(gold), _BASE_NUMBER.fullmatch(pred)
    if base_g and base_p:  # 52_8: digits and base must both match
        return base_g.groups() == base_p.groups()
    structured = _compare_structure(gold, pred, partial(_fast_one, rounding=rounding))
    if structured is not None:
        return structured
    return _numerically_disproved(gold, pred, number_gold, number_pred)


def _numerically_disproved(gold: str, pred: str, number_gold: Any, number_pred: Any) -> bool | None:
    """False when both sides are constants whose values clearly differ; None (undecided) otherwise."""
    value_gold, value_pred = evaluate_constant(gold), evaluate_constant(pred)
    if value_gold is None or value_pred is None:
        return None
    decimals = max((n[1] for n in (number_gold, number_pred) if n and n[1] is not None), default=None)
    return False if clearly_different(value_gold, value_pred, decimals) else None


def _balanced(s: str) -> bool:
    depth = 0
    for char in s.replace("\\{", "{").replace("\\}", "}"):
        depth += 1 if char in "([{" else -1 if char in ")]}" else 0
        if depth < 0:
            return False
    return depth == 0


def _brackets(s: str) -> tuple[str, str, str]:
    """(open, inner, close) of a bracketed answer; ("", s, "") when bare. ``[1,2)\\cup(3,4]`` is bare."""
    if s.startswith("\\{") and s.endswith("\\}") and _balanced(s[2:-2]):
        return "{", s[2:-2], "}"
    if len(s) >= 2 and s[0] in "([" and s[-1] in ")]" and _balanced(s[1:-1]):
        return s[0], s[1:-1], s[-1]
    return "", s, ""


def _compare_structure(gold: str, pred: str, equal: Any) -> bool | None:
    """Tuples/intervals (ordered, brackets must match), sets and bare lists (unordered), element by element.

    None when the answers are not both such structures, or when ``equal`` cannot decide an element.
    """
    open_g, inner_g, close_g = _brackets(gold)
    open_p, inner_p, close_p = _brackets(pred)
    items_g, items_p = split_top_level(inner_g), split_top_level(inner_p)
    if len(items_g) < 2 and len(items_p) < 2:
        return None
    if (open_g, close_g) != (open_p, close_p):
        if "" not in (open_g, open_p):
            return False  # [1,2] vs (1,2), (1,2) vs \{1,2\}
        if {open_g, open_p} != {"", "{"}:
            return None  # a bare list vs a tuple: let math-verify decide
    if len(items_g) != len(items_p):
        return False
    if open_g in ("{", "") or open_p in ("{", ""):
        return _match_lists(items_g, items_p, equal)
    verdicts = [equal(a, b) for a, b in zip(items_g, items_p)]
    if False in verdicts:
        return False
    return None if None in verdicts else True


def _match_lists(gold_items: list[str], pred_items: list[str], equal: Any) -> bool | None:
    """Unordered matching of two answer lists with ``equal`` (which may answer None = unknown)."""
    if len(gold_items) != len(pred_items):
        return False
    if len(gold_items) > MAX_LIST_ITEMS:
        return sorted(gold_items) == sorted(pred_items)  # bounded: no pairwise matching of long lists
    remaining = list(pred_items)
    unknown = False
    for gold_item in gold_items:
        for index, pred_item in enumerate(remaining):
            verdict = equal(gold_item, pred_item)
            if verdict is True:
                del remaining[index]
                break
            if verdict is None:
                unknown = True
        else:
            if not unknown:
                return False
    return True if not remaining else (None if unknown else False)


# ----------------------------------------------------------------------------------------------------------------
# Symbolic layer (sympy + math-verify). Can be slow or hang: run it only under a hard timeout (pool.py).


def symbolic_equivalent(gold: str, pred: str, answer_type: str = "math", rounding: bool = False) -> bool:
    """Full check with sympy; call it in a worker process that is killed on timeout. Never raises."""
    try:
        decided = fast_equivalent(gold, pred, answer_type, rounding)
        if decided is not None:
            return decided
        gold_n, pred_n = normalize(gold), normalize(pred)
        equal = partial(_symbolic_one, rounding=rounding)
        if answer_type == "list":
            return bool(_match_lists(split_top_level(gold_n), split_top_level(pred_n), equal))
        return equal(gold_n, pred_n)
    except Exception:  # noqa: BLE001 - a broken comparison is "not equal", never a crash
        return False


def _symbolic_one(gold: str, pred: str, rounding: bool = False) -> bool:
    decided = _fast_one(gold, pred, rounding)
    if decided is not None:
        return decided
    gold, pred = align_forms(gold, pred)
    structure = _compare_structure(gold, pred, partial(_symbolic_one, rounding=rounding))
    if structure is not None:
        return structure
    if is_malformed(gold) or is_malformed(pred):
        return False
    parsed_gold, parsed_pred = _parse(gold), _parse(pred)
    if not parsed_gold or not parsed_pred:
        return False
    if any(_parse_lost_content(text, parsed[0]) for text, parsed in ((gold, parsed_gold), (pred, parsed_pred))):
        return False
    parsed_gold, parsed_pred = _imaginary_unit(parsed_gold, gold), _imaginary_unit(parsed_pred, pred)
    exact = _exact_number_check(parsed_gold[0], parsed_pred[0], gold, pred, rounding)
    if exact is not None:
        return exact
    if _differ_at_some_point(parsed_gold[0], parsed_pred[0]):
        return False  # cheap proof of inequality before math-verify's (slower) simplification
    import math_verify

    return bool(math_verify.verify(parsed_gold, parsed_pred, timeout_seconds=None))


@lru_cache(maxsize=4096)
def _parse(answer: str) -> list[Any]:
    """math-verify parse of a normalised answer, wrapped in ``$`` so LaTeX is read as a whole (not its first number)."""
    import math_verify
    from math_verify import LatexExtractionConfig

    # LaTeX only: where the LaTeX reading fails, math-verify's plain-expression reading takes the first number it
    # finds (``10^{<4400 digits>}`` -> 10); an answer that cannot be read whole is not read at all.
    parsed = math_verify.parse(f"${answer}$", extraction_config=[LatexExtractionConfig(boxed_match_priority=0)],
                               parsing_timeout=None)
    return parsed if parsed and not isinstance(parsed[0], str) else []


_INDEX_I = re.compile(r"_\{?\s*i\b|\\(?:sum|prod)")


def _imaginary_unit(parsed: list[Any], text: str) -> list[Any]:
    """The letter i as the imaginary unit (math-verify reads ``e^{i\\pi}`` with a symbol i), unless i is an index."""
    import sympy

    if not parsed or not isinstance(parsed[0], sympy.Basic) or _INDEX_I.search(text) or "\\text" in text:
        return parsed
    if "i" not in _LONE_LETTER.findall(re.sub(r"\\[A-Za-z]+", " ", text)):
        return parsed  # an i inside a word (a name read letter by letter) is no imaginary unit
    symbols = {symbol: sympy.I for symbol in parsed[0].free_symbols if str(symbol) == "i"}  # any assumptions
    return [parsed[0].xreplace(symbols), *parsed[1:]] if symbols else parsed


_LONE_LETTER = re.compile(r"(?<![\\A-Za-z])[A-Za-z](?![A-Za-z])")


def _parse_lost_content(text: str, parsed: Any) -> bool:
    """True when the parse cannot be the whole answer: a division by zero or an undefined value (``12:00`` read as
    ``12/0``, ``\\frac{\\pi}{0}``), or a plain number read from text with a variable-like letter (``4t``, ``5m``: a
    letter after a number is never dropped as a unit).
    """
    import sympy

    if not isinstance(parsed, sympy.Basic):
        return False
    if parsed.has(sympy.zoo, sympy.nan) or any(
        power.base == 0 and power.exp.is_negative for power in parsed.atoms(sympy.Pow)
    ):
        return True
    letters = set(_LONE_LETTER.findall(re.sub(r"\\[A-Za-z]+", " ", text))) - {"e", "i", "E"}
    return bool(letters) and isinstance(parsed, sympy.Expr) and not parsed.free_symbols


_PROBE_POINTS = ((7, 13), (19, 11), (-5, 17))  # deterministic rational probe values, offset per symbol


def _differ_at_some_point(gold: Any, pred: Any) -> bool:
    """True when two expressions in free symbols (no decimals) take clearly different values at a probe point.

    Sound for "not equal" only; equal values at the probes prove nothing and the caller goes on to math-verify.
    """
    import sympy

    if not (isinstance(gold, sympy.Expr) and isinstance(pred, sympy.Expr)) or gold.has(sympy.Float) or pred.has(sympy.Float):
        return False
    symbols = sorted(gold.free_symbols | pred.free_symbols, key=str)
    if not symbols or len(symbols) > 8:
        return False
    for num, den in _PROBE_POINTS:
        point = {symbol: sympy.Rational(num + 3 * k, den) for k, symbol in enumerate(symbols)}
        try:
            a, b = complex(gold.xreplace(point).evalf(30)), complex(pred.xreplace(point).evalf(30))
        except (TypeError, ValueError, ZeroDivisionError, OverflowError):
            continue
        if all(map(_finite, (a, b))) and abs(a - b) > 1e-9 * max(1.0, abs(a), abs(b)):
            return True
    return False


def _finite(value: complex) -> bool:
    return value == value and abs(value) != float("inf")


def _exact_number_check(gold: Any, pred: Any, gold_text: str, pred_text: str, rounding: bool = False) -> bool | None:
    """Numbers without free symbols: exact (60-digit) comparison, with the decimal rounding rule; None otherwise."""
    import sympy

    if not (isinstance(gold, sympy.Expr) and isinstance(pred, sympy.Expr)):
        return None
    if gold.free_symbols or pred.free_symbols or not gold.is_number or not pred.is_number:
        return None
    if not (gold.is_finite and pred.is_finite):
        return gold == pred and gold in (sympy.oo, -sympy.oo)  # zoo and nan equal nothing, not even themselves
    gold_has_float, pred_has_float = gold.has(sympy.Float), pred.has(sympy.Float)
    if gold_has_float and pred_has_float:
        return None  # two decimal expressions: leave to math-verify
    if gold_has_float or pred_has_float:
        decimal = parse_plain_number(gold_text if gold_has_float else pred_text)
        if decimal is None or decimal[1] is None:
            return None
        other = pred if gold_has_float else gold
        value = other.evalf(60)
        if not value.is_real:
            return False
        exact = Fraction(str(sympy.Rational(value)))
        return decimal_matches_exact(decimal[0], decimal[1], exact, rounding or gold_has_float)
    gold, pred = gold.doit(), pred.doit()  # unevaluated products/powers become exact Rationals where they are
    if gold.is_Rational and pred.is_Rational:
        return bool(gold == pred)  # exact, at any size: 2^200 != 2^200-1
    try:
        scale = max(abs(gold.evalf(30)), abs(pred.evalf(30)))
        magnitude = int(sympy.log(scale, 10).evalf(15)) if scale > 1 else 0
        if magnitude > 5000:
            return None  # too large to settle by evaluation: math-verify decides (under the worker deadline)
        # No tolerance: a difference that is not zero at d digits is evaluated again at 4d digits, where two equal
        # values differ by at most ~10^-4d and two different ones keep their difference (10^50+1 vs 10^50,
        # sqrt(10^80+1) vs 10^40). Sympy Floats have unbounded exponents, so 1/2004! vs 1/2006! stays apart too.
        base = 60 + magnitude
        relative = scale if scale < 1 else sympy.Integer(1)
        for digits in (base, 4 * base):
            difference = abs((gold - pred).evalf(digits))
            if difference == 0:
                return True
            if difference > relative * sympy.Float(10, digits) ** (-(digits // 2)):
                return False
        return True
    except (TypeError, ValueError):
        return None
