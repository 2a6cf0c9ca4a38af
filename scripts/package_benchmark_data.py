"""Build mathloop's packaged benchmark data from a folder in the official harness layout (maintainers only).

    python scripts/package_benchmark_data.py /path/to/data   # writes src/mathloop/data/benchmark_data/

Only the sets whose licence allows redistribution are written (gzip, reproducible bytes); every other registered
benchmark is listed in MANIFEST.json under `not_shipped` with the reason. The licence of each set is recorded here,
from the set's own repository or dataset card (the official harness's MIT licence covers its code, not the data).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "src" / "mathloop" / "data" / "benchmark_data"

# name -> (splits, licence, where the licence is stated, attribution)
SHIPPED = {
    "gsm8k": (("test", "train"), "MIT", "https://github.com/openai/grade-school-math (LICENSE)",
              "Copyright (c) 2021 OpenAI; Cobbe et al. 2021, arXiv:2110.14168"),
    "math": (("test",), "MIT", "https://github.com/hendrycks/math (LICENSE)",
             "Copyright (c) 2021 Dan Hendrycks; Hendrycks et al. 2021, arXiv:2103.03874"),
    "math500": (("test",), "MIT", "https://github.com/openai/prm800k (LICENSE)",
                "Copyright (c) 2023 OpenAI; Lightman et al. 2023, arXiv:2305.20050 (MATH problems, MIT)"),
    "mmlu_stem": (("test",), "MIT", "https://github.com/hendrycks/test (LICENSE)",
                  "Copyright (c) 2020 Dan Hendrycks; Hendrycks et al. 2021, arXiv:2009.03300"),
    "svamp": (("test",), "MIT", "https://github.com/arkilpatel/SVAMP (LICENSE)",
              "Copyright (c) 2021 Arkil Patel; Patel et al. 2021, arXiv:2103.07191"),
    "cmath": (("test",), "CC-BY-4.0", "https://github.com/XiaoMi/cmath (README: dataset CC BY 4.0)",
              "Wei et al. 2023, arXiv:2306.16636; the 600-problem release, unmodified"),
    "olympiadbench": (("test",), "Apache-2.0", "https://huggingface.co/datasets/Hothan/OlympiadBench (dataset card)",
                      "He et al. 2024, arXiv:2402.14008; the English text-only math subset, unmodified"),
}

HARNESS_ONLY = "no data licence found; the official harness's MIT licence covers its code, not the data it copies"
NOT_SHIPPED = {
    "minerva_math": "problems from MIT OpenCourseWare (CC BY-NC-SA): non-commercial share-alike terms, unlike "
                    "mathloop's Apache-2.0",
    "college_math": "per-row licences include CC BY-NC-SA and custom no-charge terms (its `license` field)",
    "aime24": "competition problems (c) the Mathematical Association of America; no licence to redistribute",
    "amc23": "competition problems (c) the Mathematical Association of America; no licence to redistribute",
    "asdiv": "licence not verified here (published for non-commercial research use)",
    "aqua": "licence not verified from a stored copy of its repository",
    "mawps": HARNESS_ONLY,
    "carp_en": HARNESS_ONLY,
    "sat_math": HARNESS_ONLY,
    "gaokao2023en": HARNESS_ONLY,
    "cn_middle_school": HARNESS_ONLY,
    "gaokao_math_cloze": HARNESS_ONLY,
    "gaokao_math_qa": HARNESS_ONLY,
    "gaokao2024_I": HARNESS_ONLY,
    "gaokao2024_II": HARNESS_ONLY,
    "gaokao2024_mix": HARNESS_ONLY,
}
NOT_SHIPPED_SPLITS = {"math:train": "MIT, but left out to keep the wheel small (1.8 MB compressed); use --data-dir"}


def main(data_dir: str) -> None:
    root = Path(data_dir)
    source_manifest = {f["file"]: f for f in json.loads((root / "MANIFEST.json").read_text())["files"]}
    entries = []
    for name, (splits, licence, licence_source, attribution) in SHIPPED.items():
        for split in splits:
            file = f"{name}/{split}.jsonl"
            raw = (root / file).read_bytes()
            origin = source_manifest[file]
            commit = origin["source_commit"]
            target = OUT / f"{file}.gz"
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", compresslevel=9, mtime=0,
                                                        filename="") as gz:
                gz.write(raw)
            entries.append({
                "benchmark": name, "split": split, "file": f"{file}.gz",
                "version": f"{origin['source_repo']}@{commit[:12]}",
                "sha256": hashlib.sha256(raw).hexdigest(), "rows": sum(1 for line in raw.splitlines() if line.strip()),
                "bytes": len(raw), "compressed_bytes": target.stat().st_size,
                "source": f"https://github.com/{origin['source_repo']}/blob/{commit}/{origin['source_path']}",
                "note": origin.get("note", ""),
                "licence": licence, "licence_source": licence_source, "attribution": attribution,
            })
    manifest = {
        "about": "benchmark data shipped with mathloop: each file is the gzip of the named source file, byte for "
                 "byte (sha256 and rows are of the uncompressed file); built by scripts/package_benchmark_data.py",
        "files": entries,
        "not_shipped": [{"benchmark": name, "reason": reason} for name, reason in NOT_SHIPPED.items()]
                       + [{"benchmark": key, "reason": reason} for key, reason in NOT_SHIPPED_SPLITS.items()],
    }
    (OUT / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")
    total = sum(e["compressed_bytes"] for e in entries)
    print(f"{len(entries)} files, {total / 1e6:.2f} MB compressed ({sum(e['bytes'] for e in entries) / 1e6:.1f} MB raw)")


if __name__ == "__main__":
    main(sys.argv[1])
