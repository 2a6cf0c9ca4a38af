"""Reward-model training data from graded samples (method step 3), decontaminated against benchmarks with
`mathloop.data.decontaminate`.

Per problem: correct responses are positives, incorrect or unanswered ones negatives; problems whose responses are
all correct or all wrong are dropped (there is no pair to learn from); each kept problem gives one group of at most
`group_size` responses with both labels, balanced so the majority label holds at most `max_ratio` times the
minority count. Responses from other models (`fill`) complete a side the main samples are short of, which is the
paper's "add responses of other model versions/sizes". Every dropped problem is reported with a reason.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from mathloop.data.decontaminate import ContaminationIndex
from mathloop.records import Sample


@dataclass
class RMGroup:
    """The responses to one problem that the listwise loss compares: `labels[i]` is True when response i is
    correct. `prompts[i]` is the prompt response i was generated from (models of different families format the
    same problem differently)."""

    problem_id: str
    prompts: list[str]
    responses: list[str]
    labels: list[bool]
    models: list[str] = field(default_factory=list)


@dataclass
class RMDataReport:
    """What `build_rm_groups` kept and dropped, for the run log."""

    groups: int = 0
    positives: int = 0
    negatives: int = 0
    dropped: dict[str, str] = field(default_factory=dict)  # problem_id -> reason
    contaminated_samples: int = 0
    ungraded_samples: int = 0
    duplicate_samples: int = 0

    def reasons(self) -> Counter:
        return Counter(self.dropped.values())


def build_rm_groups(samples: Iterable[Sample], group_size: int = 6, max_ratio: float | None = 2.0,
                    fill: Iterable[Sample] = (), test_texts: Sequence[str] | ContaminationIndex | None = None,
                    seed: int = 0) -> tuple[list[RMGroup], RMDataReport]:
    """Group graded samples per problem into listwise RM groups; returns the groups and a report.

    The minority label of a problem contributes up to `group_size // 2` responses, the majority label fills the
    group up to `group_size` but never beyond `ceil(max_ratio * minority)` (None: no cap). Which responses are
    taken is random but fixed by `seed` and the problem id; main samples are used before `fill` samples.
    The choice does not depend on the order of the input. Samples without a verdict are skipped; duplicate
    responses to one problem count once. With `test_texts`,
    samples whose question/prompt or response is contaminated (13-gram + LCS rule) are removed first.
    """
    if group_size < 2:
        raise ValueError(f"group_size must be at least 2 (one positive and one negative), got {group_size}")
    if max_ratio is not None and max_ratio < 1:
        raise ValueError(f"max_ratio must be >= 1 (or None for no cap), got {max_ratio}")
    report = RMDataReport()
    index = test_texts if isinstance(test_texts, ContaminationIndex) or test_texts is None \
        else ContaminationIndex.from_texts([(f"test/{i}", text) for i, text in enumerate(test_texts)])
    pools: dict[str, tuple[list[Sample], list[Sample]]] = {}  # problem_id -> (main, fill)
    for which, source in ((0, samples), (1, fill)):
        for s in source:
            pools.setdefault(s.problem_id, ([], []))[which].append(s)

    groups = []
    for problem_id, (main, extra) in pools.items():
        if not main:
            continue  # fill samples only complete problems the main samples have
        rng = random.Random(f"{seed}:{problem_id}")
        sides: dict[bool, list[Sample]] = {True: [], False: []}
        seen: set[str] = set()
        for part in (main, extra):
            part = sorted(part, key=lambda s: (s.model, s.sample_index, s.response))  # input order must not matter
            rng.shuffle(part)
            for s in part:
                if s.verdict is None:
                    report.ungraded_samples += 1
                    continue
                key = s.response.strip()
                if key in seen:
                    report.duplicate_samples += 1
                    continue
                seen.add(key)
                if index is not None and (index.match(s.question or s.prompt, local=True)
                                          or index.match(s.response, local=True)):
                    report.contaminated_samples += 1
                    continue
                sides[s.verdict == "correct"].append(s)
        if not sides[True] or not sides[False]:
            report.dropped[problem_id] = "all correct" if sides[True] else "all wrong" if sides[False] \
                else "no usable samples"
            continue
        minority_label = len(sides[True]) <= len(sides[False])
        n_minority = min(len(sides[minority_label]), group_size // 2)
        n_majority = min(len(sides[not minority_label]), group_size - n_minority)
        if max_ratio is not None:
            n_majority = min(n_majority, math.ceil(max_ratio * n_minority))
        chosen = [(s, minority_label) for s in sides[minority_label][:n_minority]] + \
                 [(s, not minority_label) for s in sides[not minority_label][:n_majority]]
        rng.shuffle(chosen)
        groups.append(RMGroup(problem_id=problem_id, prompts=[s.prompt for s, _ in chosen],
                              responses=[s.response for s, _ in chosen], labels=[y for _, y in chosen],
                              models=[s.model for s, _ in chosen]))
        report.positives += sum(y for _, y in chosen)
        report.negatives += sum(not y for _, y in chosen)
    report.groups = len(groups)
    return groups, report


def split_groups(groups: list[RMGroup], heldout_fraction: float, seed: int = 0) -> tuple[list[RMGroup],
                                                                                         list[RMGroup]]:
    """Split into (train, held-out) by problem, at random but fixed by `seed`; at least one of each when the
    fraction is positive and there are two or more groups."""
    if not 0 <= heldout_fraction < 1:
        raise ValueError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}")
    order = sorted(groups, key=lambda g: g.problem_id)
    random.Random(seed).shuffle(order)
    n_heldout = round(heldout_fraction * len(order))
    if heldout_fraction > 0 and len(order) >= 2:
        n_heldout = min(max(n_heldout, 1), len(order) - 1)
    return order[n_heldout:], order[:n_heldout]
