"""Checks for notebook 3 (supervised fine-tuning with LoRA and QLoRA): the completion-only labels,
the LoRA forward pass, and the number of LoRA parameters. Each compares with the library that does
the real work (TRL's collator, peft's `lora.Linear`, peft's trainable-parameter count on the tiny
model, `rlhf_course.gpu_memory` for a 7B), for several ranks and scales, and names the likely mistake. The
references the notebook falls back on are `sft.completion_labels`, `sft.lora_forward` and
`gpu_memory.count_lora_params`."""

from __future__ import annotations

import torch
import torch.nn as nn

from rlhf_course.checks.core import CheckFailed, call, check, close, draws, same_on_layouts
from rlhf_course.gpu_memory import KNOWN_ARCHITECTURES, lora_parameter_count
from rlhf_course.gpu_memory import count_lora_params as reference_count_lora_params
from rlhf_course.sft import IGNORE_INDEX
from rlhf_course.sft import completion_labels as reference_completion_labels
from rlhf_course.sft import lora_forward as reference_lora_forward

TINY_PAD, TINY_EOS = 0, 1  # the tiny tokenizer's <|pad|> and <|end|> (the end of every answer)


def _same(got, want) -> bool:
    return isinstance(got, torch.Tensor) and got.shape == want.shape and torch.equal(got.long(), want.long())


# --- completion-only labels -----------------------------------------------------------------------

def _label_batch(pad: int, eos: int, seed: int = 0):
    """Three right-padded sequences (prompt + answer, each answer closed by `eos`), padded with `pad`. With
    pad == eos (as many tokenizers pad, Mistral's among them) padding can only be found from the mask."""
    gen = torch.Generator().manual_seed(seed)
    lengths, prompt_lengths = [9, 6, 11], [4, 3, 6]
    rows = []
    for n, p in zip(lengths, prompt_lengths):
        ids = torch.randint(5, 50, (n,), generator=gen)
        ids[-1] = eos  # the answer ends with its end-of-turn token, which is learned
        rows.append(ids)
    T = max(lengths)
    input_ids = torch.full((3, T), pad, dtype=torch.long)
    attention_mask = torch.zeros(3, T, dtype=torch.long)
    for b, ids in enumerate(rows):
        input_ids[b, : len(ids)] = ids
        attention_mask[b, : len(ids)] = 1
    return rows, input_ids, attention_mask, torch.tensor(prompt_lengths)


