"""Sampling answers from a chat model: one function for every stage (evaluation, PPO rollouts,
best-of-N, labelling), the same for the tiny model and a 7B."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from tqdm.auto import tqdm

from rlhf_course import toyworld


@dataclass
class Completion:
    text: str    # the answer, decoded without special tokens, stripped
    ended: bool  # the model produced its end-of-sequence token (False: cut at max_new_tokens)
    n_tokens: int


# reward_fn(prompts, completions) -> one score per completion: what every trainer, judge and evaluation takes
RewardFn = Callable[[list, list[Completion]], list[float]]


def as_messages(prompt: str | list[dict]) -> list[dict]:
    """A plain prompt becomes one user message (`toyworld.user`); a conversation is kept."""
    return toyworld.user(prompt) if isinstance(prompt, str) else prompt


def render_prompts(tokenizer, prompts: list[str | list[dict]]) -> list[str]:
    """Prompts as the model sees them: the chat template with the assistant's turn opened."""
    return [tokenizer.apply_chat_template(as_messages(p), tokenize=False, add_generation_prompt=True) for p in prompts]


@torch.no_grad()
def sample_ids(
    model, tokenizer, prompts: list[str | list[dict]], max_new_tokens: int, *,
    temperature: float = 1.0, do_sample: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample one answer per prompt.

    Returns (query, response, ended): query (B, Tq) left-padded prompt ids; response (B, Tr) answer ids
    right-padded with pad_token_id after the end-of-sequence token (which is kept); ended (B,) bool.
    """
    enc = tokenizer(render_prompts(tokenizer, prompts), return_tensors="pt", padding=True,
                    padding_side="left", add_special_tokens=False).to(model.device)
    out = model.generate(
        **enc, max_new_tokens=max_new_tokens, do_sample=do_sample,
        temperature=temperature if do_sample else None, top_k=0 if do_sample else None,
        top_p=1.0 if do_sample else None,  # pure sampling: the policy's own distribution, as RL needs
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    query, response = out[:, : enc["input_ids"].shape[1]], out[:, enc["input_ids"].shape[1]:]
    is_eos = response == tokenizer.eos_token_id
    ended = is_eos.any(dim=1)
    # generate() may stop early for all rows and pads finished rows itself; make the padding explicit
    after_eos = (is_eos.cumsum(dim=1) - is_eos.long()) > 0
    response = response.masked_fill(after_eos, tokenizer.pad_token_id)
    return query, response, ended


def prompt_mask(query: torch.Tensor, pad_token_id: int) -> torch.Tensor:
    """(B, Tq) -> (B, Tq) long: 1 on the prompt's tokens, 0 on the left padding before them.
    By position: the padding is the run of pad ids *before* the first real token; a pad id after it is a
    real token (Zephyr pads with `</s>`, which also closes every turn of its chat template)."""
    return ((query != pad_token_id).cumsum(dim=1) > 0).long()


def answer_mask(response: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """(B, Tr) -> (B, Tr) long: 1 on the answer's tokens up to and including its first EOS, 0 after.
    By position, not by "is not padding": some tokenizers pad with the EOS token itself."""
    is_eos = response == eos_token_id
    return ((is_eos.cumsum(dim=1) - is_eos.long()) == 0).long()


def decode_responses(tokenizer, response: torch.Tensor, ended: torch.Tensor) -> list[Completion]:
    texts = tokenizer.batch_decode(response, skip_special_tokens=True)
    lengths = answer_mask(response, tokenizer.eos_token_id).sum(dim=1)
    return [Completion(t.strip(), bool(e), int(n)) for t, e, n in zip(texts, ended, lengths)]


def generate(
    model, tokenizer, prompts: list[str | list[dict]], max_new_tokens: int = 64, *,
    batch_size: int = 64, temperature: float = 1.0, do_sample: bool = True, seed: int | None = None,
    progress: bool = False,
) -> list[Completion]:
    """Sample one answer for each prompt, in batches."""
    if seed is not None:
        torch.manual_seed(seed)
    was_training = model.training
    model.eval()
    out: list[Completion] = []
    starts = range(0, len(prompts), batch_size)
    for i in tqdm(starts, desc="sampling", disable=not progress or len(starts) < 2):
        q, r, e = sample_ids(model, tokenizer, prompts[i : i + batch_size], max_new_tokens,
                             temperature=temperature, do_sample=do_sample)
        out += decode_responses(tokenizer, r, e)
    model.train(was_training)
    return out
