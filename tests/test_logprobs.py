"""completion_logprobs: the chunked head on completion positions gives the plain computation's values and gradients."""

import pytest
import torch

from mathloop.train.logprobs import _ChunkedHeadLogprobs, completion_logprobs

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def plain_logprobs(model, ids, attention, mask, temperature=1.0):
    """The reference: full logits over every position, log-softmax, the mask applied afterwards."""
    logits = model(input_ids=ids, attention_mask=attention, use_cache=False).logits[:, :-1].float() / temperature
    logp = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    probs = torch.softmax(logits, dim=-1)
    entropy = -(probs * torch.log_softmax(logits, dim=-1)).sum(-1)
    return logp.masked_fill(~mask, 0.0), entropy.masked_fill(~mask, 0.0).detach()


def batch(vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (3, 11), generator=g)
    attention = torch.ones_like(ids)
    attention[1, 8:] = 0  # right padding
    mask = torch.zeros(3, 10, dtype=torch.bool)
    mask[0, 4:] = True
    mask[1, 2:7] = True
    mask[2, 9] = True
    return ids, attention, mask


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("lora", [False, True])
def test_chunked_head_matches_the_full_logits(tiny_model_dir, temperature, lora):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    if lora:
        from mathloop.models import add_lora, lora_config

        model = add_lora(model, lora_config("test", 4, 8, init_lora_weights=False))
    ids, attention, mask = batch(model.config.vocab_size)
    weights = torch.randn(mask.shape)  # a per-token weight, as GRPO's advantages and SFT's rewards are

    want, want_entropy = plain_logprobs(model, ids, attention, mask, temperature)
    (want * weights).sum().backward()
    want_grads = grads(model)
    model.zero_grad(set_to_none=True)

    got, got_entropy = completion_logprobs(model, ids, attention, mask, temperature=temperature, chunk_size=4,
                                           entropy=True)
    (got * weights).sum().backward()
    got_grads = grads(model)

    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_entropy, want_entropy, atol=1e-5, rtol=1e-5)
    assert got_grads.keys() == want_grads.keys() and want_grads
    for name in want_grads:
        torch.testing.assert_close(got_grads[name], want_grads[name], atol=1e-5, rtol=1e-4, msg=name)
    assert (got[~mask] == 0).all()


def test_the_function_with_a_bias_against_autograd():
    """Hand-sized case: hidden (5, 3), a 7-word vocabulary with a bias; chunk 2 splits the positions unevenly."""
    torch.manual_seed(1)
    hidden = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(7, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([0, 6, 3, 3, 1])
    upstream = torch.randn(5, dtype=torch.float64)

    logits = (hidden @ weight.T + bias) / 0.5
    want = torch.log_softmax(logits, -1).gather(-1, targets[:, None]).squeeze(-1)
    want_grads = torch.autograd.grad((want * upstream).sum(), (hidden, weight, bias))
    got, _ = _ChunkedHeadLogprobs.apply(hidden, weight, bias, targets, 0.5, 2, False)
    got_grads = torch.autograd.grad((got * upstream).sum(), (hidden, weight, bias))
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g.double(), w, atol=1e-5, rtol=1e-5)


def test_no_logits_are_kept_for_the_backward_pass(tiny_model_dir):
    """What autograd saves for the head is the hidden states of the masked positions, not (tokens, vocab) logits."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    ids, attention, mask = batch(model.config.vocab_size)
    vocab = model.config.vocab_size
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        completion_logprobs(model, ids, attention, mask)
    head_weight = {(vocab, model.config.hidden_size), (model.config.hidden_size, vocab)}
    logits_like = [s for s in saved if s[-1] == vocab and tuple(s) not in head_weight and s[:-1].numel() > ids.shape[0]]
    assert saved and not logits_like, logits_like
