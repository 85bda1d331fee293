"""Where the time of one of our PPO steps goes, at the benchmark's settings (bench_rl_step.py).

Wall-clock timers are wrapped around the pieces of `PPOTrainer.step` from outside (nothing in ppo.py
changes for it); each line is milliseconds per step, the median over `--steps` steps. What is left
when the named pieces are taken away is the trainer's own Python (minibatch indexing, statistics,
the minibatch loop). LoRA's share is measured apart: the same forward and backward passes, and the
same generation, with the adapter switched off.

    taskset -c 0 python benchmarks/profile_ppo_step.py --epochs 4 --minibatches 4 --steps 20
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager

import torch
from bench_rl_step import BATCH, NEW_TOKENS, build_tiny_llama, make_ppo_trainer

from rlhf_course import ppo, sampling, toyworld
from rlhf_course.profiles import pick_profile

spent: dict[str, float] = defaultdict(float)  # seconds in each piece during the current step
phase = ["rollout"]                            # which forward pass is running: rollout, reference or update


def timed(name, fn):
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[name() if callable(name) else name] += time.perf_counter() - t0
    return wrapper


def timed_reference(original):
    """The reference pass: the adapter switch (in and out) timed apart from the forward inside it."""
    @contextmanager
    def wrapper(model):
        t0 = time.perf_counter()
        with original(model):
            spent["reference: adapter off/on"] += time.perf_counter() - t0
            phase[0] = "reference"
            yield
            phase[0] = "update"
            t0 = time.perf_counter()
        spent["reference: adapter off/on"] += time.perf_counter() - t0
    return wrapper


def instrument(trainer):
    """Wrap the pieces of the step (module-level names as ppo.py looks them up, and the trainer's objects)."""
    for name, label in (("sample_ids", "generation: sample_ids total"), ("decode_responses", "decode answers"),
                        ("compute_rewards", "rewards + GAE + whiten"), ("compute_gae", "rewards + GAE + whiten"),
                        ("masked_whiten", "rewards + GAE + whiten"), ("ppo_policy_loss", "update: losses"),
                        ("ppo_value_loss", "update: losses"), ("entropy_from_logits", "update: losses")):
        setattr(ppo, name, timed(label, getattr(ppo, name)))
    ppo.reference_policy = timed_reference(ppo.reference_policy)
    sampling.render_prompts = timed("generation: chat template", sampling.render_prompts)
    trainer.policy.generate = timed("generation: generate()", trainer.policy.generate)
    trainer._forward = timed(lambda: f"{phase[0]}: forward", trainer._forward)
    trainer.reward_fn = timed("reward", trainer.reward_fn)
    trainer.accelerator.backward = timed("update: backward", trainer.accelerator.backward)
    trainer.accelerator.clip_grad_norm_ = timed("update: clip grad norm", trainer.accelerator.clip_grad_norm_)
    trainer.optimizer.step = timed("update: optimizer step", trainer.optimizer.step)
    trainer.optimizer.zero_grad = timed("update: zero_grad", trainer.optimizer.zero_grad)
    rollout, optimise = trainer.rollout, trainer.optimise

    def rollout_then_update_phase():
        phase[0] = "rollout"
        try:
            return rollout()
        finally:
            phase[0] = "update"
    trainer.rollout = timed("rollout total", rollout_then_update_phase)
    trainer.optimise = timed("update total", optimise)


def lora_share(trainer, tokenizer, repeats: int = 20) -> dict[str, float]:
    """ms of a forward (B=16, no grad), a forward+backward (B=4) and a generate() with the adapter on and off."""
    model, policy = trainer.accelerator.unwrap_model(trainer.model), trainer.policy
    prompts = [p.text for p in toyworld.train_prompts()][:BATCH]
    enc = tokenizer(sampling.render_prompts(tokenizer, prompts), return_tensors="pt", padding=True,
                    padding_side="left", add_special_tokens=False)
    ids = torch.cat([enc.input_ids, enc.input_ids[:, -NEW_TOKENS:]], dim=1)
    mask = torch.ones_like(ids)

    def forward():
        with torch.no_grad():
            model(ids, mask)

    def forward_backward():
        logits, values = model(ids[:4], mask[:4])
        (logits.float().logsumexp(-1).mean() + values.mean()).backward()

    def generate():
        policy.generate(**enc, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=True, top_k=0,
                        pad_token_id=tokenizer.pad_token_id)

    def ms(fn):
        fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return 1000 * statistics.median(times)

    out = {}
    for name, fn in (("forward B=16", forward), ("forward+backward B=4", forward_backward), ("generate B=16", generate)):
        with_lora = ms(fn)
        with policy.disable_adapter():
            without = ms(fn)
        out[name] = (with_lora, without)
    trainer.optimizer.zero_grad(set_to_none=True)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--minibatches", type=int, default=4)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(1)
    profile = pick_profile("tiny").replace(batch_size=BATCH, max_new_tokens=NEW_TOKENS, temperature=1.0)
    model_dir = build_tiny_llama(tempfile.mkdtemp(prefix="profile-ppo-"), profile)
    trainer = make_ppo_trainer(profile, model_dir, num_ppo_epochs=args.epochs, num_minibatches=args.minibatches)
    instrument(trainer)
    trainer.step()  # warm-up
    per_step = defaultdict(list)
    for _ in range(args.steps):
        spent.clear()
        t0 = time.perf_counter()
        trainer.step()
        ms = {k: 1000 * v for k, v in spent.items()}
        ms["step"] = 1000 * (time.perf_counter() - t0)
        # what the named pieces leave, step by step (then the median of each line, as for the others)
        ms["generation: tokenise + masks"] = (ms["generation: sample_ids total"] - ms["generation: generate()"]
                                              - ms["generation: chat template"])
        ms["rollout: other (scores, stats, .item())"] = ms["rollout total"] - sum(
            ms[k] for k in ("generation: sample_ids total", "decode answers", "rollout: forward", "reference: forward",
                            "reference: adapter off/on", "reward", "rewards + GAE + whiten"))
        ms["update: other Python (minibatch loop, indexing, .item() logging)"] = ms["update total"] - sum(
            v for k, v in ms.items() if k.startswith("update: "))
        ms["step: other (stats reduce, history)"] = ms["step"] - ms["rollout total"] - ms["update total"]
        for k, v in ms.items():
            per_step[k].append(v)
    ms = {k: statistics.median(v) for k, v in per_step.items()}
    total = ms.pop("step")
    print(f"our PPO step, {args.epochs} epochs x {args.minibatches} minibatches, {BATCH} x {NEW_TOKENS} tokens, "
          f"1 thread: median {total:.1f} ms over {args.steps} steps")
    for k in sorted(ms):
        if k not in ("generation: sample_ids total", "rollout total", "update total"):
            print(f"  {k:<62} {ms[k]:7.1f} ms  {100 * ms[k] / total:5.1f} %")
    print("LoRA's share (ms, adapter on / off):")
    for name, (on, off) in lora_share(trainer, trainer.tokenizer).items():
        print(f"  {name:<22} {on:7.2f} / {off:7.2f}")


if __name__ == "__main__":
    main()
