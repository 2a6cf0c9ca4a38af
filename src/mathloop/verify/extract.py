"""Answer extraction: pull the final answer out of a model response.

The order follows the official Qwen2.5-Math harness (last brace-matched ``\\boxed{}``; else "the answer is ...";
else the last LaTeX math expression; else the whole response when it is one short expression without prose; else the
last number), plus GSM8K's ``#### X`` and a multiple-choice and a multi-answer (OlympiadBench) mode.
Everything here is plain string work: no sympy, no regex that can backtrack badly, safe to run in-process.
"""

from __future__ import annotations

import re

from mathloop.verify.latex import (  # noqa: F401 - re-exported: extract is where callers look for them
    _BOX_COMMANDS,
    _LETTERS,
    box_spans,
    clean_answer,
    final_boxes,
    find_boxes,
    option_letter,
)


# "the answer is", "final answer:", also in Markdown ("**Final Answer**: 11", "**Final Answer:** 11") and as a heading
# with the answer on the next line ("### Final Answer\n11").
_ANSWER_IS = re.compile(
    r"(?:final answer|the answer)[ \t*]*+(?:is\b[ \t*]*+:?|:)[ \t*]*+|final answer[ \t*]*+\n\s*+", re.IGNORECASE
)
# A later sentence that takes the boxed answer back ("Wait, that is not right ... so it is 9").
_RETRACTION = re.compile(
    r"\b(?:wait|actually|oops|mistake|not (?:right|correct)|incorrect|wrong|error|correction|re-?(?:check|consider|do|calculate|evaluate))\b",
    re.IGNORECASE,
)
_PROSE_ONLY = re.compile(r"[A-Za-z ,;:'!?\-]*")
_GSM8K = re.compile(r"####\s*([^\n]+)")
# A number: space-separated thousands first (``1 000``: every group after the first exactly 3 digits), then digits with
# commas, a decimal, a fraction.
_NUMBER = re.compile(
    r"(?<![A-Za-z\d])(?:-?\d{1,3}(?: \d{3})+(?:\.\d+)?(?![\d,]| \d)|-?\d[\d,]*(?:\.\d+)?(?:/\d+(?!\d|\.\d))?|-?\.\d+)(?!\d)"
)
_MC_PATTERNS = (
    # possessive quantifiers: "answer" followed by 1 MB of spaces must not backtrack over every split of them
    re.compile(r"answer\s*+(?:is|:)?+\s*+(?:option\s*+)?+[\(\[]?+\s*+([A-J])\s*+[\)\]]?+(?![A-Za-z])", re.IGNORECASE),
    re.compile(r"^\s*\(?([A-J])\)?\s*[.:)]?\s*$"),
)


def _after_answer_phrase(response: str) -> str | None:
    """Text after the last "the answer is" / "final answer is", up to the end of that line or sentence."""
    matches = list(_ANSWER_IS.finditer(response))
    if not matches:
        return None
    tail = response[matches[-1].end() :].split("\n")[0]
    tail = re.split(r"\.(?:\s|$)", tail)[0]  # sentence end, not a decimal point
    tail = clean_answer(_answer_in_sentence(clean_answer(tail)))
    return tail or None


_MATH_CLOSERS = {"$$": "$$", "\\[": "\\]", "\\(": "\\)", "$": "$"}
_MATH_OPENER = re.compile(r"\$\$|\\\[|\\\(|(?<!\\)\$")
_PROSE_WORD = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{3,}")


def last_math(text: str) -> str | None:
    """The content of the last ``$...$`` / ``$$...$$`` / ``\\(...\\)`` / ``\\[...\\]`` in ``text``, or None.

    One left-to-right scan (linear); an unclosed delimiter ends the scan.

    >>> last_math(r"so $x \\geq 5$ holds, and \\(y=2\\) too")
    'y=2'
    """
    found = None
    i = 0
    while True:
        opening = _MATH_OPENER.search(text, i)  # the next unescaped opener, found by one regex scan
        if opening is None:
            return found
        opener = opening.group()
        closer = _MATH_CLOSERS[opener]
        end = text.find(closer, opening.end())
        while opener == "$" and end > 0 and text[end - 1] == "\\":
            end = text.find(closer, end + 1)  # \$ inside math is a dollar sign
        if end < 0:
            return found
        content = text[opening.end() : end].strip()
        found = content or found
        i = end + len(closer)


