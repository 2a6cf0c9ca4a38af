"""MinHash near-duplicate removal with datatrove's four MinHash stages.

1. signatures: each document's MinHash signature (`n_grams`-word shingles, `buckets` x `hashes_per_bucket` hashes),
   written per task next to the documents the task kept (the filter stage's output, in the same order)
2. buckets: documents that agree on every hash of a bucket are candidate duplicates (one task per bucket)
3. cluster: union-find over the duplicate pairs; all but one document of each cluster are marked for removal
4. filter: each task drops the marked documents of its own output file (the others go on to the quality step)

With the defaults (5-word shingles, 14 buckets of 8 hashes) two documents are caught with probability about 0.9 at
a Jaccard similarity of 0.75, and rarely below 0.6. Words are the project's normalised tokens
(`mathloop.data.decontaminate.normalize_text`: lowercase, LaTeX markup dropped), and numbers are kept (datatrove
would turn them all into 0): two worked examples that differ only in their numbers are two exercises. A repost
with a header of its own still shares most shingles with its original.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DedupSettings:
    n_grams: int = 5
    buckets: int = 14
    hashes_per_bucket: int = 8
    seed: int = 1

    def minhash_config(self):
        from datatrove.pipeline.dedup.minhash import MinhashConfig
        from datatrove.utils.text import TextNormConfig

        # numbers are kept: two worked examples that differ only in their numbers are two exercises, not one page
        # twice (datatrove's default turns every number into 0, right for web boilerplate, wrong for math)
        return MinhashConfig(n_grams=self.n_grams, num_buckets=self.buckets, hashes_per_bucket=self.hashes_per_bucket,
                             seed=self.seed, norm_config=TextNormConfig(norm_numbers=False))


def word_tokenizer():
    """A datatrove word tokenizer over `normalize_text` (no NLTK or spaCy models to download)."""
    import re

    from datatrove.utils.word_tokenizers import WordTokenizer

    from mathloop.data.decontaminate import normalize_text

    class NormalizedWords(WordTokenizer):
        def word_tokenize(self, text: str) -> list[str]:
            return normalize_text(text)

        def sent_tokenize(self, text: str) -> list[str]:
            return [s for s in re.split(r"(?<=[.!?])\s+|\n+", text) if s.strip()]

        def span_tokenize(self, text: str) -> list[tuple[int, int]]:
            return [m.span() for m in re.finditer(r"[^.!?\n]+[.!?]?", text)]

    return NormalizedWords()


def signature_step(folder: Path, settings: DedupSettings):
    from datatrove.pipeline.dedup import MinhashDedupSignature

    return MinhashDedupSignature(output_folder=str(folder / "signatures"), config=settings.minhash_config(),
                                 language=word_tokenizer())


def bucket_step(folder: Path, settings: DedupSettings):
    from datatrove.pipeline.dedup import MinhashDedupBuckets

    return MinhashDedupBuckets(input_folder=str(folder / "signatures"), output_folder=str(folder / "buckets"),
                               config=settings.minhash_config())


def cluster_step(folder: Path, settings: DedupSettings):
    from datatrove.pipeline.dedup import MinhashDedupCluster

    return MinhashDedupCluster(input_folder=str(folder / "buckets"), output_folder=str(folder / "remove_ids"),
                               config=settings.minhash_config())


def filter_step(folder: Path, exclusion_writer=None):
    from datatrove.pipeline.dedup import MinhashDedupFilter

    return MinhashDedupFilter(input_folder=str(folder / "remove_ids"), exclusion_writer=exclusion_writer)
