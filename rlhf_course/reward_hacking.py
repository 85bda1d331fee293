"""Reward hacking, shown with numbers: PPO against a reward model that learned a labeller's taste
for long answers. The proxy (the reward model's score) rises while the ground truth falls; the
KL penalty to the reference limits the fall (Gao et al. 2022, "Scaling laws for reward model
overoptimization", arXiv:2210.10760; Stiennon et al. 2020, Sec. 4.3).

    curves = reward_hacking_curves(profile)          # {"kl_coef=0": [...], "kl_coef=0.1": [...]}
    plots.plot_reward_hacking(curves)

Without a ground truth (the 7b profile) the proxy is the reward model trained on the real preference
set and the gold reward the independent judge (`gold.gold_reward_fn`): Gao et al.'s own setting.
"""

from __future__ import annotations

from rlhf_course import trained_models
from rlhf_course.gold import gold_reward_fn
from rlhf_course.loading import free_memory
from rlhf_course.parallel import start_jobs
from rlhf_course.ppo import train_ppo
from rlhf_course.profiles import Profile
from rlhf_course.sampling import RewardFn


def reward_hacking_curves(profile: Profile, *, kl_coefs: tuple[float, ...] = (0.0, 0.2), steps: int = 60,
                          sft_model_id: str | None = None, reward_model_dir: str | None = None,
                          monitor_fn: RewardFn | None = None, prompts: list | None = None,
                          progress: bool = True, seed: int = 0) -> dict[str, list[dict]]:
    """PPO from the SFT model against a proxy reward model, once per KL coefficient: the length-biased one
    where the profile has a ground truth, else the profile's own reward model. Returns, per run, one dict
    per iteration: step, proxy_reward (the reward model's mean score), true_reward (the gold reward's mean:
    `monitor_fn`, default `gold_reward_fn(profile)`; watched but never optimised), kl (nats per answer) and
    length (tokens per answer).

    On a GPU the runs go one at a time, each run's model freed before the next loads (a T4 holds one 4-bit
    7B). On a CPU with the toy world's ground truth they go side by side, one single-threaded process each
    (`parallel.start_jobs`): the tiny model is too small for two threads to help one run."""
    sft = sft_model_id or trained_models.sft_model(profile)
    kind = "length_biased" if profile.has_ground_truth else "default"
    rm = reward_model_dir or trained_models.reward_model_dir(profile, kind)
    gold = monitor_fn or gold_reward_fn(profile)
    runs = {f"kl_coef={kl_coef:g}": (profile, sft, rm, gold, prompts, steps, kl_coef, seed) for kl_coef in kl_coefs}
    if profile.device == "cpu" and profile.has_ground_truth and len(runs) > 1:
        return start_jobs({name: (_ppo_curve, (*args, False)) for name, args in runs.items()}, workers=2)()
    return {name: _ppo_curve(*args, progress) for name, args in runs.items()}


def _ppo_curve(profile, sft, rm, gold, prompts, steps, kl_coef, seed, progress) -> list[dict]:
    result = train_ppo(profile, model_id=sft, reward_model_dir=rm, monitor_fn=gold, prompts=prompts,
                       steps=steps, kl_coef=kl_coef, progress=progress, seed=seed)
    rows = [{"step": h["step"], "proxy_reward": h["reward/score"], "true_reward": h["reward/monitor"],
             "kl": h["objective/kl"], "length": h["rollout/length"]} for h in result.history]
    del result  # a T4 holds one 4-bit 7B: this run's model goes before the next run loads its own
    free_memory()
    return rows


def summarize_hacking(curves: dict[str, list[dict]], window: int = 5) -> dict[str, dict[str, float]]:
    """Start and end (mean over `window` iterations) of the proxy and the true reward, per run."""
    def avg(rows, key):
        return sum(r[key] for r in rows) / len(rows)

    return {name: {"proxy_start": avg(rows[:window], "proxy_reward"), "proxy_end": avg(rows[-window:], "proxy_reward"),
                   "true_start": avg(rows[:window], "true_reward"), "true_end": avg(rows[-window:], "true_reward"),
                   "kl_end": avg(rows[-window:], "kl")}
            for name, rows in curves.items()}
