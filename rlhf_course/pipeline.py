"""The course's main job: SFT -> reward model -> PPO -> DPO -> best-of-N -> evaluation -> report.

    rlhf-course pipeline --out runs/tiny            # about 3 minutes on 2 CPU cores
    rlhf-course pipeline --out runs/7b --profile 7b # a T4 or better

Every stage calls the same functions the notebooks teach. On the tiny profile the toy world's
ground truth judges each stage; the report puts the numbers next to their targets. Writes
DIR/report.json, DIR/report.md and PNG plots, plus the trained models (DIR/sft, DIR/rm, ...).
"""

from __future__ import annotations

import json
import math
import platform
import resource
import time
from pathlib import Path

import torch

from rlhf_course import plots, toyworld
from rlhf_course.best_of_n import best_of_n
from rlhf_course.dpo import train_dpo
from rlhf_course.evaluation import EvalResult, evaluate_policy
from rlhf_course.loading import load_policy, load_tokenizer
from rlhf_course.ppo import train_ppo
from rlhf_course.preferences import load_preferences, to_conversational
from rlhf_course.profiles import Profile, pick_profile
from rlhf_course.reward_model import reward_fn as rm_reward_fn
from rlhf_course.reward_model import train_reward_model
from rlhf_course.sft import save_merged, train_sft

BEST_OF_N = 8
# PPO's KL coefficient here: at PPOConfig's 0.05 the tiny reward model is over-optimised (its score keeps
# rising while the ground truth peaks near iteration 30 and falls, KL ~7 nats after 100 iterations);
# measured on the same SFT model and reward model: beta 0.1 -> ground truth 0.51 at KL 3.4, 0.2 -> 0.52 at KL 2.1.
PPO_KL_COEF = 0.2
# The targets the report checks (issue "The trainers"): measured here, never asserted by timed tests.
TARGETS = {"seconds_total": 180, "peak_rss_gb": 3.0, "rm_gap_to_bayes": 0.02, "win_rate_vs_sft": 0.8}


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


class Stopwatch:
    """Times named stages: `with clock("sft"): ...`; prints a line as each stage starts and ends."""

    def __init__(self, progress: bool):
        self.seconds: dict[str, float] = {}
        self.progress = progress

    def __call__(self, name: str):
        watch = self

        class _Stage:
            def __enter__(self):
                if watch.progress:
                    print(f"== {name} ...", flush=True)
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                watch.seconds[name] = watch.seconds.get(name, 0.0) + time.perf_counter() - self.t0
                if watch.progress and exc[0] is None:
                    print(f"== {name}: {watch.seconds[name]:.1f}s", flush=True)

        return _Stage()


def handwritten_data() -> tuple[list, object]:
    """The 7b profile's data: the course's hand-written preference set, as conversations (real Hub sets
    such as ultrafeedback-binarized plug in here the same way)."""
    from rlhf_course.paths import data_path

    prefs = load_preferences(data_path("handwritten", "preferences.jsonl"))
    prefs = prefs.map(to_conversational, remove_columns=[c for c in prefs.column_names if c not in ("prompt", "chosen", "rejected")])
    return [row["prompt"] for row in prefs], prefs


