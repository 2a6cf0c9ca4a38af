"""The pre-training half: a math corpus from web documents, question-answer pairs from it, and continued
pre-training on it (`mathloop corpus build | qa | sample`; docs/corpus.md).

One module per step, each a datatrove step or a plain function:

  readers     JSONL, Parquet, WARC/WET and Hub (streaming) readers; HTML to text
  classifier  the fastText math classifier, seed positives, iterative recall, precision/recall
  decontam    13-gram + LCS decontamination against every benchmark (`mathloop.data.decontaminate`)
  dedup       MinHash near-duplicate removal (datatrove's four MinHash stages)
  quality     quality scores from a small model: P("yes") to a quality question
  build       the stages in order on datatrove's local, Slurm or Ray executor, with per-step statistics
  qa          synthetic question-answer pairs from kept documents, kept when the model's answers agree
  sample      a small labelled web corpus made on the spot, so all of it runs offline

Continued pre-training is `mathloop sft` on the text rows this package writes (`mathloop.train.sft`, text mode).
Needs `pip install 'mathloop[corpus]'` (datatrove, fastText).
"""