_MATH_PIECE = re.compile(r"\$[^$]*\$")
_LIST_GLUE = re.compile(r"(?:[\s,;\"'`\\]|\b(?:and|or)\b)*")


def _answer_in_sentence(sentence: str) -> str:
    """``The largest $n$ is 34`` -> ``34``: a prose sentence after "Final Answer:" gives its last number or math;
    math pieces with only "and"/"or", commas or quotes between them are one list (``$12$ and $13$`` -> ``12,13``)."""
    pieces = _MATH_PIECE.findall(sentence)
    if len(pieces) >= 2 and _LIST_GLUE.fullmatch(_MATH_PIECE.sub(" ", sentence)):
        return ",".join(clean_answer(piece) for piece in pieces)
    if not _PROSE_WORD.search(re.sub(r"\$[^$]*\$|\\[A-Za-z]+|\\text\{[^{}]*\}", " ", sentence)):
        return sentence
    tail = re.split(r"\b(?:is|are|equals|was|be)\b", sentence)[-1]
    return last_math(tail) or _last_number(tail) or sentence


def _last_number(response: str) -> str | None:
    numbers = _NUMBER.findall(response)
    return numbers[-1].rstrip(",") if numbers else None


def _extract_math(response: str, truncated: bool = False, question: str | None = None) -> str | None:
    """The last answer stated: the last box, unless a later statement replaces it (see ``extract_answer``)."""
    spans = box_spans(response)
    if spans:
        after = response[spans[-1][2] :]
        later = _after_answer_phrase(after)
        if later is not None and not _PROSE_ONLY.fullmatch(later):
            return later  # "**Final Answer**: 11" after the last box wins ("the answer is correct" does not)
        retraction = _RETRACTION.search(after)
        if retraction:
            return _value_after(after[retraction.end() :])  # the box was taken back: the new value, or none
        boxes = _distinct([clean_answer(box) for box in final_boxes(response)])
        if boxes:
            return ",".join(boxes)
    phrase = _after_answer_phrase(response)
    if phrase is not None and not (truncated and _unfinished(response, _ANSWER_IS)):
        return phrase
    gsm = _GSM8K.findall(response)
    if gsm and not (truncated and _unfinished(response, _GSM8K)):
        return clean_answer(gsm[-1]) or None
    if truncated:
        return None  # cut at the token limit: no box, no finished answer phrase, no answer (a last number is not one)
    fallback = _fallback(response)
    if fallback is not None and question is not None and copied_from(fallback, question):
        return None  # "6 \times 3" for "What is $6 \times 3$?": the question, not an answer
    return fallback


def _unfinished(response: str, pattern: re.Pattern[str]) -> bool:
    """True when the last match of ``pattern`` is on the response's last line and that line ends without a sentence
    end: a cut response's "The answer is 18" may have gone on as 185."""
    last = None
    for last in pattern.finditer(response):
        pass
    return last is not None and not _LINE_END.search(response, last.end())


_LINE_END = re.compile(r"\n|[.!?](?:\s|$)(?<!\d\.$)")


def _distinct(boxes: list[str]) -> list[str]:
    """The non-empty boxes of one answer; the same value boxed twice (``\\boxed{6} \\boxed{6}``, also ``6`` and
    ``6.0``) is one answer.

    >>> _distinct(["6", "6"]), _distinct(["6", "6.0"]), _distinct(["6", "7"])
    (['6'], ['6'], ['6', '7'])
    """
    from mathloop.verify.equivalence import fast_equivalent  # local: equivalence imports this module

    boxes = [box for box in boxes if box]
    if len(boxes) < 2:
        return boxes
    if len({"".join(box.split()) for box in boxes}) == 1:
        return boxes[:1]  # linear, for any number of boxes
    if len(boxes) <= 8 and all(fast_equivalent(boxes[0], box) is True for box in boxes[1:]):
        return boxes[:1]
    return boxes


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
_HAS_VALUE = re.compile(r"\d|\$|\\\(|\\\[")