def _trl_labels(rows, prompt_lengths, pad) -> torch.Tensor:
    """What TRL's SFTTrainer builds with completion_only_loss: labels = input_ids with -100 where the
    completion_mask is 0 (the prompt), padded by DataCollatorForLanguageModeling with -100."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    examples = []
    for ids, p in zip(rows, prompt_lengths.tolist()):
        completion_mask = [0] * p + [1] * (len(ids) - p)
        examples.append({"input_ids": ids.tolist(),
                         "labels": [i if m else IGNORE_INDEX for i, m in zip(ids.tolist(), completion_mask)]})
    return DataCollatorForLanguageModeling(pad_token_id=pad)(examples)["labels"]


def _labels_case(completion_labels, pad: int, eos: int):
    rows, input_ids, attention_mask, prompt_lengths = _label_batch(pad, eos)
    got = call(completion_labels, input_ids, attention_mask, prompt_lengths)
    want = _trl_labels(rows, prompt_lengths, pad)
    if not isinstance(got, torch.Tensor) or got.shape != want.shape:
        shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
        raise CheckFailed(f"return labels of the same shape as input_ids {tuple(want.shape)}, got {shape}")
    if got.is_floating_point():
        raise CheckFailed("labels must be integer token ids (torch.long), like input_ids")
    if _same(got, want):
        return input_ids, attention_mask, got, want
    prompt = torch.arange(input_ids.shape[1])[None, :] < prompt_lengths[:, None]   # (B, T)
    padding = attention_mask == 0
    real_answer = ~prompt & ~padding
    if _same(got, input_ids):
        raise CheckFailed("nothing was masked: set the labels of the prompt tokens and of the padding to -100")
    if (got[prompt | padding] == 0).all() and _same(got[real_answer], input_ids[real_answer]):
        raise CheckFailed("use -100 for the ignored positions, not 0: 0 is a real token id; -100 is the "
                          "ignore_index that cross_entropy skips")
    if _same(got, input_ids.masked_fill(padding, IGNORE_INDEX)):
        raise CheckFailed("the prompt tokens were not masked: the model would also learn to write the user's "
                          "questions (labels = -100 on the first prompt_lengths[i] tokens of row i)")
    if _same(got, input_ids.masked_fill(prompt, IGNORE_INDEX)):
        raise CheckFailed("padding positions were not masked: use the attention mask (0 on padding) - find padding "
                          "by position: the pad token's id can differ from one tokenizer to the next")
    if pad != eos and (_same(got, want.masked_fill(input_ids == eos, IGNORE_INDEX)) or
                       _same(got, want.masked_fill((input_ids == eos) & ~padding, IGNORE_INDEX))):
        raise CheckFailed("you masked each answer's end-of-turn token: keep it in the labels - it is how the model "
                          "learns to stop (only the prompt and the padding are -100)")
    if pad == eos and _same(got, input_ids.masked_fill(prompt | (input_ids == pad), IGNORE_INDEX)):
        raise CheckFailed("you masked every token equal to the pad token, including each answer's real "
                          "end-of-turn token (here the tokenizer pads with it, as Mistral's does): find padding "
                          "with attention_mask, by position")
    for shift, words in ((-1, "one token too few"), (1, "one token too many")):
        shifted = torch.arange(input_ids.shape[1])[None, :] < (prompt_lengths + shift)[:, None]
        if _same(got, input_ids.masked_fill(shifted | padding, IGNORE_INDEX)):
            raise CheckFailed(f"off by one: you masked {words} - row i's prompt is positions 0 .. "
                              f"prompt_lengths[i] - 1, and its answer starts at prompt_lengths[i]")
    if _same(got[:, :-1], want[:, 1:]) or _same(got[:, 1:], want[:, :-1]):
        raise CheckFailed("do not shift the labels: a Hugging Face causal LM shifts them inside its loss "
                          "(the logits at t are compared with labels[t + 1])")
    wrong = (got != want).nonzero()[0].tolist()
    raise CheckFailed(f"labels differ from what TRL's SFT collator builds, first at position {tuple(wrong)}: "
                      f"got {got[tuple(wrong)].item()}, expected {want[tuple(wrong)].item()}")


@check(reference=reference_completion_labels)
def check_completion_labels(completion_labels):
    """completion_labels(input_ids (B, T), attention_mask (B, T), prompt_lengths (B,)) -> labels (B, T)."""
    _labels_case(completion_labels, TINY_PAD, TINY_EOS)                  # the tiny tokenizer: pad and end differ
    input_ids, attention_mask, got, want = _labels_case(completion_labels, TINY_EOS, TINY_EOS)  # pad = end of turn
    prompt_lengths = torch.tensor([4, 3, 6])
    same_on_layouts(completion_labels, [("input_ids", input_ids), ("attention_mask", attention_mask),
                                        ("prompt_lengths", prompt_lengths)],
                    compare=lambda a, b: _same(a, b))
    # and on the tiny model: the loss with these labels is the mean NLL of the answer's tokens only
    from transformers import AutoModelForCausalLM

    from rlhf_course.logprobs import token_logprobs
    from rlhf_course.paths import data_path

    model = AutoModelForCausalLM.from_pretrained(str(data_path("tiny")), dtype=torch.float32).eval()
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=attention_mask, labels=got)
        logp = token_logprobs(out.logits[:, :-1], input_ids[:, 1:])                    # (B, T-1)
        counted = (want[:, 1:] != IGNORE_INDEX).float()
        answer_nll = -(logp * counted).sum() / counted.sum()
    close(out.loss, answer_nll, atol=1e-4, what="the model's loss with your labels")
    return ("-100 on the prompt and on the padding (found by position), the answer with its end token kept, "
            "whether the tokenizer pads with its own token or the end-of-turn token; the same labels as TRL's "
            "SFT collator, and the model's loss is the answer-only NLL")


# --- the LoRA forward pass ------------------------------------------------------------------------

def _peft_lora_linear(W: torch.Tensor, A: torch.Tensor, B: torch.Tensor, alpha: float, r: int) -> nn.Module:
    """A peft `lora.Linear` (LoRA on one nn.Linear, no bias, no dropout) holding exactly W, A and B."""
    from peft import LoraConfig, get_peft_model

    class One(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(W.shape[1], W.shape[0], bias=False)

        def forward(self, x):
            return self.proj(x)

    model = get_peft_model(One(), LoraConfig(r=r, lora_alpha=alpha, target_modules=["proj"], lora_dropout=0.0))
    layer = model.base_model.model.proj
    with torch.no_grad():
        layer.base_layer.weight.copy_(W)
        layer.lora_A["default"].weight.copy_(A)
        layer.lora_B["default"].weight.copy_(B)
    return layer.eval()


def _lora_case(d_in: int, d_out: int, r: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 5, d_in, generator=gen)                 # (batch, tokens, in)
    W = torch.randn(d_out, d_in, generator=gen) / d_in**0.5   # nn.Linear's layout: (out, in)
    A = torch.randn(r, d_in, generator=gen) / d_in**0.5       # (r, in)
    B = torch.randn(d_out, r, generator=gen)                   # (out, r): trained; zero at initialisation
    return x, W, A, B


def _lora_scales(seed: int = 9) -> list[tuple[float, int]]:
    """(alpha, r) pairs with alpha / r between 1.5 and 4: never 1 (scale missing), r (alpha = r^2 would make
    alpha / r = r) or r / alpha, so that each wrong scale gives its own number."""
    ranks = (2, 4, 8)
    return [(round(r * s, 2), r) for r, s in zip(ranks, draws(1.5, 4.0, len(ranks), seed=seed))]


@check(reference=reference_lora_forward)
def check_lora_forward(lora_forward):
    """lora_forward(x (..., in), W (out, in), A (r, in), B (out, r), alpha, r) -> (..., out)."""
    scales = _lora_scales()
    # a square layer first, so that a transposed weight gives a wrong number rather than a shape error
    for (alpha, r), (d_in, d_out, seed) in zip(scales, ((8, 8, 0), (12, 6, 1), (6, 10, 3))):
        x, W, A, B = _lora_case(d_in, d_out, r, seed)
        with torch.no_grad():
            want = _peft_lora_linear(W, A, B, alpha, r)(x)
        got = call(lora_forward, x, W, A, B, alpha, r)
        if not isinstance(got, torch.Tensor) or got.shape != want.shape:
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            raise CheckFailed(f"the output should have shape {tuple(want.shape)} (..., out_features), got {shape}")
        if torch.allclose(got, want, atol=1e-5):
            continue
        base, delta = x @ W.T, x @ A.T @ B.T
        candidates = [
            (base + delta, "the scale alpha / r is missing: the update is (alpha / r) * B A x"),
            (base + (r / alpha) * delta, "the scale is upside down: alpha / r, not r / alpha"),
            (base + alpha * delta, "the scale is alpha / r, not alpha"),
            (base, "the LoRA branch is missing: add (alpha / r) * x A^T B^T to the frozen layer's output"),
            ((alpha / r) * delta, "the frozen weight's output x W^T is missing: LoRA adds to the pretrained layer, it "
                                  "does not replace it"),
        ]
        if d_in == d_out:
            candidates.append((x @ W + (alpha / r) * delta,
                               "nn.Linear stores W as (out, in): the layer computes x W^T, not x W"))
        for wrong, message in candidates:
            if wrong.shape == got.shape and torch.allclose(got, wrong, atol=1e-5):
                raise CheckFailed(message)
        close(got, want, atol=1e-5, what=f"your output (compared with peft's lora.Linear, alpha = {alpha}, r = {r})")
    # B = 0 at initialisation: the adapted model starts exactly where the pretrained one is
    x, W, A, _ = _lora_case(8, 8, 4, 2)
    close(call(lora_forward, x, W, A, torch.zeros(8, 4), 12.0, 4), x @ W.T, atol=1e-6, what="the output with B = 0")
    x, W, A, B = _lora_case(12, 6, 4, 1)
    same_on_layouts(lora_forward, [("x", x), ("W", W), ("A", A), ("B", B), ("alpha", 12.0), ("r", 4)], expand=("x",))
    pairs = ", ".join(f"({a}, {r})" for a, r in scales)
    return (f"W x + (alpha / r) B A x, equal to peft's lora.Linear on the same weights (square and rectangular layers, "
            f"(alpha, r) = {pairs})")


# --- counting LoRA parameters ---------------------------------------------------------------------

def _tiny_lora_count(r: int, targets: tuple[str, ...]) -> int:
    """Trainable parameters of peft's LoRA on the tiny model: what print_trainable_parameters reports."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from rlhf_course.paths import data_path

    model = AutoModelForCausalLM.from_pretrained(str(data_path("tiny")), dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets), task_type="CAUSAL_LM"))
    trainable, _ = model.get_nb_trainable_parameters()
    return trainable


