"""Reward model: listwise loss, scalar head and pooling, RM data, decontamination, training, resume, scoring."""

from __future__ import annotations

import json
import random

import pytest
import torch

from mathloop.records import Sample, read_records, write_jsonl
from mathloop.data.decontaminate import ContaminationIndex
from mathloop.reward.data import build_rm_groups, split_groups
from mathloop.reward.loss import listwise_loss, pairwise_accuracy
from mathloop.reward.model import RewardModel, load_reward_model
from mathloop.reward.score import progress_path, score_samples
from mathloop.tokens import encode, pad_batch

PROMPT = "<|im_start|>user\nWhat is x? Problem {i}.<|im_end|>\n<|im_start|>assistant\n"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---- loss ------------------------------------------------------------------------------------------------------

def brute_force_loss(scores, labels, mask):
    per_group = []
    for g in range(scores.shape[0]):
        idx = [i for i in range(scores.shape[1]) if mask[g, i]]
        pos = [i for i in idx if labels[g, i]]
        neg = [i for i in idx if not labels[g, i]]
        if not pos or not neg:
            continue
        total = sum(-torch.nn.functional.logsigmoid(scores[g, p] - scores[g, n]) for p in pos for n in neg)
        per_group.append(total / (len(pos) * len(neg)))
    return torch.stack(per_group).mean()


