"""Benchmark: one training step of SFT, RM and GRPO, before and after each of issue 31's changes, on this CPU.

Each row runs in its own process (so its peak RSS is its own): load the model, one warm-up step, then the best of
`--repeats` timed steps. A step is forward + backward + AdamW over a fixed synthetic batch shaped like the loop's:
  sft   `--sft-batch` examples of a ~100-token prompt and a `--max-new-tokens // 2`..`--max-new-tokens` response,
        the loss of `mathloop.train.sft_loss` on `completion_logprobs`, LoRA (the loop's CPU config);
  rm    `--rm-groups` groups of 6 such responses, scored by the reward model, the listwise loss, LoRA;
  grpo  the update of one GRPO step: `--queries` x `--group-size` rollouts (half the groups flat, as in the issue's
        step 1), micro-batches of `--micro-batch`, LoRA; rollouts are not included (generation is measured by
        bench/generate.py).
Columns: wall seconds of the step, tokens (non-padding) per second, the FLOPs the step executed (matmuls and
attention, counted by torch's FlopCounterMode in the untimed warm-up step), the achieved FLOP/s as a fraction of
this machine's float32 matmul peak (measured here, same threads), and the peak RSS.

Variants (cumulative within a trainer, "before" first):
  before       the LM head over every position, full (tokens, vocab) logits (the code before issue 31)
  chunked      completion positions only, chunked over the vocabulary (`completion_logprobs`)
  beta0        grpo: beta = 0, no reference forward (a setting; the old code skipped it too)
  skip         grpo: rollouts of advantage 0 skipped (`skip_zero_advantage`)
  sorted       grpo: micro-batches sorted by length (`sort_by_length`)
  top-N        LoRA in the top N blocks only (`lora_layers`)

Usage: python bench/train.py [--model smollm2] [--lora-layers 4] [--threads 2] [--only sft,rm,grpo] [--out FILE.md]
Run it alone (under the heavy-job lock on a shared machine): every figure is wall time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

try:
    import mathloop  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

VARIANTS = {
    "sft": [("before", {"plain": True}), ("chunked", {}), ("top-N", {"lora_layers": True})],
    "rm": [("before", {}), ("top-N", {"lora_layers": True})],
    "grpo": [("before", {"plain": True, "beta": 1e-3, "skip_zero_advantage": False, "sort_by_length": False}),
             ("chunked", {"beta": 1e-3, "skip_zero_advantage": False, "sort_by_length": False}),
             ("beta0", {"beta": 0.0, "skip_zero_advantage": False, "sort_by_length": False}),
             ("skip", {"beta": 0.0, "sort_by_length": False}),
             ("sorted", {"beta": 0.0}),
             ("top-N", {"beta": 0.0, "lora_layers": True}),
             # as the trainer runs on a CPU with native bfloat16: autocast over float32 weights, then a bfloat16
             # frozen base (`dtype: bfloat16`; the adapters stay float32)
             ("top-N-autocast", {"beta": 0.0, "lora_layers": True, "autocast": True}),
             ("top-N-bf16", {"beta": 0.0, "lora_layers": True, "autocast": True, "dtype": "bfloat16"})],
}


def matmul_peak(threads: int, n: int = 2048, repeats: int = 5) -> float:
    """The best float32 FLOP/s of an n x n matmul on `threads` threads."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best


def synthetic_texts(tokenizer, count: int, max_new_tokens: int, seed: int) -> tuple[list[str], list[list[int]]]:
    """`count` chat prompts of GSM8K-like length and random responses of max_new_tokens // 2 .. max_new_tokens
    tokens (the content does not matter for the time of a step)."""
    g = torch.Generator().manual_seed(seed)
    question = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
                "How many clips did Natalia sell altogether in April and May? Please reason step by step.")
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                           add_generation_prompt=True)
    vocab = min(len(tokenizer), 30000)
    responses = [torch.randint(100, vocab, (int(torch.randint(max_new_tokens // 2, max_new_tokens + 1, (1,),
                                                             generator=g)),), generator=g).tolist()
                 for _ in range(count)]
    return [prompt] * count, responses


