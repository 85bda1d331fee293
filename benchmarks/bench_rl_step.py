"""Our PPO step against trl 0.11.4's PPOTrainer and TRL 1.16's GRPO and RLOO steps (issue 14.1).

One tiny Llama (hidden 64, 2 layers, the course's BPE tokenizer from data/tiny, random weights from
seed 0 - built here, not the shipped model) is saved to a temporary folder that every trainer loads.
Every trainer gets the same LoRA adapter (the tiny profile's r, alpha and target modules), the same
toy-world ground-truth reward, 16 completions x 16 new tokens per step (EOS suppressed with
min_new_tokens = max_new_tokens = 16, so every answer has the same length), pure sampling at
temperature 1, one thread. A step is everything: generation, scoring, the reference's and the old
policy's log-probs, every update and the optimizer (TRL 1.16's own `step_time` leaves out the
optimizer, so its steps are timed with a callback).

Rows: ours at 4 epochs x 4 minibatches (16 updates per step) against trl 0.11.4's PPOTrainer at
ppo_epochs=4, mini_batch_size=4 (16 updates too); ours at 1 x 1 (one update) against TRL 1.16's GRPO
and RLOO (one update per step). trl 0.11.4 cannot live beside TRL 1.16, so its row runs in a scratch
environment (README.md says how to make one) through `trl011_ppo_steps.py`, one subprocess per round.
Each trainer runs a warm-up step, then `--steps` timed steps per round; rounds alternate between the
trainers so a change of load hits all of them alike. Model loading is outside the timed steps.

    taskset -c 0 python benchmarks/bench_rl_step.py --rounds 3 --steps 10    # about 2 minutes
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, TrainerCallback

from rlhf_course import toyworld
from rlhf_course.grpo import train_grpo
from rlhf_course.loading import load_policy, load_tokenizer
from rlhf_course.ppo import PPOConfig, PPOTrainer
from rlhf_course.profiles import pick_profile

TRL011_PYTHON = os.environ.get("TRL011_PYTHON", "/work/wt/trl011/bin/python")
HERE = Path(__file__).resolve().parent
BATCH, NEW_TOKENS = 16, 16


def build_tiny_llama(folder: str, profile) -> str:
    """The shared benchmark model: a 2-layer Llama of hidden size 64 with random weights from seed 0, and
    the course's tokenizer (its vocabulary and chat template). EOS never ends an answer early: every
    trainer's generation is told min_new_tokens = max_new_tokens."""
    tokenizer = load_tokenizer(profile)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def make_ppo_trainer(profile, model_dir: str, **config_changes) -> PPOTrainer:
    """Our PPO trainer at the benchmark's settings on the shared model (also what profile_ppo_step.py times)."""
    tokenizer = load_tokenizer(profile, model_dir)
    policy = load_policy(profile, model_id=model_dir, verbose=False)
    policy.get_base_model().generation_config.min_new_tokens = NEW_TOKENS  # sample_ids passes max_new_tokens
    cfg = PPOConfig(batch_size=BATCH, max_new_tokens=NEW_TOKENS, temperature=1.0, **config_changes)
    return PPOTrainer(cfg, policy, tokenizer, toyworld.ground_truth_rewards, [p.text for p in toyworld.train_prompts()])


def ours_step_times(profile, model_dir: str, steps: int, **config_changes) -> tuple[list[float], float]:
    trainer = make_ppo_trainer(profile, model_dir, **config_changes)
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


def trl_step_times(profile, model_dir: str, algorithm: str, steps: int) -> tuple[list[float], float]:
    """TRL 1.16's GRPO or RLOO: 16 completions per step = 2 prompts x 8 answers, one update per step."""
    clock = StepClock()
    result = train_grpo(profile, algorithm=algorithm, model_id=model_dir, steps=steps + 1, progress=False,
                        callbacks=[clock], generation_kwargs={"min_new_tokens": NEW_TOKENS})
    rows = result.history[1:]  # drop the warm-up step
    return clock.times[1:], statistics.mean(r["completions/mean_length"] for r in rows)


