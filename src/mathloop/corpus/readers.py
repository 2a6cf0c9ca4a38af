"""Where documents come from: one datatrove reader per input, chosen by the input's form.

  path/to/folder or file *.jsonl[.gz|.zst]     JsonlReader (a "text" field; every other field becomes metadata)
  *.parquet                                    ParquetReader
  *.warc[.gz], *.wet[.gz], *.warc.wet.gz       WarcReader (WET "conversion" records are text; WARC "response"
                                               records are HTML, turned into text by `HtmlToText`)
  hf:<dataset id>[:<config>][@<split>]         HuggingFaceDatasetReader, streaming (pip install datasets; network)

A folder is read as every file in it with the first file's extension. Paths may be any fsspec URL datatrove takes
(s3://, hf://datasets/...). Each reader shards its files over the pipeline's tasks, so a dump of many files spreads
over the Slurm or Ray workers.
"""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser
from pathlib import Path

HUB_PREFIX = "hf:"
_SUFFIXES = {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".warc": "warc", ".wet": "warc"}


def input_format(source: str) -> list[tuple[str, str, str | None]]:
    """(format, folder or dataset, glob pattern) of one input: one entry per format a folder holds.

    >>> input_format("hf:HuggingFaceFW/fineweb-edu:sample-10BT@train")
    [('hub', 'HuggingFaceFW/fineweb-edu:sample-10BT@train', None)]
    """
    if source.startswith(HUB_PREFIX):
        return [("hub", source[len(HUB_PREFIX):], None)]
    path = Path(source)
    if "://" in source:
        return [(_kind(path.name, source), source.rsplit("/", 1)[0], path.name)]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        if not files:
            raise ValueError(f"corpus: input folder {source} has no files")
        globs: dict[str, list[str]] = {}
        for file in files:
            kind = _kind(file.name, str(file), strict=False)
            if kind is not None:
                suffix = file.name[file.name.index("."):]
                globs.setdefault(kind, [])
                if f"**/*{suffix}" not in globs[kind]:
                    globs[kind].append(f"**/*{suffix}")
        if not globs:
            raise ValueError(f"corpus: input folder {source} has no .jsonl, .parquet, .warc or .wet files")
        return [(kind, source, glob) for kind, patterns in globs.items() for glob in patterns]
    if not path.exists():
        raise ValueError(f"corpus: input {source} does not exist (give a file, a folder or hf:<dataset id>)")
    return [(_kind(path.name, source), str(path.parent), path.name)]


def _kind(name: str, source: str, strict: bool = True) -> str | None:
    for part in reversed(name.split(".")[1:]):
        if f".{part}" in _SUFFIXES:
            return _SUFFIXES[f".{part}"]
    if not strict:
        return None
    raise ValueError(f"corpus: cannot tell the format of input {source} (expected .jsonl[.gz], .parquet, "
                     f".warc[.gz], .wet[.gz], or hf:<dataset id>)")


def make_readers(source: str, text_key: str = "text", limit: int = -1) -> list:
    """The datatrove readers for `source` (see the module docstring): one per format in a folder."""
    return [_reader(kind, where, glob, text_key, limit) for kind, where, glob in input_format(source)]


def _reader(kind: str, where: str, glob: str | None, text_key: str, limit: int):
    if kind == "hub":
        from datatrove.pipeline.readers import HuggingFaceDatasetReader

        dataset, _, split = where.partition("@")
        name, _, config = dataset.partition(":")
        options = {"split": split or "train", **({"name": config} if config else {})}
        return HuggingFaceDatasetReader(name, dataset_options=options, streaming=True, text_key=text_key,
                                        limit=limit)
    if kind == "jsonl":
        from datatrove.pipeline.readers import JsonlReader

        return JsonlReader(where, glob_pattern=glob, text_key=text_key, limit=limit)
    if kind == "parquet":
        from datatrove.pipeline.readers import ParquetReader

        return ParquetReader(where, glob_pattern=glob, text_key=text_key, limit=limit)
    from datatrove.pipeline.readers import WarcReader

    return WarcReader(where, glob_pattern=glob, limit=limit)


class _TextParser(HTMLParser):
    _SKIP = {"script", "style", "noscript", "nav", "footer", "header", "svg", "head"}
    _BLOCK = {"p", "div", "br", "li", "h1", "h2", "h3", "h4", "h5", "h6", "tr", "section", "article", "pre"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping = 0

    def handle_starttag(self, tag, attrs):
        if tag in self._SKIP:
            self.skipping += 1
        elif tag in self._BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in self._SKIP and self.skipping:
            self.skipping -= 1

    def handle_data(self, data):
        if not self.skipping:
            self.parts.append(data)


def html_to_text(page: str) -> str:
    """The visible text of an HTML page, one block a line (scripts, styles, navigation dropped). A stand-in for a
    full extractor (datatrove's Trafilatura step, pip install trafilatura) that needs nothing installed; math in
    MathJax/KaTeX source ($...$) is text and survives.

    >>> html_to_text("<html><head><script>x=1</script></head><body><p>Solve $x^2 = 4$.</p><p>So x = 2.</p></body>")
    'Solve $x^2 = 4$.\\nSo x = 2.'
    """
    parser = _TextParser()
    parser.feed(page)
    text = html.unescape("".join(parser.parts))
    lines = (re.sub(r"[ \t]+", " ", line).strip() for line in text.splitlines())
    return "\n".join(line for line in lines if line)


def looks_like_html(text: str) -> bool:
    head = text[:1000].lower()
    return "<html" in head or "<!doctype html" in head or "<body" in head


__all__ = ["html_to_text", "input_format", "looks_like_html", "make_readers"]


def html_to_text_step():
    """A datatrove step that replaces an HTML page's text with its visible text (WARC response records)."""
    from datatrove.pipeline.base import PipelineStep

    class HtmlToText(PipelineStep):
        name = "html to text"
        type = "EXTRACT"

        def run(self, data, rank: int = 0, world_size: int = 1):
            for doc in data:
                self.stat_update("total")
                if looks_like_html(doc.text):
                    with self.track_time():
                        doc.text = html_to_text(doc.text)
                    self.stat_update("extracted")
                if doc.text.strip():
                    self.stat_update("forwarded")
                    yield doc
                else:
                    self.stat_update("dropped", "dropped_empty")

    return HtmlToText()


def rank_file_reader(folder: str | Path):
    """A datatrove reader of one task's own file, `<folder>/<rank>.jsonl.gz` (written by the filter stage), so
    the MinHash filter of task r sees exactly the documents whose signatures task r wrote, in order."""
    from datatrove.pipeline.readers import JsonlReader

    class RankFileReader(JsonlReader):
        name = "read filtered"

        def run(self, data=None, rank: int = 0, world_size: int = 1):
            path = f"{rank:05d}.jsonl.gz"
            if data:
                yield from data
            if not self.data_folder.exists(path):
                return
            for doc in self.read_file(path):
                self.update_doc_stats(doc)
                self.stat_update("documents")
                yield doc

    return RankFileReader(str(folder))
