"""Pairs to label: a prompt and two answers sampled from the current policy, and the pair's id.

RLHF starts with people choosing between two answers to the same prompt (InstructGPT, arXiv:2203.02155,
Sec. 3.4; Anthropic's HH data, arXiv:2204.05862). A `Pair` is what one such choice is about: the prompt
and answers A and B in the order they are shown. Its id does not depend on that order, so two people
who saw A and B swapped still label the same pair.

    pairs = sample_pairs(policy, tokenizer, toyworld.train_prompts()[:20], temperature=profile.temperature)
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass

from rlhf_course import toyworld


def _canonical(prompt) -> str:
    return json.dumps(prompt, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def pair_id(prompt: str | list[dict], answer_1: str, answer_2: str) -> str:
    """A stable id for (prompt, two answers), the same whichever answer was shown first: the first 16
    hex digits of sha256 over the prompt and the two answers in sorted order."""
    key = _canonical([prompt, sorted([answer_1, answer_2])])
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True, eq=True)
class Pair:
    """A prompt and two answers, in the order they are shown: A first, then B."""

    prompt: str | list[dict]  # plain text, or a conversation (list of messages)
    answer_a: str
    answer_b: str

    @property
    def id(self) -> str:
        return pair_id(self.prompt, self.answer_a, self.answer_b)


def sample_pairs(model, tokenizer, prompts: list, *, max_new_tokens: int = 64, temperature: float = 1.0,
                 seed: int = 0, batch_size: int = 64) -> list[Pair]:
    """Two answers per prompt, sampled from the current policy, shown in a random (seeded) order.
    Prompts whose two answers are identical are left out (there is nothing to choose).
    `prompts`: texts, conversations or toy-world `Prompt`s; pass `temperature=profile.temperature`."""
    from rlhf_course.sampling import generate

    prompts = [toyworld.as_prompt(p) for p in prompts]
    answers = generate(model, tokenizer, prompts * 2, max_new_tokens, batch_size=batch_size,
                       temperature=temperature, seed=seed)
    rng = random.Random(seed)
    pairs = []
    for prompt, first, second in zip(prompts, answers[: len(prompts)], answers[len(prompts):]):
        a, b = first.text, second.text
        if rng.random() < 0.5:  # the order shown must not tell which answer came from where
            a, b = b, a
        if a != b:
            pairs.append(Pair(prompt, a, b))
    return pairs
