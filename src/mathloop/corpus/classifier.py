"""The math classifier: fastText, trained from seed positives and negatives, then widened by iterative recall.

Seed positives are the training splits of the benchmarks (`seed_positives`: every benchmark with a train split in
the data folder or the packaged data; question and gold answer) and any math text the user gives; negatives are
text the user gives plus a random sample of the input itself (web pages are mostly not math, so a random sample is
a cheap, slightly noisy negative set, as the paper's recall starts from).

Iterative recall (`train_with_recall`): after each round the classifier scores a pool of input documents; those at
or above `recall_threshold` join the positives and those below `negative_threshold` replace the random negatives,
and the classifier is trained again. Recall is widened by domain as the paper does by URL: a domain where at least
`domain_share` of the pool's documents are hits lends its other documents with a score of at least
`domain_threshold` to the positives. Each round's model and counts are kept (classifier/round-N/), so a user sees
what recall added.

fastText sees `classifier_text(text)`: lowercase words, LaTeX command names, symbols as tokens and every number as
"0", so "$3x + 5 = 20$" and "$7y - 2 = 12$" read alike.
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence
from urllib.parse import urlparse

log = logging.getLogger(__name__)

LABEL_MATH, LABEL_OTHER = "__label__math", "__label__other"
MAX_TOKENS = 1500  # a document's first tokens are enough to tell math from not
_TOKEN = re.compile(r"\\[a-z]+|[a-z]+|\d+(?:\.\d+)?|[^\s\w]")


def classifier_text(text: str) -> str:
    """The one-line token string fastText trains and predicts on.

    >>> classifier_text(r"Solve $3x + 5 = 20$, then \\frac{1}{2}.")
    'solve $ 0 x + 0 = 0 $ , then \\\\frac { 0 } { 0 } .'
    """
    tokens = _TOKEN.findall(text.lower())[:MAX_TOKENS]
    return " ".join("0" if t[0].isdigit() else t for t in tokens)


@dataclass
class ClassifierConfig:
    """Training and recall settings (recorded in the run's classifier report)."""

    threshold: float = field(default=0.5, metadata={"help": "P(math) a document needs (the filter's cut)"})
    rounds: int = field(default=2, metadata={
        "help": "iterative recall rounds after the seed classifier (0: the seed classifier only)"})
    recall_threshold: float = field(default=0.9, metadata={
        "help": "P(math) at which a pool document joins the positives"})
    negative_threshold: float = field(default=0.1, metadata={
        "help": "P(math) below which a pool document is a negative for the next round"})
    domain_share: float = field(default=0.5, metadata={
        "help": "share of a domain's pool documents that must be hits to widen recall there"})
    domain_min_docs: int = field(default=3, metadata={"help": "domains with fewer pool documents are not widened"})
    domain_threshold: float = field(default=0.5, metadata={
        "help": "score a document of a widened domain needs to join the positives"})
    # -1: 2000 when no negatives are given, else none (a sample of a web dump is mostly not math; of a math-rich
    # input it is not)
    random_negatives: int = field(default=-1, metadata={
        "help": "input documents sampled as negatives for the seed round (-1: 2000 when no --negatives are given, "
                "else none)"})
    pool_size: int = field(default=20000, metadata={"help": "input documents scored in each recall round"})
    max_seed_positives: int = field(default=20000, metadata={"help": "benchmark training items used as seed positives"})
    epoch: int = field(default=10, metadata={"help": "classifier: fastText training epochs"})
    lr: float = field(default=0.1, metadata={"help": "classifier: fastText learning rate"})
    word_ngrams: int = field(default=2, metadata={"help": "classifier: fastText word n-gram length"})
    dim: int = field(default=64, metadata={"help": "classifier: fastText vector size"})
    buckets: int = field(default=200_000, metadata={
        "help": "hashed word n-gram rows (fastText's default 2M makes a 500 MB model at dim 64)"})
    seed: int = field(default=0, metadata={"help": "classifier: seed of sampling and training"})

    def validate(self) -> None:
        for name in ("threshold", "recall_threshold", "negative_threshold", "domain_share", "domain_threshold"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"corpus: {name} must be in [0, 1], got {getattr(self, name)}")
        if self.rounds < 0:
            raise ValueError(f"corpus: rounds must be >= 0, got {self.rounds}")
        for name in ("epoch", "word_ngrams", "dim", "pool_size", "buckets"):
            if getattr(self, name) < 1:
                raise ValueError(f"corpus: {name} must be >= 1, got {getattr(self, name)}")


def seed_positives(data_dir: str | Path | None = None, limit: int = 20000, seed: int = 0) -> list[str]:
    """Question + answer texts of every benchmark training split available (never a test split)."""
    from mathloop.data.benchmarks import available_benchmarks, load_benchmark

    names, _ = available_benchmarks(data_dir, "train")
    texts = [f"{p.question}\nAnswer: {p.gold}" if p.gold else p.question
             for name in names for p in load_benchmark(name, data_dir, "train")]
    random.Random(seed).shuffle(texts)
    return texts[:limit]


def read_texts(path: str | Path) -> list[str]:
    """Texts from a file: JSONL rows with a "text" field, or plain text with one document a line."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    if path.name.endswith(".jsonl"):
        texts = []
        for lineno, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                texts.append(str(json.loads(line)["text"]))
            except (ValueError, KeyError, TypeError):
                raise ValueError(f"{path}:{lineno}: expected a JSON object with a \"text\" field") from None
        return texts
    return [line for line in lines if line.strip()]


class MathClassifier:
    """A trained fastText model: `score(texts)` is each text's probability of being math."""

    def __init__(self, path: str | Path):
        import fasttext

        self.path = str(path)
        self.model = fasttext.load_model(self.path)

    def score(self, texts: Sequence[str]) -> list[float]:
        if not texts:
            return []
        labels, probs = self.model.predict([classifier_text(t) for t in texts], k=-1)
        return [float(dict(zip(ls, ps)).get(LABEL_MATH, 0.0)) for ls, ps in zip(labels, probs)]


def train_classifier(positives: Iterable[str], negatives: Iterable[str], folder: str | Path,
                     config: ClassifierConfig = ClassifierConfig()) -> Path:
    """Train fastText on the texts; writes folder/train.txt and folder/model.bin and returns the model's path."""
    import fasttext

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = [f"{LABEL_MATH} {classifier_text(t)}" for t in positives]
    rows += [f"{LABEL_OTHER} {classifier_text(t)}" for t in negatives]
    counts = Counter(row.split(" ", 1)[0] for row in rows)
    if not counts[LABEL_MATH] or not counts[LABEL_OTHER]:
        raise ValueError(f"corpus: the classifier needs positives and negatives, got {counts[LABEL_MATH]} "
                         f"positives and {counts[LABEL_OTHER]} negatives (give --positives / --negatives, or "
                         f"input documents to sample negatives from)")
    random.Random(config.seed).shuffle(rows)
    (folder / "train.txt").write_text("\n".join(rows) + "\n", encoding="utf-8")
    model = fasttext.train_supervised(input=str(folder / "train.txt"), epoch=config.epoch, lr=config.lr,
                                      wordNgrams=config.word_ngrams, dim=config.dim, bucket=config.buckets, minCount=1, seed=config.seed,
                                      thread=1, verbose=0)
    model.save_model(str(folder / "model.bin"))
    return folder / "model.bin"


def domain(url: str | None) -> str:
    """The host of a URL, without "www." ("" when there is none).

    >>> domain("https://www.mathhelp.example/algebra/1")
    'mathhelp.example'
    """
    host = urlparse(url or "").netloc.lower()
    return host[4:] if host.startswith("www.") else host


def recall_round(scores: Sequence[float], urls: Sequence[str | None], config: ClassifierConfig
                 ) -> tuple[list[int], list[int], list[str]]:
    """Indices of the pool's new positives and negatives, and the domains widened, from the pool's scores.

    >>> cfg = ClassifierConfig(recall_threshold=0.9, negative_threshold=0.1, domain_min_docs=2, domain_threshold=0.5)
    >>> recall_round([0.95, 0.6, 0.05, 0.3], ["http://a.x/1", "http://a.x/2", "http://b.x/1", "http://b.x/2"], cfg)
    ([0, 1], [2], ['a.x'])
    """
    by_domain: dict[str, list[int]] = defaultdict(list)
    for i, url in enumerate(urls):
        by_domain[domain(url)].append(i)
    widened = sorted(d for d, idx in by_domain.items() if d and len(idx) >= config.domain_min_docs
                     and sum(scores[i] >= config.recall_threshold for i in idx) / len(idx) >= config.domain_share)
    wide = {i for d in widened for i in by_domain[d]}
    positives = [i for i, s in enumerate(scores)
                 if s >= config.recall_threshold or (i in wide and s >= config.domain_threshold)]
    negatives = [i for i, s in enumerate(scores) if s < config.negative_threshold and i not in wide]
    return positives, negatives, widened


@dataclass
class RecallReport:
    rounds: list[dict[str, Any]] = field(default_factory=list)
    model: str = ""


def train_with_recall(seeds: list[str], negatives: list[str], pool: list[tuple[str, str | None]],
                      folder: str | Path, config: ClassifierConfig = ClassifierConfig()) -> RecallReport:
    """The seed classifier, then `config.rounds` recall rounds over `pool` ((text, url) pairs of input documents);
    `negatives` are the user's, to which a random sample of the pool is added in the seed round
    (`random_negatives`). Returns what each
    round trained on and added; the last round's model is the classifier."""
    config.validate()
    folder = Path(folder)
    rng = random.Random(config.seed)
    wanted = config.random_negatives if config.random_negatives >= 0 else (0 if negatives else 2000)
    random_negatives = [text for text, _ in rng.sample(pool, min(wanted, len(pool)))]
    positives, round_negatives = list(seeds), negatives + random_negatives
    report = RecallReport()
    for round_index in range(config.rounds + 1):
        path = train_classifier(positives, round_negatives, folder / f"round-{round_index}", config)
        entry: dict[str, Any] = {"round": round_index, "positives": len(positives),
                                 "negatives": len(round_negatives), "model": str(path)}
        report.rounds.append(entry)
        report.model = str(path)
        if round_index == config.rounds:
            break
        scored = rng.sample(pool, min(config.pool_size, len(pool)))
        scores = MathClassifier(path).score([text for text, _ in scored])
        hits, lows, widened = recall_round(scores, [url for _, url in scored], config)
        entry.update({"pool": len(scored), "recalled": len(hits), "new_negatives": len(lows),
                      "widened_domains": widened[:50]})
        log.info("recall round %d: %d of %d pool documents recalled, %d domains widened", round_index, len(hits),
                 len(scored), len(widened))
        positives = list(seeds) + [scored[i][0] for i in hits]
        round_negatives = negatives + [scored[i][0] for i in lows]
    return report


def evaluate_classifier(model: str | Path, texts: Sequence[str], labels: Sequence[bool],
                        threshold: float = 0.5) -> dict[str, Any]:
    """Precision, recall and F1 of `model` at `threshold` on labelled texts (True = math); the arithmetic is
    `precision_recall`."""
    scores = MathClassifier(model).score(list(texts))
    return {**precision_recall([s >= threshold for s in scores], labels), "threshold": threshold}


def precision_recall(predicted: Sequence[bool], labels: Sequence[bool]) -> dict[str, Any]:
    """Precision, recall, F1 and the confusion counts.

    >>> precision_recall([True, True, False, False], [True, False, True, False])
    {'precision': 0.5, 'recall': 0.5, 'f1': 0.5, 'tp': 1, 'fp': 1, 'fn': 1, 'tn': 1}
    """
    tp = sum(p and y for p, y in zip(predicted, labels))
    fp = sum(p and not y for p, y in zip(predicted, labels))
    fn = sum(not p and y for p, y in zip(predicted, labels))
    tn = len(labels) - tp - fp - fn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4),
            "tp": tp, "fp": fp, "fn": fn, "tn": tn}


