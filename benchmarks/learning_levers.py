"""One lever of the pipeline's learning at a time, on the tiny profile, judged by the toy world's ground truth
(issue 14.2). Each run starts from the shipped SFT model (data/checkpoints/sft); PPO and on-policy DPO use the
shipped reward model (data/checkpoints/rm) unless `rm=DIR`. Prints one JSON line per run (and appends it to
--log); the table in benchmarks/learning_levers.md is written from those lines by hand.

    taskset -c 1 python benchmarks/learning_levers.py rm pairs=16000 steps=300 seed=0
    taskset -c 1 python benchmarks/learning_levers.py dpo beta=0.5 steps=60 lr=3e-3 pairs=onpolicy seed=0
    taskset -c 1 python benchmarks/learning_levers.py ppo kl_coef=0.1 steps=100 seed=0
    taskset -c 1 python benchmarks/learning_levers.py rm seed=1 out=/tmp/learn/rm_seed1
    taskset -c 1 python benchmarks/learning_levers.py rm_ensemble rms=data/checkpoints/rm,/tmp/learn/rm_seed1
    taskset -c 1 python benchmarks/learning_levers.py ppo rms=data/checkpoints/rm,/tmp/learn/rm_seed1 seed=0
    taskset -c 1 python benchmarks/learning_levers.py ppo warmup=10 warmup_lr=1e-2 seed=0

Evaluation as in the pipeline: the 40 held-out prompts x 4 answers at the profile's temperature, win rate
against the SFT model's answers sampled with the same seed, KL to the SFT model in nats per answer.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from rlhf_course import toyworld, trained_models
from rlhf_course.profiles import pick_profile


def parse_value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def evaluate_against_sft(profile, model, tokenizer, seed: int, rm_dir, rm_fn=None) -> dict:
    """rm_fn: the reward function of "win_rate_rm" (default: the adapter reward model in rm_dir)."""
    from rlhf_course.evaluation import evaluate_policy
    from rlhf_course.loading import load_policy
    from rlhf_course.ppo import AdapterRewardModel

    sft_path = trained_models.sft_model(profile)
    kw = {"n_per_prompt": 4, "max_new_tokens": profile.max_new_tokens, "temperature": profile.temperature, "seed": seed}
    sft = load_policy(profile, model_id=sft_path, verbose=False)  # a fresh adapter: the SFT model itself
    baseline = evaluate_policy(sft, tokenizer, None, **kw)
    result = evaluate_policy(model, tokenizer, None, reference="self", baseline=baseline,
                             reward_fn=rm_fn or AdapterRewardModel(model, tokenizer, rm_dir), **kw)
    s = result.summary()
    return {"gold": round(s["reward"], 4), "sft_gold": round(baseline.summary()["reward"], 4),
            "win_rate": round(s["win_rate"], 4), "win_rate_rm": round(s["win_rate_rm"], 4), "kl": round(s["kl"], 3),
            "length": round(s["length"], 1)}


def rm_run(profile, seed: int, pairs: int = 4000, steps: int | None = None, lr: float | None = None,
           lora_r: int | None = None, lora: bool = True, pair_seed: int = 2, out: str | None = None) -> dict:
    """lora=false: the whole model and its score head trained (full fine-tuning), not a LoRA adapter."""
    from rlhf_course.reward_model import load_rm_data, train_reward_model

    if lora_r is not None:
        profile = profile.replace(lora_r=lora_r, lora_alpha=2 * lora_r)
    data = load_rm_data("train") if pairs == 4000 and pair_seed == 2 else \
        toyworld.make_preference_pairs(pairs, seed=pair_seed)
    import datasets
    data = data if isinstance(data, datasets.Dataset) else datasets.Dataset.from_list(data)
    t = time.perf_counter()
    result = train_reward_model(profile, data, load_rm_data("test"), model_id=trained_models.sft_model(profile),
                                steps=steps, learning_rate=lr, lora=lora, progress=False, seed=seed, out_dir=out)
    m = result.metrics
    return {"accuracy": round(m["accuracy"], 4), "bayes": round(m["bayes_accuracy"], 4),
            "train_seconds": m["train_seconds"], "seconds": round(time.perf_counter() - t, 1)}


def onpolicy_pairs(profile, rm_dir, n_prompts: int, k: int, seed: int):
    """k answers per training prompt (the 88 cycled to n_prompts) from the SFT model; the reward model's best
    and worst make a pair (`best_of_n.best_worst_pairs`, as the pipeline does)."""
    from rlhf_course.best_of_n import best_of_n, best_worst_pairs
    from rlhf_course.loading import load_policy, load_tokenizer
    from rlhf_course.ppo import AdapterRewardModel

    sft_path = trained_models.sft_model(profile)
    tokenizer = load_tokenizer(profile, sft_path)
    model = load_policy(profile, model_id=sft_path, verbose=False)
    train = [p.text for p in toyworld.train_prompts()]
    prompts = (train * (n_prompts // len(train) + 1))[:n_prompts]
    draws = best_of_n(model, tokenizer, prompts, k, AdapterRewardModel(model, tokenizer, rm_dir),
                      max_new_tokens=profile.max_new_tokens, temperature=profile.temperature, seed=seed + 2)
    return best_worst_pairs(draws)


def dpo_run(profile, seed: int, beta: float | None = None, steps: int | None = None, lr: float | None = None,
            pairs="toy", k: int = 4, prompts: int = 1024, rm: str | None = None) -> dict:
    import datasets

    from rlhf_course.dpo import train_dpo
    from rlhf_course.loading import load_tokenizer

    rm_dir = rm or trained_models.reward_model_dir(profile)
    t = time.perf_counter()
    if pairs == "toy":
        data = None
    elif pairs == "onpolicy":
        data = onpolicy_pairs(profile, rm_dir, prompts, k, seed)
    else:
        data = datasets.Dataset.from_list(toyworld.make_preference_pairs(int(pairs), seed=2))
    pair_seconds = time.perf_counter() - t
    result = train_dpo(profile, data, model_id=trained_models.sft_model(profile), steps=steps, beta=beta,
                       learning_rate=lr, progress=False, seed=seed)
    seconds = time.perf_counter() - t
    tokenizer = load_tokenizer(profile, trained_models.sft_model(profile))
    return {**evaluate_against_sft(profile, result.model, tokenizer, seed, rm_dir),
            "pair_seconds": round(pair_seconds, 1), "seconds": round(seconds, 1)}


def rm_ensemble_run(profile, seed: int, rms: str) -> dict:
    """Held-out accuracy (the 1000 test pairs) of each reward model in `rms` (folders, comma-separated) and of
    the ensembles of its first 2, 3, ... members: the mean of the members' scores (seed is unused)."""
    from rlhf_course.loading import load_tokenizer
    from rlhf_course.reward_model import (
        load_rm_data,
        load_trained_reward_model,
        pad_for_reward_model,
        pair_rewards,
        preference_accuracy,
    )

    test = load_rm_data("test")
    chosen, rejected = [], []  # one (N,) tensor per member
    for rm_dir in rms.split(","):
        model = load_trained_reward_model(profile, rm_dir, verbose=False)
        c, r = pair_rewards(model, pad_for_reward_model(load_tokenizer(profile, rm_dir)), test)
        chosen.append(c)
        rejected.append(r)
    members = [round(preference_accuracy(c, r).item(), 4) for c, r in zip(chosen, rejected)]
    ensembles = {k: round(preference_accuracy(torch.stack(chosen[:k]).mean(0), torch.stack(rejected[:k]).mean(0)).item(), 4)
                 for k in range(2, len(members) + 1)}
    return {"members": members, "ensemble": ensembles, "bayes": round(toyworld.bayes_accuracy(test["p_chosen"]), 4)}


