"""Plots the course shows rather than prints: training curves, the reward-vs-KL frontier, reward
distributions per stage, DPO's implicit rewards, reward hacking, and the pipeline's stage summary.

Each function returns a matplotlib `Figure` and saves it as a PNG when given `path=`. In a notebook,
end the cell with the call (or `display(fig)`) to show it: the figure is closed before it is
returned, so the inline backend shows it once, and a script that draws many never piles them up.
"""

from __future__ import annotations

import math
from pathlib import Path
from statistics import mean

import matplotlib

# A script or CI job that chose no backend draws to files (Agg); a notebook's inline backend, or one set
# with MPLBACKEND / matplotlib.use() before this import, is left alone.
if matplotlib.rcParams._get("backend") is matplotlib.rcsetup._auto_backend_sentinel:
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

KL_LABEL = "KL(π ‖ π_ref) (nats per answer)"
REWARD_LABEL = "ground-truth reward (mean per answer)"
# What a logged key means, for the y-axis (the panel's title keeps the key, as TRL and our PPO log it).
METRICS = {
    "loss": "training loss (lower: better fit)",
    "mean_token_accuracy": "share of answer tokens predicted",
    "accuracy": "share of pairs ranked right",
    "margin": "reward gap, chosen − rejected",
    "reward": "reward (mean per answer)",
    "answer_tokens": "answer length (tokens)",
    "reward/score": "reward model's score (mean)",
    "reward/monitor": REWARD_LABEL,
    "objective/kl": "KL to the reference (nats per answer)",
    "kl": "KL to the reference (nats per token)",
    "policy/entropy": "entropy (nats per token)",
    "policy/clipfrac": "share of tokens clipped",
    "policy/approx_kl": "KL to the previous policy (nats per token)",
    "loss/value": "value loss",
    "rollout/length": "answer length (tokens)",
    "completions/mean_length": "answer length (tokens)",
    "logps/chosen": "log π(chosen answer) (nats)",
    "logps/rejected": "log π(rejected answer) (nats)",
}


def _finish(fig: Figure, path: str | Path | None) -> Figure:
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    plt.close(fig)  # returned, not left open in pyplot: shown once in a notebook, no leak in a script
    return fig


def _grid(n: int, ncols: int = 3, panel=(4.2, 3.0)) -> tuple[Figure, list]:
    """A figure with exactly n panels, at most `ncols` per row."""
    ncols = min(n, ncols)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel[0] * ncols, panel[1] * nrows), layout="constrained",
                             squeeze=False)
    axes = list(axes.flat)
    for ax in axes[n:]:
        fig.delaxes(ax)
    return fig, axes[:n]


def smooth_ema(values: list[float], weight: float) -> list[float]:
    """TensorBoard's smoothing: an exponential moving average, debiased at the start. weight 0 = raw."""
    out, avg = [], 0.0
    for i, v in enumerate(values, start=1):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight**i) if weight > 0 else v)
    return out


