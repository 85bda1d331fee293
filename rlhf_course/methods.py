"""The methods of notebook 9 side by side on the toy world, over several seeds: the DPO family, online
against offline DPO at the same labelling budget, and GRPO's variants with a verifiable reward.

Every method starts from the course's SFT model and is judged the same way (`evaluate_method`) on the
40 held-out prompts: the gold reward, the KL to the SFT model (nats per answer), the answer's length
(tokens) and the training seconds; each cell is the mean ± standard deviation over the seeds.

    table = methods_table(profile, Sizes(), seeds=(0, 1, 2), workers=2)   # or: benchmarks/methods_table.py
    print(markdown(table))

**Online against offline DPO** (Guo et al. 2024, "Direct language model alignment from online AI
feedback", arXiv:2402.04792; Xiong et al. 2023, arXiv:2312.11456): the same judge labels the same number
of pairs. Offline: all pairs sampled once from the SFT model, then DPO. Online: in rounds, each sampling
its pairs from the policy the last round trained (`feedback.iterative_loop`), so the labels follow the
policy. The judge is the course's reward model (`feedback.RewardModelJudge`).
"""

from __future__ import annotations

import contextlib
import io
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from statistics import mean

from rlhf_course import toyworld, trained_models
from rlhf_course.evaluation import evaluate_policy
from rlhf_course.parallel import start_jobs
from rlhf_course.profiles import Profile
from rlhf_course.seeds import format_mean_std, mean_std


@dataclass
class Sizes:
    """How long each method trains, and how much the evaluation samples. Defaults: the README's table
    (`benchmarks/methods_table.py`); the notebook runs smaller ones."""

    family_steps: int = 40          # DPO-family optimiser steps (dpo_family.train_preference)
    family_batch: int = 32          # pairs per step
    grpo_steps: int = 30            # GRPO optimiser steps (two per generated batch)
    online_rounds: int = 2          # online DPO: rounds of sample -> label -> DPO
    pairs_per_round: int = 128      # prompts sampled per round (two answers each); offline: rounds x this, once
    dpo_steps_per_round: int = 20   # online: per round; offline: rounds x this
    eval_n_per_prompt: int = 4      # answers per held-out prompt (40 prompts)


def evaluate_method(model, tokenizer, profile: Profile, *, reference="self", n_per_prompt: int = 4,
                    seed: int = 1) -> dict:
    """Gold reward, KL to the SFT model (`reference`: "self" for a LoRA policy on the SFT
    model, else the SFT model itself), length and the verifier's pass rate on the how-to prompts."""
    from rlhf_course.grpo_variants import steps_in_order

    result = evaluate_policy(model, tokenizer, toyworld.eval_prompts(), n_per_prompt=n_per_prompt, seed=seed,
                             reference=reference, max_new_tokens=profile.max_new_tokens,
                             temperature=profile.temperature)
    s = result.summary()
    how_to = [x for x in result.samples if not x.world.harmful and x.world.claim is None]
    return {"gold": s["reward"], "kl": s["kl"], "length": s["length"],
            "pass_rate": mean(float(steps_in_order(x.world, x.completion.text, x.completion.ended)) for x in how_to)}


def _quiet():
    return contextlib.redirect_stdout(io.StringIO())  # TRL prints log lines when there is no progress bar


def family_run(profile: Profile, loss_type: str, sizes: Sizes, seed: int) -> dict:
    from rlhf_course.dpo_family import FamilyConfig, train_preference
    from rlhf_course.loading import load_tokenizer

    sft = trained_models.sft_model(profile)
    result = train_preference(profile, loss_type, model_id=sft,
                              config=FamilyConfig(steps=sizes.family_steps, batch_size=sizes.family_batch, seed=seed))
    row = evaluate_method(result.model, load_tokenizer(profile, sft), profile, n_per_prompt=sizes.eval_n_per_prompt)
    return {**row, "seconds": result.metrics["train_seconds"]}


def grpo_run(profile: Profile, variant: str, sizes: Sizes, seed: int) -> dict:
    from rlhf_course.grpo_variants import train_variant
    from rlhf_course.loading import load_tokenizer

    with _quiet():
        result = train_variant(profile, variant, steps=sizes.grpo_steps, seed=seed)
    sft = trained_models.sft_model(profile)
    row = evaluate_method(result.model, load_tokenizer(profile, sft), profile, n_per_prompt=sizes.eval_n_per_prompt)
    return {**row, "seconds": result.metrics["train_seconds"], "clip_ratio": result.metrics["clip_ratio"],
            "informative": result.metrics.get("informative", math.nan)}


def dpo_loop_run(profile: Profile, online: bool, sizes: Sizes, seed: int) -> dict:
    """Online (rounds of on-policy pairs) or offline (one batch of SFT pairs, as many pairs and steps in
    all) DPO, the pairs labelled by the reward model; `feedback.iterative_loop` does both."""
    from rlhf_course.feedback import LoopConfig, RewardModelJudge, iterative_loop
    from rlhf_course.loading import load_policy, load_tokenizer
    from rlhf_course.reward_model import load_trained_reward_model

    sft = trained_models.sft_model(profile)
    tokenizer = load_tokenizer(profile, sft)
    judge = RewardModelJudge(load_trained_reward_model(profile, trained_models.reward_model_dir(profile), verbose=False),
                             tokenizer)
    rounds = sizes.online_rounds if online else 1
    factor = 1 if online else sizes.online_rounds
    config = LoopConfig(rounds=rounds, prompts_per_round=sizes.pairs_per_round * factor,
                        dpo_steps=sizes.dpo_steps_per_round * factor, eval_n_per_prompt=1, seed=seed)
    start = time.perf_counter()
    with _quiet():
        loop = iterative_loop(profile, judge, model_id=sft, config=config)
    seconds = time.perf_counter() - start
    reference = load_policy(profile, lora=False, model_id=sft, verbose=False)
    row = evaluate_method(loop.model, tokenizer, profile, reference=reference, n_per_prompt=sizes.eval_n_per_prompt)
    return {**row, "seconds": seconds, "pairs_labelled": sum(r.n_pairs for r in loop.rounds)}


