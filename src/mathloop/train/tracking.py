"""`report_to`: send the records a trainer writes to metrics.jsonl to TensorBoard and/or Weights & Biases as well.

metrics.jsonl stays the record of a run; these are views for the dashboards users already read. Each backend is
imported only when named (`pip install 'mathloop[tensorboard]'` or `'mathloop[wandb]'`), and only the main process
(rank 0) writes. TensorBoard event files go to <output_dir>/tensorboard; a resumed run purges the events from the
step it resumes at, as metrics.jsonl drops its lines after the checkpoint. W&B reads its project from $WANDB_PROJECT
(default "mathloop") and writes its files under <output_dir>.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

REPORT_TO = {"tensorboard": "tensorboard", "wandb": "wandb"}  # name -> the package it needs


def check_report_to(report_to: list[str], where: str) -> None:
    """Fail before training when `report_to` names an unknown dashboard or one whose package is missing.

    >>> check_report_to(["mlflow"], "grpo")
    Traceback (most recent call last):
    ValueError: grpo: report_to: unknown 'mlflow'; known: tensorboard, wandb
    """
    if not isinstance(report_to, list):
        raise ValueError(f"{where}: report_to must be a list of names ({', '.join(REPORT_TO)}), got {report_to!r}")
    unknown = [name for name in report_to if name not in REPORT_TO]
    if unknown:  # before any missing package, so the error does not depend on the extras installed
        raise ValueError(f"{where}: report_to: unknown {unknown[0]!r}; known: {', '.join(REPORT_TO)}")
    for name in report_to:
        if importlib.util.find_spec(REPORT_TO[name]) is None:
            raise ValueError(f"{where}: report_to: {name} needs the {REPORT_TO[name]} package: "
                             f"pip install 'mathloop[{name}]'")


class MetricsReporter:
    """Log each metrics record (its numeric fields, at its step) to the dashboards of `report_to`; `resume_step` is
    the checkpoint's step when a run resumes (0 for a fresh run)."""

    def __init__(self, report_to: list[str], output_dir: str | Path, kind: str, config: dict[str, Any],
                 resume_step: int = 0, main_process: bool = True) -> None:
        self.kind = kind
        self._tensorboard = None
        self._wandb = None
        if not main_process or not report_to:
            return
        out = Path(output_dir)
        if "tensorboard" in report_to:
            from torch.utils.tensorboard import SummaryWriter

            # events after the checkpoint a run resumes from (written before a kill) are dropped
            self._tensorboard = SummaryWriter(str(out / "tensorboard"), purge_step=resume_step + 1 if resume_step
                                              else None)
        if "wandb" in report_to:
            import wandb

            self._wandb = wandb.init(project=os.environ.get("WANDB_PROJECT", "mathloop"), dir=str(out),
                                     name=f"{kind}-{out.name}", config=config, resume="allow")

    def log(self, record: dict[str, Any], step: int) -> None:
        scalars = {f"{self.kind}/{key}": float(value) for key, value in record.items()
                   if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool)}
        if self._tensorboard is not None:
            for tag, value in scalars.items():
                self._tensorboard.add_scalar(tag, value, step)
            self._tensorboard.flush()  # a killed run keeps every logged step, as metrics.jsonl does
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self._wandb is not None:
            self._wandb.finish()

    def __enter__(self) -> MetricsReporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