def _series(history: list[dict], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of the log entries that have `key` (TRL logs loss and eval on different entries)."""
    rows = [h for h in history if key in h and h[key] is not None]
    return [h.get("step", i) for i, h in enumerate(rows)], [float(h[key]) for h in rows]


def _check_keys(history: list[dict], keys: list[str]) -> None:
    missing = [k for k in keys if not any(k in h for h in history)]
    if missing:
        logged = sorted({k for h in history for k in h})
        raise KeyError(f"not in the history: {missing}; logged keys are {logged}")


# --- training -----------------------------------------------------------------------------------

def _ends(values: list[float]) -> tuple[float, float]:
    """The start and end of a curve, robust to noise: the means of its first and last tenth (at least 1 point)."""
    k = max(1, len(values) // 10)
    return mean(values[:k]), mean(values[-k:])


def plot_training_curves(history: list[dict], keys: list[str], title: str = "Training curves", smooth: float = 0.0,
                         path: str | Path | None = None) -> Figure:
    """One panel per logged key over training steps. `history`: a list of dicts with a "step" key
    (TRL's `trainer.state.log_history`, our PPO history). smooth in [0, 1): EMA weight; the raw curve
    stays in the background. Each panel says what its key means (METRICS) and, on the right of its
    title, where the curve started and ended (the mean of its first and last tenth)."""
    _check_keys(history, keys)
    fig, axes = _grid(len(keys))
    for ax, key in zip(axes, keys):
        steps, values = _series(history, key)
        if smooth > 0:
            ax.plot(steps, values, color="C0", alpha=0.25, label="raw")
            ax.plot(steps, smooth_ema(values, smooth), color="C0", label=f"smoothed ({smooth})")
        else:
            ax.plot(steps, values, color="C0", marker="." if len(steps) < 30 else None)
        start, end = _ends(values)
        ax.set_title(key)
        ax.set_title(f"{start:.3g} → {end:.3g}", loc="right", fontsize="small", color="0.35")
        ax.set(xlabel="training step", ylabel=METRICS.get(key, key))
        ax.grid(alpha=0.3)
    if smooth > 0:  # one legend for the figure: every panel draws the same two lines
        fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=2, fontsize="small")
    fig.suptitle(title)
    return _finish(fig, path)


def plot_dpo_rewards(history: list[dict], title: str = "DPO's implicit rewards", prefix: str = "",
                     smooth: float = 0.0, path: str | Path | None = None) -> Figure:
    """TRL's DPO logs in one figure: rewards/chosen, rewards/rejected and rewards/margins (beta times the
    log-ratio to the reference, Eq. 5 of arXiv:2305.18290) on the left, rewards/accuracies on the right.
    The margin can grow while the chosen reward falls: DPO only cares about the difference.
    prefix="eval_" plots the evaluation logs."""
    names = ["chosen", "rejected", "margins"]
    _check_keys(history, [f"{prefix}rewards/{n}" for n in names + ["accuracies"]])
    fig, (left, right) = _grid(2, panel=(5.0, 3.4))
    for name, color in zip(names, ["C2", "C3", "C0"]):
        steps, values = _series(history, f"{prefix}rewards/{name}")
        left.plot(steps, smooth_ema(values, smooth), color=color, label=name)
    left.axhline(0.0, color="gray", lw=0.8, ls=":")
    left.set(title="rewards  β·log π/π_ref", xlabel="training step", ylabel="implicit reward (nats × β)")
    left.legend()
    steps, values = _series(history, f"{prefix}rewards/accuracies")
    right.plot(steps, smooth_ema(values, smooth), color="C1", label="accuracies")
    right.set(title="rewards/accuracies", xlabel="training step", ylabel="share of pairs with chosen > rejected",
              ylim=(-0.02, 1.02))
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return _finish(fig, path)


def plot_reward_hacking(curve: list[dict] | dict[str, list[dict]], title: str = "Reward hacking",
                        proxy_key: str = "proxy_reward", true_key: str = "true_reward", kl_key: str = "kl",
                        path: str | Path | None = None) -> Figure:
    """The proxy (the reward model) against the ground truth over training, for one run or several
    (e.g. {"kl_coef=0": ..., "kl_coef=0.1": ...}). Each entry: step, proxy_reward, true_reward, and kl
    (optional: a second panel). When the proxy climbs and the truth falls, the policy is hacking.
    Our PPO history plots as it is with proxy_key="reward/score", true_key="reward/monitor",
    kl_key="objective/kl"."""
    runs = curve if isinstance(curve, dict) else {"": curve}
    for run in runs.values():
        _check_keys(run, [proxy_key, true_key])
    with_kl = any(kl_key in h for run in runs.values() for h in run)
    fig, axes = _grid(2 if with_kl else 1, panel=(5.0, 3.4))
    for i, (name, run) in enumerate(runs.items()):
        label = f"{name} " if name else ""
        axes[0].plot(*_series(run, proxy_key), color=f"C{i}", ls="--", label=f"{label}proxy (reward model)")
        axes[0].plot(*_series(run, true_key), color=f"C{i}", label=f"{label}ground truth")
        if with_kl:
            axes[1].plot(*_series(run, kl_key), color=f"C{i}", label=name or "kl")
    axes[0].set(title="proxy vs true reward", xlabel="training step", ylabel="reward (mean per answer)")
    axes[0].legend(fontsize="small")
    if with_kl:
        axes[1].set(title="KL to the reference", xlabel="training step", ylabel=KL_LABEL)
        axes[1].legend(fontsize="small")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return _finish(fig, path)


# --- comparing policies -------------------------------------------------------------------------

def plot_reward_vs_kl(runs: dict[str, list[tuple[float, float]] | tuple[float, float]] | list[tuple[float, float]]
                      | None = None, title: str = "Reward vs KL: the RLHF frontier", best: float | None = None,
                      path: str | Path | None = None, *, trajectories: dict[str, list[tuple[float, float]]] | None = None,
                      smooth: float = 0.9, best_of_n: dict[int, float] | None = None,
                      ylabel: str = REWARD_LABEL) -> Figure:
    """Mean reward against KL to the reference. Up and to the left is better: more reward for less drift.

    runs: name -> points in order (a line, e.g. over kl_coef), or one (kl, reward) point (a marker, named
        beside it: a final policy).
    trajectories: name -> one (kl, reward) point per training step. Logged on small batches, they are noisy:
        drawn as their smoothed path (EMA weight `smooth`) coloured by step, the raw points faint behind it.
    best_of_n: {n: mean reward of best-of-n} at KL = log n - (n-1)/n (`best_of_n.best_of_n_kl`): the
        reference frontier, reached without any training by sampling n answers and keeping the best.
    best: the best possible reward (a dotted line)."""
    if runs is not None and not isinstance(runs, dict):
        runs = {"run": runs}
    fig, ax = plt.subplots(figsize=(6.4, 4.4), layout="constrained")
    if best_of_n:
        from rlhf_course.best_of_n import best_of_n_kl

        ns = sorted(best_of_n)
        kl = [best_of_n_kl(n) for n in ns]
        ax.plot(kl, [best_of_n[n] for n in ns], color="0.45", ls="--", marker="s", ms=4, zorder=2,
                label="best-of-n (KL = log n − (n−1)/n)")
        for n, x in zip(ns, kl):
            if n & (n - 1) == 0:  # n = 1, 2, 4, 8, ...: enough to read the scale, few enough not to crowd
                ax.annotate(f"n={n}", (x, best_of_n[n]), xytext=(4, -10), textcoords="offset points",
                            fontsize="x-small", color="0.3")
    for j, (name, points) in enumerate((trajectories or {}).items()):
        kl, reward = (list(v) for v in zip(*points))
        steps = list(range(1, len(points) + 1))
        cmap = ["viridis", "plasma", "cividis"][j % 3]
        ax.scatter(kl, reward, c=steps, cmap=cmap, s=8, alpha=0.25, zorder=1)
        path_xy = list(zip(smooth_ema(kl, smooth), smooth_ema(reward, smooth)))
        line = LineCollection([path_xy[i:i + 2] for i in range(len(path_xy) - 1)], cmap=cmap, linewidths=2.5,
                              zorder=3, label=f"{name} (smoothed)")
        line.set_array(steps[1:])
        ax.add_collection(line)
        fig.colorbar(line, ax=ax, pad=0.01, aspect=30).set_label(f"{name}: training step")
    for i, (name, points) in enumerate((runs or {}).items()):
        points = [points] if isinstance(points, tuple) and not isinstance(points[0], (tuple, list)) else list(points)
        kl, reward = zip(*points)
        single = len(points) == 1
        ax.plot(kl, reward, color=f"C{i}", marker="*" if single else "o", ms=13 if single else 5,
                mec="white" if single else None, ls="none" if single else "-", label=name, zorder=4)
        if single:
            ax.annotate(f"{name}  {reward[0]:.2f}", (kl[0], reward[0]), xytext=(8, -12), textcoords="offset points",
                        fontsize="small", color=f"C{i}", fontweight="bold", zorder=5,
                        bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.8))
    if best is not None:
        ax.axhline(best, color="gray", ls=":", label=f"best possible ({best:.2f})")
    ax.autoscale_view()
    ax.set(title=title, xlabel=KL_LABEL, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="upper left")  # up and to the left is where no policy gets: room to spare
    return _finish(fig, path)


def _values(v) -> list[float]:
    return list(v.rewards) if hasattr(v, "rewards") else [float(x) for x in v]  # an EvalResult, or numbers


def plot_reward_distributions(rewards: dict[str, list[float]], kind: str = "violin",
                              title: str = "Ground-truth reward per answer", path: str | Path | None = None) -> Figure:
    """The spread of rewards per policy (e.g. base, SFT, PPO, DPO): kind="violin" (one violin per policy,
    its mean marked) or "hist" (overlaid histograms on shared bins). Values: lists of rewards, or
    `evaluation.EvalResult`s."""
    if kind not in ("violin", "hist"):
        raise ValueError(f"kind must be 'violin' or 'hist', not {kind!r}")
    data = {name: _values(v) for name, v in rewards.items()}
    fig, ax = plt.subplots(figsize=(1.4 * len(data) + 2.5, 4.0), layout="constrained")
    if kind == "violin":
        ax.violinplot(list(data.values()), showextrema=False)
        means = [mean(v) for v in data.values()]
        ax.plot(range(1, len(data) + 1), means, "k_", ms=20, mew=2, ls="none", label="mean")
        for x, m in enumerate(means, start=1):
            ax.annotate(f"{m:.2f}", (x, m), xytext=(22, 0), textcoords="offset points", va="center")
        ax.set_xticks(range(1, len(data) + 1), list(data))
        ax.set(xlabel="policy", ylabel="reward per answer")
        ax.legend(fontsize="small")
    else:
        lo, hi = min(map(min, data.values())), max(map(max, data.values()))
        bins = [lo + (hi - lo + 1e-9) * i / 20 for i in range(21)]
        for i, (name, v) in enumerate(data.items()):
            ax.hist(v, bins=bins, histtype="step", lw=2, color=f"C{i}", label=f"{name} (mean {mean(v):.2f})")
        ax.set(xlabel="reward per answer", ylabel="number of answers")
        ax.legend(fontsize="small")
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    return _finish(fig, path)


def _mean_reward(v) -> float:
    if isinstance(v, dict):
        return float(v["reward"])   # a summary dict
    if hasattr(v, "summary"):
        return v.summary()["reward"]  # an EvalResult
    return float(v)


def plot_stage_rewards(report: dict, best: float | None = None, title: str = "Mean ground-truth reward per stage",
                       path: str | Path | None = None) -> Figure:
    """One bar per stage (base, sft, ppo, dpo, best_of_n, ... in the report's order) and a line at the
    best possible reward. `report`: stage -> mean reward, a summary dict with "reward", or an EvalResult.
    best: defaults to the best possible mean on the held-out prompts (`evaluation.best_possible_reward`);
    NaN draws no line (a judge's scores have no known best)."""
    if best is None:
        from rlhf_course.evaluation import best_possible_reward
        best = best_possible_reward()
    stages, values = list(report), [_mean_reward(v) for v in report.values()]
    fig, ax = plt.subplots(figsize=(1.1 * len(stages) + 2.5, 4.0), layout="constrained")
    bars = ax.bar(stages, values, color=[f"C{i}" for i in range(len(stages))])
    ax.bar_label(bars, fmt="%.2f", padding=2)
    if not math.isnan(best):
        ax.axhline(best, color="gray", ls="--", label=f"best possible ({best:.2f})")
        ax.legend(loc="lower right", fontsize="small")
    ax.axhline(0.0, color="black", lw=0.8)
    ax.set(title=title, xlabel="stage", ylabel=REWARD_LABEL if "ground-truth" in title else "mean reward")
    ax.grid(alpha=0.3, axis="y")
    return _finish(fig, path)
