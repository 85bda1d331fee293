"""Best-of-N and rejection-sampling fine-tuning on the tiny model."""

import itertools
import math
import random
import zlib

import pytest
from trl.data_utils import is_conversational

from rlhf_course import toyworld
from rlhf_course.best_of_n import (BestOfN, best_of_n, best_worst_pairs, best_of_n_curve, best_of_n_kl, expected_best_of_k,
                                   rejection_sampling_data, rejection_sampling_finetune)
from rlhf_course.loading import load_policy

PROMPTS = [p.text for p in toyworld.eval_prompts()[:6]]


def fake_rewards(prompts, completions):
    """Deterministic in the text, with ties (only 5 values), so tie-breaking is exercised too."""
    return [float(zlib.crc32(c.text.encode()) % 5) for c in completions]


@pytest.fixture(scope="module")
def base(tiny):
    return load_policy(tiny, lora=False, verbose=False)


def test_best_of_n_kl_golden_values():
    assert best_of_n_kl(1) == 0.0
    assert [round(best_of_n_kl(n), 4) for n in (2, 4, 8, 16)] == [0.1931, 0.6363, 1.2044, 1.8351]
    assert best_of_n_kl(1000) < math.log(1000)  # the bound grows like log N, never above it


def test_expected_best_of_k_matches_brute_force():
    assert expected_best_of_k([3.0, 1.0, 2.0], 1) == pytest.approx(2.0)      # k=1: the plain mean
    assert expected_best_of_k([3.0, 1.0, 2.0], 2) == pytest.approx(8 / 3)    # max over the 3 pairs: 3, 3, 2
    assert expected_best_of_k([3.0, 1.0, 2.0], 3) == pytest.approx(3.0)      # k=n: the max
    rng = random.Random(0)
    rewards = [rng.gauss(0, 1) for _ in range(7)]
    for k in range(1, 8):
        subsets = list(itertools.combinations(rewards, k))
        assert expected_best_of_k(rewards, k) == pytest.approx(sum(map(max, subsets)) / len(subsets))


def test_best_of_n_picks_the_max(base, tokenizer):
    results = best_of_n(base, tokenizer, PROMPTS, 6, fake_rewards, max_new_tokens=16, seed=1)
    assert [r.prompt for r in results] == PROMPTS
    for r in results:
        assert isinstance(r, BestOfN) and len(r.samples) == len(r.rewards) == 6
        assert r.rewards == fake_rewards(None, r.samples)          # each sample scored by reward_fn
        assert r.reward == max(r.rewards)
        assert r.completion is r.samples[r.rewards.index(max(r.rewards))]  # ties: the first best sample
    # toy-world Prompt objects are accepted and become their text
    again = best_of_n(base, tokenizer, toyworld.eval_prompts()[:6], 6, fake_rewards, max_new_tokens=16, seed=1)
    assert [r.completion.text for r in again] == [r.completion.text for r in results]


def test_best_of_n_raises_the_ground_truth_reward(base, tokenizer):
    prompts = toyworld.eval_prompts()[:16]  # the sixteen tasks, with the held-out template
    one = best_of_n(base, tokenizer, prompts, 1, toyworld.ground_truth_rewards, seed=0)
    four = best_of_n(base, tokenizer, prompts, 4, toyworld.ground_truth_rewards, seed=1)
    mean_one = sum(r.reward for r in one) / len(one)
    mean_four = sum(r.reward for r in four) / len(four)
    assert mean_four > mean_one + 0.15, (mean_one, mean_four)  # measured on all 40: about -0.35 -> 0.1
    curve = best_of_n_curve(four)
    assert list(curve) == [1, 2, 4]
    assert curve[1] < curve[2] < curve[4] == pytest.approx(mean_four)


def test_rejection_sampling_data_keeps_the_top_samples(base, tokenizer):
    kw = dict(max_new_tokens=16, seed=3)
    results = best_of_n(base, tokenizer, PROMPTS, 5, fake_rewards, **kw)  # the same draws (same seed)
    data = rejection_sampling_data(base, tokenizer, PROMPTS, 5, fake_rewards, keep_top=1, **kw)
    assert data.column_names == ["prompt", "completion", "reward"] and len(data) == len(PROMPTS)
    for row, r in zip(data, results):
        assert is_conversational(row)
        assert row["prompt"] == [{"role": "user", "content": r.prompt}]
        assert row["completion"] == [{"role": "assistant", "content": r.completion.text}]
        assert row["reward"] == r.reward == max(r.rewards)
        text = tokenizer.apply_chat_template(row["prompt"] + row["completion"], tokenize=False)
        assert r.prompt in text and r.completion.text in text  # renders as a chat: valid SFT data

    top2 = rejection_sampling_data(base, tokenizer, PROMPTS, 5, fake_rewards, keep_top=2, **kw)
    assert len(top2) == 2 * len(PROMPTS)
    for i, r in enumerate(results):
        assert top2[2 * i]["reward"] == max(r.rewards)
        assert top2[2 * i + 1]["reward"] == sorted(r.rewards, reverse=True)[1]


def test_rejection_sampling_finetune_raises_the_reward(tiny):
    # every fourth training prompt (22, all tasks), 4 samples each, 2 rounds: exercises the merge in between
    result = rejection_sampling_finetune(tiny, prompts=toyworld.train_prompts()[::4], n=4, rounds=2,
                                         progress=False, seed=0)
    assert [h["round"] for h in result.history] == [0, 1, 2]
    first, second, final = result.history
    assert first["reward_kept"] > first["reward_mean"]  # the kept best-of-4 beat the average sample
    assert second["reward_mean"] > first["reward_mean"]  # round 1 samples from the fine-tuned model
    assert result.metrics["reward_after"] == final["reward_mean"]
    # measured from the base model, seeds 0-2: -0.23..-0.33 -> -0.01..0.09 after two rounds (gain 0.27-0.41)
    assert result.metrics["gain"] > 0.1, result.history
    assert any("lora_B" in n and p.abs().sum() > 0 for n, p in result.model.named_parameters())


def test_best_worst_pairs_take_the_highest_and_lowest_reward_and_skip_identical_answers():
    from rlhf_course.sampling import Completion

    def draw(prompt, texts, rewards):
        samples = [Completion(t, True, 3) for t in texts]
        best = max(range(len(texts)), key=rewards.__getitem__)
        return BestOfN(prompt, samples[best], rewards[best], rewards, samples)

    results = [draw("How do I bake bread?", ["a", "b", "c", "d"], [0.1, 0.9, -0.5, 0.9]),
               draw("How do I swim?", ["same", "same"], [0.2, 0.4])]  # best and worst the same text: skipped
    pairs = best_worst_pairs(results)
    assert len(pairs) == 1 and is_conversational(pairs[0])
    row = pairs[0]
    assert row["prompt"] == toyworld.user("How do I bake bread?")
    assert row["chosen"] == toyworld.assistant("b") and row["rejected"] == toyworld.assistant("c")  # ties: the first
    assert row["reward_margin"] == pytest.approx(1.4)