@pytest.mark.parametrize("width", [2, 3, 6, 9])
def test_listwise_loss_matches_brute_force_double_loop(width):
    gen = torch.Generator().manual_seed(width)
    scores = torch.randn(5, width, generator=gen) * 3
    labels = torch.rand(5, width, generator=gen) > 0.5
    mask = torch.ones(5, width, dtype=torch.bool)
    mask[1, width // 2:] = False  # a shorter group
    labels[2, :] = True  # an all-correct group: no pairs, left out
    labels[3, 0], labels[3, 1] = True, False  # at least one group with a pair
    mask[3, :2] = True
    assert torch.allclose(listwise_loss(scores, labels, mask), brute_force_loss(scores, labels, mask), atol=1e-6)


def test_listwise_loss_is_the_paper_formula_for_six_responses():
    scores = torch.tensor([[1.0, 0.5, -0.2, 0.3, -1.0, 2.0]])
    labels = torch.tensor([[True, False, True, False, False, False]])  # k = 2
    pairs = [(p, n) for p in (0, 2) for n in (1, 3, 4, 5)]
    expected = -sum(torch.nn.functional.logsigmoid(scores[0, p] - scores[0, n]) for p, n in pairs) / (2 * 4)
    assert torch.allclose(listwise_loss(scores, labels), expected)


def test_listwise_loss_without_pairs_is_zero_and_differentiable():
    scores = torch.randn(2, 3, requires_grad=True)
    loss = listwise_loss(scores, torch.ones(2, 3, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0 and scores.grad is not None


def test_pairwise_accuracy_pools_pairs_and_ignores_padding():
    scores = torch.tensor([[3.0, 1.0, 9.0], [0.0, 1.0, 0.0]])
    labels = torch.tensor([[True, False, False], [True, False, False]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    assert pairwise_accuracy(scores, labels, mask) == (pytest.approx(0.5), 3)  # wins: 1, 0, tie 0.5


# ---- model -----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_rm(tiny_model_dir):
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    return RewardModel.from_backbone(str(tiny_model_dir)).eval(), AutoTokenizer.from_pretrained(tiny_model_dir)


def test_head_is_two_linear_layers_and_scores_one_float_per_row(tiny_rm):
    model, tokenizer = tiny_rm
    h = model.backbone.config.hidden_size
    assert [tuple(m.weight.shape) for m in model.head if isinstance(m, torch.nn.Linear)] == [(h, h), (1, h)]
    assert isinstance(model.head[1], torch.nn.ReLU)
    assert not hasattr(model.backbone, "lm_head")
    ids, mask = pad_batch(encode(tokenizer, ["What is 2 + 3?", "x = 7"]), pad_id=0)
    scores = model(ids, mask)
    assert scores.shape == (2,) and scores.dtype == torch.float32


def test_last_token_pooling_ignores_left_and_right_padding(tiny_rm):
    model, tokenizer = tiny_rm
    rows = encode(tokenizer, ["What is 2 + 3? The answer is \\boxed{5}.", "x = 7", "Janet has 16 eggs."])
    with torch.no_grad():
        alone = torch.cat([model(*pad_batch([r], pad_id=0)) for r in rows])
        right = model(*pad_batch(rows, pad_id=0, side="right"))
        left = model(*pad_batch(rows, pad_id=0, side="left"))
    assert torch.allclose(right, alone, atol=1e-5)
    assert torch.allclose(left, alone, atol=1e-5)


def test_save_and_load_give_identical_scores(tiny_rm, tmp_path):
    model, tokenizer = tiny_rm
    samples = [Sample(problem_id=str(i), prompt=PROMPT.format(i=i), response=f"so \\boxed{{{i}}}") for i in range(5)]
    before = score_samples(model, tokenizer, samples, batch_size=2)
    model.save(tmp_path / "rm", tokenizer)
    config = json.loads((tmp_path / "rm" / "reward_config.json").read_text())
    assert config["format"] == "mathloop-reward-model" and config["backbone"] == model.backbone_name
    loaded, loaded_tokenizer = load_reward_model(str(tmp_path / "rm"), device="cpu", dtype="float32")
    assert score_samples(loaded, loaded_tokenizer, samples, batch_size=3) == pytest.approx(before, abs=1e-6)


def test_score_samples_keeps_input_order_whatever_the_batching(tiny_rm):
    model, tokenizer = tiny_rm
    samples = [Sample(problem_id="p", prompt="Q", response="word " * n) for n in (1, 9, 3, 6)]
    one = score_samples(model, tokenizer, samples, batch_size=1)
    assert score_samples(model, tokenizer, samples, batch_size=4) == pytest.approx(one, abs=1e-5)


class _CountingModel(torch.nn.Module):
    """Wraps a reward model, counting the rows it scores; raises after `fail_after` batches (an interruption)."""

    def __init__(self, model, fail_after: int | None = None):
        super().__init__()
        self.model, self.fail_after, self.rows, self.batches = model, fail_after, 0, 0

    def input_text(self, *args):
        return self.model.input_text(*args)

    def forward(self, input_ids, attention_mask):
        if self.fail_after is not None and self.batches == self.fail_after:
            raise KeyboardInterrupt
        self.batches += 1
        self.rows += len(input_ids)
        return self.model(input_ids, attention_mask)


def test_interrupted_scoring_resumes_without_rescoring_finished_batches(tiny_rm, tmp_path):
    model, tokenizer = tiny_rm
    samples = [Sample(problem_id=str(i), prompt=PROMPT.format(i=i), response="word " * (i + 1)) for i in range(7)]
    expected = score_samples(model, tokenizer, samples, batch_size=2)
    progress = progress_path(tmp_path / "scored.jsonl", "runs/rm/final")
    interrupted = _CountingModel(model, fail_after=2)
    with pytest.raises(KeyboardInterrupt):
        score_samples(interrupted, tokenizer, samples, batch_size=2, progress_file=progress)
    assert len(progress.read_text().splitlines()) == 4  # two finished batches of 2 are kept
    with progress.open("a") as f:
        f.write('{"key": "abc", "rm_')  # a kill in the middle of an append
    resumed = _CountingModel(model)
    assert score_samples(resumed, tokenizer, samples, batch_size=2, progress_file=progress) == \
        pytest.approx(expected, abs=1e-6)
    assert resumed.rows == 3  # only the 3 unscored samples
    # another reward model, or another length limit, never reuses those scores
    assert progress_path(tmp_path / "scored.jsonl", "runs/rm2/final") != progress
    again = _CountingModel(model)
    score_samples(again, tokenizer, samples, batch_size=2, max_length=8, progress_file=progress)
    assert again.rows == 7


def test_loading_a_folder_that_is_no_model_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="reward_config.json"):
        load_reward_model(str(tmp_path), device="cpu")


# ---- RM data ---------------------------------------------------------------------------------------------------

def graded(problem_id, verdicts, model="m"):
    return [Sample(problem_id=problem_id, prompt=f"Q{problem_id}", response=f"{problem_id} answer {i}",
                   verdict=v, model=model) for i, v in enumerate(verdicts)]


def test_rm_groups_drop_all_correct_and_all_wrong_problems_with_a_reason():
    samples = graded("easy", ["correct"] * 4) + graded("hard", ["incorrect", "no_answer"]) + \
        graded("mixed", ["correct", "incorrect", "incorrect"])
    groups, report = build_rm_groups(samples)
    assert [g.problem_id for g in groups] == ["mixed"]
    assert report.dropped == {"easy": "all correct", "hard": "all wrong"}
    assert sorted(groups[0].labels) == [False, False, True]


def test_rm_groups_respect_group_size_and_balance():
    samples = graded("a", ["correct"] + ["incorrect"] * 10) + graded("b", ["correct"] * 5 + ["incorrect"] * 5)
    groups, report = build_rm_groups(samples, group_size=6, max_ratio=2.0)
    by_id = {g.problem_id: g for g in groups}
    assert (sum(by_id["a"].labels), len(by_id["a"].labels)) == (1, 3)  # 1 positive, negatives capped at 2
    assert (sum(by_id["b"].labels), len(by_id["b"].labels)) == (3, 6)
    assert (report.positives, report.negatives) == (4, 5)
    groups, _ = build_rm_groups(samples, group_size=6, max_ratio=None)  # no cap: fill the group
    assert len({g.problem_id: g for g in groups}["a"].labels) == 6
    groups, _ = build_rm_groups(samples, group_size=4, max_ratio=1.0)
    assert all(sum(g.labels) * 2 == len(g.labels) <= 4 for g in groups)


def test_rm_groups_take_fill_samples_only_to_complete_a_side_and_skip_duplicates_and_ungraded():
    main = graded("p", ["correct"] * 4) + [Sample(problem_id="p", prompt="Qp", response="p answer 0",
                                                   verdict="correct"),
                                            Sample(problem_id="p", prompt="Qp", response="new", verdict=None)]
    fill = [Sample(problem_id="p", prompt="Qp", response="wrong one", verdict="incorrect", model="other"),
            Sample(problem_id="only-in-fill", prompt="Q", response="r", verdict="incorrect")]
    groups, report = build_rm_groups(main, fill=fill)
    assert [g.problem_id for g in groups] == ["p"]
    assert "other" in groups[0].models and sum(groups[0].labels) == 2
    assert (report.duplicate_samples, report.ungraded_samples) == (1, 1)


def test_rm_groups_are_reproducible_and_split_by_problem():
    samples = [s for i in range(20) for s in graded(str(i), ["correct", "incorrect"] * 4)]
    first, _ = build_rm_groups(samples, seed=3)
    again, _ = build_rm_groups(list(reversed(samples)), seed=3)
    assert {g.problem_id: g.responses for g in first} == {g.problem_id: g.responses for g in again}
    train, heldout = split_groups(first, 0.25, seed=0)
    assert len(heldout) == 5 and not {g.problem_id for g in train} & {g.problem_id for g in heldout}


# ---- decontamination -------------------------------------------------------------------------------------------

TEST_QUESTION = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
                 "How many clips did Natalia sell altogether in April and May?")


@pytest.mark.parametrize("text, contaminated", [
    (TEST_QUESTION, True),
    ("NATALIA sold clips to 48 of her friends in April; and then she sold half as many clips in May!! "
     "How many clips in total?", True),  # 13-gram after normalisation + most of the question
    ("Problem: " + TEST_QUESTION + " Solution: 48 + 24 = 72, so \\boxed{72}.", True),  # quotes the question
    ("Tom sold clips to 48 of his friends in April, and then he sold twice as many pencils in June.", False),
    # shares a 13-gram with the question but is a long unrelated text otherwise
    ("sold clips to 48 of her friends in April, and then she sold half as many " + "other words " * 40, False),
])
def test_contamination_needs_a_shared_13_gram_and_a_high_lcs_ratio(text, contaminated):
    index = ContaminationIndex.from_texts([("q", TEST_QUESTION), ("r", "What is 2 + 2?")])
    assert (index.match(text, local=True) is not None) is contaminated


def test_contaminated_samples_are_left_out_of_rm_groups():
    samples = graded("x", ["correct", "incorrect", "incorrect"])
    samples[1].response = TEST_QUESTION
    groups, report = build_rm_groups(samples, test_texts=[TEST_QUESTION])
    assert report.contaminated_samples == 1 and TEST_QUESTION not in groups[0].responses


# ---- training --------------------------------------------------------------------------------------------------

def synthetic_samples(n_problems: int, seed: int = 0) -> list[Sample]:
    """Responses ending in \\boxed{7} are correct, others wrong; the rest of the text is noise."""
    rng = random.Random(seed)
    words = ["eggs", "step", "so", "x", "Let", "then", "sells", "has"]
    samples = []
    for i in range(n_problems):
        for j in range(6):
            answer = "7" if j < 3 else rng.choice("1234589")
            filler = " ".join(rng.choice(words) for _ in range(rng.randint(2, 6)))
            samples.append(Sample(problem_id=f"p{i}", prompt=PROMPT.format(i=i), sample_index=j,
                                  response=f"{filler} {rng.randint(10, 99)}. The answer is \\boxed{{{answer}}}.",
                                  verdict="correct" if answer == "7" else "incorrect"))
    return samples


def rm_config(tmp_path, model_dir, n_problems=48, **changes):
    from mathloop.train.rm import RMTrainConfig

    path = tmp_path / f"samples-{n_problems}.jsonl"
    if not path.exists():
        write_jsonl(path, synthetic_samples(n_problems))
    settings = dict(samples=[str(path)], output_dir=str(tmp_path / "run"), model=str(model_dir),
                    heldout_fraction=0.25, learning_rate=3e-3, epochs=6, groups_per_batch=4, max_length=64,
                    max_ratio=None, seed=0)
    return RMTrainConfig(**{**settings, **changes})


@pytest.fixture(scope="module")
def trained_rm(tiny_model_dir, tmp_path_factory):
    from mathloop.train.rm import train

    tmp_path = tmp_path_factory.mktemp("rm-train")
    summary = train(rm_config(tmp_path, tiny_model_dir, eval_every=27))
    return summary, tmp_path


@pytest.mark.training
def test_training_learns_to_rank_correct_responses_first(trained_rm):
    summary, tmp_path = trained_rm
    assert summary["step"] == summary["total_steps"] == 6 * 9  # 36 train groups / 4 per batch, 6 epochs
    assert summary["heldout_accuracy"] >= 0.8, summary
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 55))
    assert "heldout_accuracy" in rows[26] and rows[-1]["loss"] < rows[0]["loss"]
    assert json.loads((tmp_path / "run" / "run.json").read_text())["data"]["groups"] == 48


@pytest.mark.training
def test_score_cli_writes_an_rm_score_for_every_sample(trained_rm, tmp_path):
    from mathloop.cli import main

    summary, _ = trained_rm
    samples = synthetic_samples(3, seed=5)
    write_jsonl(tmp_path / "in.jsonl", samples)
    assert main(["score", "--rm", summary["final"], "--input", str(tmp_path / "in.jsonl"),
                 "--output", str(tmp_path / "out.jsonl"), "--batch-size", "4"]) == 0
    scored = read_records(Sample, tmp_path / "out.jsonl")
    assert len(scored) == len(samples) and all(isinstance(s.rm_score, float) for s in scored)
    best_of_six = [max(scored[i:i + 6], key=lambda s: s.rm_score) for i in range(0, 18, 6)]
    assert all(s.verdict == "correct" for s in best_of_six)  # RM@6 picks a \boxed{7} response
    assert not list(tmp_path.glob("*rm-progress*"))  # the resume file goes once the output is written


@pytest.mark.training
def test_eval_with_rm_scores_every_sample_reports_rm_at_k_and_rescores_only_for_another_rm(trained_rm, tmp_path,
                                                                                           data_dir):
    import shutil

    from mathloop.backends.fake import FakeBackend
    from mathloop.pipeline.evaluate import EvalConfig, run_eval

    summary, _ = trained_rm
    # Janet's ducks (gold 18): samples 0-1 right, 2-3 wrong; the other problem: all wrong.
    answers = FakeBackend(lambda prompt, i: "so x has 18. The answer is \\boxed{18}." if "Janet" in prompt and i < 2
                          else f"step then {i}. The answer is \\boxed{{{i + 300}}}.")
    config = EvalConfig(model="fake", benchmarks=["gsm8k"], out=str(tmp_path / "run"), backend="fake", limit=2,
                        n=4, temperature=0.8, data_dir=str(data_dir), rm=summary["final"], rm_batch_size=3)
    result = run_eval(config, backend=answers, progress=False)
    samples = read_records(Sample, tmp_path / "run" / "samples" / "gsm8k.jsonl")
    assert len(samples) == 8 and all(isinstance(s.rm_score, float) for s in samples)
    assert {s.metadata["rm"] for s in samples} == {summary["final"]}
    gsm = result["benchmarks"]["gsm8k"]
    assert {"rm@1", "rm@4", "maj@4", "pass@4"} <= set(gsm)
    assert gsm["pass@4"]["mean"] == pytest.approx(0.5) and 0.0 <= gsm["rm@4"]["mean"] <= 0.5

    before = {(s.problem_id, s.sample_index): s.rm_score for s in samples}
    run_eval(config, backend=answers, progress=False)  # same RM: nothing to generate, nothing rescored
    again = read_records(Sample, tmp_path / "run" / "samples" / "gsm8k.jsonl")
    assert {(s.problem_id, s.sample_index): s.rm_score for s in again} == before

    other = tmp_path / "other-rm"
    shutil.copytree(summary["final"], other)
    run_eval(EvalConfig(**{**config.__dict__, "rm": str(other)}), backend=answers, progress=False)
    rescored = read_records(Sample, tmp_path / "run" / "samples" / "gsm8k.jsonl")
    assert {s.metadata["rm"] for s in rescored} == {str(other)}
    assert [s.response for s in rescored] == [s.response for s in samples]  # generations kept
    assert json.loads((tmp_path / "run" / "run.json").read_text())["config"]["rm"] == str(other)


@pytest.mark.training
def test_resumed_training_continues_from_the_checkpoint_and_matches_an_uninterrupted_run(tiny_model_dir, tmp_path):
    from mathloop.cli import main
    from mathloop.train.checkpoint import latest_checkpoint
    from mathloop.train.rm import train

    small = dict(n_problems=12, epochs=2, groups_per_batch=5)  # 9 train groups: 2 steps per epoch, 4 in all
    straight = train(rm_config(tmp_path, tiny_model_dir, output_dir=str(tmp_path / "straight"), **small))
    config = rm_config(tmp_path, tiny_model_dir, output_dir=str(tmp_path / "resumed"), **small)
    first = train(config, stop_after=3)  # interrupted in the middle of the second epoch
    assert first["step"] == 3 and first["final"] is None
    assert latest_checkpoint(tmp_path / "resumed").name == "step-000003"
    (tmp_path / "rm.yaml").write_text(json.dumps({k: v for k, v in vars(config).items() if k != "epochs"}))
    assert main(["rm", "train", "--config", str(tmp_path / "rm.yaml"), "--epochs", "2"]) == 0
    steps = [json.loads(line)["step"] for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4] and straight["step"] == straight["total_steps"] == 4

    samples = synthetic_samples(2, seed=9)
    scores = []
    for run in ("straight", "resumed"):
        model, tokenizer = load_reward_model(str(tmp_path / run / "final"), device="cpu")
        scores.append(score_samples(model, tokenizer, samples))
    assert scores[0] == pytest.approx(scores[1], abs=1e-5)


def test_resume_refuses_other_settings(tiny_model_dir, tmp_path):
    from mathloop.train.rm import train

    train(rm_config(tmp_path, tiny_model_dir, n_problems=12, epochs=1, groups_per_batch=9), stop_after=1)
    with pytest.raises(ValueError, match="groups_per_batch"):
        train(rm_config(tmp_path, tiny_model_dir, n_problems=12, epochs=1, groups_per_batch=4))


def test_lora_training_updates_adapters_and_head_and_saves_a_merged_model(tiny_model_dir, tmp_path):
    pytest.importorskip("peft")
    from mathloop.train.rm import build_model, train

    config = rm_config(tmp_path, tiny_model_dir, n_problems=12, lora=True, lora_rank=4, epochs=1,
                       groups_per_batch=5, micro_batch_groups=2, gradient_checkpointing=True)
    model, _ = build_model(config, torch.device("cpu"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("head.") for n in trainable)
    top_only, _ = build_model(rm_config(tmp_path, tiny_model_dir, lora=True, lora_layers=1), torch.device("cpu"))
    adapted = {n.split("layers.")[1].split(".")[0] for n, p in top_only.named_parameters()
               if p.requires_grad and "lora_" in n}
    assert adapted == {"1"}  # the last of the tiny model's two layers
    summary = train(config)
    loaded, tokenizer = load_reward_model(summary["final"], device="cpu")
    assert not any("lora_" in n for n, _ in loaded.named_parameters())
    assert len(score_samples(loaded, tokenizer, synthetic_samples(1))) == 6


def test_config_file_errors_name_the_key(tmp_path):
    from mathloop.config import load_settings
    from mathloop.train.rm import RMTrainConfig

    (tmp_path / "bad.yaml").write_text("samples: [a.jsonl]\noutput_dir: out\nlearning_rat: 0.1\n")
    with pytest.raises(ValueError, match="bad.yaml: unknown key.*learning_rat"):
        load_settings(RMTrainConfig, str(tmp_path / "bad.yaml"))