def run_one(trainer: str, variant: str, args: argparse.Namespace) -> dict:
    """One row: build the model and batch, warm up, time `repeats` steps, count one step's FLOPs."""
    from torch.utils.flop_counter import FlopCounterMode

    from mathloop.models import load_tokenizer, resolve_model

    began = time.perf_counter()
    torch.set_num_threads(args.threads)
    settings = dict(dict(VARIANTS[trainer])[variant])
    if settings.pop("plain", False):
        import mathloop.train.logprobs as logprobs

        logprobs._decoder_and_head = lambda model: None  # the full-logits path: the code before issue 31
    lora_layers = args.lora_layers if settings.pop("lora_layers", False) else None
    mixed = settings.pop("autocast", False)
    path, _ = resolve_model(args.model)
    tokenizer = load_tokenizer(path)
    built, tokens = {"sft": sft_step, "rm": rm_step, "grpo": grpo_step}[trainer](path, tokenizer, lora_layers,
                                                                                 settings, args)

    def step():
        from mathloop.hardware import autocast

        with autocast("cpu") if mixed else contextlib.nullcontext():
            built()

    loaded = time.perf_counter()
    with FlopCounterMode(display=False) as counter:  # the warm-up step, counted (its time is not used)
        step()
    print(f"{trainer} {variant}: built in {loaded - began:.1f} s, warm-up step {time.perf_counter() - loaded:.1f} s",
          file=sys.stderr, flush=True)
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    peak_rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # Linux: kilobytes
    return {"trainer": trainer, "variant": variant, "seconds": min(times), "tokens": tokens,
            "flops": counter.get_total_flops(), "peak_rss_gb": peak_rss_gb}


def lora_model(path: str, lora_layers: int | None, seed: int = 0):
    from mathloop.models import add_lora, load_causal_lm, lora_config, top_layer_lora

    model = load_causal_lm(path, torch.float32)
    torch.manual_seed(seed)
    return add_lora(model, lora_config("bench", 16, 32, task_type="CAUSAL_LM", **top_layer_lora(model, lora_layers)))


def sft_step(path, tokenizer, lora_layers, settings, args):
    from mathloop.tokens import pad_batch, pad_token_id
    from mathloop.train.logprobs import completion_logprobs
    from mathloop.train.sft_loss import sft_token_loss

    model = lora_model(path, lora_layers).train()
    prompts, responses = synthetic_texts(tokenizer, args.sft_batch, args.max_new_tokens, seed=1)
    rows, starts = [], []
    for prompt, response in zip(prompts, responses):
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        rows.append(ids + response)
        starts.append(len(ids))
    input_ids, attention_mask = pad_batch(rows, pad_token_id(tokenizer), side="right")
    loss_mask = torch.zeros(input_ids.shape[0], input_ids.shape[1] - 1, dtype=torch.bool)
    for i, (row, start) in enumerate(zip(rows, starts)):
        loss_mask[i, start - 1:len(row) - 1] = True
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    rewards = torch.ones(len(rows))

    def step():
        logp = completion_logprobs(model, input_ids, attention_mask, loss_mask)
        sft_token_loss(logp, loss_mask, rewards).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, int(attention_mask.sum())


def rm_step(path, tokenizer, lora_layers, settings, args):
    from mathloop.models import add_lora, lora_config, top_layer_lora
    from mathloop.reward.data import RMGroup
    from mathloop.reward.loss import listwise_loss
    from mathloop.reward.model import RewardModel
    from mathloop.train.rm import group_scores

    model = RewardModel.from_backbone(path, dtype=torch.float32)
    torch.manual_seed(0)
    model.backbone = add_lora(model.backbone, lora_config("bench", 16, 32, **top_layer_lora(model.backbone,
                                                                                             lora_layers)))
    model.train()
    prompts, responses = synthetic_texts(tokenizer, 6 * args.rm_groups, args.max_new_tokens, seed=2)
    texts = [tokenizer.decode(r) for r in responses]
    groups = [RMGroup(f"p{g}", prompts[6 * g:6 * g + 6], texts[6 * g:6 * g + 6], [True, False] * 3)
              for g in range(args.rm_groups)]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    tokens = sum(len(tokenizer(RewardModel.input_text(tokenizer, p, r))["input_ids"])
                 for g in groups for p, r in zip(g.prompts, g.responses))

    def step():
        scores, labels, mask = group_scores(model, tokenizer, groups, 4096, torch.device("cpu"))
        listwise_loss(scores, labels, mask).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, tokens


