"""Our PPO step against TRL's RLOO and GRPO steps, side by side in one process.

Same tiny SFT model, same prompts, same number of completions per step, same generation length and
temperature, same LoRA adapter, same ground-truth reward, threads pinned. Each trainer runs
`--steps` steps per round (after a warm-up step), rounds alternate between the trainers so load
changes hit all of them alike; we print the median seconds per step and the ratio to PPO's.

    python benchmarks/bench_rl_step.py --threads 2 --rounds 3 --steps 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import TrainerCallback

from rlhf_course import toyworld, trained_models
from rlhf_course.grpo import train_grpo
from rlhf_course.loading import load_policy, load_tokenizer
from rlhf_course.ppo import PPOConfig, PPOTrainer
from rlhf_course.profiles import pick_profile


def ppo_step_times(profile, sft: str, steps: int, **config_changes) -> tuple[list[float], float]:
    tokenizer = load_tokenizer(profile, sft)
    policy = load_policy(profile, model_id=sft, verbose=False)
    cfg = PPOConfig(batch_size=profile.batch_size, max_new_tokens=profile.max_new_tokens,
                    temperature=profile.temperature, **config_changes)
    trainer = PPOTrainer(cfg, policy, tokenizer, toyworld.ground_truth_rewards,
                         [p.text for p in toyworld.train_prompts()])
    trainer.step()  # warm-up
    times, lengths = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        stats = trainer.step()
        times.append(time.perf_counter() - t0)
        lengths.append(stats["rollout/length"])
    return times, statistics.mean(lengths)


class StepClock(TrainerCallback):
    """Wall time of each whole optimizer step (generation, scoring, loss, backward, optimizer), as
    our PPO step is timed; TRL's own `step_time` leaves out the optimizer step."""

    def __init__(self):
        self.times, self._t0 = [], None

    def on_step_begin(self, args, state, control, **kwargs):
        self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._t0)


def trl_step_times(profile, sft: str, algorithm: str, steps: int) -> tuple[list[float], float]:
    clock = StepClock()
    result = train_grpo(profile, algorithm=algorithm, model_id=sft, steps=steps + 1, progress=False,
                        callbacks=[clock])
    rows = result.history[1:]  # drop the warm-up step
    return clock.times[1:], statistics.mean(r["completions/mean_length"] for r in rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per trainer per round")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    profile = pick_profile("tiny")
    sft = trained_models.sft_model(profile)
    # Our PPO iteration makes num_ppo_epochs x num_minibatches = 4 optimizer updates on its rollouts;
    # TRL's RLOO/GRPO step makes one. The second row does one update too: the same work per step.
    runs = {"ours: PPO": lambda: ppo_step_times(profile, sft, args.steps),
            "ours: PPO 1x1": lambda: ppo_step_times(profile, sft, args.steps, num_ppo_epochs=1, num_minibatches=1),
            "TRL: RLOO": lambda: trl_step_times(profile, sft, "rloo", args.steps),
            "TRL: GRPO": lambda: trl_step_times(profile, sft, "grpo", args.steps)}
    times = {k: [] for k in runs}
    lengths = {k: [] for k in runs}
    for r in range(args.rounds):
        for name, run in runs.items():
            t, length = run()
            times[name] += t
            lengths[name].append(length)
            print(f"round {r + 1}: {name:<13} median {statistics.median(t):.3f} s/step", flush=True)
    medians = {name: statistics.median(t) for name, t in times.items()}
    print(f"\n{profile.batch_size} completions per step, <= {profile.max_new_tokens} new tokens, "
          f"temperature {profile.temperature}, {args.threads} threads, {args.rounds} x {args.steps} steps each")
    print(f"{'trainer':<14} {'median s/step':>14} {'mean answer tokens':>19}")
    for name, med in medians.items():
        print(f"{name:<14} {med:>14.3f} {statistics.mean(lengths[name]):>19.1f}")
    print("\nratio (ours / TRL's; <= 1.0: ours is no slower)")
    for ours in ("ours: PPO", "ours: PPO 1x1"):
        print(f"{ours:<14} " + "   ".join(f"/ {trl}: {medians[ours] / medians[trl]:.2f}"
                                          for trl in ("TRL: RLOO", "TRL: GRPO")))


if __name__ == "__main__":
    main()
