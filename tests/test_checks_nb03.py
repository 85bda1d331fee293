"""Notebook 3's checks name the mistake: each typical wrong answer gets its own message."""

import torch

from rlhf_course.checks.core import run_check as run
from rlhf_course.checks.nb03_sft import (
    check_completion_labels,
    check_count_lora_params,
    check_lora_forward,
)
from rlhf_course.memory import Architecture, lora_parameter_count


# --- completion_labels ----------------------------------------------------------------------------

def positions(input_ids):
    return torch.arange(input_ids.shape[1])[None, :]


def labels(input_ids, attention_mask, prompt_lengths, shift=0):
    prompt = positions(input_ids) < (prompt_lengths + shift)[:, None]
    return input_ids.masked_fill(prompt | (attention_mask == 0), -100)


def test_completion_labels_check_passes_the_reference_and_names_each_mistake(fails_with):
    assert run(check_completion_labels, labels)[0] is True
    fails_with(check_completion_labels, lambda ids, m, p: ids.clone(), "nothing was masked")
    fails_with(check_completion_labels, lambda ids, m, p: ids.masked_fill(m == 0, -100), "prompt tokens were not masked")
    fails_with(check_completion_labels, lambda ids, m, p: ids.masked_fill(positions(ids) < p[:, None], -100),
                      "padding positions were not masked")
    fails_with(check_completion_labels,
                      lambda ids, m, p: ids.masked_fill((positions(ids) < p[:, None]) | (ids == 1), -100),
                      "every token equal to the pad token")
    fails_with(check_completion_labels, lambda ids, m, p: labels(ids, m, p, shift=1), "off by one")
    fails_with(check_completion_labels, lambda ids, m, p: labels(ids, m, p, shift=-1), "off by one")
    fails_with(check_completion_labels,
                      lambda ids, m, p: ids.masked_fill((positions(ids) < p[:, None]) | (m == 0), 0), "not 0")

    def in_place(ids, m, p):
        ids[positions(ids).expand_as(ids) < p[:, None]] = -100
        ids[m == 0] = -100
        return ids

    fails_with(check_completion_labels, in_place, "in place")

    def shifted(ids, m, p):
        out = torch.full_like(ids, -100)
        out[:, :-1] = labels(ids, m, p)[:, 1:]
        return out

    fails_with(check_completion_labels, shifted, "do not shift")


# --- lora_forward ---------------------------------------------------------------------------------

def lora(x, W, A, B, alpha, r):
    return x @ W.T + (alpha / r) * (x @ A.T @ B.T)


def test_lora_forward_check_passes_the_reference_and_names_each_mistake(fails_with):
    assert run(check_lora_forward, lora)[0] is True
    fails_with(check_lora_forward, lambda x, W, A, B, a, r: x @ W.T + x @ A.T @ B.T, "scale alpha / r is missing")
    fails_with(check_lora_forward, lambda x, W, A, B, a, r: x @ W.T + (r / a) * (x @ A.T @ B.T), "upside down")
    fails_with(check_lora_forward, lambda x, W, A, B, a, r: x @ W.T, "LoRA branch is missing")
    fails_with(check_lora_forward, lambda x, W, A, B, a, r: (a / r) * (x @ A.T @ B.T), "frozen weight")
    fails_with(check_lora_forward, lambda x, W, A, B, a, r: x @ W + (a / r) * (x @ A.T @ B.T), "x W^T")


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


def test_count_lora_params_check_passes_the_reference_and_names_each_mistake(fails_with):
    assert run(check_count_lora_params, count)[0] is True
    fails_with(check_count_lora_params, no_gqa, "grouped-query attention")
    fails_with(check_count_lora_params, lambda c, r, t: count(c, r, t) // c.num_hidden_layers, "number of layers")
    fails_with(check_count_lora_params, lambda c, r, t: 0, "peft trains")
