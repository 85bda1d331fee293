"""Notebook 3's checks cannot be fooled: the package references pass, and every wrong answer below - in
place, at one scale only, masking by token id, and each promised mistake - gets ✗ with its own message."""

import pytest
import torch

from rlhf_course import gpu_memory, sft
from rlhf_course.checks.core import run_check as run
from rlhf_course.checks.nb03_sft import (
    TINY_EOS,
    check_completion_labels,
    check_count_lora_params,
    check_lora_forward,
)
from rlhf_course.gpu_memory import Architecture, lora_parameter_count


@pytest.mark.parametrize("check_fn, reference", [(check_completion_labels, sft.completion_labels),
                                                 (check_lora_forward, sft.lora_forward),
                                                 (check_count_lora_params, gpu_memory.count_lora_params)])
def test_the_package_reference_passes(check_fn, reference):
    assert check_fn.reference is reference
    assert run(check_fn, reference)[0] is True


# --- completion_labels ----------------------------------------------------------------------------

def positions(input_ids):
    return torch.arange(input_ids.shape[1])[None, :]


def labels(input_ids, attention_mask, prompt_lengths, shift=0):
    prompt = positions(input_ids) < (prompt_lengths + shift)[:, None]
    return input_ids.masked_fill(prompt | (attention_mask == 0), -100)


def _in_place(ids, m, p):
    ids[positions(ids).expand_as(ids) < p[:, None]] = -100
    ids[m == 0] = -100
    return ids


def _shifted(ids, m, p):
    out = torch.full_like(ids, -100)
    out[:, :-1] = labels(ids, m, p)[:, 1:]
    return out


def _pad_by_id(ids, m, p):
    """Padding found as `input_ids == the pad token`: looks at the last token of the longest row (padding)."""
    pad = int(ids[m == 0][0])
    return ids.masked_fill((positions(ids) < p[:, None]) | (ids == pad), -100)


LABELS = [
    (lambda ids, m, p: ids.clone(), "nothing was masked"),
    (lambda ids, m, p: ids.masked_fill(m == 0, -100), "prompt tokens were not masked"),
    (lambda ids, m, p: ids.masked_fill(positions(ids) < p[:, None], -100), "padding positions were not masked"),
    (lambda ids, m, p: labels(ids, m, p).masked_fill(ids == TINY_EOS, -100), "end-of-turn token"),   # promised
    (_pad_by_id, "every token equal to the pad token"),
    (lambda ids, m, p: labels(ids, m, p, shift=1), "off by one"),
    (lambda ids, m, p: labels(ids, m, p, shift=-1), "off by one"),
    (lambda ids, m, p: ids.masked_fill((positions(ids) < p[:, None]) | (m == 0), 0), "not 0"),
    (_in_place, "changed `ids` in place"),
    (_shifted, "do not shift"),
]


# --- lora_forward ---------------------------------------------------------------------------------

def _scales_x_in_place(x, W, A, B, a, r):
    x *= 1.0  # the values are unchanged, but x is written: an expanded x raises
    return sft.lora_forward(x, W, A, B, a, r)


LORA = [
    (lambda x, W, A, B, a, r: x @ W.T + x @ A.T @ B.T, "scale alpha / r is missing"),
    (lambda x, W, A, B, a, r: x @ W.T + (r / a) * (x @ A.T @ B.T), "upside down"),
    (lambda x, W, A, B, a, r: x @ W.T + a * (x @ A.T @ B.T), "not alpha"),
    (lambda x, W, A, B, a, r: x @ W.T, "LoRA branch is missing"),
    (lambda x, W, A, B, a, r: (a / r) * (x @ A.T @ B.T), "frozen weight"),
    (lambda x, W, A, B, a, r: x @ W + (a / r) * (x @ A.T @ B.T), "x W^T"),
    (lambda x, W, A, B, a, r: x @ W.T + 4.0 * (x @ A.T @ B.T), "alpha = "),      # one scale only (16 / 4)
    (_scales_x_in_place, "changed `x` in place"),
]


# --- count_lora_params ----------------------------------------------------------------------------

def count(config, r, targets):
    hd = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    arch = Architecture("x", config.hidden_size, config.intermediate_size, config.num_hidden_layers,
                        config.num_attention_heads, config.num_key_value_heads, config.vocab_size, head_dim=hd)
    return lora_parameter_count(arch, r, targets)


def no_gqa(config, r, targets):
    hd = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    arch = Architecture("x", config.hidden_size, config.intermediate_size, config.num_hidden_layers,
                        config.num_attention_heads, config.num_attention_heads, config.vocab_size, head_dim=hd)
    return lora_parameter_count(arch, r, targets)


COUNT = [
    (no_gqa, "grouped-query attention"),
    (lambda c, r, t: count(c, r, t) // c.num_hidden_layers, "number of layers"),
    (lambda c, r, t: 0, "peft trains"),
    (lambda c, r, t: count(c, 16, t), "r=8"),                                     # one rank only
]

CASES = [pytest.param(check_fn, fn, words, id=f"{check_fn.__name__}:{words}")
         for check_fn, wrongs in ((check_completion_labels, LABELS), (check_lora_forward, LORA),
                                  (check_count_lora_params, COUNT))
         for fn, words in wrongs]


@pytest.mark.parametrize("check_fn, wrong, words", CASES)
def test_each_wrong_answer_gets_its_message(check_fn, wrong, words, fails_with):
    fails_with(check_fn, wrong, words)
