"""Plain string helpers for LaTeX answers: boxes with matched braces, answer clean-up and option letters.

They sit below both answer extraction (`extract`) and equivalence (`equivalence`), which use them, so neither of the
two has to import the other for them.
"""

from __future__ import annotations

import re

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_BOX_START = re.compile(r"\\(?:boxed|fbox)")
_BOX_SPACE_ARGUMENT = re.compile(r" ++([^\s$]++)")
_LETTERS = "ABCDEFGHIJ"

# What may stand between two boxes of one answer: one lowercase word right after the first box when a comma or
# "and"/"or" follows it (its unit or label: ``\boxed{1} papers and \boxed{2} bins``), then spacing, commas, math
# delimiters, "and"/"or", and a name label (``y_2 =``, ``x_{2}=``) before the next box.
_BOX_SEPARATOR = re.compile(
    r"(?:[\s$]*+[a-z]{2,}+\s*+(?=,|(?:and|or)\b))?"
    r"(?:[\s,;.$]|\\quad|\\qquad|\\[,;! ]|\\\(|\\\)|\\\[|\\\]|\\text\{\s*(?:and|or|,)?\s*\}|\b(?:and|or)\b"
    r"|(?<![A-Za-z\\])[A-Za-z](?:_\{?\w+\}?)?\s*=)*"
)


def find_boxes(text: str) -> list[str]:
    return [content for content, _, _ in box_spans(text)]


def final_boxes(text: str) -> list[str]:
    """The last box with the boxes right before it that only commas, "and"/"or", spacing, a name label (``y =``) or
    the first box's unit word before a connective (``\\boxed{1} papers and \\boxed{2}``) separate from it.

    >>> final_boxes(r"first \\boxed{7}. So \\boxed{1} and \\boxed{2}.")
    ['1', '2']
    >>> final_boxes(r"\\(y_1 = \\boxed{3}\\) and \\(y_2 = \\boxed{4}\\)"), final_boxes(r"\\boxed{1} no \\boxed{2}")
    (['3', '4'], ['2'])
    >>> final_boxes(r"\\boxed{1} papers and \\boxed{2} bins"), final_boxes(r"\\boxed{1} for part (a) and \\boxed{2}")
    (['1', '2'], ['2'])
    """
    spans = box_spans(text)
    if not spans:
        return []
    group = [spans[-1]]  # built from the end, reversed once
    for span in reversed(spans[:-1]):
        if not _BOX_SEPARATOR.fullmatch(text, span[2], group[-1][1]):
            break
        group.append(span)
    return [content for content, _, _ in reversed(group)]


def box_spans(text: str) -> list[tuple[str, int, int]]:
    """(content, start, end) of every ``\\boxed{...}`` / ``\\fbox{...}`` in order, braces matched; also ``\\boxed 5``.

    >>> find_boxes(r"so $\\boxed{\\frac{1}{2}}$ or \\boxed 3.")
    ['\\\\frac{1}{2}', '3']
    """
    boxes: list[tuple[str, int, int]] = []
    i = 0
    while True:
        found = _BOX_START.search(text, i)  # one scan for both commands (a find per command re-scans the text)
        if found is None:
            return boxes
        pos, j = found.start(), found.end()
        if j < len(text) and text[j] == "{":
            content, end = _brace_content(text, j)
            if content is None:
                return boxes  # unbalanced: the response was cut off inside the box
            boxes.append((content, pos, end))
            i = end
        elif j < len(text) and text[j] == " ":
            match = _BOX_SPACE_ARGUMENT.match(text, j)
            if match:
                boxes.append((match.group(1).rstrip(".,;"), pos, match.end()))
            i = j + 1
        else:
            i = j  # e.g. \boxedsomething: not a box


def _brace_content(text: str, open_at: int) -> tuple[str | None, int]:
    """Content between the brace at ``open_at`` and its match, and the index after it; escaped ``\\{`` is skipped."""
    depth = 0
    k = open_at
    while k < len(text):
        char = text[k]
        if char == "\\":
            k += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[open_at + 1 : k], k + 1
        k += 1
    return None, len(text)


def clean_answer(answer: str) -> str:
    """Light clean-up of an extracted answer: outer ``$``, trailing period, surrounding spaces.

    >>> clean_answer(" $18$. ")
    '18'
    """
    answer = answer.strip()
    for _ in range(3):
        before = answer
        answer = answer.strip().rstrip(".").strip()
        if len(answer) >= 2 and answer[0] == "$" and answer[-1] == "$":
            answer = answer.strip("$")
        answer = re.sub(r"^\\\(|\\\)$", "", answer).strip()
        answer = re.sub(r"^\\\[|\\\]$", "", answer).strip()
        if answer == before:
            break
    return answer


def option_letter(text: str) -> str | None:
    """The option letter written in ``text`` ("C", "(C)", "\\text{(C)}", "C)", "option C"), else None.

    >>> option_letter(r"\\text{(C)}")
    'C'
    """
    text = re.sub(r"\\text(?:bf)?\{([^{}]*)\}", r"\1", text)
    text = clean_answer(text).strip("*").strip()
    match = re.fullmatch(r"(?:option\s*)?[\(\[]?\s*([A-J])\s*[\)\]]?(?:\s*[.:].*)?", text, re.IGNORECASE | re.DOTALL)
    if match and (text[0].isupper() or text[0] in "([" or text.lower().startswith("option")):
        return match.group(1).upper()
    return None
