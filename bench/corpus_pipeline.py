"""`mathloop corpus build` on a sample corpus of a chosen size: the classifier's precision and recall on the held-out
split (per recall round), what each step removed (by the sample's kinds), and documents per second per step.

    python bench/corpus_pipeline.py --math 1000 --other 3000 --reposts 200 --quotes 100 --out /tmp/corpus-bench

Prints a Markdown table; the figures are this machine's (name the CPU and the load when quoting them).
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import time
from collections import Counter
from pathlib import Path


def kinds(folder: Path) -> Counter:
    """Documents per sample kind in a folder of datatrove output (WET records keep only the URL, which names it)."""
    counts: Counter = Counter()
    for path in folder.glob("*.jsonl.gz"):
        for line in gzip.open(path, "rt", encoding="utf-8"):
            meta = json.loads(line)["metadata"]
            counts[meta.get("kind") or meta["url"].split("/")[3]] += 1
    return counts


def main() -> None:
    from mathloop.corpus.build import CorpusConfig, build_corpus
    from mathloop.corpus.sample import write_sample_corpus

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--math", type=int, default=1000, help="math pages")
    p.add_argument("--other", type=int, default=3000, help="non-math pages")
    p.add_argument("--reposts", type=int, default=200, help="near-duplicate reposts of math pages")
    p.add_argument("--quotes", type=int, default=100, help="pages quoting a benchmark test problem")
    p.add_argument("--tasks", type=int, default=2, help="datatrove tasks (and local workers)")
    p.add_argument("--quality-model", default=None, help="also score quality with this model (slow on CPU)")
    p.add_argument("--out", default="/tmp/corpus-bench", help="scratch folder (replaced)")
    args = p.parse_args()

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    sample = write_sample_corpus(out / "sample", n_math=args.math, n_other=args.other, n_reposts=args.reposts,
                                 n_quotes=args.quotes)
    config = CorpusConfig(inputs=[str(out / "sample" / "web")], out=str(out / "run"),
                          negatives=[str(out / "sample" / "negatives.txt")],
                          eval_file=str(out / "sample" / "held_out.jsonl"), tasks=args.tasks, workers=args.tasks,
                          quality_model=args.quality_model)
    started = time.perf_counter()
    stats = build_corpus(config)
    total = time.perf_counter() - started
    report = json.loads((out / "run" / "classifier" / "report.json").read_text())
    print(f"input: {sample['input_documents']} documents {sample['kinds']}; held out: {sample['held_out']}")
    print(f"classifier: trained in {report.get('seconds')} s; rounds: " + "; ".join(
        f"round {r['round']}: {r['positives']} positives, {r['negatives']} negatives"
        + (f", recalled {r['recalled']}, widened {len(r['widened_domains'])} domains" if "recalled" in r else "")
        for r in report.get("rounds", [])))
    for r in report.get("held_out_by_round", []):
        print(f"  held out, round {r['round']}: precision {r['precision']}, recall {r['recall']}, F1 {r['f1']}")
    print("\n| step | in | kept | removed (reason) | removed by kind | docs/s |\n|---|---:|---:|---|---|---:|")
    folders = {"FILTER: math classifier": "classifier", "FILTER: decontaminate": "decontaminate",
               "DEDUP: 🎯 MinHash stage 4": "dedup", "FILTER: quality": "quality"}
    for s in stats["steps"]:
        if "in" not in s and "documents" not in s:
            continue
        by_kind = dict(kinds(out / "run" / "removed" / folders[s["step"]])) if s["step"] in folders else ""
        reasons = ", ".join(f"{k}: {v}" for k, v in s.get("reasons", {}).items())
        print(f"| {s['stage']}: {s['step']} | {s.get('in', s.get('documents'))} | {s.get('kept', '')} | {reasons} | "
              f"{by_kind} | {s.get('docs_per_s') or ''} |")
    print(f"\nkept: {stats['documents_out']} {dict(kinds(out / 'run' / 'corpus'))}; "
          f"whole build {total:.1f} s (classifier included)")


if __name__ == "__main__":
    main()
