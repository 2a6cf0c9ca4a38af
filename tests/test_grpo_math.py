"""The GRPO math (advantages, clipped surrogate, k3 KL, executor-output masks) against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from mathloop.train.grpo_math import (
    aggregate_token_loss,
    aggregation_units,
    clipped_surrogate_loss,
    drop_truncated,
    group_advantages,
    grpo_loss,
    k3_kl,
    masked_sequence_mean,
    soft_overlong_penalty,
    token_entropy,
    token_logprobs,
    truncated_importance_weights,
    zero_variance_groups,
)
from mathloop.tokens import response_loss_mask, tool_output_token_mask

# --- advantages ---------------------------------------------------------------------------------------------------


def test_advantages_use_sample_std():
    # [1, 0, 0, 1]: mean 0.5, deviations +-0.5, sample variance (4 * 0.25) / 3 = 1/3, std 0.57735.
    adv = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0]]), eps=0.0)
    expected = 0.5 / math.sqrt(1 / 3)  # 0.866025
    assert torch.allclose(adv, torch.tensor([[expected, -expected, -expected, expected]]), atol=1e-6)


def test_advantages_per_group_and_scale_none():
    rewards = torch.tensor([[3.0, 1.0], [0.0, 4.0]])
    # each group: deviations +-1 (+-2), sample std sqrt(2) (2 sqrt(2)) -> +-1/sqrt(2) in both
    s = 1 / math.sqrt(2)
    assert torch.allclose(group_advantages(rewards, eps=0.0), torch.tensor([[s, -s], [-s, s]]), atol=1e-6)
    assert torch.equal(group_advantages(rewards, scale="none"), torch.tensor([[1.0, -1.0], [-2.0, 2.0]]))


def test_equal_rewards_give_exact_zeros():
    rewards = torch.tensor([[0.1, 0.1, 0.1], [-0.7, -0.7, -0.7], [1.0, 1.0, 1.0]])
    assert torch.equal(group_advantages(rewards), torch.zeros(3, 3))
    assert torch.equal(group_advantages(torch.tensor([[0.3], [5.0]])), torch.zeros(2, 1))  # groups of one
    flat = group_advantages(torch.tensor([0.1, 0.1, 2.0, 0.1]), group_ids=[0, 0, 1, 0])
    assert torch.equal(flat, torch.zeros(4))


def test_flat_with_group_ids_matches_rows():
    rows = torch.tensor([[0.2, -0.4, 0.9, 0.9], [0.5, -0.5, 0.0, 0.3]])
    by_row = group_advantages(rows)
    order = torch.tensor([5, 0, 7, 2, 6, 1, 3, 4])  # interleave the two groups
    flat = rows.flatten()[order]
    ids = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])[order] * 10 + 3  # arbitrary, non-contiguous ids
    assert torch.allclose(group_advantages(flat, group_ids=ids), by_row.flatten()[order], atol=1e-6)


def test_advantages_reject_bad_input():
    with pytest.raises(ValueError, match="group_ids"):
        group_advantages(torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="scale"):
        group_advantages(torch.tensor([[1.0, 0.0]]), scale="max")


# --- token log-probabilities --------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [1, 3, 1000])
def test_token_logprobs_match_log_softmax_and_its_gradient(chunk_size):
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7, requires_grad=True)
    tokens = torch.randint(0, 7, (2, 5))
    got = token_logprobs(logits, tokens, chunk_size=chunk_size)
    ref = torch.log_softmax(logits, -1).gather(-1, tokens[..., None]).squeeze(-1)
    assert torch.allclose(got, ref, atol=1e-6)
    (g_got,) = torch.autograd.grad(got.sum(), logits)
    (g_ref,) = torch.autograd.grad(ref.sum(), logits)
    assert torch.allclose(g_got, g_ref, atol=1e-6)


def test_token_logprobs_temperature_and_bf16():
    logits = torch.tensor([[[2.0, 0.0]]])
    # temperature 2: softmax([1, 0]) -> log(e / (e + 1)) = -0.313262
    assert token_logprobs(logits, torch.tensor([[0]]), temperature=2.0).item() == pytest.approx(-0.313262, abs=1e-6)
    out = token_logprobs(logits.bfloat16(), torch.tensor([[1]]))
    assert out.dtype == torch.float32 and out.item() == pytest.approx(-2.126928, abs=1e-5)


# --- clipped surrogate --------------------------------------------------------------------------------------------


def _one_token_batch(ratios, advantages, clip_eps=0.2, clip_eps_high=None):
    """B sequences of one token each, old_logp = 0 so the ratio is exp(logp). Returns (loss, stats, dloss/dlogp)."""
    logp = torch.log(torch.tensor(ratios))[:, None].requires_grad_()
    loss, stats = clipped_surrogate_loss(logp, torch.zeros_like(logp), torch.tensor(advantages),
                                         torch.ones_like(logp, dtype=torch.bool), clip_eps, clip_eps_high)
    (grad,) = torch.autograd.grad(loss, logp)
    return loss, stats, grad.squeeze(-1)


def test_surrogate_gradient_vanishes_only_where_the_clip_binds():
    # d(-rho * A)/d logp = -rho * A, divided by B = 4 for the mean over sequences.
    ratios = [1.5, 0.5, 1.5, 0.5]
    advantages = [1.0, -1.0, -1.0, 1.0]
    loss, stats, grad = _one_token_batch(ratios, advantages)
    # values: -min(1.5, 1.2) = -1.2; -min(-0.5, -0.8) = 0.8; -min(-1.5, -1.2) = 1.5; -min(0.5, 0.8) = -0.5
    assert loss.item() == pytest.approx((-1.2 + 0.8 + 1.5 - 0.5) / 4, abs=1e-6)
    assert grad.tolist() == pytest.approx([0.0, 0.0, 1.5 / 4, -0.5 / 4], abs=1e-6)
    assert stats["clip_fraction"].item() == pytest.approx(0.5)
    assert stats["clip_fraction_high"].item() == pytest.approx(0.25)
    assert stats["clip_fraction_low"].item() == pytest.approx(0.25)
    assert stats["ratio_mean"].item() == pytest.approx(1.0)
    assert stats["ratio_max"].item() == pytest.approx(1.5)


def test_surrogate_inside_the_trust_region_is_the_policy_gradient():
    _, stats, grad = _one_token_batch([1.1, 0.9], [2.0, -3.0])
    assert grad.tolist() == pytest.approx([-1.1 * 2.0 / 2, 0.9 * 3.0 / 2], abs=1e-6)
    assert stats["clip_fraction"].item() == 0.0


def test_clip_higher_widens_only_the_upper_bound():
    _, _, grad = _one_token_batch([1.25, 0.75], [1.0, -1.0], clip_eps=0.2, clip_eps_high=0.28)
    assert grad.tolist() == pytest.approx([-1.25 / 2, 0.0], abs=1e-6)  # 1.25 < 1.28 still learns; 0.75 < 0.8 clipped
    _, _, grad = _one_token_batch([1.25], [1.0])
    assert grad.tolist() == [0.0]


def test_sequences_of_different_length_weigh_equally():
    # sequence 0: one token, A = +1; sequence 1: three tokens, A = -1 (fourth position is padding)
    logp = torch.zeros(2, 4, requires_grad=True)
    mask = torch.tensor([[True, False, False, False], [True, True, True, False]])
    loss, _ = clipped_surrogate_loss(logp, logp.detach(), torch.tensor([1.0, -1.0]), mask)
    (grad,) = torch.autograd.grad(loss, logp)
    assert loss.item() == pytest.approx(0.0, abs=1e-7)  # (-1 + 1) / 2
    expected = torch.tensor([[-1 / 2, 0.0, 0.0, 0.0], [1 / 6, 1 / 6, 1 / 6, 0.0]])
    assert torch.allclose(grad, expected, atol=1e-7)
    # token_mean (DAPO) instead weighs every token the same: 1/4 each
    loss, _ = clipped_surrogate_loss(logp, logp.detach(), torch.tensor([1.0, -1.0]), mask, aggregation="token_mean")
    (grad,) = torch.autograd.grad(loss, logp)
    assert torch.allclose(grad, torch.tensor([[-0.25, 0, 0, 0], [0.25, 0.25, 0.25, 0]]), atol=1e-7)


def test_masked_tokens_get_zero_gradient_even_with_garbage_values():
    logp = torch.tensor([[-0.5, -1.0, 50.0], [-0.2, -300.0, -0.1]], requires_grad=True)
    old = torch.tensor([[-0.6, -1.0, -80.0], [-0.2, 0.0, -0.1]])
    ref = torch.tensor([[-0.5, -0.9, -1e4], [-0.3, 1e4, -0.1]])
    mask = torch.tensor([[True, True, False], [True, False, True]])
    loss, stats = grpo_loss(logp, old, torch.tensor([1.0, -2.0]), mask, ref, beta=0.1)
    (grad,) = torch.autograd.grad(loss, logp)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    assert grad[0, 2] == 0.0 and grad[1, 1] == 0.0
    assert grad[0, 0] != 0.0 and grad[1, 2] != 0.0
    assert math.isfinite(stats["ratio_max"].item())


def test_advantages_per_token_are_accepted():
    logp = torch.zeros(1, 2, requires_grad=True)
    mask = torch.ones(1, 2, dtype=torch.bool)
    loss, _ = clipped_surrogate_loss(logp, logp.detach(), torch.tensor([[1.0, 3.0]]), mask)
    assert loss.item() == pytest.approx(-2.0)
    with pytest.raises(ValueError, match="advantages"):
        clipped_surrogate_loss(logp, logp.detach(), torch.tensor([1.0, 2.0, 3.0]), mask)


def test_empty_mask_gives_zero_loss_that_backpropagates():
    logp = torch.zeros(2, 3, requires_grad=True)
    loss, stats = grpo_loss(logp, None, torch.tensor([1.0, -1.0]), torch.zeros(2, 3, dtype=torch.bool), logp.detach())
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logp.grad, torch.zeros(2, 3))
    assert stats["clip_fraction"].item() == 0.0


# --- KL -----------------------------------------------------------------------------------------------------------


def test_k3_values():
    logp = torch.log(torch.tensor([0.5, 0.25, 0.5, 0.1]))
    ref = torch.log(torch.tensor([0.5, 0.5, 0.25, 0.3]))
    # exp(d) - d - 1 with d = ref - logp: 0; 2 - ln 2 - 1; 0.5 + ln 2 - 1; 3 - ln 3 - 1
    expected = [0.0, 1 - math.log(2), math.log(2) - 0.5, 2 - math.log(3)]
    assert k3_kl(logp, ref).tolist() == pytest.approx(expected, abs=1e-6)
    torch.manual_seed(1)
    a, b = torch.randn(1000) * 3, torch.randn(1000) * 3
    assert (k3_kl(a, b) >= 0).all()


def test_k3_gradient_and_clamp():
    logp = torch.tensor([-1.0, -2.0], requires_grad=True)
    ref = torch.tensor([-2.0, -1.0], requires_grad=True)
    (grad,) = torch.autograd.grad(k3_kl(logp, ref).sum(), logp)
    # d/dlogp (exp(d) - d - 1) = 1 - exp(d), d = ref - logp = [-1, 1]
    assert grad.tolist() == pytest.approx([1 - math.exp(-1), 1 - math.exp(1)], abs=1e-6)
    clamped = k3_kl(torch.tensor([-30.0]), torch.tensor([0.0]), max_log_ratio=5.0)
    assert clamped.item() == pytest.approx(math.exp(5) - 6, rel=1e-6)


def test_k3_estimates_the_kl_of_sampled_tokens():
    p = torch.tensor([0.6, 0.3, 0.1])
    q = torch.tensor([0.3, 0.3, 0.4])
    exact = (p * (p / q).log()).sum().item()
    gen = torch.Generator().manual_seed(0)
    tokens = torch.multinomial(p, 200_000, replacement=True, generator=gen)
    estimate = k3_kl(p.log()[tokens], q.log()[tokens]).mean().item()
    assert estimate == pytest.approx(exact, abs=0.01)


def test_masked_sequence_mean():
    values = torch.tensor([[2.0, 4.0, 100.0], [1.0, 1.0, 1.0], [5.0, 5.0, 5.0]])
    mask = torch.tensor([[True, True, False], [True, True, True], [False, False, False]])
    assert masked_sequence_mean(values, mask).tolist() == [3.0, 1.0, 0.0]


# --- the full loss ------------------------------------------------------------------------------------------------


def test_grpo_loss_is_surrogate_plus_beta_kl():
    torch.manual_seed(2)
    logp = (torch.randn(3, 4) - 2).requires_grad_()
    old = logp.detach() + 0.3 * torch.randn(3, 4)
    ref = logp.detach() + 0.5 * torch.randn(3, 4)
    adv = torch.tensor([0.7, -1.2, 0.5])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    loss, stats = grpo_loss(logp, old, adv, mask, ref, beta=1e-3)
    surrogate, _ = clipped_surrogate_loss(logp, old, adv, mask)
    kl = masked_sequence_mean(k3_kl(logp, ref), mask).mean()
    assert loss.item() == pytest.approx((surrogate + 1e-3 * kl).item(), abs=1e-6)
    assert stats["kl"].item() == pytest.approx(kl.item(), abs=1e-6)
    assert stats["policy_loss"].item() == pytest.approx(surrogate.item(), abs=1e-6)
    no_kl, stats = grpo_loss(logp, old, adv, mask)
    assert no_kl.item() == pytest.approx(surrogate.item()) and stats["kl"].item() == 0.0


def test_grpo_loss_on_policy_gradient():
    # old_logp None: ratio 1, gradient -A / |o_i| / B on every counted token, whatever the advantage's sign
    logp = torch.full((2, 2), -1.0, requires_grad=True)
    mask = torch.tensor([[True, True], [True, False]])
    loss, stats = grpo_loss(logp, None, torch.tensor([2.0, -1.0]), mask)
    (grad,) = torch.autograd.grad(loss, logp)
    assert loss.item() == pytest.approx((-2.0 + 1.0) / 2)
    assert torch.allclose(grad, torch.tensor([[-0.5, -0.5], [0.5, 0.0]]))
    assert stats["ratio_mean"].item() == 1.0


def test_aggregate_rejects_unknown_mode():
    with pytest.raises(ValueError, match="aggregation"):
        aggregate_token_loss(torch.zeros(1, 1), torch.ones(1, 1, dtype=torch.bool), "sum")


# --- executor-output masks ----------------------------------------------------------------------------------------


def test_tool_output_token_mask_hand_cases():
    # response "ab```output\n7\n```\ncd": the executor wrote "\n7\n```\n" = [11, 18)
    offsets = [(0, 2), (2, 5), (5, 11), (11, 12), (12, 13), (13, 14), (14, 17), (17, 19), (19, 20)]
    mask = tool_output_token_mask(offsets, [[11, 18]])
    # (17, 19) is "\nc": straddles the end, masked
    assert mask.tolist() == [True, True, True, False, False, False, False, False, True]
    assert tool_output_token_mask(offsets, []).tolist() == [True] * 9
    assert tool_output_token_mask(offsets, [[5, 5]]).tolist() == [True] * 9  # empty span covers nothing
    # two spans; a zero-width token inside a span is masked, one at a span's end is not
    mask = tool_output_token_mask([(0, 1), (1, 1), (1, 2), (2, 2), (2, 3), (3, 4)], [[1, 2], [3, 4]])
    assert mask.tolist() == [True, False, False, True, True, False]
    with pytest.raises(ValueError, match="start <= end"):
        tool_output_token_mask(offsets, [[4, 2]])


class CharTokenizer:
    """A "slow" tokenizer (no offsets): one id per character."""

    is_fast = False

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [ord(c) for c in text]}


def test_response_loss_mask_segment_fallback():
    response = "x=1\n```output\n2\n```\ndone"
    start = response.index("```output") + len("```output")
    end = start + len("\n2\n```\n")
    ids, mask = response_loss_mask(CharTokenizer(), response, [[start, end]])
    assert ids.tolist() == [ord(c) for c in response]
    assert mask.tolist() == [not (start <= i < end) for i in range(len(response))]
    with pytest.raises(ValueError, match="outside the response"):
        response_loss_mask(CharTokenizer(), response, [[0, len(response) + 1]])


@pytest.fixture(scope="module")
def fast_tokenizer():
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    corpus = ["What is 2 + 3? The answer is \\boxed{5}.", "```python\nprint(1 + 2)\n```\n```output\n3\n```"] * 10
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus, vocab_size=280, min_frequency=1, special_tokens=["<|endoftext|>"])
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>")


def test_response_loss_mask_with_a_fast_tokenizer(fast_tokenizer):
    head = "Compute:\n```python\nprint(1 + 2)\n```\n```output"
    executor = "\n3\n```\n"
    tail = "The answer is \\boxed{3}."
    response = head + executor + tail
    span = [len(head), len(head) + len(executor)]
    ids, mask = response_loss_mask(fast_tokenizer, response, [span])
    assert ids.tolist() == fast_tokenizer(response, add_special_tokens=False)["input_ids"]
    kept = fast_tokenizer.decode(ids[mask].tolist())
    dropped = fast_tokenizer.decode(ids[~mask].tolist())
    assert kept == head + tail and dropped == executor  # no BPE merge across the edges of this span
    # a span of one character inside a token ("p" of "output", tokenized "out" + "put"): the whole token is dropped
    ids, mask = response_loss_mask(fast_tokenizer, response, [[len(head) - 3, len(head) - 2]])
    assert fast_tokenizer.convert_ids_to_tokens(ids[~mask].tolist()) == ["put"]
    # the segment-wise path keeps exactly the model's text
    ids2, mask2 = response_loss_mask(fast_tokenizer, response, [span], use_offsets=False)
    assert fast_tokenizer.decode(ids2[mask2].tolist()) == head + tail
    assert fast_tokenizer.decode(ids2[~mask2].tolist()) == executor


# --- issue 17: the variants practitioners use (each against hand-computed values) --------------------------------


def test_batch_scale_divides_by_the_std_of_all_rewards():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 0.0], [2.0, 2.0, 2.0, 2.0]])
    # group means 0.25 and 2; batch mean 1.125, sum of squared deviations 3 * 1.125^2 + 0.125^2 + 4 * 0.875^2 = 6.875,
    # sample std sqrt(6.875 / 7) = 0.99103
    std = math.sqrt(6.875 / 7)
    adv = group_advantages(rewards, scale="batch", eps=0.0)
    assert torch.allclose(adv[0], torch.tensor([0.75, -0.25, -0.25, -0.25]) / std, atol=1e-6)
    assert torch.equal(adv[1], torch.zeros(4))  # a flat group still gives exact zeros
    assert torch.allclose(group_advantages(rewards.flatten(), group_ids=[0] * 4 + [1] * 4, scale="batch", eps=0.0),
                          adv.flatten(), atol=1e-6)


def test_zero_variance_groups():
    rewards = torch.tensor([[0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.3, 0.3, 0.3], [1e-7, 0.0, 0.0]])
    assert zero_variance_groups(rewards).tolist() == [True, False, True, False]
    with pytest.raises(ValueError, match="num_groups, G"):
        zero_variance_groups(torch.zeros(4))


def test_soft_overlong_penalty_ramps_over_the_buffer():
    # L_max 512, buffer 128: no penalty up to 384, then -(L - 384) / 128, -1 at and beyond 512.
    lengths = torch.tensor([100, 384, 385, 448, 511, 512, 600])
    expected = [0.0, 0.0, -1 / 128, -0.5, -127 / 128, -1.0, -1.0]
    assert soft_overlong_penalty(lengths, 512, 128).tolist() == pytest.approx(expected, abs=1e-6)
    assert soft_overlong_penalty(lengths, 512, 128, penalty=0.5).tolist() == pytest.approx(
        [x / 2 for x in expected], abs=1e-6)
    assert soft_overlong_penalty(torch.tensor([0, 5, 10]), 10, 10).tolist() == pytest.approx([0.0, -0.5, -1.0])
    with pytest.raises(ValueError, match="buffer"):
        soft_overlong_penalty(lengths, 512, 0)


def test_drop_truncated_masks_whole_responses_and_the_loss_ignores_them():
    mask = torch.tensor([[True, True, False], [True, True, True], [False, True, True]])
    kept = drop_truncated(mask, torch.tensor([False, True, False]))
    assert kept.tolist() == [[True, True, False], [False, False, False], [False, True, True]]
    values = torch.tensor([[1.0, 3.0, 0.0], [100.0, 100.0, 100.0], [0.0, 5.0, 7.0]])
    assert aggregate_token_loss(values, kept).item() == pytest.approx((2.0 + 6.0) / 2)  # the truncated row is out
    with pytest.raises(ValueError, match="truncated"):
        drop_truncated(mask, torch.tensor([True]))


def test_dr_grpo_aggregation_divides_by_a_constant():
    values = torch.tensor([[1.0, 2.0, 3.0, 0.0], [4.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True, False], [True, False, False, False]])
    # grpo: (6/3 + 4/1) / 2 = 3; dapo: 10 / 4 = 2.5; dr_grpo: 10 / (2 * 8) = 0.625
    assert aggregate_token_loss(values, mask).item() == pytest.approx(3.0)
    assert aggregate_token_loss(values, mask, "token_mean").item() == pytest.approx(2.5)
    assert aggregate_token_loss(values, mask, "seq_mean_token_sum_norm", max_tokens=8).item() == pytest.approx(0.625)
    with pytest.raises(ValueError, match="max_tokens"):
        aggregate_token_loss(values, mask, "seq_mean_token_sum_norm")


@pytest.mark.parametrize("aggregation", ["seq_mean_token_mean", "token_mean", "seq_mean_token_sum_norm"])
def test_micro_batches_weighted_by_their_units_give_the_batch_loss(aggregation):
    torch.manual_seed(1)
    values = torch.randn(7, 5)
    mask = torch.rand(7, 5) > 0.4
    mask[3] = False  # a response with no token in the loss (all executor output, or truncated and filtered)
    whole = aggregate_token_loss(values, mask, aggregation, max_tokens=5)
    total = aggregation_units(mask, aggregation)
    parts = [(values[i:i + 3], mask[i:i + 3]) for i in range(0, 7, 3)]
    summed = sum(aggregate_token_loss(v, m, aggregation, max_tokens=5) * aggregation_units(m, aggregation) / total
                 for v, m in parts)
    assert summed.item() == pytest.approx(whole.item(), abs=1e-6)


def test_asymmetric_clip_lets_good_tokens_rise_further():
    # ratio 1.25 with A > 0: clipped at 1.2 by the symmetric range (no gradient), inside clip_high 0.28 (gradient).
    loss, stats, grad = _one_token_batch([1.25, 0.75], [1.0, -1.0], clip_eps=0.2, clip_eps_high=0.28)
    assert loss.item() == pytest.approx((-1.25 + 0.8) / 2, abs=1e-6)  # -min(1.25, 1.28); -min(-0.75, -0.8)
    assert grad.tolist() == pytest.approx([-1.25 / 2, 0.0], abs=1e-6)
    assert stats["clip_fraction"].item() == pytest.approx(0.5) and stats["clip_fraction_low"].item() == 0.5
    _, stats, grad = _one_token_batch([1.25, 0.75], [1.0, -1.0], clip_eps=0.2)
    assert grad.tolist() == pytest.approx([0.0, 0.0]) and stats["clip_fraction"].item() == 1.0


def test_truncated_importance_weights_cap_the_ratio_and_report_it():
    old = torch.log(torch.tensor([[0.5, 0.9, 0.2, 0.1], [0.6, 0.4, 0.3, 0.2]]))
    mu = torch.log(torch.tensor([[0.5, 0.3, 0.4, 0.9], [0.2, 0.5, 0.3, 0.1]]))
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    weights, stats = truncated_importance_weights(old, mu, mask, cap=2.0)
    # ratios on the mask: 1, 3, 0.5 | 3, 0.8; capped at 2
    assert weights[mask].tolist() == pytest.approx([1.0, 2.0, 0.5, 2.0, 0.8], abs=1e-6)
    assert stats["is_ratio_mean"].item() == pytest.approx((1 + 3 + 0.5 + 3 + 0.8) / 5, abs=1e-6)
    assert stats["is_ratio_max"].item() == pytest.approx(3.0, abs=1e-5)
    assert stats["is_truncated_fraction"].item() == pytest.approx(2 / 5)
    assert not weights.requires_grad


def test_importance_weights_scale_each_tokens_policy_gradient_not_the_kl():
    logp = torch.log(torch.tensor([[0.5, 0.25]])).requires_grad_()
    mask = torch.ones(1, 2, dtype=torch.bool)
    weights = torch.tensor([[2.0, 0.5]])
    loss, _ = clipped_surrogate_loss(logp, logp.detach(), torch.tensor([1.0]), mask, is_weights=weights)
    (grad,) = torch.autograd.grad(loss, logp)
    # ratio 1: per token -w * A, token mean: -(2 + 0.5) / 2; gradient -w / 2 per token
    assert loss.item() == pytest.approx(-1.25) and grad[0].tolist() == pytest.approx([-1.0, -0.25])
    ref = torch.log(torch.tensor([[0.5, 0.5]]))
    with_kl, stats = grpo_loss(logp, None, torch.tensor([0.0]), mask, ref, beta=1.0, is_weights=weights)
    assert with_kl.item() == pytest.approx(stats["kl"].item()) == pytest.approx((0.0 + 0.306853) / 2, abs=1e-5)


def test_token_entropy_matches_the_definition():
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [2.0, 0.0, 0.0, -1.0]]])
    p = torch.softmax(logits[0, 1], -1)
    assert token_entropy(logits)[0].tolist() == pytest.approx([math.log(4), -(p * p.log()).sum().item()], abs=1e-6)
    hot = token_entropy(logits, temperature=0.5, chunk_size=1)  # temperature 0.5 doubles the logits
    p2 = torch.softmax(2 * logits[0, 1], -1)
    assert hot[0, 1].item() == pytest.approx(-(p2 * p2.log()).sum().item(), abs=1e-6)
