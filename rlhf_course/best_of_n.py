"""Best-of-N sampling and rejection-sampling fine-tuning: RLHF without a policy gradient.

Best-of-N draws N answers per prompt from a fixed model and keeps the one the reward function
likes most. It is the simplest way to spend a reward model, and a strong baseline: the policy it
defines moves away from the model by at most `log N - (N-1)/N` nats of KL. Rejection-sampling
fine-tuning (Llama 2, Sec. 3.2.3 of arXiv:2307.09288) distils that policy back into the model:
sample N, keep the best, fine-tune on them as demonstrations, repeat.

    results = best_of_n(model, tokenizer, toyworld.eval_prompts(), n=16, reward_fn=ground_truth_rewards)
    curve = best_of_n_curve(results)            # {1: mean reward, 2: ..., 16: ...} from the same samples
    r = rejection_sampling_finetune(profile, model_id="/tmp/sft", n=8, rounds=2)
    pairs = best_worst_pairs(best_of_n(sft, tokenizer, prompts, n=4, reward_fn=rm))   # on-policy DPO pairs

A reward function follows the protocol of every trainer here:
`reward_fn(prompts, completions) -> list[float]` (`toyworld.ground_truth_rewards`, or a reward model).
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import datasets

from rlhf_course import toyworld
from rlhf_course.loading import REFERENCE_ADAPTER, free_memory, is_adapter, load_policy, load_tokenizer
from rlhf_course.profiles import Profile
from rlhf_course.sampling import Completion, as_messages, generate
from rlhf_course.sft import save_merged, train_sft
from rlhf_course.training import TrainResult


@dataclass
class BestOfN:
    """One prompt's best-of-N draw."""

    prompt: str | list[dict]
    completion: Completion    # the chosen sample: the first one with the highest reward
    reward: float             # its reward, max(rewards)
    rewards: list[float]      # the rewards of all n samples, in sampling order (for best-of-k curves)
    samples: list[Completion]  # all n samples, in the same order


def score_in_batches(reward_fn, prompts: list, completions: list, batch_size: int = 64) -> list[float]:
    """`reward_fn` over a long list, a batch at a time (a reward model needs that; the ground truth does not care)."""
    rewards: list[float] = []
    for i in range(0, len(prompts), batch_size):
        rewards += [float(r) for r in reward_fn(prompts[i : i + batch_size], completions[i : i + batch_size])]
    assert len(rewards) == len(prompts), "reward_fn must return one reward per completion"
    return rewards


# ---------------------------------------------------------------------------------------------
# Best-of-N
# ---------------------------------------------------------------------------------------------

def best_of_n(model, tokenizer, prompts: list, n: int, reward_fn, *, max_new_tokens: int = 64, seed: int = 0,
              batch_size: int = 64, temperature: float = 1.0) -> list[BestOfN]:
    """Sample `n` answers per prompt and keep the one with the highest reward.

    `prompts`: plain strings, conversations, or toy-world `Prompt`s. Sampling is pure (temperature 1,
    no top-k/top-p), so best-of-1 is the model itself."""
    assert n >= 1, "n must be at least 1"
    prompts = [toyworld.as_prompt(p) for p in prompts]
    # 1. each prompt repeated n times in a row: samples i*n .. i*n+n-1 belong to prompt i
    repeated = [p for p in prompts for _ in range(n)]
    samples = generate(model, tokenizer, repeated, max_new_tokens, batch_size=batch_size,
                       temperature=temperature, seed=seed)
    rewards = score_in_batches(reward_fn, repeated, samples, batch_size)
    results = []
    for i, prompt in enumerate(prompts):
        group_rewards, group = rewards[i * n : (i + 1) * n], samples[i * n : (i + 1) * n]
        best = max(range(n), key=group_rewards.__getitem__)  # ties: the first sample wins
        results.append(BestOfN(prompt, group[best], group_rewards[best], group_rewards, group))
    return results


def expected_best_of_k(rewards: list[float], k: int) -> float:
    """The expected best reward among k samples, estimated without bias from n >= k samples.

    Sort the n rewards ascending; the i-th smallest (1-based) is the best of a random k-subset in
    C(i-1, k-1) of the C(n, k) subsets. The same estimator as pass@k in arXiv:2107.03374, Eq. 1."""
    n = len(rewards)
    assert 1 <= k <= n, f"need 1 <= k <= n, got k={k}, n={n}"
    ordered = sorted(rewards)
    return sum(math.comb(i - 1, k - 1) * ordered[i - 1] for i in range(k, n + 1)) / math.comb(n, k)


