"""GRPO and RLOO through TRL: policy gradients with a group baseline instead of a value model.

Both sample a group of `num_generations` answers per prompt and use the other answers of the group
as the baseline, so there is no value head and no GAE:
  - GRPO (DeepSeekMath, Sec. 4.1 of arXiv:2402.03300): advantage of answer i = (r_i - mean(r)) / std(r)
    over its group (Eq. 3's outcome supervision); PPO's clipped surrogate; a per-token KL to the
    reference *in the loss*, estimated with k3 = pi_ref/pi - log(pi_ref/pi) - 1 (Eq. 4), weight `beta`.
  - RLOO (Ahmadian et al. 2024, arXiv:2402.14740, after Kool et al. 2019): advantage of answer i =
    r_i - mean of the *other* k-1 rewards; the KL enters *the reward*, summed over the answer's tokens
    (r_i - beta * sum_t log pi/pi_ref), as in PPO-style RLHF.

TRL does the sampling, the advantages and the losses (`trl.GRPOTrainer`, `trl.RLOOTrainer`); this
module adapts our reward protocol to TRL's, builds the prompt dataset and the configs, and returns a
`TrainResult` like every trainer here. TRL's configs are passed through (`**trl_args`), not re-declared.

    r = train_grpo(profile, model_id="/tmp/sft")                    # ground-truth reward
    r = train_grpo(profile, algorithm="rloo", reward_fn=reward_model.reward_fn(rm, tok))

Batch sizes in TRL 1.16 count *completions*, not prompts: one optimizer step uses
`per_device_train_batch_size * gradient_accumulation_steps * num_processes` completions, i.e.
that number / `num_generations` distinct prompts. They are sampled together in one generation batch
of `generation_batch_size` completions (default: the same number; `steps_per_generation` =
gradient_accumulation_steps). With the tiny profile: 32 completions per step = 4 prompts x 8 answers,
the same 32 answers of 64 new tokens per step as our PPO iteration.
"""

from __future__ import annotations

import math

import datasets
import torch
from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

from rlhf_course import toyworld
from rlhf_course.loading import load_tokenizer, policy_for_trainer
from rlhf_course.profiles import Profile
from rlhf_course.sampling import Completion, as_messages
from rlhf_course.training import (
    TrainResult,
    run_trl_trainer,
    steps_or_default,
    trl_common_args,
)

ALGORITHMS = {"grpo": (GRPOConfig, GRPOTrainer), "rloo": (RLOOConfig, RLOOTrainer)}
# KL coefficient of RLOO when none is given: TRL's default, on the KL summed over the answer (GRPO's comes
# from the profile's recipe, DeepSeekMath's 0.04 on a per-token KL: the two are not comparable one to one).
RLOO_BETA = 0.05


# --- the two baselines, as TRL computes them (inline in its trainers; here to be read and tested) ---

def group_relative_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    """GRPO: A_i = (r_i - mean(r_group)) / (std(r_group) + eps) within each group of `group_size`
    consecutive answers to one prompt (outcome supervision, Sec. 4.1 of arXiv:2402.03300; TRL's `scale_rewards="group"`:
    unbiased std, eps 1e-4). A group whose answers all score the same gets advantage 0."""
    assert rewards.dim() == 1 and rewards.numel() % group_size == 0, "rewards: (B,), B a multiple of group_size"
    grouped = rewards.view(-1, group_size)                                  # (B / G, G)
    mean, std = grouped.mean(dim=1, keepdim=True), grouped.std(dim=1, keepdim=True)
    return ((grouped - mean) / (std + eps)).view(-1)                        # (B,)


def rloo_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """RLOO: A_i = r_i - mean of the other k-1 rewards of its group (Sec. 3 of arXiv:2402.14740;
    TRL's RLOOTrainer before its optional whitening). Equals k/(k-1) * (r_i - mean(r_group))."""
    assert rewards.dim() == 1 and rewards.numel() % group_size == 0, "rewards: (B,), B a multiple of group_size"
    assert group_size > 1, "a leave-one-out baseline needs at least two answers per prompt"
    grouped = rewards.view(-1, group_size)                                  # (B / k, k)
    baseline = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)
    return (grouped - baseline).view(-1)                                    # (B,)


def trl_reward_func(reward_fn, eos_token_ids: list[int]):
    """Our protocol `reward_fn(prompts, completions: list[Completion]) -> list[float]` as a TRL reward
    function. TRL calls `f(prompts=..., completions=..., completion_ids=..., **columns)`; for
    conversational prompts a completion is `[{"role": "assistant", "content": text}]`."""

    def reward(prompts: list, completions: list, completion_ids: list[list[int]], **kwargs) -> list[float]:
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        # 1. TRL keeps the end-of-sequence token in completion_ids when the answer ended (and cuts after
        #    it): an answer without it was cut at max_completion_length, which the ground truth penalises
        ended = [len(ids) > 0 and ids[-1] in eos_token_ids for ids in completion_ids]
        done = [Completion(t.strip(), e, len(ids)) for t, e, ids in zip(texts, ended, completion_ids)]
        return [float(r) for r in reward_fn(prompts, done)]

    # TRL logs each reward function's mean under rewards/<__name__>/mean
    reward.__name__ = getattr(reward_fn, "__name__", type(reward_fn).__name__)
    return reward


