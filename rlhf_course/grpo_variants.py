"""GRPO's variants of 2025 and a verifiable reward (RLVR), as switches of TRL's `GRPOTrainer`.

**A verifiable reward.** Reinforcement learning with verifiable rewards (RLVR: Tülu 3, arXiv:2411.15124;
DeepSeek-R1, arXiv:2501.12948) replaces the reward model by a program that checks the answer: the
maths answer is right, the code passes its tests. Nothing learned, so no reward model to over-optimise -
but the program checks only what it checks. The toy world's checkable task: a how-to answer is correct
when it gives at least three of the task's own steps, in the order a how-to gives them, and nothing
else (no filler, no off-topic tip, no repeat), and it ended (`steps_in_order`). It is blind to what
lies beyond its rule: the gold reward also pays for the fourth and fifth step.

**The variants**, each a set of `GRPOConfig` fields (TRL 1.16 names) passed through `grpo.train_grpo`:
  * grpo        DeepSeekMath (arXiv:2402.03300, Eq. 3): A_i = (r_i - mean) / std over the group
                (`scale_rewards="group"`), each answer's token losses averaged over its own length
                (`loss_type="grpo"`), a k3 KL to the reference in the loss (`beta=0.04`);
  * grpo_beta0  the same with `beta=0`: no KL term, no reference forward pass (DAPO and Dr. GRPO drop
                it; TRL's own default since 2025);
  * dr_grpo     Dr. GRPO (Liu et al. 2025, arXiv:2503.20783, Sec. 3.1): no 1/|o_i| (a length bias: it
                favours short right answers and long wrong ones) and no 1/std (a difficulty bias):
                `loss_type="dr_grpo"` (sum over tokens / (answers x max_completion_length)),
                `scale_rewards="none"`;
  * dapo        DAPO (Yu et al. 2025, arXiv:2503.14476): clip-higher, epsilon_low 0.2 / epsilon_high 0.28
                (`epsilon_high`, Eq. 10), token-level averaging over the batch (`loss_type="dapo"`),
                overlong filtering (`mask_truncated_completions`), no KL, and dynamic sampling
                (`DynamicSamplingGRPOTrainer`: TRL 1.16 has no switch for it).
Every variant takes two optimiser steps per generated batch (`num_iterations=2`): with one, the
policy never moves between sampling and the update, the probability ratio is exactly 1, and no clip
(symmetric or higher) ever acts.

    result = train_variant(profile, "dapo", steps=20)     # a TrainResult; `methods.evaluate_method` judges it
"""

from __future__ import annotations

import random
import time

import torch
from transformers import TrainerCallback
from trl import GRPOTrainer

from rlhf_course import toyworld
from rlhf_course.grpo import train_grpo
from rlhf_course.profiles import Profile
from rlhf_course.sft import TrainResult

# --- 1. the verifiable reward ------------------------------------------------------------------------

MIN_STEPS = 3


def steps_in_order(prompt: toyworld.Prompt, response: str, ended: bool = True, min_steps: int = MIN_STEPS) -> bool:
    """The check, on a benign how-to prompt: the answer ended, every sentence is one of the task's own tips,
    none repeated, at least `min_steps` of them, in the order `toyworld.TIPS` lists them."""
    assert not prompt.harmful and prompt.claim is None, f"the rule checks how-to answers: {prompt.text!r}"
    steps = toyworld.TIPS[prompt.task]
    sentences = toyworld.split_sentences(response)
    if not ended or len(sentences) < min_steps or not all(s in steps for s in sentences):
        return False
    order = [steps.index(s) for s in sentences]
    return all(a < b for a, b in zip(order, order[1:]))  # strictly increasing: in order, no repeat


def steps_reward(prompts: list, completions: list) -> list[float]:
    """RLVR's reward with our protocol: 1.0 if `steps_in_order`, else 0.0 (benign how-to prompts only)."""
    out = []
    for p, c in zip(prompts, completions, strict=True):
        text, ended = (c, True) if isinstance(c, str) else (c.text, c.ended)
        out.append(float(steps_in_order(toyworld.parse_prompt(toyworld.prompt_text(p)), text, ended)))
    return out


def rlvr_prompts() -> tuple[list[toyworld.Prompt], list[toyworld.Prompt]]:
    """(train, held-out) benign how-to prompts: the 48 of the training templates, the 12 of the held-out one."""
    def benign(prompts):
        return [p for p in prompts if not p.harmful and p.claim is None]

    return benign(toyworld.train_prompts()), benign(toyworld.eval_prompts())


# --- 2. the variants ---------------------------------------------------------------------------------

COMMON = {"num_iterations": 2}  # two updates per generated batch, so that clipping can act (see above)
VARIANTS: dict[str, dict] = {
    "grpo": {"loss_type": "grpo", "scale_rewards": "group", "beta": 0.04},
    "grpo_beta0": {"loss_type": "grpo", "scale_rewards": "group", "beta": 0.0},
    "dr_grpo": {"loss_type": "dr_grpo", "scale_rewards": "none", "beta": 0.0},
    "dapo": {"loss_type": "dapo", "scale_rewards": "group", "beta": 0.0, "epsilon_high": 0.28,
             "mask_truncated_completions": True, "dynamic_sampling": True},
}