def best_of_n_curve(results: list[BestOfN], ns: list[int] | None = None) -> dict[int, float]:
    """Mean best-of-k reward over prompts for each k in `ns` (default 1, 2, 4, ... up to n), all
    estimated from the one set of n samples per prompt: one sampling run draws the whole curve."""
    n = min(len(r.rewards) for r in results)
    ns = ns or [2**j for j in range(int(math.log2(n)) + 1)]
    return {k: sum(expected_best_of_k(r.rewards, k) for r in results) / len(results) for k in ns}


def best_of_n_kl(n: int) -> float:
    """KL(best-of-n policy || model) = log n - (n-1)/n nats.

    The analytic formula of Stiennon et al. 2020 (arXiv:2009.01325, App. G.3) and Gao et al. 2022
    (arXiv:2210.10760, Sec. 2.2); Beirami et al. 2024 (arXiv:2401.01879) show it is an upper bound
    (exact when no two samples share a reward)."""
    assert n >= 1, "n must be at least 1"
    return math.log(n) - (n - 1) / n


# ---------------------------------------------------------------------------------------------
# Rejection-sampling fine-tuning (Llama 2, Sec. 3.2.3 of arXiv:2307.09288)
# ---------------------------------------------------------------------------------------------

def rejection_sampling_data(model, tokenizer, prompts: list, n: int, reward_fn, *, keep_top: int = 1,
                            max_new_tokens: int = 64, seed: int = 0, batch_size: int = 64) -> datasets.Dataset:
    """The `keep_top` best of `n` samples per prompt, as SFT data: conversational prompt/completion
    rows (TRL's format, what `sft.train_sft` takes) plus a `reward` column."""
    assert 1 <= keep_top <= n, "keep_top must be between 1 and n"
    results = best_of_n(model, tokenizer, prompts, n, reward_fn, max_new_tokens=max_new_tokens, seed=seed,
                        batch_size=batch_size)
    return top_samples(results, keep_top)


def top_samples(results: list[BestOfN], keep_top: int = 1) -> datasets.Dataset:
    """The `keep_top` highest-rewarded samples of each best-of-N draw, as conversational SFT rows."""
    rows = []
    for r in results:
        # a stable sort: among equal rewards the earlier sample goes first, as in best_of_n
        ranked = sorted(range(len(r.samples)), key=lambda j: -r.rewards[j])[:keep_top]
        rows += [{"prompt": as_messages(r.prompt),
                  "completion": [{"role": "assistant", "content": r.samples[j].text}],
                  "reward": r.rewards[j]} for j in ranked]
    return datasets.Dataset.from_list(rows)


def best_worst_pairs(results: list[BestOfN]) -> datasets.Dataset:
    """On-policy preference pairs from best-of-N draws: per prompt, the highest-rewarded sample is chosen and
    the lowest rejected (Xiong et al. 2023, arXiv:2312.11456, and Llama 3's DPO data use best vs worst of
    the policy's own samples). Conversational prompt/chosen/rejected rows, what `dpo.train_dpo` takes, plus
    `reward_margin`; prompts whose best and worst answers are the same text (nothing to learn) are left out.
    The reward function labels every pair: what DPO then learns is that reward model's preference."""
    rows = []
    for r in results:
        best = max(range(len(r.samples)), key=r.rewards.__getitem__)   # ties: the first sample, as in best_of_n
        worst = min(range(len(r.samples)), key=r.rewards.__getitem__)
        if r.samples[best].text == r.samples[worst].text:
            continue
        rows.append({"prompt": as_messages(r.prompt),
                     "chosen": [{"role": "assistant", "content": r.samples[best].text}],
                     "rejected": [{"role": "assistant", "content": r.samples[worst].text}],
                     "reward_margin": r.rewards[best] - r.rewards[worst]})
    return datasets.Dataset.from_list(rows)


def mean_reward(model, tokenizer, prompts: list, reward_fn, *, samples_per_prompt: int = 1,
                max_new_tokens: int = 64, seed: int = 0, batch_size: int = 64) -> float:
    """The model's mean reward: `samples_per_prompt` fresh samples for each prompt."""
    prompts = [toyworld.as_prompt(p) for p in prompts for _ in range(samples_per_prompt)]
    completions = generate(model, tokenizer, prompts, max_new_tokens, batch_size=batch_size, seed=seed)
    rewards = score_in_batches(reward_fn, prompts, completions, batch_size)
    return sum(rewards) / len(rewards)


