"""Decontamination of corpus documents against every benchmark: the project's 13-gram + LCS rule
(`mathloop.data.decontaminate`), applied to whole web documents.

A web page that quotes a test problem is much longer than the problem, so the match is local (`match(text,
local=True)`): the LCS ratio is taken over the window of the page around the shared 13-gram. A removed document
keeps the reason (benchmark, test id, shared 13-gram, ratio) in `metadata["contamination"]` and counts under
`dropped_contaminated_<benchmark>` in the step's statistics.
"""

from __future__ import annotations

from pathlib import Path


def decontamination_filter(data_dir: str | Path | None = None, benchmarks: list[str] | None = None,
                           exclusion_writer=None):
    """The datatrove filter; the index of every available benchmark's test split (or `benchmarks`) is built in
    the worker on first use (a few seconds, a few megabytes), not pickled with the pipeline."""
    from datatrove.pipeline.filters.base_filter import BaseFilter

    class DecontaminationFilter(BaseFilter):
        name = "decontaminate"

        def __init__(self):
            super().__init__(exclusion_writer)
            self.data_dir = None if data_dir is None else str(data_dir)
            self.benchmarks = benchmarks
            self._index = None

        def filter(self, doc):
            if self._index is None:
                from mathloop.data.decontaminate import ContaminationIndex

                self._index = ContaminationIndex.from_benchmarks(self.data_dir, self.benchmarks)
            match = self._index.match(doc.text, local=True)
            if match is None:
                return True
            doc.metadata["contamination"] = match.reason("text")
            return False, f"contaminated_{match.benchmark}"

    return DecontaminationFilter()
