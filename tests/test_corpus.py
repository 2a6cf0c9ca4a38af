"""`mathloop corpus`: the pre-training pipeline on the sample corpus it writes (math pages, other pages,
near-duplicate reposts, pages quoting benchmark problems), step by step and as a whole, offline; synthetic QA with
a scripted backend; continued pre-training in the SFT trainer's text mode on the tiny model."""

from __future__ import annotations

import gzip
import io
import json
from collections import Counter
from pathlib import Path

import pytest

pytest.importorskip("datatrove")
pytest.importorskip("fasttext")

from mathloop.backends.fake import FakeBackend  # noqa: E402
from mathloop.cli import main  # noqa: E402
from mathloop.corpus.build import CorpusConfig, build_corpus  # noqa: E402
from mathloop.corpus.classifier import (  # noqa: E402
    ClassifierConfig,
    MathClassifier,
    evaluate_classifier,
    read_texts,
    seed_positives,
    train_classifier,
    train_with_recall,
)
from mathloop.corpus.qa import QAConfig, qa_file, rejected_path, synthesize_qa  # noqa: E402
from mathloop.corpus.readers import html_to_text_step, make_readers  # noqa: E402
from mathloop.corpus.sample import MATH_DOMAINS, sample_documents, write_sample_corpus  # noqa: E402
from mathloop.data.sources import PACKAGED_DIR  # noqa: E402

# a small, quick classifier (the defaults are sized for a web dump)
SMALL = dict(max_seed_positives=600, dim=16, buckets=20000, epoch=10)


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sample")
    write_sample_corpus(out)
    return out


def read_all(source: str) -> list:
    data = None
    for reader in make_readers(source):
        data = reader.run(data, 0, 1)
    return list(data)


def kind(doc: dict) -> str:
    """The sample corpus kind of a written document (WET records keep only the URL, which names it)."""
    return doc["metadata"].get("kind") or doc["metadata"]["url"].split("/")[3]


def documents(folder: Path) -> list[dict]:
    return [json.loads(line) for f in sorted(folder.glob("*.jsonl.gz")) for line in gzip.open(f, "rt")]


def test_the_sample_corpus_has_every_kind_in_every_input_format(sample):
    docs = sample_documents(seed=0)
    kinds = Counter(d["metadata"]["kind"] for d in docs)
    assert kinds == {"math": 120, "other": 120, "repost": 20, "benchmark_quote": 10}
    assert {d["metadata"]["label"] for d in docs if d["metadata"]["kind"] != "other"} == {"math"}
    counts = {name: len(read_all(str(sample / "web" / name)))
              for name in ("part-0.jsonl.gz", "part-1.parquet", "part-2.warc.wet.gz")}
    assert sum(counts.values()) == len(read_all(str(sample / "web"))) == 210 and min(counts.values()) == 70
    wet = read_all(str(sample / "web" / "part-2.warc.wet.gz"))
    assert all(d.metadata["url"].startswith("https://") and d.text for d in wet)


def test_hub_inputs_stream_the_named_config_and_split():
    [reader] = make_readers("hf:HuggingFaceFW/fineweb-edu:sample-10BT@train", text_key="content")
    assert type(reader).__name__ == "HuggingFaceDatasetReader"  # built without network; reading streams
    assert (reader.dataset, reader.dataset_options, reader.streaming, reader.text_key) == (
        "HuggingFaceFW/fineweb-edu", {"split": "train", "name": "sample-10BT"}, True, "content")


def test_html_pages_from_warc_response_records_become_text(tmp_path):
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    page = ("<html><head><style>p {color: red}</style><script>var x = 1;</script></head><body><nav>Home | About"
            "</nav><p>Solve $2x + 3 = 11$.</p><p>So $x = 4$.</p></body></html>")
    with (tmp_path / "crawl.warc.gz").open("wb") as f:
        writer = WARCWriter(f, gzip=True)
        http = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1")
        writer.write_record(writer.create_warc_record(
            "https://mathhelp.example/a", "response", payload=io.BytesIO(page.encode()), http_headers=http,
            warc_headers_dict={"WARC-Identified-Payload-Type": "text/html"}))
    docs = read_all(str(tmp_path / "crawl.warc.gz"))
    assert len(docs) == 1 and "<p>" in docs[0].text
    [doc] = list(html_to_text_step().run(docs))
    assert doc.text == "Solve $2x + 3 = 11$.\nSo $x = 4$." and doc.metadata["url"] == "https://mathhelp.example/a"