def grpo_step(path, tokenizer, lora_layers, settings, args):
    from mathloop.records import Problem, Sample
    from mathloop.train.grpo import GRPOConfig, Rollout, build_policy, micro_batch_loss, update_batches

    config = GRPOConfig(output_dir="unused", model=path, queries="unused", lora=True, micro_batch=args.micro_batch,
                        lora_layers=lora_layers, group_size=args.group_size, max_new_tokens=args.max_new_tokens,
                        **settings)
    model, _ = build_policy(config, torch.device("cpu"))
    model.train()
    prompts, responses = synthetic_texts(tokenizer, args.queries * args.group_size, args.max_new_tokens, seed=3)
    g = torch.Generator().manual_seed(4)
    advantages = [0.0 if (i // args.group_size) % 2 else float(torch.randn(1, generator=g))
                  for i in range(len(responses))]  # every other group flat
    rollouts = [Rollout(Sample(problem_id=f"q{i // args.group_size}", prompt=p, response="",
                               completion_tokens=len(r), finish_reason="stop"),
                        Problem(id=f"q{i // args.group_size}", benchmark="bench", question="", gold="72"),
                        ended_by_eos=True, token_ids=r, advantage=a)
                for i, (p, r, a) in enumerate(zip(prompts, responses, advantages))]
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate)
    prompt_tokens = len(tokenizer(prompts[0], add_special_tokens=False)["input_ids"])

    def step():
        batches, units, total = update_batches(tokenizer, rollouts, config, torch.device("cpu"))
        for batch, n in zip(batches, units):
            loss, _ = micro_batch_loss(model, None, batch, config)
            (loss * n / total).backward()
        if not batches:
            (sum(p.sum() for p in trainable) * 0.0).backward()
        torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, sum(prompt_tokens + len(r) for r in responses)


def table(rows: list[dict], peak: float) -> str:
    lines = ["| trainer | variant | step s | tokens/s | TFLOP in step | achieved GFLOP/s | of peak | peak RSS GB |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['trainer']} | {r['variant']} | {r['seconds']:.2f} | {r['tokens'] / r['seconds']:.0f} | "
                     f"{r['flops'] / 1e12:.3f} | {r['flops'] / r['seconds'] / 1e9:.1f} | "
                     f"{r['flops'] / r['seconds'] / peak:.0%} | {r['peak_rss_gb']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2", help="'smollm2' (SmolLM2-135M), 'default' (0.5B) or a folder")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--only", default="sft,rm,grpo", help="comma-separated trainers")
    parser.add_argument("--variants", default=None, help="comma-separated variant names (default: all)")
    parser.add_argument("--lora-layers", type=int, default=4, help="the top-N variant's blocks with adapters")
    parser.add_argument("--max-new-tokens", type=int, default=320)
    parser.add_argument("--queries", type=int, default=2, help="grpo: groups per step")
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--sft-batch", type=int, default=8)
    parser.add_argument("--rm-groups", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="timed steps per row (the best is shown)")
    parser.add_argument("--out", help="also write the table (Markdown) to this file")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # trainer:variant, in a child process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(*args.one.split(":"), args)))
        return

    from mathloop.hardware import hardware_info

    info = hardware_info("cpu")
    peak = matmul_peak(args.threads)
    header = (f"cpu: {info['cpu']}; cores: {info['cpu_count']}; torch capability: {info['cpu_capability']}; "
              f"threads: {args.threads}; float32 matmul peak (2048^3): {peak / 1e9:.1f} GFLOP/s; model: {args.model}")
    print(header, flush=True)
    rows = []
    for trainer in args.only.split(","):
        for variant, _ in VARIANTS[trainer]:
            if args.variants and variant not in args.variants.split(","):
                continue
            done = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--one", f"{trainer}:{variant}"],
                                  capture_output=True, text=True)
            if done.returncode:
                why = ("killed by SIGKILL (out of memory?)" if done.returncode == -9 else
                       f"exit {done.returncode}\n{done.stderr[-2000:]}")
                print(f"{trainer} {variant}: failed, {why}", file=sys.stderr)
                continue
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(table(rows[-1:], peak).splitlines()[-1], flush=True)
    text = f"{header}\n\n{table(rows, peak)}\n"
    print("\n" + text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