def run_pipeline(out_dir: str | Path, profile: Profile | str | None = None, *, progress: bool = True,
                 seed: int = 0) -> dict:
    """Run every stage and write the report. Returns the report dict (also DIR/report.json)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    profile = profile if isinstance(profile, Profile) else pick_profile(profile)
    torch.manual_seed(seed)
    clock = Stopwatch(progress)
    toy = profile.name == "tiny"
    t_start = time.perf_counter()
    tokenizer = load_tokenizer(profile)

    # the prompts we evaluate on, and the data each stage trains on
    if toy:
        eval_prompts, sft_data, rm_data, rm_eval, dpo_data = None, None, None, None, None
        train_prompts = [p.text for p in toyworld.train_prompts()]
    else:
        prompts, prefs = handwritten_data()
        split = prefs.train_test_split(test_size=0.2, seed=seed)
        rm_data, rm_eval, dpo_data = split["train"], split["test"], split["train"]
        sft_data = split["train"].map(lambda r: {"completion": r["chosen"]}, remove_columns=["chosen", "rejected"])
        eval_prompts = [r["prompt"] for r in split["test"]]
        train_prompts = [r["prompt"] for r in split["train"]]

    def evaluate(model, **kw) -> EvalResult:
        with clock("evaluation"):
            return evaluate_policy(model, tokenizer, eval_prompts, n_per_prompt=4 if toy else 1,
                                   max_new_tokens=profile.max_new_tokens, temperature=profile.temperature,
                                   seed=seed, progress=progress, **kw)

    results: dict[str, EvalResult] = {}

    # 0. the base model, before anything
    base = load_policy(profile, lora=False, verbose=progress)
    results["base"] = evaluate(base)
    del base

    # 1. supervised fine-tuning on demonstrations (LoRA), merged into a plain model: "the SFT model"
    with clock("sft"):
        sft = train_sft(profile, sft_data, progress=progress, seed=seed)
        if profile.load_in_4bit:  # a 4-bit base cannot take the adapter in: keep it, start later stages from the base
            sft.model.save_pretrained(out / "sft_adapter")
            sft_path = profile.model_path
        else:
            sft_path = str(save_merged(sft.model, tokenizer, out / "sft"))
    sft_model = sft.model if profile.load_in_4bit else load_policy(profile, lora=False, model_id=sft_path, verbose=False)

    # 2. reward model on the SFT model (Bradley-Terry, TRL's RewardTrainer + LoRA)
    with clock("reward_model"):
        rm = train_reward_model(profile, rm_data, rm_eval, model_id=sft_path, out_dir=str(out / "rm"),
                                progress=progress, seed=seed)
    rm_fn = rm_reward_fn(rm.model, tokenizer)
    results["sft"] = evaluate(sft_model, reward_fn=rm_fn)

    # 3. PPO against the reward model (the ground truth is only watched, never optimised)
    with clock("ppo"):
        ppo = train_ppo(profile, model_id=sft_path, reward_model_dir=out / "rm", prompts=train_prompts,
                        kl_coef=PPO_KL_COEF, monitor_fn=toyworld.ground_truth_rewards if toy else None, progress=progress, seed=seed)
    results["ppo"] = evaluate(ppo.model, reference="disable_adapter", reward_fn=rm_fn, baseline=results["sft"])
    del ppo.model

    # 4. DPO on the same preference pairs the reward model learned from
    with clock("dpo"):
        dpo = train_dpo(profile, dpo_data, model_id=sft_path, progress=progress, seed=seed)
    results["dpo"] = evaluate(dpo.model, reference="disable_adapter", reward_fn=rm_fn, baseline=results["sft"])
    del dpo.model

    # 5. best-of-N with the reward model on the SFT model: no training at all
    with clock("best_of_n"):
        prompts = results["sft"].samples
        picks = best_of_n(sft_model, tokenizer, [s.prompt for s in prompts], BEST_OF_N, rm_fn,
                          max_new_tokens=profile.max_new_tokens, temperature=profile.temperature, seed=seed + 1)
        from rlhf_course.evaluation import Sample, win_rate_from_scores

        bon_samples = [Sample(s.prompt, b.completion, s.world) for s, b in zip(prompts, picks)]
        results["best_of_n"] = EvalResult(bon_samples)
        if toy:
            results["best_of_n"].win_rates["win_rate"] = win_rate_from_scores(
                results["best_of_n"].rewards, results["sft"].rewards)

    seconds = dict(clock.seconds)
    seconds["total"] = time.perf_counter() - t_start
    summaries = {name: r.summary() for name, r in results.items()}
    report = {
        "profile": profile.name,
        "model": profile.model_id,
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "peak_rss_gb": round(peak_rss_gb(), 2),
        "rm_accuracy": round(rm.metrics["accuracy"], 4),
        "rm_bayes_accuracy": round(rm.metrics.get("bayes_accuracy", math.nan), 4),
        "reward": {k: round(s.get("reward", math.nan), 4) for k, s in summaries.items()},
        "win_rate_vs_sft": {k: round(summaries[k].get("win_rate", math.nan), 4) for k in ("ppo", "dpo", "best_of_n")},
        "win_rate_vs_sft_by_rm": {k: round(summaries[k].get("win_rate_rm", math.nan), 4) for k in ("ppo", "dpo")},
        "kl_to_sft": {k: round(summaries[k]["kl"], 3) for k in ("ppo", "dpo")},
        "best_of_n": BEST_OF_N,
        "stages": summaries,
        "settings": {"temperature": profile.temperature, "max_new_tokens": profile.max_new_tokens,
                     "sft_steps": profile.sft_steps, "rm_steps": profile.rm_steps, "ppo_steps": profile.ppo_steps,
                     "dpo_steps": profile.dpo_steps, "seed": seed, "torch_threads": torch.get_num_threads(),
                     "python": platform.python_version(), "torch": torch.__version__},
    }
    report["targets"] = check_targets(report)
    write_report(out, report, results, ppo.history, dpo.history)
    if progress:
        print(summary_line(report))
    return report


def check_targets(report: dict) -> dict[str, bool]:
    """Each target of the tiny profile, met or not (the 7b profile has no ground truth to check)."""
    if report["profile"] != "tiny":
        return {}
    t = TARGETS
    return {
        f"total <= {t['seconds_total']}s": report["seconds"]["total"] <= t["seconds_total"],
        f"peak RSS <= {t['peak_rss_gb']} GB": report["peak_rss_gb"] <= t["peak_rss_gb"],
        "RM accuracy within 2 points of the Bayes limit": report["rm_bayes_accuracy"] - report["rm_accuracy"] <= t["rm_gap_to_bayes"],
        f"PPO win rate vs SFT >= {t['win_rate_vs_sft']}": report["win_rate_vs_sft"]["ppo"] >= t["win_rate_vs_sft"],
        f"DPO win rate vs SFT >= {t['win_rate_vs_sft']}": report["win_rate_vs_sft"]["dpo"] >= t["win_rate_vs_sft"],
    }


def summary_line(report: dict) -> str:
    r = report["reward"]
    return (f"reward: base {r['base']:.2f} -> SFT {r['sft']:.2f} -> PPO {r['ppo']:.2f}, DPO {r['dpo']:.2f}, "
            f"best-of-{report['best_of_n']} {r['best_of_n']:.2f} | RM accuracy {report['rm_accuracy']:.3f} "
            f"(Bayes limit {report['rm_bayes_accuracy']:.3f}) | win rate vs SFT: PPO {report['win_rate_vs_sft']['ppo']:.2f}, "
            f"DPO {report['win_rate_vs_sft']['dpo']:.2f} | {report['seconds']['total']:.0f}s, "
            f"{report['peak_rss_gb']:.2f} GB")


def write_report(out: Path, report: dict, results: dict, ppo_history: list, dpo_history: list) -> None:
    (out / "report.json").write_text(json.dumps(report, indent=2, default=float))
    figures = {
        "stage_rewards.png": lambda p: plots.plot_stage_rewards({k: v.summary() for k, v in results.items()}, path=p)
        if report["profile"] == "tiny" else None,
        "reward_distributions.png": lambda p: plots.plot_reward_distributions(
            {k: v.rewards for k, v in results.items()}, path=p) if report["profile"] == "tiny" else None,
        "ppo_training.png": lambda p: plots.plot_training_curves(
            ppo_history, [k for k in ("reward/score", "reward/monitor", "objective/kl", "policy/entropy",
                                      "policy/clipfrac", "loss/value") if k in ppo_history[0]],
            title="PPO", smooth=0.6, path=p),
        "dpo_rewards.png": lambda p: plots.plot_dpo_rewards(dpo_history, path=p),
        "reward_vs_kl.png": lambda p: plots.plot_reward_vs_kl(
            {"PPO (during training)": [(h["objective/kl"], h["reward/monitor"]) for h in ppo_history],
             "PPO": (report["kl_to_sft"]["ppo"], report["reward"]["ppo"]),
             "DPO": (report["kl_to_sft"]["dpo"], report["reward"]["dpo"])}, path=p)
        if report["profile"] == "tiny" else None,
    }
    made = [name for name, draw in figures.items() if draw(out / name) is not None]
    r, w, k = report["reward"], report["win_rate_vs_sft"], report["kl_to_sft"]
    model = "the course's tiny model (data/tiny)" if report["model"] == "tiny" else report["model"]
    lines = [f"# rlhf-course pipeline report: {report['profile']} profile, {model}", "",
             "| stage | ground-truth reward | win rate vs SFT | KL to SFT (nats) |", "|---|---|---|---|"]
    def cell(table: dict, stage: str, digits: int) -> str:  # "-" where a stage has no such number
        value = table.get(stage, math.nan)
        return "-" if math.isnan(value) else f"{value:.{digits}f}"

    for stage in ("base", "sft", "ppo", "dpo", "best_of_n"):
        lines.append(f"| {stage} | {cell(r, stage, 3)} | {cell(w, stage, 2)} | {cell(k, stage, 2)} |")
    lines += ["", f"Reward model: held-out accuracy {report['rm_accuracy']:.3f}, Bayes limit of the labels "
              f"{report['rm_bayes_accuracy']:.3f}.", "",
              "| stage | seconds |", "|---|---|"] + [f"| {s} | {v} |" for s, v in report["seconds"].items()]
    lines += ["", "(evaluation: all the evaluations together)"]
    lines += ["", f"Peak RSS: {report['peak_rss_gb']} GB.", "", "## Targets", ""]
    lines += [f"- [{'x' if ok else ' '}] {name}" for name, ok in report["targets"].items()] or ["- (no ground truth on this profile)"]
    lines += ["", "## Plots", ""] + [f"![{name}]({name})" for name in made]
    (out / "report.md").write_text("\n".join(lines) + "\n")
