"""The unit an answer is written in, and the few exact conversions between units (plain string work, no sympy).

The rule (docs/verifier.md): a unit is ignored only when the other answer has none (``5 \\text{ cm}`` equals ``5``);
two answers in different units are not equal (``5 cm`` is not ``5 km``, ``2 hours`` is not ``2 minutes``, ``\\$5`` is
not ``5 cents``) unless both are plain numbers in units of one table below, where the values are compared exactly
after conversion (``2 hours`` equals ``120 minutes``, ``\\$5`` equals ``500 cents``). Spellings and plurals of one
unit are the same unit (``cm``, ``centimeters``); ``square``/``cubic`` and ``^2``/``^3`` give its power. A word this
module does not know (``apples``, ``students``) is a unit only as the same word (singular or plural). The generic
"units"/"square units" is no unit.
"""

from __future__ import annotations

import re
from fractions import Fraction

# (table, factor to the table's base unit, spellings). Conversions happen only inside one table: metric and imperial
# lengths are not converted into each other (a question that asks for inches wants inches).
_TABLES: tuple[tuple[str, Fraction, tuple[str, ...]], ...] = (
    ("metric length", Fraction(1, 1000), ("mm", "millimeter", "millimetre")),
    ("metric length", Fraction(1, 100), ("cm", "centimeter", "centimetre")),
    ("metric length", Fraction(1), ("m", "meter", "metre")),
    ("metric length", Fraction(1000), ("km", "kilometer", "kilometre")),
    ("imperial length", Fraction(1), ("in", "inch", "inches")),
    ("imperial length", Fraction(12), ("ft", "foot", "feet")),
    ("imperial length", Fraction(36), ("yd", "yard")),
    ("imperial length", Fraction(63360), ("mi", "mile")),
    ("time", Fraction(1), ("s", "sec", "second")),
    ("time", Fraction(60), ("min", "minute")),
    ("time", Fraction(3600), ("h", "hr", "hour")),
    ("time", Fraction(86400), ("day",)),
    ("time", Fraction(604800), ("week", "wk")),
    ("metric mass", Fraction(1, 1000), ("mg", "milligram")),
    ("metric mass", Fraction(1), ("g", "gram")),
    ("metric mass", Fraction(1000), ("kg", "kilogram")),
    ("imperial mass", Fraction(1), ("oz", "ounce")),
    ("imperial mass", Fraction(16), ("lb", "pound")),
    ("volume", Fraction(1, 1000), ("ml", "milliliter", "millilitre")),
    ("volume", Fraction(1), ("l", "liter", "litre")),
    ("money", Fraction(1, 100), ("cent", "¢")),
    ("money", Fraction(1), ("dollar", "usd", "$")),
    ("percent", Fraction(1), ("percent", "percentage", "pct", "%")),
    ("angle", Fraction(1), ("degree", "deg", "°")),
)
_KNOWN: dict[str, tuple[str, str, Fraction]] = {}  # spelling -> (unit name, table, factor)
for _table, _factor, _names in _TABLES:
    for _name in _names:
        _KNOWN[_name] = (_names[0], _table, _factor)

Unit = tuple[str, int]  # (unit name, power): ("cm", 2) for cm^2

_TEXT = r"\\(?:text|textbf|textrm|textnormal|mbox|mathrm)\s*\{\s*([A-Za-z][A-Za-z. ]*?)\s*\}"
_POWER = r"(?:\s*\^\s*\{?\s*([23])\s*\}?)?"
# A plain number (digits, a decimal, a fraction, a \frac) or a braced group, then the unit at the very end.
_VALUE = r"(?:-?[\d.,/{}]+|-?\\frac\{[^{}]*\}\{[^{}]*\}|.*\})"
_TEXT_UNIT = re.compile(rf"^{_VALUE}\s*(?:\\[,;! ]|~|\s)*{_TEXT}{_POWER}$", re.DOTALL)
_WORD_UNIT = re.compile(rf"^-?[\d.,/]+\s*([A-Za-z][A-Za-z ]*?|¢){_POWER}$")
_PAREN_UNIT = re.compile(r"^-?[\d.,/]+\s*\(\s*([A-Za-z][A-Za-z ]*)\)$")
_DOLLAR = re.compile(r"^\s*-?\s*\\\$|^\s*\$\s*-?\d[^$]*$")  # \$5, or a lone leading $ before a number: $5
_PERCENT = re.compile(r"\\?%\s*$")
_DEGREE = re.compile(r"(?:\^\s*\{?\s*\\circ\s*\}?|°|\\degree)\s*$")
_HALF_DAY = re.compile(r"[ap]\.?\s*m\.?", re.IGNORECASE)
_GENERIC = {"unit", "square unit", "sq unit", "cubic unit"}