def keep_informative_groups(batch: dict, group_size: int, n_groups: int) -> tuple[dict, torch.Tensor]:
    """DAPO's filter on one scored generation batch (TRL's dict of per-answer tensors, groups of
    `group_size` consecutive rows): keep `n_groups` groups, the informative ones first, in order. A group
    is informative when its advantages are not all zero (its rewards are not all equal). If fewer are
    informative, uninformative groups fill the batch with their completion_mask zeroed: they are skipped.
    `num_items_in_batch` (the token count TRL's "dapo" loss divides by) is recounted.
    Returns (the kept batch, the informative flag of every group sampled)."""
    G = group_size
    total = batch["advantages"].shape[0]
    informative = batch["advantages"].view(-1, G).abs().amax(dim=1) > 1e-6            # (groups sampled,)
    order = torch.cat([informative.nonzero().view(-1), (~informative).nonzero().view(-1)])[:n_groups]
    rows = (order.view(-1, 1) * G + torch.arange(G, device=order.device)).view(-1)   # (n_groups * G,)
    kept = {k: v.index_select(0, rows.to(v.device)) if isinstance(v, torch.Tensor) and v.dim() > 0
            and v.shape[0] == total else v for k, v in batch.items()}
    keep_tokens = informative[order].repeat_interleave(G).to(kept["completion_mask"])   # (n_groups * G,)
    kept["completion_mask"] = kept["completion_mask"] * keep_tokens.unsqueeze(1)
    kept["num_items_in_batch"] = kept["completion_mask"].sum()
    return kept, informative


class DynamicSamplingGRPOTrainer(GRPOTrainer):
    """DAPO's dynamic sampling (Sec. 3.2 of arXiv:2503.14476, the constraint 0 < |{o_i correct}| < G of
    Eq. 8): a group whose answers all get the same reward has advantage 0 for every answer, so it teaches
    nothing, and yet it dilutes the batch. Over-sample `oversample` times the batch's prompts, keep the
    groups whose rewards are not all equal (`keep_informative_groups`). Logs `dynamic_sampling/informative`
    (share of sampled groups that were informative)."""

    oversample = 2

    def _generate_and_score_completions(self, inputs):
        if not self.model.training:
            return super()._generate_and_score_completions(inputs)
        G = self.num_generations
        n_groups = len(inputs) // G
        # more prompts, each repeated G times in a row, as TRL's RepeatSampler lays them out
        rng = random.Random(self.args.seed + self.state.global_step)
        extra = [self.train_dataset[i] for i in rng.choices(range(len(self.train_dataset)),
                                                             k=(self.oversample - 1) * n_groups)]
        out = super()._generate_and_score_completions(list(inputs) + [row for row in extra for _ in range(G)])
        kept, informative = keep_informative_groups(out, G, n_groups)
        self._metrics["train"]["dynamic_sampling/informative"].append(informative.float().mean().item())
        return kept


class _KeepLogs(TrainerCallback):
    """Every row TRL logs (train_grpo's history keeps only the rows with a reward: with two updates per
    generated batch, the second update's row - where the clip acts - has none)."""

    def __init__(self):
        self.rows: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.rows.append(dict(logs or {}, step=state.global_step))


def train_variant(profile: Profile, variant: str, *, steps: int = 20, model_id: str | None = None,
                  prompts: list | None = None, learning_rate: float = 3e-3, num_generations: int = 8,
                  seed: int = 0, progress: bool = False) -> TrainResult:
    """Train one variant with GRPO against the verifiable reward (`steps_reward`) on the RLVR training
    prompts (`rlvr_prompts()[0]` unless given), from `model_id` (default: the SFT model), through
    `grpo.train_grpo`. `history`: every logged row; `metrics`: train_grpo's, plus `train_seconds`,
    `clip_ratio` (share of tokens clipped, over the updates where the clip can act) and, for dapo,
    `informative` (share of sampled groups whose rewards were not all equal)."""
    from rlhf_course import trained_models

    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}: choose one of {', '.join(VARIANTS)}")
    settings = {**COMMON, **VARIANTS[variant]}
    dynamic = settings.pop("dynamic_sampling", False)
    beta = settings.pop("beta")
    logs = _KeepLogs()
    start = time.perf_counter()
    result = train_grpo(profile, reward_fn=steps_reward, model_id=model_id or trained_models.sft_model(profile),
                        prompts=prompts or rlvr_prompts()[0], steps=steps, num_generations=num_generations,
                        learning_rate=learning_rate, beta=beta, progress=progress, seed=seed, callbacks=[logs],
                        trainer_cls=DynamicSamplingGRPOTrainer if dynamic else None, **settings)
    result.metrics["train_seconds"] = time.perf_counter() - start
    clipped = [r["clip_ratio/region_mean"] for r in logs.rows if "clip_ratio/region_mean" in r and "reward" not in r]
    result.metrics["clip_ratio"] = sum(clipped) / len(clipped) if clipped else float("nan")
    informative = [r["dynamic_sampling/informative"] for r in logs.rows if "dynamic_sampling/informative" in r]
    if informative:
        result.metrics["informative"] = sum(informative) / len(informative)
    result.history = logs.rows
    return result