def _value_after(text: str) -> str | None:
    """The value of the last sentence of ``text`` that states one ("so it is 9" -> 9), or None.

    >>> _value_after(r" that is not right: $6+3$ is 9, not 8. So it is $9$."), _value_after(" let me re-read. OK.")
    ('9', None)
    """
    for sentence in reversed(_SENTENCE_END.split(text)):
        if _HAS_VALUE.search(sentence):
            tail = re.split(r"\b(?:is|are|equals|was|be|gives|get)\b", sentence)[-1]
            value = last_math(tail) or _last_number(tail) or last_math(sentence) or _last_number(sentence)
            return clean_answer(value) if value else None
    return None


_PLAIN_FRACTION = re.compile(r"-?\\[dt]?frac\{-?\d+\}\{\d+\}|-?\\[dt]?frac\d\d")
_OPERATOR = re.compile(r"[-+*/^=]|\\[A-Za-z]+")


def copied_from(answer: str, question: str) -> bool:
    """True when ``answer`` is an expression (not a plain number) that the question contains as written.

    >>> copied_from(r"6 \\times 3", r"Compute $6\\times 3$."), copied_from("18", "Is it 18?")
    (True, False)
    """
    compact = "".join(answer.split())
    if len(compact) < 3 or not _OPERATOR.search(compact.lstrip("-")) or _NUMBER.fullmatch(compact):
        return False
    if _PLAIN_FRACTION.fullmatch(compact):
        return False  # a number (1/5, \frac{1}{5}) may be the answer and in the question both
    return compact in "".join(question.replace("$", " ").split())


def _fallback(response: str) -> str | None:
    """No box, no answer phrase: a concluding sentence's one number, the last math, the bare response, the last number."""
    conclusion = _conclusion_number(response)
    if conclusion is not None:
        return conclusion
    math = last_math(response)
    if math is not None:
        return clean_answer(math) or None
    if _is_bare_math(response):
        return clean_answer(response) or None  # the whole response is one expression: \frac{10}{9}, 1 000
    return _last_number(response)


_CONCLUSION = re.compile(r"(?:^|(?<=[.!?:\n$])|(?<=\\[)\]]))[ \t]*+(?:Therefore|Thus|Hence|So)\b,?")  # a sentence start
_MATH_OR_BOX = re.compile(r"\$|\\\(|\\\[|\\boxed|\\fbox")


def _conclusion_number(response: str) -> str | None:
    """The number of a concluding sentence ("Therefore, there are 12 ...") written after the last math expression,
    when that sentence holds exactly one number: the answer then, not an intermediate formula before it.

    >>> _conclusion_number(r"We get $d = \\frac{90}{n}$. Therefore, there are 12 sequences. I hope it is correct.")
    '12'
    >>> _conclusion_number(r"Therefore $x = 3$."), _conclusion_number("So 2 cases give 5 ways.")
    (None, None)
    """
    conclusions = list(_CONCLUSION.finditer(response))
    if not conclusions or _MATH_OR_BOX.search(response, conclusions[-1].start()):
        return None
    sentence = re.split(r"[.!?](?:\s|$)", response[conclusions[-1].end() :])[0]
    numbers = _NUMBER.findall(sentence)
    return numbers[0].rstrip(",") if len(numbers) == 1 else None


def _is_bare_math(response: str) -> bool:
    """A short response without prose or line breaks is an answer as written (math-verify reads it whole too)."""
    return len(response) <= 200 and "\n" not in response.strip() and not _PROSE_WORD.search(response)


def _strip_choice_label(choice: str) -> str:
    """``"(A) 12"`` / ``"A. 12"`` / ``"A) 12"`` -> ``"12"``."""
    return re.sub(r"^\s*\(?[A-J]\s*[).:]\s*", "", choice).strip()


def _letter_from_choices(answer: str, choices: list[str]) -> str | None:
    """Map a boxed option text/value back to its letter by comparing normalised strings and numbers."""
    from mathloop.verify.equivalence import fast_equivalent  # local: equivalence imports this module

    for index, choice in enumerate(choices):
        label = re.match(r"^\s*\(?([A-J])\s*[).:]", choice)
        letter = label.group(1) if label else _LETTERS[index]
        if fast_equivalent(_strip_choice_label(choice), answer) is True:
            return letter
    return None