def test_seed_positives_are_training_splits_never_test_items():
    seeds = seed_positives(PACKAGED_DIR, limit=10_000)
    from mathloop.data.benchmarks import load_benchmark

    test_questions = {p.question for p in load_benchmark("gsm8k", PACKAGED_DIR)}
    assert len(seeds) > 5000 and not any(s.split("\nAnswer:")[0] in test_questions for s in seeds[:2000])


def test_the_classifier_separates_math_from_other_pages_on_a_held_out_split(sample, tmp_path):
    seeds = seed_positives(PACKAGED_DIR, limit=600)
    model = train_classifier(seeds, read_texts(sample / "negatives.txt"), tmp_path / "clf",
                             ClassifierConfig(**SMALL))
    held = [json.loads(line) for line in (sample / "held_out.jsonl").read_text().splitlines()]
    result = evaluate_classifier(model, [h["text"] for h in held], [h["label"] == "math" for h in held])
    assert result["tp"] + result["fn"] == sum(h["label"] == "math" for h in held) > 20
    assert result["recall"] >= 0.9 and result["precision"] >= 0.9, result
    scores = MathClassifier(model).score(["Solve $3x + 5 = 20$ for $x$: subtract 5 and divide by 3, so x = 5.",
                                          "We walked past the harbour and ate street food near the station."])
    assert scores[0] > 0.5 > scores[1]


def test_iterative_recall_adds_high_score_hits_and_widens_math_domains(sample, tmp_path):
    pool = [(d.text, d.metadata.get("url")) for d in read_all(str(sample / "web"))]
    report = train_with_recall(seed_positives(PACKAGED_DIR, limit=600), read_texts(sample / "negatives.txt"), pool,
                               tmp_path / "clf", ClassifierConfig(**SMALL, rounds=1))
    first, last = report.rounds
    assert first["recalled"] > 50 and last["positives"] == first["positives"] + first["recalled"]
    assert set(MATH_DOMAINS) <= set(first["widened_domains"])
    assert not any(d.startswith(("dailyrecipes", "sportsdesk")) for d in first["widened_domains"])
    assert Path(report.model).exists() and report.model.endswith("round-1/model.bin")


def test_the_whole_pipeline_on_the_sample_corpus(sample, tmp_path):
    config = CorpusConfig(inputs=[str(sample / "web")], out=str(tmp_path / "corpus"),
                          negatives=[str(sample / "negatives.txt")], eval_file=str(sample / "held_out.jsonl"),
                          decontaminate_benchmarks=["gsm8k", "math500"], data_dir=str(PACKAGED_DIR), rounds=1,
                          **SMALL)
    stats = build_corpus(config)
    out = tmp_path / "corpus"
    steps = {s["step"]: s for s in stats["steps"]}
    classifier, decontam = steps["FILTER: math classifier"], steps["FILTER: decontaminate"]
    dedup = steps["DEDUP: 🎯 MinHash stage 4"]
    assert classifier["in"] == 210 and classifier["reasons"] == {"not_math": classifier["removed"]}
    # what each step removed, by kind: other pages, the benchmark quotes, one of each repost pair
    removed = {step: Counter(kind(d) for d in documents(out / "removed" / step))
               for step in ("classifier", "decontaminate", "dedup")}
    assert removed["classifier"]["other"] >= 85 and removed["classifier"]["other"] == classifier["removed"]
    assert removed["decontaminate"] == {"benchmark_quote": 10} == {"benchmark_quote": decontam["removed"]}
    assert sum(decontam["reasons"].values()) == 10 and set(decontam["reasons"]) <= {
        "contaminated_gsm8k", "contaminated_math500"}
    held = {json.loads(line)["id"] for line in (sample / "held_out.jsonl").read_text().splitlines()}
    pairs = sum(d["metadata"]["kind"] == "repost" and d["metadata"]["original"] not in held
                for d in sample_documents(seed=0))  # reposts whose original is in the input too
    # one of each pair goes, and a few lesson pages built from the same template sentences (MinHash's job too)
    assert pairs >= 15 and sum(removed["dedup"].values()) == dedup["removed"] == dedup["reasons"]["near_duplicate"]
    assert pairs <= dedup["removed"] <= pairs + 5 and set(removed["dedup"]) <= {"math", "repost"}
    for doc in documents(out / "removed" / "decontaminate"):
        assert doc["metadata"]["contamination"]["lcs_ratio"] > 0.6
    kept = documents(out / "corpus")
    assert len(kept) == stats["documents_out"] and Counter(kind(d) for d in kept)["math"] >= 70
    kept_ids = {d["id"].removeprefix("<urn:uuid:").removesuffix(">") for d in kept}  # WET ids are record ids
    kept_reposts = [d for d in kept if d["metadata"].get("original")]
    assert kept_reposts and not any(d["metadata"]["original"] in kept_ids for d in kept_reposts)  # never both
    assert stats["classifier"]["held_out"]["recall"] >= 0.9
    assert json.loads((out / "stats.json").read_text())["documents_out"] == len(kept)
    assert f"near_duplicate: {dedup['removed']}" in (out / "stats.md").read_text()

    assert main(["corpus", "text", "--corpus", str(out / "corpus"), "--out", str(tmp_path / "text.jsonl")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "text.jsonl").read_text().splitlines()]
    assert [r["text"] for r in rows] == [d["text"] for d in kept]

    from mathloop.report import build_report

    build_report([str(out)], tmp_path / "report.html")  # the report shows each step's counts and reasons
    page = (tmp_path / "report.html").read_text()
    assert "corpus steps" in page and "near_duplicate" in page and "contaminated_gsm8k" in page

    again = build_corpus(config)  # every task is marked complete: nothing is redone
    assert again["documents_out"] == len(kept)


