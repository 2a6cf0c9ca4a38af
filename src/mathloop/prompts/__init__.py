"""Prompts: the official Qwen2.5-Math CoT and TIR instructions, applied through the model's own chat template.

Multiple-choice items list their options as "(A) ...", and the official setting gives multiple-choice sets five
worked examples as earlier chat turns. The examples below are mathloop's own (written for this project); their
answers end the way the CoT instruction asks, in \\boxed{}.
"""

from __future__ import annotations

from mathloop.records import Problem

COT_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
TIR_SYSTEM = ("Please integrate natural language reasoning with programs to solve the problem above, "
              "and put your final answer within \\boxed{}.")
LETTERS = "ABCDEFGHIJ"

MC_FEWSHOT: list[tuple[str, list[str], str, str]] = [
    ("What is the value of $3^4 - 2^5$?", ["17", "49", "81", "113"],
     "$3^4 = 81$ and $2^5 = 32$, so $81 - 32 = 49$.", "B"),
    ("A resistor of 6 ohms carries a current of 2 A. What voltage is across it?", ["3 V", "8 V", "12 V", "36 V"],
     "By Ohm's law $V = IR = 2 \\times 6 = 12$ V.", "C"),
    ("Which of the following is a root of $x^2 - 5x + 6 = 0$?", ["-2", "1", "3", "6"],
     "The polynomial factors as $(x-2)(x-3)$, so the roots are 2 and 3; only 3 is listed.", "C"),
    ("How many moles of water are in 36 g of water? (molar mass 18 g/mol)", ["0.5", "1", "2", "18"],
     "$36 / 18 = 2$ moles.", "C"),
    ("What is the derivative of $\\sin(2x)$?", ["$2\\cos(2x)$", "$\\cos(2x)$", "$-2\\cos(2x)$", "$2\\sin(x)$"],
     "By the chain rule the derivative is $\\cos(2x) \\cdot 2 = 2\\cos(2x)$.", "A"),
]


def format_question(problem: Problem) -> str:
    """The user-turn text of a problem: the question, and its options when it is multiple choice."""
    if not problem.choices:
        return problem.question
    return problem.question + "\n" + format_choices(problem.choices)


def format_choices(choices: list[str]) -> str:
    """
    >>> format_choices(["1", "2"])
    'Answer Choices: (A) 1 (B) 2'
    """
    return "Answer Choices: " + " ".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(choices))


def fewshot_turns(shots: int) -> list[dict[str, str]]:
    """Worked multiple-choice examples as alternating user/assistant turns."""
    turns = []
    for question, choices, reasoning, letter in MC_FEWSHOT[:shots]:
        turns.append({"role": "user", "content": question + "\n" + format_choices(choices)})
        turns.append({"role": "assistant", "content": f"{reasoning} The answer is $\\boxed{{{letter}}}$."})
    return turns


def build_messages(problem: Problem, mode: str = "cot", shots: int = 0, tir_in_user_turn: bool = True
                   ) -> list[dict[str, str]]:
    """Chat messages for one problem in the official format.

    CoT puts the instruction in the system turn. TIR appends its instruction to the user turn by default (as the
    paper's examples show; small models follow it far more often there than in the system turn).
    """
    if mode == "cot":
        messages = [{"role": "system", "content": COT_SYSTEM}]
        question = format_question(problem)
    elif mode == "tir":
        if tir_in_user_turn:
            messages = []
            question = format_question(problem) + "\n" + TIR_SYSTEM
        else:
            messages = [{"role": "system", "content": TIR_SYSTEM}]
            question = format_question(problem)
    else:
        raise ValueError(f"unknown mode '{mode}': use cot or tir")
    if problem.choices and shots:
        messages += fewshot_turns(shots)
    messages.append({"role": "user", "content": question})
    return messages