def _extract_mc(response: str, choices: list[str] | None, truncated: bool = False) -> str | None:
    for box in reversed(find_boxes(response)):
        letter = option_letter(box)
        if letter:
            return letter
        if choices:
            letter = _letter_from_choices(clean_answer(box), choices)
            if letter:
                return letter
    for pattern in _MC_PATTERNS[:1]:
        found = pattern.findall(response)
        if found:
            return found[-1].upper()
    if choices:
        phrase = _after_answer_phrase(response)
        if phrase:
            letter = _letter_from_choices(phrase, choices)
            if letter:
                return letter
    if truncated:
        return None  # a letter on the last line of a cut response is not an answer
    lines = [line for line in response.strip().splitlines() if line.strip()]
    if lines:
        match = _MC_PATTERNS[1].match(lines[-1])
        if match:
            return match.group(1).upper()
        tail = re.search(r"(?:^|\s)\(?([A-J])\)?\.?\s*$", lines[-1])
        if tail:
            return tail.group(1).upper()
    return None


def _extract_list(response: str, truncated: bool = False, question: str | None = None) -> str | None:
    """Several final answers (OlympiadBench): the boxes of the paragraph holding the last box, comma-joined."""
    last_box = max(response.rfind(cmd) for cmd in _BOX_COMMANDS)
    if last_box < 0:
        return _extract_math(response, truncated, question)
    paragraph_start = response.rfind("\n\n", 0, last_box) + 1
    group = [clean_answer(box) for box in find_boxes(response[paragraph_start:])]
    group = [box for box in group if box]
    return ",".join(group) if group else None


def solution_answer(gold: str) -> str:
    """A gold written as a solution states its answer after its last "the final answer is"; any other gold is
    returned as it is (a gold with boxes too: equivalence reads its final boxes). A phrase inside braces
    (``\\text{the answer is } 5``) is part of an answer as written.

    >>> solution_answer(r"So the loss is $28$%. Final Answer: The final answer is $28\\%$. I hope it is correct.")
    '28\\\\%'
    >>> solution_answer(r"\\frac{1}{2}")
    '\\\\frac{1}{2}'
    """
    phrases = list(_ANSWER_IS.finditer(gold)) if "\\boxed" not in gold and "\\fbox" not in gold else []
    if not phrases:
        return gold
    before = gold[: phrases[-1].start()]
    return (_after_answer_phrase(gold) or gold) if before.count("{") == before.count("}") else gold


def extract_answer(response: str, answer_type: str = "math", choices: list[str] | None = None,
                   truncated: bool = False, question: str | None = None) -> str | None:
    """The final answer in ``response``, or None when there is none (the verdict "no_answer").

    ``answer_type``: "math" (last ``\\boxed{}``; "the answer is X"; ``#### X``; last number), "mc" (an option letter;
    a boxed option text is mapped to its letter with ``choices``), "list" (every box of the final paragraph, comma-joined).

    The last answer stated counts: a final-answer statement after the last box ("**Final Answer**: 11") replaces it, and
    so does a retraction after it ("Wait, that is not right ... so it is 9": the new value, or no answer without one);
    the same value boxed twice is one answer. ``truncated`` (the response stopped at the token limit, finish reason
    "length"): only a box, an answer phrase or ``####`` give an answer, no fallback. ``question``: a fallback answer
    that is only an expression copied from the question is no answer.

    >>> extract_answer(r"So the answer is $\\boxed{\\frac{1}{2}}$.")
    '\\\\frac{1}{2}'
    >>> extract_answer("The answer is (C).", "mc")
    'C'
    >>> extract_answer(r"$x=\\boxed{1}$ and $y=\\boxed{2}$", "list")
    '1,2'
    """
    if not response:
        return None
    if answer_type == "mc":
        return _extract_mc(response, choices, truncated)
    if answer_type == "list":
        return _extract_list(response, truncated, question)
    return _extract_math(response, truncated, question)