def trl011_step_times(profile, model_dir: str, steps: int) -> tuple[list[float], float]:
    """trl 0.11.4's PPOTrainer, in its own environment: one subprocess, which prints its step times."""
    out = subprocess.run([TRL011_PYTHON, str(HERE / "trl011_ppo_steps.py"), model_dir, "--steps", str(steps),
                          "--batch-size", str(BATCH), "--new-tokens", str(NEW_TOKENS),
                          "--learning-rate", str(profile.recipe.ppo_learning_rate)],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(HERE.parent)})
    if out.returncode != 0:
        raise RuntimeError(f"trl011_ppo_steps.py failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result["times"], result["mean_answer_tokens"]


def trl011_missing() -> str | None:
    """Why the trl 0.11.4 row cannot run here, or None."""
    if not Path(TRL011_PYTHON).exists():
        return f"{TRL011_PYTHON} does not exist"
    version = subprocess.run([TRL011_PYTHON, "-c", "import trl; print(trl.__version__)"],
                             capture_output=True, text=True).stdout.strip()
    return None if version == "0.11.4" else f"{TRL011_PYTHON} has trl {version or '(none)'}, not 0.11.4"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per trainer per round")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    profile = pick_profile("tiny").replace(batch_size=BATCH, max_new_tokens=NEW_TOKENS, temperature=1.0,
                                           gradient_accumulation_steps=1)
    model_dir = build_tiny_llama(tempfile.mkdtemp(prefix="bench-rl-step-"), profile)

    runs = {"ours: PPO 4x4": lambda: ours_step_times(profile, model_dir, args.steps, num_ppo_epochs=4, num_minibatches=4),
            "trl 0.11.4: PPO 4x4": lambda: trl011_step_times(profile, model_dir, args.steps),
            "ours: PPO 1x1": lambda: ours_step_times(profile, model_dir, args.steps, num_ppo_epochs=1, num_minibatches=1),
            "TRL 1.16: GRPO": lambda: trl_step_times(profile, model_dir, "grpo", args.steps),
            "TRL 1.16: RLOO": lambda: trl_step_times(profile, model_dir, "rloo", args.steps)}
    missing = trl011_missing()
    if missing:
        print(f"skipping the trl 0.11.4 row: {missing}. Make that environment (benchmarks/README.md): "
              "python -m venv /work/wt/trl011 && /work/wt/trl011/bin/pip install --no-deps trl==0.11.4 tyro==1.0.17 "
              "docstring_parser==0.18.0 typeguard==4.6.1 && python -c 'import site; print(site.getsitepackages()[0])' "
              "> /work/wt/trl011/lib/python3.11/site-packages/main_stack.pth   (or point TRL011_PYTHON at one)")
        del runs["trl 0.11.4: PPO 4x4"]
    times = {k: [] for k in runs}
    lengths = {k: [] for k in runs}
    for r in range(args.rounds):
        for name, run in runs.items():
            t, length = run()
            times[name] += t
            lengths[name].append(length)
            print(f"round {r + 1}: {name:<20} median {statistics.median(t):.3f} s/step", flush=True)
    medians = {name: statistics.median(t) for name, t in times.items()}
    print(f"\n{BATCH} completions x {NEW_TOKENS} new tokens per step, temperature 1, {args.threads} thread(s), "
          f"{args.rounds} rounds x {args.steps} steps each, torch {torch.__version__}")
    print(f"{'trainer':<20} {'median s/step':>14} {'mean answer tokens':>19}")
    for name, med in medians.items():
        print(f"{name:<20} {med:>14.3f} {statistics.mean(lengths[name]):>19.1f}")
    print("\nratios of medians")
    if "trl 0.11.4: PPO 4x4" in medians:
        print(f"ours PPO 4x4 / trl 0.11.4 PPO 4x4: {medians['ours: PPO 4x4'] / medians['trl 0.11.4: PPO 4x4']:.2f}"
              "   (target <= 0.75)")
    print(f"ours PPO 1x1 / TRL 1.16 GRPO:      {medians['ours: PPO 1x1'] / medians['TRL 1.16: GRPO']:.2f}   (target <= 1.0)")
    print(f"ours PPO 1x1 / TRL 1.16 RLOO:      {medians['ours: PPO 1x1'] / medians['TRL 1.16: RLOO']:.2f}")


if __name__ == "__main__":
    main()