def _count_variants(config, r: int, targets) -> dict[str, int]:
    """Counts with one typical mistake each, to name the one a wrong answer matches."""
    H, I, L = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    hd = getattr(config, "head_dim", None) or H // config.num_attention_heads
    q, kv = config.num_attention_heads * hd, config.num_key_value_heads * hd
    shapes = {"q_proj": (H, q), "k_proj": (H, kv), "v_proj": (H, kv), "o_proj": (q, H),
              "gate_proj": (H, I), "up_proj": (H, I), "down_proj": (I, H)}
    no_gqa = {**shapes, "k_proj": (H, q), "v_proj": (H, q)}
    mlp_hidden = {**shapes, "gate_proj": (H, H), "up_proj": (H, H), "down_proj": (H, H)}
    pick = set(targets)
    return {
        "right": L * sum(r * (i + o) for t, (i, o) in shapes.items() if t in pick),
        "gqa": L * sum(r * (i + o) for t, (i, o) in no_gqa.items() if t in pick),
        "layers": sum(r * (i + o) for t, (i, o) in shapes.items() if t in pick),
        "product": L * sum(r * i * o for t, (i, o) in shapes.items() if t in pick),
        "only_a": L * sum(r * i for t, (i, o) in shapes.items() if t in pick),
        "only_b": L * sum(r * o for t, (i, o) in shapes.items() if t in pick),
        "full": L * sum(i * o for t, (i, o) in shapes.items() if t in pick),
        "mlp": L * sum(r * (i + o) for t, (i, o) in mlp_hidden.items() if t in pick),
        "square": L * sum(r * 2 * H for t in pick),
    }