def prompt_dataset(prompts: list | None = None) -> datasets.Dataset:
    """TRL's conversational prompt-only format: `{"prompt": [{"role": "user", "content": ...}]}`.
    Default: the toy world's training prompts."""
    prompts = prompts or toyworld.train_prompts()
    return datasets.Dataset.from_list([{"prompt": as_messages(toyworld.as_prompt(p))} for p in prompts])



def train_grpo(
    profile: Profile, *, algorithm: str = "grpo", reward_fn=toyworld.ground_truth_rewards,
    model_id: str | None = None, prompts: list | None = None, steps: int | None = None,
    num_generations: int = 8, learning_rate: float | None = None, beta: float | None = None,
    load_in_4bit: bool | None = None, out_dir: str | None = None, progress: bool = True, seed: int = 0,
    callbacks: list | None = None, trainer_cls=None, **trl_args,
) -> TrainResult:
    """Train a LoRA adapter on the profile's (SFT) model with GRPO or RLOO, through TRL.

    `reward_fn`: our protocol, e.g. `toyworld.ground_truth_rewards` or `reward_model.reward_fn(rm, tok)`.
    `steps`: optimizer steps (default `profile.ppo_steps`), each on `profile.batch_size` completions
    = `profile.batch_size / num_generations` prompts, of at most `profile.max_new_tokens` tokens.
    `learning_rate`, `beta` (the KL coefficient; 0 skips the reference model): default from the profile's
    recipe (RLOO's beta: `RLOO_BETA`).
    `trl_args`: any other field of `GRPOConfig`/`RLOOConfig` (e.g. `loss_type="grpo"`, `epsilon`).
    `trainer_cls`: a subclass of TRL's trainer to use instead (e.g. `grpo_variants.DynamicSamplingGRPOTrainer`).

    `history`: TRL's log, one row per step (reward, reward_std, kl, entropy, ...). `metrics`: the mean
    reward of the first and last few steps, the last KL, and seconds per step."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}: choose one of {', '.join(ALGORITHMS)}")
    config_cls, default_trainer_cls = ALGORITHMS[algorithm]
    steps = steps_or_default(steps, profile.ppo_steps)
    tokenizer = load_tokenizer(profile, model_id)
    model, peft_config = policy_for_trainer(profile, model_id, load_in_4bit, verbose=progress)

    common = trl_common_args(profile, steps, out_dir, progress, seed)
    common["logging_steps"] = 1  # one history row per step: a reward curve, even for a 10-step run
    args = config_cls(**{
        **common,
        "learning_rate": learning_rate or profile.recipe.grpo_learning_rate,
        "beta": beta if beta is not None else profile.recipe.grpo_beta if algorithm == "grpo" else RLOO_BETA,
        "num_generations": num_generations,
        "max_completion_length": profile.max_new_tokens,
        # 2. sampling from the policy at the profile's temperature (TRL scores log-probs at the same
        #    temperature), no top-k/top-p: the distribution the policy gradient assumes
        "temperature": profile.temperature, "top_k": 0, "top_p": 1.0,
        # 3. dropout would make the policy's and the reference's log-probs differ on the same weights
        "disable_dropout": True,
        **trl_args,
    })
    eos = model.generation_config.eos_token_id  # every id that ends an answer, as TRL collects them
    eos_token_ids = {tokenizer.eos_token_id, *([] if eos is None else [eos] if isinstance(eos, int) else eos)}
    trainer = (trainer_cls or default_trainer_cls)(
        model=model, reward_funcs=trl_reward_func(reward_fn, list(eos_token_ids)), args=args,
        train_dataset=prompt_dataset(prompts), processing_class=tokenizer,
        # 4. a fresh LoRA adapter, the reference being the same model with the adapter disabled; or (7b) the
        #    SFT adapter itself, continued, with its frozen copy "ref" as the reference (TRL makes it)
        peft_config=peft_config, callbacks=callbacks,
    )
    # the final summary row has no reward: the history is the rows that do
    out, history = run_trl_trainer(trainer, profile, progress=progress, desc=algorithm.upper(), history_key="reward")
    k = max(1, len(history) // 5)  # average the first and last fifth: one step's mean reward is noisy
    metrics = {
        "reward_first": sum(h["reward"] for h in history[:k]) / k,
        "reward_last": sum(h["reward"] for h in history[-k:]) / k,
        "kl_last": history[-1].get("kl", math.nan),
        "train_loss": out.training_loss,
        "seconds_per_step": out.metrics["train_runtime"] / steps,
        "completions_per_step": args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size,
    }
    return TrainResult(trainer.model, metrics, history)
