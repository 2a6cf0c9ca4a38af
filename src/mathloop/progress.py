"""Progress bars and log lines: one look for every stage, silenced by `--quiet`.

  progress_bar       a tqdm bar with the count, rate and ETA (`desc: 12/96 seq [00:41<04:48, 0.29 seq/s]`)
  configure_output   called once by `mathloop.cli.main`: the log format and level, and whether bars are drawn

Log lines and bars share stderr: log records are written through `tqdm.write`, so a line never lands in the middle
of a bar. Library callers (tests, notebooks) who never call `configure_output` get bars unless they pass
`enabled=False`.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from tqdm import tqdm

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_DATEFMT = "%H:%M:%S"
BAR_FORMAT = "{desc}: {n_fmt}/{total_fmt} {unit} [{elapsed}<{remaining}, {rate_fmt}]{postfix}"

_quiet = False


def progress_bar(total: int | None, desc: str, unit: str, enabled: bool = True, **kwargs: Any) -> tqdm:
    """A bar counting `unit`s of a stage (sequences, samples, problems, steps) with rate and ETA; a no-op bar
    when `enabled` is False or output is quiet (`configure_output(quiet=True)`)."""
    return tqdm(total=total, desc=desc, unit=unit, bar_format=BAR_FORMAT, dynamic_ncols=True,
                disable=_quiet or not enabled, **kwargs)


def quiet() -> bool:
    """Whether bars and stage messages are off (`--quiet`)."""
    return _quiet


class _TqdmHandler(logging.StreamHandler):
    """Log records written with `tqdm.write`, above any bar that is drawn."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # noqa: BLE001 - logging's own contract: report, never raise
            self.handleError(record)


def configure_output(verbose: bool = False, quiet: bool = False) -> None:
    """The one logging setup of the `mathloop` command: `LOG_FORMAT` on stderr at INFO (DEBUG with `verbose`,
    WARNING with `quiet`), and with `quiet` no progress bars, including those of transformers and TRL."""
    global _quiet
    _quiet = quiet
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter(LOG_FORMAT, LOG_DATEFMT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    if quiet:  # transformers' and the Hub's bars read this when they are imported, later in the command
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
        if "transformers" in sys.modules:
            sys.modules["transformers"].utils.logging.disable_progress_bar()