def test_the_quality_score_is_p_yes_over_yes_and_no(tiny_model_dir):
    import torch

    from mathloop.corpus.quality import QualityScorer, quality_filter

    scorer = QualityScorer(str(tiny_model_dir), batch_size=2)
    texts = ["Solve $x + 2 = 5$: x = 3.", "A recipe for lentil soup.", "Some other page."]
    scores = scorer.score(texts)
    assert len(scores) == 3 and all(0 <= s <= 1 for s in scores)
    ids = scorer.tokenizer(scorer.prompt(texts[0]), return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        probs = torch.softmax(scorer.model(**ids).logits[0, -1], -1)
    yes, no = probs[scorer.yes_ids].sum(), probs[scorer.no_ids].sum()
    assert scores[0] == pytest.approx(float(yes / (yes + no)), abs=1e-4)

    from datatrove.data import Document

    docs = [Document(text=t, id=str(i)) for i, t in enumerate(texts)]
    step = quality_filter(str(tiny_model_dir), threshold=sorted(scores)[1])
    kept = list(step.run(docs))
    assert len(kept) == 2 and all("quality_score" in d.metadata for d in kept)


def qa_backend() -> FakeBackend:
    """Documents about 3 + 4 get a question the answers agree on; about 5 x 6, answers that disagree; cake pages,
    no question."""
    def respond(prompt: str, index: int) -> str:
        if "Reply in exactly this form" in prompt:
            if "cake" in prompt:
                return "There is no math in this text."
            if "three" in prompt:
                return "Question: What is 3 + 4 equal to?\nAnswer: 7"
            return "Question: What is 5 times 6 equal to?\nAnswer: 30"
        if "3 + 4" in prompt:
            return "3 + 4 = 7, so the answer is \\boxed{7}." if index != 2 else "I think \\boxed{8}."
        return f"It is \\boxed{{{30 + index}}}."

    return FakeBackend(respond)


def test_qa_keeps_self_consistent_pairs_with_a_majority_solution():
    docs = [("a", "Adding three and four."), ("b", "Multiplying five by six."), ("c", "A cake recipe.")]
    kept, rejected = synthesize_qa(qa_backend(), docs, QAConfig(n_answers=4, min_agreement=0.5))
    assert len(kept) == 1 and kept[0]["metadata"]["doc_id"] == "a"
    meta = kept[0]["metadata"]
    assert (meta["answer"], meta["votes"], meta["agreement"], meta["matches_reference"]) == ("7", 3, 0.75, True)
    assert kept[0]["completion"][0]["content"].endswith("\\boxed{7}.")  # a majority response, not the outlier
    assert kept[0]["prompt"][-1] == {"role": "user", "content": "What is 3 + 4 equal to?"}
    assert {r["doc_id"]: r["reason"] for r in rejected} == {"b": "no_agreement", "c": "no_question"}
    strict, _ = synthesize_qa(qa_backend(), docs[:1], QAConfig(n_answers=4, min_agreement=1.0))
    assert strict == []


def test_qa_text_rows_and_resume(tmp_path):
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in
                              enumerate(["Adding three and four.", "Multiplying five by six.", "A cake."])))
    config = QAConfig(corpus=str(corpus), out=str(tmp_path / "qa.jsonl"), format="text", chunk_size=2)
    first = qa_file(qa_backend(), config)
    assert first["kept"] == 1 and first["rejected"] == {"no_agreement": 1, "no_question": 1}
    [row] = [json.loads(line) for line in (tmp_path / "qa.jsonl").read_text().splitlines()]
    assert row["text"].startswith("Question: What is 3 + 4 equal to?\nAnswer: ") and "\\boxed{7}" in row["text"]
    backend = qa_backend()
    again = qa_file(backend, config)
    assert again["already_done"] == 3 and again["kept"] == 0 and backend.calls == []
    assert rejected_path(config.out).name == "qa.rejected.jsonl"