def _unit_word(words: str, power: str | None) -> Unit | None:
    """``"square centimeters"`` -> ("cm", 2); ``"apples"`` -> ("apple", 1); "units" -> None (no unit)."""
    words = " ".join(words.lower().replace(".", " ").split())
    exponent = int(power) if power else 1
    for prefix, value in (("square ", 2), ("sq ", 2), ("cubic ", 3)):
        if words.startswith(prefix):
            words, exponent = words[len(prefix):], value
    if not words or _HALF_DAY.fullmatch(words):
        return None
    singular = words[:-1] if words.endswith("s") and len(words) > 2 and words[:-1] in _KNOWN else words
    if words not in _KNOWN and singular == words and words.endswith("s") and len(words) > 3 and not words.endswith("ss"):
        singular = words[:-1]  # apples -> apple
    if singular in _GENERIC or words in _GENERIC or f"{singular} unit" in _GENERIC:
        return None
    name = _KNOWN[singular][0] if singular in _KNOWN else singular
    return name, exponent


def answer_unit(answer: str) -> Unit | None:
    """The unit of a single answer as (name, power), or None when it has none (or is a list, or holds a box).

    >>> answer_unit(r"72\\text{ m}^2"), answer_unit("5 km"), answer_unit(r"\\$5"), answer_unit("12 inches")
    (('m', 2), ('km', 1), ('dollar', 1), ('in', 1))
    >>> answer_unit(r"10\\%"), answer_unit(r"90^\\circ"), answer_unit("x+1"), answer_unit("5 square units")
    (('percent', 1), ('degree', 1), None, None)
    >>> answer_unit("9 apples"), answer_unit("2xy"), answer_unit("3R^2"), answer_unit("5cm")
    (('apple', 1), None, None, ('cm', 1))
    """
    s = answer.strip().strip(".").strip()
    if len(s) > 300 or "\\boxed" in s or "\\fbox" in s:
        return None
    if s.startswith("$") and s.endswith("$") and len(s) > 1 and s.count("$") % 2 == 0:
        s = s[1:-1].strip()
    if _top_level_comma(s):
        return None
    if _DOLLAR.search(s):
        return "dollar", 1
    if _PERCENT.search(s):
        return "percent", 1
    if _DEGREE.search(s):
        return "degree", 1
    for pattern in (_TEXT_UNIT, _WORD_UNIT, _PAREN_UNIT):
        match = pattern.match(s)
        if match:
            unit = _unit_word(match.group(1), match.group(2) if pattern.groups > 1 else None)
            if unit and pattern is _WORD_UNIT and unit[0] not in _KNOWN and (
                    len(unit[0]) < 3 or not s[match.start(1) - 1].isspace()):
                return None  # 2k, 3R^2, 2xy: letters after a number are a product, not a unit word
            return unit
    return None


def _top_level_comma(s: str) -> bool:
    depth = 0
    for index, char in enumerate(s):
        depth += 1 if char in "([{" else -1 if char in ")]}" else 0
        if char == "," and depth == 0 and not (s[index - 1 : index].isdigit() and s[index + 1 : index + 4].isdigit()):
            return True  # a comma between digit groups (1,000) is a thousands separator, not a list
    return False


def conversion(gold: Unit, pred: Unit) -> tuple[Fraction, Fraction] | None:
    """(gold's factor, pred's factor) to one base unit when both units are in one table, else None.

    >>> conversion(("hour", 1), ("min", 1)), conversion(("cm", 1), ("in", 1))
    ((Fraction(3600, 1), Fraction(60, 1)), None)
    """
    (name_g, power_g), (name_p, power_p) = gold, pred
    if power_g != power_p or name_g not in _KNOWN or name_p not in _KNOWN:
        return None
    _, table_g, factor_g = _KNOWN[name_g]
    _, table_p, factor_p = _KNOWN[name_p]
    if table_g != table_p:
        return None
    return factor_g**power_g, factor_p**power_p
