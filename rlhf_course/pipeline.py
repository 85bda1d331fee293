"""The course's main job: SFT -> reward model -> PPO -> DPO -> best-of-N -> evaluation -> report.

    rlhf-course pipeline --out runs/tiny            # about 3 minutes on 2 CPU cores
    rlhf-course pipeline --out runs/tiny3 --seeds 0 1 2   # one run per seed in runs/tiny3/seed-S/, and
                                                    # runs/tiny3/report.md: each number as mean ± std
    rlhf-course pipeline --out runs/7b --profile 7b # a T4 or better

Every stage calls the same functions the notebooks teach. On the tiny profile the toy world's
ground truth judges each stage; the report puts the numbers next to their targets. Writes
DIR/report.json, DIR/report.md and PNG plots, plus the trained models (DIR/sft, DIR/rm, ...). Over
several seeds (`run_seeds`), the report gives each headline number as mean ± sample std, checks the targets
on the means and says which compared numbers are within noise of each other (`seeds.compare`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import resource
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import datasets
import torch
from transformers.utils import logging as hf_logging

from rlhf_course import plots, toyworld
from rlhf_course.best_of_n import best_of_n
from rlhf_course.dpo import train_dpo
from rlhf_course.errors import UsageError
from rlhf_course.evaluation import EvalResult, Sample, best_possible_reward, evaluate_policy, win_rate_from_scores
from rlhf_course.gold import gold_reward_fn, load_judge
from rlhf_course.loading import (describe_loading, free_memory, is_adapter, load_policy, load_tokenizer,
                                 without_loading_lines)
from rlhf_course.ppo import AdapterRewardModel, train_ppo
from rlhf_course.parallel import one_thread, start_jobs
from rlhf_course.profiles import Profile, pick_profile
from rlhf_course.reward_model import train_reward_model
from rlhf_course.seeds import compare, format_mean_std, mean_std, within_noise
from rlhf_course.sft import save_sft_model, train_sft

BEST_OF_N = 8
SIDE_BY_SIDE_NOTE = ("The total is the wall clock. When PPO trains in a second process beside DPO and best-of-N "
                     "(side by side), their seconds overlap, and the peak RSS adds up both processes' peaks.")


@dataclasses.dataclass(frozen=True)
class Target:
    """A number of the report (a key of `flatten`) and the limit it should stay under or reach."""
    name: str
    key: str
    limit: float
    at_most: bool  # True: met when the number is <= limit; False: when it is >= limit
    digits: int = 3  # shown with this many decimals in the seed report

    def met(self, value: float) -> bool:
        return value <= self.limit if self.at_most else value >= self.limit


# The targets the report checks (issue "The trainers"): measured here, never asserted by timed tests.
TARGETS = (Target("total <= 180s", "seconds/total", 180, at_most=True, digits=1),
           Target("peak RSS <= 3.0 GB", "peak_rss_gb", 3.0, at_most=True, digits=2),
           Target("RM accuracy within 2 points of the Bayes limit", "rm_gap_to_bayes", 0.02, at_most=True),
           Target("PPO win rate vs SFT >= 0.8", "win_rate_vs_sft/ppo", 0.8, at_most=False),
           Target("DPO win rate vs SFT >= 0.8", "win_rate_vs_sft/dpo", 0.8, at_most=False))


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


class Stopwatch:
    """Times named stages: `with clock("sft") as stage: ...; stage.note = "loss 0.41"`. With `progress`, each
    stage ends with one line: its name, its seconds and its note (its trainer shows the one progress bar)."""

    def __init__(self, progress: bool):
        self.seconds: dict[str, float] = {}
        self.progress = progress

    @contextmanager
    def __call__(self, name: str):
        stage = SimpleNamespace(note="")
        t0 = time.perf_counter()
        yield stage
        self.record(name, time.perf_counter() - t0, stage.note)

    def record(self, name: str, seconds: float, note: str = "") -> None:
        """A stage timed elsewhere (in another process)."""
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
        if self.progress:
            print(f"{name.replace('_', ' '):<13}{self.seconds[name]:7.1f} s   {note}", flush=True)


@contextmanager
def quiet_libraries():
    """What the libraries print besides our progress bars, off for the run: datasets' and transformers'
    own bars and log lines, and deprecation warnings raised inside them (peft still asks transformers for
    `is_gradient_checkpointing`); the ones the course triggers itself are fixed where they happen."""
    was_datasets = datasets.is_progress_bar_enabled()
    was_verbosity = hf_logging.get_verbosity()
    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            for module in ("transformers", "peft", "trl", "torch", "accelerate"):
                warnings.filterwarnings("ignore", category=FutureWarning, module=module)
                warnings.filterwarnings("ignore", category=DeprecationWarning, module=module)
            yield
    finally:
        hf_logging.set_verbosity(was_verbosity)
        hf_logging.enable_progress_bar()
        if was_datasets:
            datasets.enable_progress_bars()


def _gold_note(result: EvalResult) -> str:
    s = result.summary()
    parts = [f"gold reward {s['reward']:+.3f}"]
    if "win_rate" in s:
        parts.append(f"win rate vs SFT {s['win_rate']:.2f}")
    if "kl" in s:
        parts.append(f"KL to SFT {s['kl']:.2f}")
    return ", ".join(parts)


def stage_data(profile: Profile, tokenizer, seed: int) -> dict:
    """What each stage trains and is evaluated on. tiny: the toy world (its generated demonstrations and
    labelled pairs, its held-out prompts). 7b: a slice of a real preference set (`profile.preference_set`,
    `profile.preference_pairs` pairs; offline, the course's hand-written set), 90% to train the reward
    model and DPO, 10% held out for the reward model's accuracy and as the evaluation prompts; SFT on the
    set's demonstrations (see `preference_sets.load_sft_set`)."""
    if profile.has_ground_truth:
        return {"sft": None, "rm": None, "rm_eval": None, "dpo": None, "eval_prompts": None,
                "train_prompts": [p.text for p in toyworld.train_prompts()]}
    from rlhf_course.preference_sets import load_preference_set, load_sft_set

    n = profile.preference_pairs
    pairs = load_preference_set(profile.preference_set, n=n, seed=seed, tokenizer=tokenizer,
                                max_length=profile.max_length)
    split = pairs.train_test_split(test_size=0.1, seed=seed)
    held_out = split["test"]
    return {"sft": load_sft_set(profile.preference_set, n=n, seed=seed, tokenizer=tokenizer, max_length=profile.max_length),
            "rm": split["train"], "rm_eval": held_out, "dpo": split["train"],
            "eval_prompts": held_out["prompt"][: profile.eval_samples], "train_prompts": split["train"]["prompt"]}


def run_pipeline(out_dir: str | Path, profile: Profile | str | None = None, *, progress: bool = True,
                 seed: int = 0, side_by_side: bool | None = None) -> dict:
    """Run every stage and write the report. Returns the report dict (also DIR/report.json).

    One model at a time: each stage loads what it trains, and frees it (`loading.free_memory`) before
    the next stage loads - a T4 holds one 4-bit 7B, not two. The exception, `side_by_side` (None: on a
    CPU with the toy world and two or more threads): PPO trains in a second process, one thread, while
    this one runs DPO and best-of-N on one thread - the same numbers, sooner. The SFT model is saved (tiny: merged into a
    plain model folder; 7b: its adapter, as a 4-bit base cannot take it in) and every later stage starts
    from it, so "vs SFT" means against the SFT model on both profiles. The gold reward - the toy world's
    ground truth, or the 7b profile's independent judge - scores every stage; the reward model it trains
    is what PPO and best-of-N optimise, and is reported beside it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    profile = profile if isinstance(profile, Profile) else pick_profile(profile)
    with quiet_libraries(), without_loading_lines():
        if progress:  # one line for what every stage loads (LoRA adapters on this base, this precision)
            print(describe_loading(profile, profile.model_id, profile.load_in_4bit, lora=True))
        stages_can_share_cores = profile.device == "cpu" and profile.has_ground_truth  # no GPU, no judge to share
        if side_by_side and not stages_can_share_cores:
            raise UsageError(f"side_by_side: the {profile.name} profile runs one stage at a time (on a GPU, one "
                             "4-bit base fits; a judge's gold reward lives in this process)")
        if side_by_side is None:  # PPO on one core beside DPO and best-of-N finishes before all three in turn on
            # two (seed 0, 2 cores: 226 s against 249 s; PPO alone takes 107 s on one thread, 85 s on two)
            side_by_side = stages_can_share_cores and torch.get_num_threads() > 1
        return _run(out, profile, progress, seed, side_by_side)


def _run(out: Path, profile: Profile, progress: bool, seed: int, side_by_side: bool) -> dict:
    torch.manual_seed(seed)
    clock = Stopwatch(progress)
    t_start = time.perf_counter()
    tokenizer = load_tokenizer(profile)
    data = stage_data(profile, tokenizer, seed)
    judge = None if profile.has_ground_truth else load_judge(profile, verbose=progress)
    rm_dir = out / "rm"

    def evaluate(model, **kw) -> EvalResult:  # no bar of its own: its seconds go to the stage's line
        return _evaluate(profile, tokenizer, data["eval_prompts"], judge, seed, model, **kw)

    def against_sft(model) -> EvalResult:
        return _against_sft(profile, tokenizer, data["eval_prompts"], judge, seed, model, rm_dir, results["sft"])

    def sft_policy():
        """The SFT model, as a PEFT model (on the tiny profile with a fresh, zero adapter: the same outputs)
        so that the reward model can ride on its base as a second adapter."""
        return load_policy(profile, model_id=sft_path, lora=not is_adapter(sft_path), verbose=False)

    results: dict[str, EvalResult] = {}

    # 0. the base model, before anything
    with clock("base") as stage:
        base = load_policy(profile, lora=False, verbose=progress)
        results["base"] = evaluate(base)
        del base
        free_memory()
        stage.note = _gold_note(results["base"])

    # 1. supervised fine-tuning on demonstrations (LoRA): "the SFT model", where every later stage starts
    with clock("sft") as stage:
        sft = train_sft(profile, data["sft"], progress=progress, seed=seed)
        sft_path = str(save_sft_model(sft.model, tokenizer, out / "sft"))
        stage.note = f"{profile.sft_steps} steps, final loss {sft.history[-1]['loss']:.3f}; saved to {sft_path}"
        del sft
        free_memory()

    # 2. reward model on the SFT model (Bradley-Terry, TRL's RewardTrainer + LoRA; on 7b its LoRA starts
    #    from the SFT adapter's weights)
    with clock("reward_model") as stage:
        rm = train_reward_model(profile, data["rm"], data["rm_eval"], model_id=sft_path, out_dir=str(rm_dir),
                                progress=progress, seed=seed)
        rm_metrics = rm.metrics
        del rm
        free_memory()
        bayes = rm_metrics.get("bayes_accuracy")
        stage.note = f"held-out accuracy {rm_metrics['accuracy']:.3f}" + (f" (Bayes limit {bayes:.3f})" if bayes else "")

    with clock("sft_eval") as stage:
        sft_model = sft_policy()
        results["sft"] = evaluate(sft_model, reward_fn=AdapterRewardModel(sft_model, tokenizer, rm_dir))
        del sft_model
        free_memory()
        stage.note = _gold_note(results["sft"])

    # 3. PPO against the reward model, a second adapter on the policy's base (the gold reward is only
    #    watched, never optimised). PPO, DPO and best-of-N need nothing from each other: side by side, PPO
    #    trains in a second process while this one runs DPO and best-of-N on the other core.
    ppo_args = (profile, sft_path, rm_dir, data, results["sft"], seed)
    if side_by_side:
        collect_ppo = start_jobs({"ppo": (_ppo_stage, (*ppo_args, None, False))}, workers=2)
        if progress:
            print("(PPO trains in a second process, one thread, while DPO and best-of-N run here)", flush=True)
    else:
        with clock("ppo") as stage:
            ppo_history, results["ppo"], _, _ = _ppo_stage(*ppo_args, judge, progress)
            stage.note = f"{profile.ppo_steps} iterations; {_gold_note(results['ppo'])}"

    with one_thread(side_by_side):  # PPO, in its process, has the other core
        # 4. DPO on the same preference pairs the reward model learned from
        with clock("dpo") as stage:
            dpo = train_dpo(profile, data["dpo"], model_id=sft_path, progress=progress, seed=seed)
            dpo_history = dpo.history
            results["dpo"] = against_sft(dpo.model)
            del dpo
            free_memory()
            stage.note = f"{profile.dpo_steps} steps; {_gold_note(results['dpo'])}"

        # 5. best-of-N with the reward model on the SFT model: no training at all
        with clock("best_of_n") as stage:
            sft_model = sft_policy()
            samples = results["sft"].samples
            picks = best_of_n(sft_model, tokenizer, [s.prompt for s in samples], BEST_OF_N,
                              AdapterRewardModel(sft_model, tokenizer, rm_dir), max_new_tokens=profile.max_new_tokens,
                              temperature=profile.temperature, seed=seed + 1)
            del sft_model
            free_memory()
            bon = [Sample(s.prompt, b.completion, s.world, rm_score=b.reward) for s, b in zip(samples, picks)]
            if judge is not None:
                for s, r in zip(bon, judge([s.prompt for s in bon], [s.completion for s in bon])):
                    s.judge_score = float(r)
            results["best_of_n"] = EvalResult(bon)
            results["best_of_n"].win_rates["win_rate"] = win_rate_from_scores(results["best_of_n"].rewards,
                                                                               results["sft"].rewards)
            stage.note = _gold_note(results["best_of_n"])

    worker_rss = 0.0
    if side_by_side:  # its seconds are its own process's; "total" is the wall clock
        ppo_history, results["ppo"], ppo_seconds, worker_rss = collect_ppo()["ppo"]
        clock.record("ppo", ppo_seconds, f"{profile.ppo_steps} iterations in a second process, beside DPO and "
                     f"best-of-N; {_gold_note(results['ppo'])}")

    seconds = dict(clock.seconds)
    seconds["total"] = time.perf_counter() - t_start
    results = {name: results[name] for name in ("base", "sft", "ppo", "dpo", "best_of_n")}  # PPO may finish last
    summaries = {name: r.summary() for name, r in results.items()}
    report = {
        "profile": profile.name,
        "model": profile.model_id,
        "rehearsal": profile.rehearsal,
        "gold": "ground truth" if judge is None else f"judge {judge.model_id}",
        "data": "the toy world" if profile.has_ground_truth else f"{profile.preference_set}: {len(data['rm'])} "
                f"pairs to train, {len(data['rm_eval'])} held out (offline: the hand-written set)",
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "peak_rss_gb": round(peak_rss_gb() + worker_rss, 2),  # with PPO's process: the sum of both peaks
        "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None,
        "rm_accuracy": round(rm_metrics["accuracy"], 4),
        "rm_bayes_accuracy": round(rm_metrics.get("bayes_accuracy", math.nan), 4),
        "reward": {k: round(s.get("reward", math.nan), 4) for k, s in summaries.items()},
        "rm_score": {k: round(s.get("rm_score", math.nan), 4) for k, s in summaries.items()},
        "win_rate_vs_sft": {k: round(summaries[k].get("win_rate", math.nan), 4) for k in ("ppo", "dpo", "best_of_n")},
        "win_rate_vs_sft_by_rm": {k: round(summaries[k].get("win_rate_rm", math.nan), 4) for k in ("ppo", "dpo")},
        "kl_to_sft": {k: round(summaries[k]["kl"], 3) for k in ("ppo", "dpo")},
        "length": {k: round(s["length"], 1) for k, s in summaries.items()},
        "best_of_n": BEST_OF_N,
        "stages": summaries,
        "settings": {"temperature": profile.temperature, "max_new_tokens": profile.max_new_tokens,
                     "sft_steps": profile.sft_steps, "rm_steps": profile.rm_steps, "ppo_steps": profile.ppo_steps,
                     "dpo_steps": profile.dpo_steps, "recipe": dataclasses.asdict(profile.recipe), "seed": seed,
                     "torch_threads": torch.get_num_threads(), "ppo_side_by_side": side_by_side,
                     "python": platform.python_version(),
                     "torch": torch.__version__},
    }
    report["targets"] = check_targets(flatten(report), report["gold"])
    write_report(out, report, results, ppo_history, dpo_history)
    if progress:
        print(summary_line(report))
        print(f"report: {out / 'report.md'} (and report.json, plots)")
    return report


def _evaluate(profile: Profile, tokenizer, prompts, judge, seed: int, model, **kw) -> EvalResult:
    """The pipeline's one evaluation protocol: 4 answers per held-out prompt (1 with a judge), scored by the
    gold reward."""
    return evaluate_policy(model, tokenizer, prompts, n_per_prompt=4 if judge is None else 1,
                           max_new_tokens=profile.max_new_tokens, temperature=profile.temperature,
                           seed=seed, judge=judge, **kw)


def _against_sft(profile: Profile, tokenizer, prompts, judge, seed: int, model, rm_dir, sft: EvalResult) -> EvalResult:
    """A trained policy: its gold reward, the reward model's score (the RM rides on its base), KL to its
    own reference (the SFT model) and its win rate against the SFT model's answers `sft`."""
    return _evaluate(profile, tokenizer, prompts, judge, seed, model, reference="self", baseline=sft,
                     reward_fn=AdapterRewardModel(model, tokenizer, rm_dir))


def _ppo_stage(profile: Profile, sft_path: str, rm_dir: Path, data: dict, sft: EvalResult, seed: int, judge,
               progress: bool) -> tuple[list[dict], EvalResult, float, float]:
    """Stage 3 as one job, which may run in a second process (`parallel.start_jobs`): PPO from the SFT model
    against the reward model, then its evaluation against the SFT model's answers. Returns (history,
    evaluation, seconds, this process's peak RSS in GB)."""
    t0 = time.perf_counter()
    tokenizer = load_tokenizer(profile)
    ppo = train_ppo(profile, model_id=sft_path, reward_model_dir=rm_dir, prompts=data["train_prompts"],
                    monitor_fn=gold_reward_fn(profile, judge), progress=progress, seed=seed)
    result = _against_sft(profile, tokenizer, data["eval_prompts"], judge, seed, ppo.model, rm_dir, sft)
    history = ppo.history
    del ppo
    free_memory()
    return history, result, time.perf_counter() - t0, peak_rss_gb()


def check_targets(numbers: dict[str, float], gold: str) -> dict[str, bool]:
    """Each target met or not, judged on `flatten`ed numbers (one run's, or the means over seeds). Only
    where the gold reward is the ground truth: a judge's scores have no ceiling to aim at, and a
    rehearsal's none at all."""
    if gold != "ground truth":
        return {}
    return {t.name: t.met(numbers[t.key]) for t in TARGETS}


def target_lines(met: dict[str, bool], stats: dict[str, tuple[float, float]]) -> list[str]:
    """The report's checklist: each target ticked or not, with its number (mean ± std over seeds; one run's
    value has std NaN) and "within noise of the target" where the spread reaches the limit."""
    if not met:
        return ["- (targets are set against the toy world's ground truth; none on this profile)"]
    lines = []
    for t in TARGETS:
        note = format_mean_std(stats[t.key], t.digits)
        if within_noise(stats[t.key], (t.limit, 0.0)):
            note += ": within noise of the target"
        lines.append(f"- [{'x' if met[t.name] else ' '}] {t.name} ({note})")
    return lines


def summary_line(report: dict) -> str:
    r, bayes = report["reward"], report["rm_bayes_accuracy"]
    limit = "" if math.isnan(bayes) else f" (Bayes limit {bayes:.3f})"
    return (f"{report['gold']}: base {r['base']:.2f} -> SFT {r['sft']:.2f} -> PPO {r['ppo']:.2f}, DPO {r['dpo']:.2f}, "
            f"best-of-{report['best_of_n']} {r['best_of_n']:.2f} | RM accuracy {report['rm_accuracy']:.3f}{limit} | "
            f"win rate vs SFT: PPO {report['win_rate_vs_sft']['ppo']:.2f}, DPO {report['win_rate_vs_sft']['dpo']:.2f} | "
            f"{report['seconds']['total']:.0f}s, {report['peak_rss_gb']:.2f} GB")


def best_of_n_frontier(results: dict[str, EvalResult]) -> dict[int, float]:
    """{n: mean gold reward of the reward model's pick among n answers of the SFT model}. n = 1 .. k from the
    SFT evaluation's k answers per prompt, without bias (of the C(k, n) subsets, the answer ranked i-th
    lowest by the reward model is the pick in C(i-1, n-1), as in `best_of_n.expected_best_of_k`); n = BEST_OF_N
    from the best-of-N stage."""
    groups: dict[str, list[Sample]] = {}
    for sample in results["sft"].samples:
        groups.setdefault(json.dumps(sample.prompt, sort_keys=True), []).append(sample)
    k = min(len(g) for g in groups.values())
    frontier = {}
    for n in range(1, k + 1):
        picks = []
        for group in groups.values():
            ranked = sorted(group[:k], key=lambda s: s.rm_score)
            picks.append(sum(math.comb(i - 1, n - 1) * ranked[i - 1].reward for i in range(n, k + 1)) / math.comb(k, n))
        frontier[n] = sum(picks) / len(picks)
    frontier[BEST_OF_N] = sum(results["best_of_n"].rewards) / len(results["best_of_n"].rewards)
    return frontier


def write_report(out: Path, report: dict, results: dict, ppo_history: list, dpo_history: list) -> None:
    (out / "report.json").write_text(json.dumps(report, indent=2, default=float))
    exact = report["gold"] == "ground truth"  # the toy world's best possible reward is known
    label = "ground-truth reward" if exact else "judged reward"
    figures = {
        "stage_rewards.png": lambda p: plots.plot_stage_rewards(
            {k: v.summary() for k, v in results.items()}, path=p, **({} if exact else {"best": math.nan}),
            title=f"Mean {label} per stage"),
        "reward_distributions.png": lambda p: plots.plot_reward_distributions(
            {k: v.rewards for k, v in results.items()}, title=f"{label.capitalize()} per answer", path=p),
        "ppo_training.png": lambda p: plots.plot_training_curves(
            ppo_history, [k for k in ("reward/score", "reward/monitor", "objective/kl", "policy/entropy",
                                      "policy/clipfrac", "loss/value") if k in ppo_history[0]],
            title=f"PPO, {len(ppo_history)} iterations against the reward model ({label} watched, not optimised)",
            smooth=0.9, path=p),
        "dpo_rewards.png": lambda p: plots.plot_dpo_rewards(dpo_history, path=p),
        "reward_vs_kl.png": lambda p: plots.plot_reward_vs_kl(
            {"SFT": (0.0, report["reward"]["sft"]), "PPO": (report["kl_to_sft"]["ppo"], report["reward"]["ppo"]),
             "DPO": (report["kl_to_sft"]["dpo"], report["reward"]["dpo"])},
            trajectories={"PPO, training batches": [(h["objective/kl"], h["reward/monitor"]) for h in ppo_history]},
            best_of_n=best_of_n_frontier(results), ylabel=f"{label} (mean per answer)",
            best=best_possible_reward() if exact else None, path=p,
            title=f"{label.capitalize()} vs KL to the SFT model (held-out prompts)"),
    }
    made = [name for name, draw in figures.items() if draw(out / name) is not None]
    r, w, k, n = report["reward"], report["win_rate_vs_sft"], report["kl_to_sft"], report["length"]
    model = "the course's tiny model (data/tiny)" if report["model"] == "tiny" else report["model"]
    lines = [f"# rlhf-course pipeline report: {report['profile']} profile, {model}"
             + (" (rehearsal on a stand-in: the numbers mean nothing)" if report["rehearsal"] else ""), "",
             f"Gold reward: {report['gold']}. Data: {report['data']}.", "",
             f"| stage | {label} | win rate vs SFT | KL to SFT (nats) | reward model's score | length (tokens) |",
             "|---|---|---|---|---|---|"]

    def cell(table: dict, stage: str, digits: int) -> str:  # "-" where a stage has no such number
        value = table.get(stage, math.nan)
        return "-" if math.isnan(value) else f"{value:.{digits}f}"

    for stage in ("base", "sft", "ppo", "dpo", "best_of_n"):
        lines.append(f"| {stage} | {cell(r, stage, 3)} | {cell(w, stage, 2)} | {cell(k, stage, 2)} | "
                     f"{cell(report['rm_score'], stage, 3)} | {cell(n, stage, 1)} |")
    bayes = "" if math.isnan(report["rm_bayes_accuracy"]) else \
        f", Bayes limit of the labels {report['rm_bayes_accuracy']:.3f}"
    lines += ["", f"Reward model: held-out accuracy {report['rm_accuracy']:.3f}{bayes}.", "",
              "| stage | seconds |", "|---|---|"] + [f"| {s} | {v} |" for s, v in report["seconds"].items()]
    lines += ["", "(evaluation: all the evaluations together)", "", SIDE_BY_SIDE_NOTE]
    gpu = "" if report["peak_gpu_gib"] is None else f" Peak GPU memory allocated: {report['peak_gpu_gib']} GiB."
    lines += ["", f"Peak RSS: {report['peak_rss_gb']} GB.{gpu}", "", "## Targets", ""]
    lines += target_lines(report["targets"], {k: (v, math.nan) for k, v in flatten(report).items()})
    lines += ["", "## Plots", ""] + [f"![{name}]({name})" for name in made]
    (out / "report.md").write_text("\n".join(lines) + "\n")


# ------------------------------------------------------------------------------ several seeds

# What the seed report compares: (name, key of the flattened report, name, key, the number). Win rates and gold
# rewards are per answer on the same held-out prompts, so each pair is measured on one scale.
COMPARISONS = (("PPO", "win_rate_vs_sft/ppo", "DPO", "win_rate_vs_sft/dpo", "win rate vs SFT"),
               ("PPO", "reward/ppo", "DPO", "reward/dpo", "gold reward"),
               ("PPO", "win_rate_vs_sft/ppo", f"best-of-{BEST_OF_N}", "win_rate_vs_sft/best_of_n", "win rate vs SFT"),
               ("DPO", "win_rate_vs_sft/dpo", f"best-of-{BEST_OF_N}", "win_rate_vs_sft/best_of_n", "win rate vs SFT"))
HEADLINE = ("rm_accuracy", "rm_bayes_accuracy", "peak_rss_gb", "reward", "win_rate_vs_sft", "kl_to_sft", "length",
            "seconds")


def flatten(report: dict) -> dict[str, float]:
    """A report's headline numbers as {"rm_accuracy": .., "reward/ppo": .., "seconds/total": .., ...}."""
    flat = {}
    for key in HEADLINE:
        value = report[key]
        if isinstance(value, dict):
            flat.update({f"{key}/{k}": float(v) for k, v in value.items()})
        else:
            flat[key] = float(value)
    flat["rm_gap_to_bayes"] = flat["rm_bayes_accuracy"] - flat["rm_accuracy"]
    return flat


def aggregate_reports(reports: list[dict], seeds: list[int]) -> dict:
    """Per-seed reports -> {"seeds", "per_seed", "mean", "std", "targets", "comparisons"}: each headline number
    (`flatten`) as mean and sample std over the seeds; the targets checked on the means; one sentence per
    comparison of `COMPARISONS` (`comparison_sentences`)."""
    flats = [flatten(r) for r in reports]
    per_seed = {k: [f[k] for f in flats] for k in flats[0]}
    stats = {k: mean_std(v) for k, v in per_seed.items()}
    means = {k: m for k, (m, _) in stats.items()}
    first = reports[0]
    aggregate = {"profile": first["profile"], "model": first["model"], "rehearsal": first["rehearsal"],
                 "gold": first["gold"], "data": first["data"], "seeds": list(seeds), "per_seed": per_seed,
                 "mean": means, "std": {k: s for k, (_, s) in stats.items()}}
    aggregate["targets"] = check_targets(means, first["gold"])
    aggregate["comparisons"] = comparison_sentences(stats)
    return aggregate


def comparison_sentences(stats: dict[str, tuple[float, float]]) -> list[str]:
    """`seeds.compare` for each pair of `COMPARISONS` whose numbers the run has: 'within noise' where the
    two means differ by less than their spread, else which one is ahead."""
    return [compare(name_a, stats[a], name_b, stats[b], what=what) for name_a, a, name_b, b, what in COMPARISONS
            if a in stats and b in stats]


def run_seeds(out_dir: str | Path, profile: Profile | str | None = None, seeds: list[int] = (0, 1, 2), *,
              progress: bool = True) -> dict:
    """`run_pipeline` once per seed into DIR/seed-S/, then DIR/report.json and DIR/report.md over the seeds
    (`aggregate_reports`). Returns the aggregate."""
    out = Path(out_dir)
    profile = profile if isinstance(profile, Profile) else pick_profile(profile)
    reports = []
    for seed in seeds:
        if progress:
            print(f"--- seed {seed} -> {out / f'seed-{seed}'}", flush=True)
        reports.append(run_pipeline(out / f"seed-{seed}", profile, progress=progress, seed=seed))
    aggregate = aggregate_reports(reports, list(seeds))
    write_seed_report(out, aggregate)
    if progress:
        print("\n".join(aggregate["comparisons"]))
        print(f"report over {len(seeds)} seeds: {out / 'report.md'} (and report.json)")
    return aggregate


def write_seed_report(out: Path, aggregate: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(aggregate, indent=2, default=float))
    seeds = aggregate["seeds"]
    stats = {k: (aggregate["mean"][k], aggregate["std"][k]) for k in aggregate["mean"]}
    label = "ground-truth reward" if aggregate["gold"] == "ground truth" else "judged reward"

    def cell(key: str, digits: int) -> str:
        return format_mean_std(stats[key], digits) if key in stats else "-"

    lines = [f"# rlhf-course pipeline report: {aggregate['profile']} profile, seeds {' '.join(map(str, seeds))}"
             + (" (rehearsal on a stand-in: the numbers mean nothing)" if aggregate["rehearsal"] else ""), "",
             (f"Gold reward: {aggregate['gold']}. Data: {aggregate['data']}. Each number: mean ± sample standard "
             f"deviation over the {len(seeds)} seeds; each seed's own report is in seed-S/report.md."), "",
             f"| stage | {label} | win rate vs SFT | KL to SFT (nats) | length (tokens) |", "|---|---|---|---|---|"]
    for stage in ("base", "sft", "ppo", "dpo", "best_of_n"):
        lines.append(f"| {stage} | {cell(f'reward/{stage}', 3)} | {cell(f'win_rate_vs_sft/{stage}', 2)} | "
                     f"{cell(f'kl_to_sft/{stage}', 2)} | {cell(f'length/{stage}', 1)} |")
    lines += ["", (f"Reward model: held-out accuracy {cell('rm_accuracy', 3)}, Bayes limit of the labels "
              f"{cell('rm_bayes_accuracy', 3)}."), "", "## Within noise or not", ""]
    lines += [f"- {sentence}" for sentence in aggregate["comparisons"]]
    seconds = [k for k in aggregate["per_seed"] if k.startswith("seconds/")]  # in the order the stages ran
    lines += ["", "## Seconds per seed", "", "| stage | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± std |",
              "|---|" + "---:|" * (len(seeds) + 1)]
    lines += [f"| {k.split('/', 1)[1]} | " + " | ".join(f"{v:.1f}" for v in aggregate["per_seed"][k]) +
              f" | {cell(k, 1)} |" for k in seconds]
    lines += ["", SIDE_BY_SIDE_NOTE, "", f"Peak RSS: {cell('peak_rss_gb', 2)} GB.", "", "## Targets (on the means)", ""]
    lines += target_lines(aggregate["targets"], stats)
    (out / "report.md").write_text("\n".join(lines) + "\n")
