"""Checkpoints of mathloop's own training loops (reward model, GRPO): trainable weights, optimizer state, step.

A checkpoint is written to a temporary folder and renamed, so a kill mid-save never leaves a half checkpoint that
resume would pick; the latest `keep` are kept. A resumed run must share the settings named by the loop's resume
keys with the run that wrote the checkpoint, else it is refused with the settings that differ.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch

from mathloop.records import drop_torn_last_line
from mathloop.runs import check_run_record, mark_run_finished, read_json, run_finished, write_json, write_text_atomic


def latest_checkpoint(out: Path) -> Path | None:
    found = sorted(p for p in (out / "checkpoints").glob("step-*") if (p / "state.json").exists())
    return found[-1] if found else None


def save_checkpoint(out: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int, config,
                    keep: int = 2) -> Path:
    """Trainable weights (all of them, or LoRA + head), optimizer state, step and the run's settings."""
    target = out / "checkpoints" / f"step-{step:06d}"
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weights = {name: p.detach().cpu() for name, p in model.named_parameters() if p.requires_grad}
    torch.save(weights, tmp / "trainable.pt")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    write_json(tmp / "state.json", {"step": step, "config": dataclasses.asdict(config)})
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    kept = sorted(p for p in (out / "checkpoints").glob("step-*") if not p.name.endswith(".partial"))
    for old in kept[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, config,
                    resume_keys: Sequence[str]) -> int:
    """Restore weights and optimizer from `path`; return its step. Refuses a checkpoint whose settings differ
    from `config` in any of `resume_keys`."""
    state = read_json(path / "state.json")
    check_run_record(state, config, tuple(resume_keys), what=f"{config.output_dir} holds a run",
                     fix="use a new output_dir")
    weights = torch.load(path / "trainable.pt", map_location="cpu", weights_only=True)
    missing = [n for n, p in model.named_parameters() if p.requires_grad and n not in weights]
    if missing:
        raise ValueError(f"{path}: checkpoint lacks {len(missing)} trainable weights (e.g. {missing[0]})")
    model.load_state_dict(weights, strict=False)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
    return int(state["step"])


def drop_metrics_after(path: Path, step: int) -> None:
    """Forget log lines of steps after the checkpoint a run resumes from: those steps run again."""
    if not path.exists():
        return
    drop_torn_last_line(path)  # a kill mid-line
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in lines if json.loads(line).get("step", 0) <= step]
    if len(kept) < len(lines):
        write_text_atomic(path, "".join(line + "\n" for line in kept))


# ---- final/: the trained model of every trainer (sft, rm, grpo) ----------------------------------------------
# A trainer writes its model into <out>/final.partial (`start_final`) and renames it to <out>/final when it is
# whole (`finish_final`), which also marks the run record finished: final/ existing is the completion marker, and a
# kill mid-save leaves no final/.

def final_done(out: Path) -> bool:
    """Whether the run in `out` has written its final model."""
    return (out / "final").is_dir()


def start_final(out: Path) -> Path:
    """The (empty) folder to write the final model into."""
    partial = out / "final.partial"
    shutil.rmtree(partial, ignore_errors=True)
    return partial


def finish_final(out: Path) -> Path:
    """Publish the model written into final.partial as final/ and return final/."""
    final = out / "final"
    shutil.rmtree(final, ignore_errors=True)
    (out / "final.partial").rename(final)
    mark_run_finished(out)
    return final


def mark_whole_final(out: Path) -> None:
    """Mark the run in `out` finished when its final/ is whole but its record has no marker: a session killed between
    `finish_final`'s rename and the marker, which the loop (reading the marker) runs again."""
    if final_done(out) and not run_finished(out):
        mark_run_finished(out)
