"""`mathloop corpus build`: a math pre-training corpus from web documents, as datatrove pipelines.

  classifier  fastText math classifier from seed positives and negatives, widened by iterative recall
              (`mathloop.corpus.classifier`); trained once per output folder, reused on a re-run
  filter      read the inputs (`mathloop.corpus.readers`) -> HTML to text -> math classifier -> decontamination
              against every benchmark (`mathloop.corpus.decontam`) -> write <out>/filtered/ -> MinHash signatures
  buckets     MinHash duplicate pairs, one task per bucket (`mathloop.corpus.dedup`)
  cluster     duplicate clusters, one kept per cluster
  final       drop the duplicates -> quality score by a small model (`mathloop.corpus.quality`, when
              `quality_model` is set; after deduplication, so no duplicate is scored) -> write <out>/corpus/

Each removed document is written, with its reason in its metadata, under <out>/removed/<step>/; each stage's
datatrove logs, statistics and completion markers under <out>/logs/<stage>/. A killed run resumes where it
stopped when run again (datatrove skips the tasks it marked complete). <out>/stats.json and stats.md hold, per step,
the documents in, kept and removed (with the reasons) and documents per second; `mathloop report <out>` shows them.

The executor is datatrove's: `local` (processes on this machine, the default), `slurm` (an sbatch array job per
stage, chained by dependencies; give `executor_args` such as partition and time) or `ray` (a Ray cluster).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mathloop.config import positive_int
from mathloop.corpus.classifier import ClassifierConfig
from mathloop.corpus.dedup import DedupSettings

log = logging.getLogger(__name__)

EXECUTORS = ("local", "slurm", "ray")
STAGES = ("filter", "buckets", "cluster", "final")


@dataclass
class CorpusConfig(ClassifierConfig):
    """Every setting of `mathloop corpus build` (YAML keys use these names); the classifier's fields are
    `ClassifierConfig`'s."""

    inputs: list[str] = field(default_factory=list, metadata={"flags": ("--input",), "action": "append",
        "help": "a .jsonl[.gz] / .parquet / .warc[.gz] / .wet[.gz] file, a folder of them, or "
                "hf:<dataset id>[:config][@split] (streamed); repeat for several"})
    out: str = field(default="", metadata={"help": "output folder (re-running resumes)"})
    positives: list[str] = field(default_factory=list, metadata={"action": "append",
        "help": "math text file (JSONL \"text\" or one document a line); repeat for several"})
    negatives: list[str] = field(default_factory=list, metadata={"action": "append",
        "help": "non-math text file, same forms"})
    benchmark_seeds: bool = field(default=True, metadata={"help": "the benchmarks' training splits are seed positives"})
    eval_file: str | None = field(default=None, metadata={
        "help": "labelled JSONL (text, label: math|other) for the classifier's precision/recall"})
    classifier_model: str | None = field(default=None, metadata={
        "help": "a trained fastText model.bin (no training)"})
    data_dir: str | None = field(default=None, metadata={
        "help": "benchmark folder (default: $MATHLOOP_DATA_DIR, else the packaged data)"})
    text_key: str = field(default="text", metadata={"help": "the text field of JSONL, Parquet and Hub rows"})
    limit: int = field(default=-1, metadata={
        "help": "documents per reader (-1: all), for a first look at a big dump"})
    decontaminate: bool = field(default=True, metadata={"flags": ("--no-decontaminate",), "action": "store_false",
        "help": "skip decontamination (13-gram + LCS against every available benchmark's test split)"})
    decontaminate_benchmarks: list[str] | None = field(default=None, metadata={
        "help": "only these benchmarks (None: every available one)"})
    dedup: bool = field(default=True, metadata={"flags": ("--no-dedup",), "action": "store_false",
        "help": "skip MinHash near-duplicate removal"})
    minhash_ngrams: int = field(default=5, metadata={"help": "dedup: word n-gram length of the MinHash shingles"})
    minhash_buckets: int = field(default=14, metadata={"help": "dedup: MinHash LSH buckets"})
    minhash_hashes_per_bucket: int = field(default=8, metadata={"help": "dedup: hashes per MinHash bucket"})
    quality_model: str | None = field(default=None, metadata={
        "help": "small model for quality scores (default, smollm2, a folder); off if unset"})
    quality_threshold: float = field(default=0.5, metadata={"help": "P(yes) a document needs"})
    quality_batch_size: int = field(default=8, metadata={"help": "quality model: documents per forward batch"})
    executor: str = field(default="local", metadata={"choices": list(EXECUTORS), "help": "datatrove executor"})
    tasks: int = field(default=1, metadata={"type": positive_int,
        "help": "parallel tasks of the filter and final stages (input files are sharded over them)"})
    workers: int = field(default=1, metadata={"type": positive_int, "help": "local executor: processes at once"})
    executor_args: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "slurm: partition, time, ...; ray: cpus_per_task..."})

    def validate(self) -> None:
        super().validate()
        if not self.inputs:
            raise ValueError("corpus build: give at least one input (--input FILE|FOLDER|hf:DATASET)")
        if not self.out:
            raise ValueError("corpus build: give --out (the output folder)")
        if self.executor not in EXECUTORS:
            raise ValueError(f"corpus build: executor must be one of {', '.join(EXECUTORS)}, got {self.executor!r}")
        for name in ("tasks", "workers", "minhash_ngrams", "minhash_buckets", "minhash_hashes_per_bucket",
                     "quality_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"corpus build: {name} must be >= 1, got {getattr(self, name)}")
        if self.executor == "slurm":
            missing = [key for key in ("time", "partition") if key not in self.executor_args]
            if missing:
                raise ValueError(f"corpus build: the slurm executor needs executor_args {', '.join(missing)} "
                                 f"(e.g. executor_args: {{partition: cpu, time: '10:00:00'}})")
        if not 0 <= self.quality_threshold <= 1:
            raise ValueError(f"corpus build: quality_threshold must be in [0, 1], got {self.quality_threshold}")
        for key in ("positives", "negatives"):
            for path in getattr(self, key):
                if not Path(path).is_file():
                    raise ValueError(f"corpus build: {key} file {path} does not exist")
        if self.classifier_model and not Path(self.classifier_model).is_file():
            raise ValueError(f"corpus build: classifier_model {self.classifier_model} does not exist")
        if self.eval_file and not Path(self.eval_file).is_file():
            raise ValueError(f"corpus build: eval_file {self.eval_file} does not exist")

    def classifier(self) -> ClassifierConfig:
        names = [f.name for f in dataclasses.fields(ClassifierConfig)]
        return ClassifierConfig(**{name: getattr(self, name) for name in names})

    def dedup_settings(self) -> DedupSettings:
        return DedupSettings(self.minhash_ngrams, self.minhash_buckets, self.minhash_hashes_per_bucket)


# ---- the classifier ---------------------------------------------------------------------------------------------

def input_documents(config: CorpusConfig, n: int) -> list[tuple[str, str | None]]:
    """The first `n` input documents as (text, url), read in this process (the recall pool)."""
    from mathloop.corpus.readers import html_to_text, looks_like_html, make_readers

    docs: list[tuple[str, str | None]] = []
    for source in config.inputs:
        for reader in make_readers(source, config.text_key, config.limit):
            for doc in itertools.islice(reader.run(None, 0, 1), n - len(docs)):
                text = html_to_text(doc.text) if looks_like_html(doc.text) else doc.text
                docs.append((text, doc.metadata.get("url")))
            if len(docs) >= n:
                return docs
    return docs


def prepare_classifier(config: CorpusConfig, out: Path) -> dict[str, Any]:
    """The classifier this run filters with: `classifier_model`, the one an earlier run in `out` trained, or a new
    one (seed round + recall rounds). Returns its report (written to <out>/classifier/report.json)."""
    from mathloop.corpus.classifier import evaluate_classifier, read_texts, seed_positives, train_with_recall
    from mathloop.runs import read_json, write_json

    folder = out / "classifier"
    report_path = folder / "report.json"
    if config.classifier_model:
        report: dict[str, Any] = {"model": config.classifier_model, "trained": False}
    elif report_path.exists():
        return read_json(report_path)
    else:
        started = time.perf_counter()
        seeds = seed_positives(config.data_dir, config.max_seed_positives, config.seed) if config.benchmark_seeds else []
        user_positives = [t for path in config.positives for t in read_texts(path)]
        negatives = [t for path in config.negatives for t in read_texts(path)]
        pool = input_documents(config, config.pool_size)
        recall = train_with_recall(seeds + user_positives, negatives, pool, folder, config.classifier())
        report = {"model": recall.model, "trained": True, "seed_positives": {"benchmarks": len(seeds),
                  "user": len(user_positives)}, "user_negatives": len(negatives), "rounds": recall.rounds,
                  "seconds": round(time.perf_counter() - started, 2)}
    if config.eval_file:
        rows = [json.loads(line) for line in Path(config.eval_file).read_text(encoding="utf-8").splitlines()
                if line.strip()]
        bad = [i for i, r in enumerate(rows, 1) if not isinstance(r.get("text"), str) or r.get("label") not in
               ("math", "other")]
        if bad:
            raise ValueError(f"{config.eval_file}:{bad[0]}: expected \"text\" and \"label\" (math or other)")
        texts, labels = [r["text"] for r in rows], [r["label"] == "math" for r in rows]
        report["held_out"] = evaluate_classifier(report["model"], texts, labels, config.threshold)
        if report.get("rounds"):
            report["held_out_by_round"] = [
                {"round": r["round"], **evaluate_classifier(r["model"], texts, labels, config.threshold)}
                for r in report["rounds"]]
    folder.mkdir(parents=True, exist_ok=True)
    write_json(report_path, report)
    return report


# ---- the pipelines ----------------------------------------------------------------------------------------------

def _writer(folder: Path):
    from datatrove.pipeline.writers import JsonlWriter

    return JsonlWriter(str(folder), output_filename="${rank}.jsonl.gz")


def stage_pipelines(config: CorpusConfig, out: Path, classifier_model: str) -> dict[str, list]:
    """The datatrove steps of each stage (see the module docstring)."""
    from mathloop.corpus import dedup
    from mathloop.corpus.classifier import math_classifier_filter
    from mathloop.corpus.decontam import decontamination_filter
    from mathloop.corpus.quality import quality_filter
    from mathloop.corpus.readers import html_to_text_step, make_readers, rank_file_reader

    removed = out / "removed"
    minhash = out / "minhash"
    settings = config.dedup_settings()
    readers = [r for source in config.inputs for r in make_readers(source, config.text_key, config.limit)]
    filtering = [*readers, html_to_text_step(),
                 math_classifier_filter(classifier_model, config.threshold, _writer(removed / "classifier"))]
    if config.decontaminate:
        filtering.append(decontamination_filter(config.data_dir, config.decontaminate_benchmarks,
                                                exclusion_writer=_writer(removed / "decontaminate")))
    filtering.append(_writer(out / "filtered"))
    final = [rank_file_reader(out / "filtered")]
    stages: dict[str, list] = {}
    if config.dedup:
        filtering.append(dedup.signature_step(minhash, settings))
        stages = {"filter": filtering, "buckets": [dedup.bucket_step(minhash, settings)],
                  "cluster": [dedup.cluster_step(minhash, settings)]}
        final.append(dedup.filter_step(minhash, _writer(removed / "dedup")))
    else:
        stages = {"filter": filtering}
    if config.quality_model:
        final.append(quality_filter(config.quality_model, config.quality_threshold, config.quality_batch_size,
                                    _writer(removed / "quality")))
    final.append(_writer(out / "corpus"))
    stages["final"] = final
    return stages


def _executors(config: CorpusConfig, out: Path, stages: dict[str, list]) -> list:
    tasks = {"filter": config.tasks, "buckets": config.minhash_buckets, "cluster": 1, "final": config.tasks}
    executors: list = []
    for name, pipeline in stages.items():
        common = {"pipeline": pipeline, "tasks": tasks[name], "logging_dir": str(out / "logs" / name),
                  "depends": executors[-1] if executors else None}
        if config.executor == "local":
            from datatrove.executor import LocalPipelineExecutor

            workers = min(config.workers, tasks[name])
            executors.append(LocalPipelineExecutor(**common, workers=workers))
        elif config.executor == "slurm":
            from datatrove.executor import SlurmPipelineExecutor

            args = {"job_name": f"corpus-{name}", **config.executor_args}
            executors.append(SlurmPipelineExecutor(**common, **args))
        else:
            from datatrove.executor import RayPipelineExecutor

            executors.append(RayPipelineExecutor(**common, **config.executor_args))
    return executors


def build_corpus(config: CorpusConfig) -> dict[str, Any]:
    """Train (or reuse) the classifier, run the stages, and write stats.json / stats.md; returns the statistics."""
    from mathloop.runs import lock_run_dir, write_json

    config.validate()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    with lock_run_dir(out):
        write_json(out / "config.json", dataclasses.asdict(config))
        classifier = prepare_classifier(config, out)
        stages = stage_pipelines(config, out, classifier["model"])
        executors = _executors(config, out, stages)
        started = time.perf_counter()
        executors[-1].run()
        if config.executor == "slurm":  # submitted: the statistics come when the jobs are done
            return {"submitted": list(stages), "out": str(out)}
        stats = collect_stats(out, list(stages))
        stats["classifier"] = {k: v for k, v in classifier.items() if k in ("model", "held_out", "held_out_by_round")}
        stats["seconds"] = round(time.perf_counter() - started, 2)
        write_json(out / "stats.json", stats)
        (out / "stats.md").write_text(stats_markdown(stats), encoding="utf-8")
        return stats


# ---- statistics -------------------------------------------------------------------------------------------------

DROP_REASONS = {"DEDUP: 🎯 MinHash stage 4": "near_duplicate"}  # steps that drop without naming a reason


def _count(stat: Any) -> int:
    return int(stat.get("total", 0)) if isinstance(stat, dict) else int(stat or 0)


def collect_stats(out: Path, stages: list[str]) -> dict[str, Any]:
    """Per step: documents in, kept, removed by reason, seconds and documents per second, from datatrove's merged
    stats.json of each stage (<out>/logs/<stage>/stats.json)."""
    from mathloop.runs import read_json

    steps: list[dict[str, Any]] = []
    for stage in stages:
        path = out / "logs" / stage / "stats.json"
        if not path.exists():
            continue
        for step in read_json(path):
            name = step.get("name", "")
            short = name.split(" - ", 1)[-1] if " - " in name else name
            values = step.get("stats", {})
            seconds = float((step.get("time_stats") or {}).get("total", 0.0))
            entry: dict[str, Any] = {"stage": stage, "step": short, "seconds": round(seconds, 3)}
            if "forwarded" in values or "dropped" in values:
                total = _count(values.get("total"))
                kept = _count(values.get("forwarded"))
                reasons = {k[len("dropped_"):]: _count(v) for k, v in values.items() if k.startswith("dropped_")}
                if total - kept and not reasons:
                    reasons = {DROP_REASONS.get(short, "removed"): total - kept}
                entry.update({"in": total, "kept": kept, "removed": total - kept, "reasons": reasons})
                entry["docs_per_s"] = round(total / seconds, 1) if seconds > 0 else None
            elif "total" in values or "documents" in values:
                entry["documents"] = _count(values.get("documents", values.get("total")))
                entry["docs_per_s"] = round(entry["documents"] / seconds, 1) if seconds > 0 else None
            steps.append(entry)
    corpus = out / "corpus"
    kept = sum(1 for f in corpus.glob("*.jsonl.gz") for _ in _lines(f)) if corpus.is_dir() else 0
    return {"steps": steps, "documents_out": kept, "corpus": str(corpus)}


def _lines(path: Path):
    import gzip

    with gzip.open(path, "rt", encoding="utf-8") as f:
        yield from f


def stats_markdown(stats: dict[str, Any]) -> str:
    lines = ["| stage | step | in | kept | removed | reasons | docs/s |", "|---|---|---:|---:|---:|---|---:|"]
    for s in stats["steps"]:
        if "in" not in s and "documents" not in s:
            continue
        reasons = ", ".join(f"{k}: {v}" for k, v in s.get("reasons", {}).items())
        lines.append(f"| {s['stage']} | {s['step']} | {s.get('in', s.get('documents', ''))} | {s.get('kept', '')} | "
                     f"{s.get('removed', '')} | {reasons} | {s.get('docs_per_s') or ''} |")
    lines.append(f"\nDocuments in the corpus: {stats['documents_out']} ({stats['corpus']})")
    held = stats.get("classifier", {}).get("held_out")
    if held:
        lines.append(f"\nClassifier on the held-out set: precision {held['precision']}, recall {held['recall']}, "
                     f"F1 {held['f1']} at threshold {held['threshold']}")
    return "\n".join(lines) + "\n"