def rejection_sampling_finetune(
    profile: Profile, *, model_id: str | None = None, prompts: list | None = None, n: int = 8,
    reward_fn=toyworld.ground_truth_rewards, reward_model_dir: str | Path | None = None, rounds: int = 1,
    keep_top: int = 1, steps: int | None = None, learning_rate: float | None = None, out_dir: str | None = None,
    progress: bool = True, seed: int = 0,
) -> TrainResult:
    """Rounds of: sample `n` answers per prompt from the current model, keep the `keep_top` best,
    fine-tune on them with LoRA (`sft.train_sft`), merge. The next round samples from the result.

    `model_id`: the model to start from (the SFT model); default the profile's base model.
    `reward_model_dir`: instead of `reward_fn`, a reward model adapter trained on that model
    (`reward_model.train_reward_model(out_dir=...)`), put on each model it scores as a second adapter
    (`ppo.AdapterRewardModel`): one base in memory at a time, as a T4 needs for a 4-bit 7B.
    `steps`: SFT steps per round; default about 3 epochs of the kept samples.
    `history`: one row per round with the mean reward of all samples (the current model's reward),
    of the kept ones, and the SFT loss; then a last row with the final model's mean reward (fresh
    samples on the same prompts). `metrics`: `reward_before`, `reward_after`, their `gain`.

    The merge between rounds needs a full-precision base (`sft.save_merged`): with a 4-bit profile
    only `rounds=1` is supported, and its adapter is returned unmerged."""
    if rounds > 1 and profile.load_in_4bit:
        raise ValueError("rejection_sampling_finetune with rounds > 1 merges the adapter after each round, which "
                         "needs a full-precision base: use rounds=1 with a 4-bit profile")
    if rounds > 1 and reward_model_dir is not None:
        raise ValueError("a reward model adapter fits the base it was trained on, which the merge after each round "
                         "replaces: with rounds > 1 pass reward_fn")
    prompts = [toyworld.as_prompt(p) for p in (prompts or toyworld.train_prompts())]
    current = model_id or profile.model_path
    tokenizer = load_tokenizer(profile, current)
    history: list[dict] = []
    model = None
    def scorer(model):  # the reward function for `model`'s samples
        if reward_model_dir is None:
            return reward_fn
        from rlhf_course.ppo import AdapterRewardModel  # the reward model rides on the model's own base

        return AdapterRewardModel(model, tokenizer, reward_model_dir)

    for round_ in range(rounds):
        # a reward model adapter needs a PEFT model to ride on (a fresh LoRA adapter changes nothing)
        sampler = load_policy(profile, lora=reward_model_dir is not None and not is_adapter(current), model_id=current,
                              verbose=progress and round_ == 0)
        results = best_of_n(sampler, tokenizer, prompts, n, scorer(sampler), max_new_tokens=profile.max_new_tokens,
                            seed=seed + round_)
        del sampler  # one model at a time: train_sft loads its own
        free_memory()
        data = top_samples(results, keep_top)
        all_mean = sum(sum(r.rewards) for r in results) / (n * len(results))
        round_steps = steps or max(10, 3 * len(data) // profile.batch_size)
        result = train_sft(profile, data.remove_columns("reward"), steps=round_steps,
                           learning_rate=learning_rate, model_id=current, progress=progress, seed=seed + round_)
        model = result.model
        history.append({"round": round_, "reward_mean": all_mean, "reward_kept": sum(data["reward"]) / len(data),
                        "train_loss": result.metrics["train_loss"], "sft_steps": round_steps})
        if progress:
            print(f"rejection sampling round {round_}: mean reward of the samples {all_mean:.3f}, "
                  f"of the kept best-of-{n} {history[-1]['reward_kept']:.3f}")
        if round_ < rounds - 1:  # the next round samples from the fine-tuned model
            out_dir = out_dir or tempfile.mkdtemp(prefix="rlhf-course-rs-")
            current = str(save_merged(model, tokenizer, Path(out_dir) / f"round_{round_}"))
            model = None
    if is_adapter(model_id):  # training continued the SFT adapter: its frozen copy is pi_ref (as TRL's trainers keep)
        model.load_adapter(model_id, adapter_name=REFERENCE_ADAPTER, is_trainable=False)
    final = mean_reward(model, tokenizer, prompts, scorer(model), samples_per_prompt=n,
                        max_new_tokens=profile.max_new_tokens, seed=seed + rounds)
    history.append({"round": rounds, "reward_mean": final})
    metrics = {"reward_before": history[0]["reward_mean"], "reward_after": final,
               "gain": final - history[0]["reward_mean"], "train_loss": history[-2]["train_loss"]}
    return TrainResult(model, metrics, history)