def sft_row(profile: Profile, sizes: Sizes) -> dict:
    from rlhf_course.loading import load_policy, load_tokenizer

    sft = trained_models.sft_model(profile)
    model = load_policy(profile, model_id=sft, verbose=False)  # a fresh adapter: the SFT model itself
    return {**evaluate_method(model, load_tokenizer(profile, sft), profile, n_per_prompt=sizes.eval_n_per_prompt),
            "seconds": 0.0}


METHODS: dict[str, tuple[str, Callable, tuple]] = {  # row name -> (group, how to run one seed, its arguments)
    "DPO": ("DPO family", family_run, ("dpo",)),
    "IPO": ("DPO family", family_run, ("ipo",)),
    "SimPO": ("DPO family", family_run, ("simpo",)),
    "KTO": ("DPO family", family_run, ("kto",)),
    "ORPO": ("DPO family", family_run, ("orpo",)),
    "offline DPO (RM labels)": ("online vs offline", dpo_loop_run, (False,)),
    "online DPO (RM labels)": ("online vs offline", dpo_loop_run, (True,)),
    "GRPO (β = 0.04)": ("GRPO + verifiable reward", grpo_run, ("grpo",)),
    "GRPO, β = 0": ("GRPO + verifiable reward", grpo_run, ("grpo_beta0",)),
    "Dr. GRPO": ("GRPO + verifiable reward", grpo_run, ("dr_grpo",)),
    "DAPO": ("GRPO + verifiable reward", grpo_run, ("dapo",)),
}


def run_method(name: str, profile: Profile, sizes: Sizes, seed: int) -> dict:
    """One seed of one method of `METHODS`: its evaluation row and its training seconds."""
    _, run, args = METHODS[name]
    return run(profile, *args, sizes, seed)


def methods_table(profile: Profile, sizes: Sizes = Sizes(), seeds: tuple[int, ...] = (0, 1, 2),
                  methods: list[str] | None = None, workers: int = 1, save_runs=None) -> dict:
    """Run every method (or those named) once per seed - each (method, seed) an independent run, spread
    over `workers` processes (`parallel.start_jobs`) - and the SFT model once. Returns `summarize_seeds`'s table,
    the SFT model first. `save_runs`: a JSON file that gets every run's row as soon as all are done."""
    if not profile.has_ground_truth:
        from rlhf_course.errors import CourseError

        raise CourseError(f"the methods table is judged by the toy world's gold reward, which the {profile.name} "
                          "profile does not have: run it with the tiny profile")
    names = methods or list(METHODS)
    collect = start_jobs({(name, seed): (run_method, (name, profile, sizes, seed)) for name in names for seed in seeds},
                         workers)
    sft = sft_row(profile, sizes)
    runs = collect()
    if save_runs is not None:
        import json
        from pathlib import Path

        Path(save_runs).parent.mkdir(parents=True, exist_ok=True)
        Path(save_runs).write_text(json.dumps({"SFT (start)": sft} | {f"{n} | seed {s}": r for (n, s), r in runs.items()},
                                              indent=1))
    return summarize_seeds({"SFT (start)": ("start", [sft])} |
                     {name: (METHODS[name][0], [runs[(name, seed)] for seed in seeds]) for name in names}, sizes, seeds)


def summarize_seeds(runs: dict[str, tuple[str, list[dict]]], sizes: Sizes, seeds) -> dict:
    """{name: (group, per-seed rows)} -> {"sizes", "seeds", "rows": {name: {"group", "runs", "mean", "std"}}},
    std the sample standard deviation over the seeds (NaN for a single run; both NaN where a column is NaN
    on some rows, e.g. DAPO's "informative" on the other variants' rows): `seeds.mean_std`."""
    rows = {}
    for name, (group, per_seed) in runs.items():
        keys = [k for k in per_seed[0] if isinstance(per_seed[0][k], (int, float))]
        stats = {k: mean_std([float(r[k]) for r in per_seed]) for k in keys}
        rows[name] = {"group": group, "runs": per_seed, "mean": {k: m for k, (m, _) in stats.items()},
                      "std": {k: sd for k, (_, sd) in stats.items()}}
    return {"sizes": asdict(sizes), "seeds": list(seeds), "rows": rows}


def markdown(table: dict, columns: tuple[str, ...] = ("gold", "kl", "length", "seconds")) -> str:
    """The table as Markdown: mean ± std over the seeds per cell."""
    names = {"gold": "gold reward", "kl": "KL to SFT (nats)", "length": "length (tokens)",
             "seconds": "train seconds", "pass_rate": "verifier pass rate"}
    digits = {"gold": 2, "kl": 2, "length": 1, "seconds": 0, "pass_rate": 2}
    lines = ["| method | group | " + " | ".join(names[c] for c in columns) + " |",
             "|---|---|" + "---:|" * len(columns)]
    for name, row in table["rows"].items():
        cells = []
        for c in columns:
            cells.append(format_mean_std((row["mean"][c], row["std"][c]), digits[c]))
        lines.append(f"| {name} | {row['group']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