def math_classifier_filter(model: str | Path, threshold: float = 0.5, exclusion_writer=None):
    """The datatrove filter: keeps documents with P(math) >= threshold and writes the score to
    metadata["math_score"]; the fastText model is loaded in the worker on first use, not pickled with the pipeline."""
    from functools import partial

    return score_filter("math classifier", partial(MathClassifier, str(model)), "math_score", "not_math",
                        threshold, 256, exclusion_writer)


def score_filter(name: str, make_scorer, key: str, reason: str, threshold: float, batch_size: int,
                 exclusion_writer=None):
    """A datatrove filter that scores documents in batches with the scorer `make_scorer()` builds (in the worker, on
    first use), writes each score to `metadata[key]` and keeps the documents scoring at least `threshold` (the others
    are excluded with `reason`)."""
    from datatrove.pipeline.filters.base_filter import BaseFilter

    class ScoreFilter(BaseFilter):
        def __init__(self):
            super().__init__(exclusion_writer, batch_size=batch_size)
            self._scorer = None

        def filter_batch(self, batch):
            if self._scorer is None:
                self._scorer = make_scorer()
            results = []
            for doc, score in zip(batch, self._scorer.score([d.text for d in batch])):
                doc.metadata[key] = round(score, 4)
                results.append(True if score >= threshold else (False, reason))
            return results

        def filter(self, doc):
            return self.filter_batch([doc])[0]

    ScoreFilter.name = name  # datatrove names a step's statistics after its class attribute
    return ScoreFilter()