class EnsembleReward:
    """The mean score of k adapter reward models on the policy's base (adapters reward0, reward1, ...):
    an ensemble of independently seeded reward models (Coste et al. 2023, arXiv:2310.02743, "mean")."""

    def __init__(self, policy, tokenizer, rm_dirs: list[str]):
        from rlhf_course.ppo import AdapterRewardModel

        self.members = [AdapterRewardModel(policy, tokenizer, d, adapter_name=f"reward{i}") for i, d in enumerate(rm_dirs)]

    def __call__(self, prompts: list, completions: list) -> list[float]:
        scores = [member(prompts, completions) for member in self.members]  # k lists of len(prompts)
        return [sum(s) / len(s) for s in zip(*scores)]


def value_warmup_trainer_class():
    from rlhf_course.ppo import PPOTrainer, ppo_value_loss

    class ValueWarmupTrainer(PPOTrainer):
        """PPO whose value head first fits the initial policy's returns, the policy untouched."""

        def warm_up_value_head(self, iterations: int, lr: float, epochs: int) -> dict:
            """`iterations` rollouts of the initial policy; on each, `epochs` full-batch AdamW steps of the
            value loss on the value head alone (its own optimiser; the trunk's hidden states are computed once,
            without gradients, as PolicyWithValueHead.forward computes them). The value loss is the trainer's,
            unclipped (a regression onto the returns, not a trust region). Returns the value loss of the first
            rollout before fitting, and of the last rollout before and after fitting (before = on answers the
            head has not seen)."""
            head = self.accelerator.unwrap_model(self.model).value_head
            optimizer = torch.optim.AdamW(head.parameters(), lr=lr, eps=1e-5)
            base, losses = self.policy.get_base_model(), []
            for _ in range(iterations):
                batch = self.rollout()  # values, returns (GAE) from the current head; step_count stays 0
                Tq = batch["context_length"]
                with torch.no_grad():  # positions Tq-1 ... T-2, as _forward's values
                    hidden = base.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                        use_cache=False).last_hidden_state[:, Tq - 1 : -1].float()
                fit = []
                for _ in range(epochs):
                    values = head(hidden).squeeze(-1)  # (B, Tr)
                    loss, _ = ppo_value_loss(values, batch["values"], batch["returns"], batch["mask"], float("inf"))
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    fit.append(loss.item())
                losses.append((fit[0], fit[-1]))
            return {"warmup_vloss_first": round(losses[0][0], 4), "warmup_vloss_last_before": round(losses[-1][0], 4),
                    "warmup_vloss_last_after": round(losses[-1][1], 4)}

    return ValueWarmupTrainer