def test_text_rows_are_cut_into_blocks_with_every_token_in_the_loss(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    from mathloop.records import RecordError, write_jsonl
    from mathloop.train.sft import read_sft_examples, text_blocks

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = "What is 2 + 3? The answer is 5. " * 10
    blocks = text_blocks(tokenizer, text, 16)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert [t for b in blocks for t in b["input_ids"]] == ids + [tokenizer.convert_tokens_to_ids("<|endoftext|>")]
    assert all(len(b["input_ids"]) <= 16 and b["completion_mask"] == [1] * len(b["input_ids"]) for b in blocks)
    write_jsonl(tmp_path / "mixed.jsonl", [{"text": "a"}, {"prompt": [{"role": "user", "content": "q"}],
                                                          "completion": [{"role": "assistant", "content": "a"}]}])
    with pytest.raises(RecordError, match="record 2: a prompt-completion row among text rows"):
        read_sft_examples(tmp_path / "mixed.jsonl")


@pytest.mark.training
def test_continued_pretraining_runs_resumes_and_reports_tokens_per_second(tiny_model_dir, tmp_path):
    from mathloop.records import write_jsonl
    from mathloop.train.sft import SFTRunConfig, build_trainer, train_sft

    write_jsonl(tmp_path / "text.jsonl", [{"text": f"Let x = {i}. Then 2x = {2 * i}. " * 6} for i in range(8)])
    settings = dict(model=str(tiny_model_dir), data=str(tmp_path / "text.jsonl"), epochs=2, learning_rate=3e-3,
                    per_device_batch_size=4, gradient_accumulation_steps=1, max_length=64, log_every=1)
    trainer, report = build_trainer(SFTRunConfig(**settings, output_dir=str(tmp_path / "probe")))
    assert report["text_mode"] and report["examples"] > 8  # long texts were cut into 64-token blocks
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    assert ((batch["labels"] != -100) == batch["attention_mask"].bool()).all()  # every real token is trained

    config = SFTRunConfig(**settings, output_dir=str(tmp_path / "cpt"))
    first = train_sft(config, stop_after=2)
    assert first["final"] is None
    done = train_sft(config)
    assert done["resumed_from"].endswith("checkpoint-2") and done["final"] and done["tokens_per_second"] > 0
    assert done["tokens"] == report["tokens"]
    run = json.loads((tmp_path / "cpt" / "run.json").read_text())
    assert run["data"]["text_mode"] and run["data"]["tokens"] == report["tokens"]


def test_cli_errors_are_one_line_naming_the_input(tmp_path, capsys):
    assert main(["corpus", "build", "--input", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "missing.jsonl does not exist" in err
    (tmp_path / "notes.txt").write_text("x")
    assert main(["corpus", "build", "--input", str(tmp_path / "notes.txt"), "--out", str(tmp_path / "o")]) == 2
    assert "cannot tell the format" in capsys.readouterr().err
    assert main(["corpus", "build", "--input", str(tmp_path), "--out", str(tmp_path / "o"), "--executor",
                 "slurm"]) == 2
    assert "executor_args time, partition" in capsys.readouterr().err
    (tmp_path / "bad.jsonl").write_text("not json\n")
    assert main(["corpus", "qa", "--corpus", str(tmp_path / "bad.jsonl"), "--out", str(tmp_path / "qa.jsonl"),
                 "--backend", "hf"]) == 2
    assert "bad.jsonl:1: expected a JSON object" in capsys.readouterr().err
    assert main(["corpus", "sample", "--out", str(tmp_path / "s")]) == 0
    assert json.loads(capsys.readouterr().out)["input_documents"] == 210