MESSAGES = {
    "gqa": "k_proj and v_proj are smaller than q_proj here (grouped-query attention): their output size is "
           "num_key_value_heads * head_dim, not num_attention_heads * head_dim",
    "layers": "that is one block's count: multiply by the number of layers (num_hidden_layers)",
    "product": "a LoRA pair on an (in -> out) layer has r * (in + out) parameters (A: r x in, B: out x r), not r * in * out",
    "only_a": "you counted only A (r x in): add B (out x r)",
    "only_b": "you counted only B (out x r): add A (r x in)",
    "full": "that is the size of the frozen weights themselves (in x out): LoRA trains r * (in + out) per layer",
    "mlp": "the MLP's gate_proj and up_proj go from hidden_size to intermediate_size, and down_proj back",
    "square": "not every layer is hidden_size x hidden_size: use each layer's own in and out sizes",
}


@check(reference=reference_count_lora_params)
def check_count_lora_params(count_lora_params):
    """count_lora_params(config, r, targets) -> the number of trainable LoRA parameters (an int)."""
    from transformers import AutoConfig, MistralConfig

    from rlhf_course.paths import data_path

    tiny = AutoConfig.from_pretrained(str(data_path("tiny")))
    all_targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    for r, targets in ((8, ("q_proj", "v_proj")), (16, all_targets), (12, ("k_proj", "o_proj", "up_proj"))):
        got = call(count_lora_params, tiny, r, targets)
        want = _tiny_lora_count(r, targets)
        if not isinstance(got, (int, torch.Tensor)) and not (isinstance(got, float) and got.is_integer()):
            raise CheckFailed(f"return a whole number of parameters, got {got!r}")
        got = int(got)
        if got != want:
            variants = _count_variants(tiny, r, targets)
            for key, message in MESSAGES.items():
                if got == variants[key] and variants[key] != want:
                    raise CheckFailed(message)
            raise CheckFailed(f"on the tiny model with r={r} on {'/'.join(targets)}: you count {got:,}, peft trains {want:,}")
    arch = KNOWN_ARCHITECTURES["mistral-7b"]
    mistral = MistralConfig(hidden_size=arch.hidden_size, intermediate_size=arch.intermediate_size,
                            num_hidden_layers=arch.num_hidden_layers, num_attention_heads=arch.num_attention_heads,
                            num_key_value_heads=arch.num_key_value_heads, vocab_size=arch.vocab_size)
    got, want = int(call(count_lora_params, mistral, 16, all_targets)), lora_parameter_count(arch, 16, all_targets)
    if got != want:
        raise CheckFailed(f"on Mistral-7B's config (r=16, all 7 projections) you count {got:,}, expected {want:,}")
    return (f"matches peft's trainable parameters on the tiny model (r=8 on q/v, r=16 on all, r=12 on k/o/up) and Mistral-7B: "
            f"{want / 1e6:.1f}M with r=16")