def build_ppo_trainer(profile, seed: int, rm_dirs: list[str], **config):
    """What `ppo.train_ppo` builds, with the reward `EnsembleReward(rm_dirs)` and the trainer
    `ValueWarmupTrainer` (PPOTrainer plus warm_up_value_head): same seeding order, same model, same prompts."""
    from rlhf_course.gold import gold_reward_fn
    from rlhf_course.loading import (
        add_reference_adapter,
        is_adapter,
        load_policy,
        load_tokenizer,
    )
    from rlhf_course.ppo import PPOConfig

    sft_path = trained_models.sft_model(profile)
    cfg = PPOConfig.for_profile(profile, seed=seed, **config)
    torch.manual_seed(cfg.seed)
    tokenizer = load_tokenizer(profile, sft_path)
    policy = load_policy(profile, model_id=sft_path, verbose=False)
    if is_adapter(sft_path):
        add_reference_adapter(policy)
    reward_fn = EnsembleReward(policy, tokenizer, rm_dirs)
    prompts = [p.text for p in toyworld.train_prompts()]
    return value_warmup_trainer_class()(cfg, policy, tokenizer, reward_fn, prompts,
                                        monitor_fn=gold_reward_fn(profile, None))


def ppo_run(profile, seed: int, steps: int | None = None, rm: str | None = None, rms: str | None = None,
            warmup: int = 0, warmup_lr: float = 1e-2, warmup_epochs: int = 20, **config) -> dict:
    """rms: reward-model folders, comma-separated: PPO optimises their mean score. warmup: value-head warm-up
    iterations before the first PPO update (ValueWarmupTrainer)."""
    from rlhf_course.gold import gold_reward_fn
    from rlhf_course.loading import load_tokenizer
    from rlhf_course.ppo import train_ppo

    rm_dir = rm or trained_models.reward_model_dir(profile)
    sft_path = trained_models.sft_model(profile)
    t = time.perf_counter()
    extra, rm_fn = {}, None
    if rms is None and not warmup:
        result = train_ppo(profile, model_id=sft_path, reward_model_dir=rm_dir,
                           monitor_fn=gold_reward_fn(profile, None), progress=False, seed=seed, steps=steps, **config)
    else:
        trainer = build_ppo_trainer(profile, seed, rms.split(",") if rms else [rm_dir], **config)
        if warmup:
            w = time.perf_counter()
            extra = {**trainer.warm_up_value_head(warmup, warmup_lr, warmup_epochs),
                     "warmup_seconds": round(time.perf_counter() - w, 1)}
        result = trainer.train(steps, progress=False)
        rm_fn = trainer.reward_fn  # the win rate "by the RM" is by the reward PPO optimised
    seconds = time.perf_counter() - t
    tokenizer = load_tokenizer(profile, sft_path)
    return {**evaluate_against_sft(profile, result.model, tokenizer, seed, rm_dir, rm_fn), **extra,
            "seconds": round(seconds, 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=("rm", "rm_ensemble", "dpo", "ppo"))
    parser.add_argument("settings", nargs="*", help="key=value, e.g. pairs=16000 steps=300 seed=1")
    parser.add_argument("--log", default="/tmp/learn/levers.jsonl")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    settings = {k: parse_value(v) for k, v in (s.split("=", 1) for s in args.settings)}
    seed = settings.pop("seed", 0)
    profile = pick_profile("tiny")
    run = {"rm": rm_run, "rm_ensemble": rm_ensemble_run, "dpo": dpo_run, "ppo": ppo_run}[args.stage]
    torch.manual_seed(seed)
    row = {"stage": args.stage, "seed": seed, **settings, **run(profile, seed, **settings)}
    line = json.dumps(row)
    print(line, flush=True)
    with open(args.log, "a") as f:
        f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
