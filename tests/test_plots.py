import os
import subprocess
import sys

import matplotlib.pyplot as plt
import pytest
from matplotlib.figure import Figure

from rlhf_course import plots
from rlhf_course.evaluation import EvalResult, Sample, best_possible_reward
from rlhf_course.sampling import Completion
from rlhf_course.toyworld import eval_prompts

DPO_KEYS = ["rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"]
# what TRL's log_history looks like: train entries, and an end-of-training entry without the metrics
HISTORY = [{"step": s, "loss": 0.7 - 0.01 * s, "rewards/chosen": -0.01 * s, "rewards/rejected": -0.03 * s,
            "rewards/margins": 0.02 * s, "rewards/accuracies": min(1.0, 0.5 + 0.02 * s)} for s in range(1, 21)]
HISTORY.append({"step": 20, "train_runtime": 3.0})


def _labelled_lines(ax) -> list[str]:
    return [line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_")]


def _check_png(fig, path) -> None:
    assert isinstance(fig, Figure)
    assert path.stat().st_size > 5000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plt.get_fignums(), "the figure is handed back closed (shown once in a notebook, no leak)"


def test_smoothing_is_debiased_ema():
    assert plots.smooth_ema([1.0, 2.0, 3.0], 0.0) == [1.0, 2.0, 3.0]
    assert plots.smooth_ema([5.0, 5.0, 5.0], 0.9) == pytest.approx([5.0, 5.0, 5.0]), "no pull towards 0 at the start"
    assert plots.smooth_ema([0.0, 1.0], 0.5) == pytest.approx([0.0, 0.5 / 0.75])


def test_training_curves_one_panel_per_key(tmp_path):
    fig = plots.plot_training_curves(HISTORY, ["loss", "rewards/margins", "rewards/accuracies", "rewards/chosen"],
                                     path=tmp_path / "curves.png")
    _check_png(fig, tmp_path / "curves.png")
    assert [ax.get_title() for ax in fig.axes] == ["loss", "rewards/margins", "rewards/accuracies", "rewards/chosen"]
    loss = fig.axes[0].get_lines()
    assert len(loss) == 1 and list(loss[0].get_xdata()) == list(range(1, 21)), "entries without the key are skipped"
    assert fig.axes[0].get_xlabel() == "training step"
    assert fig.axes[0].get_ylabel() == plots.METRICS["loss"], "the y axis says what the key means"
    assert fig.axes[0].get_title(loc="right") == "0.685 → 0.505", "start and end: means of the first and last tenth"
    smooth = plots.plot_training_curves(HISTORY, ["loss"], smooth=0.8, path=tmp_path / "s.png")
    assert len(smooth.axes) == 1 and _labelled_lines(smooth.axes[0]) == ["raw", "smoothed (0.8)"]
    with pytest.raises(KeyError, match="logged keys"):
        plots.plot_training_curves(HISTORY, ["kl"])


def test_dpo_rewards(tmp_path):
    fig = plots.plot_dpo_rewards(HISTORY, path=tmp_path / "dpo.png")
    _check_png(fig, tmp_path / "dpo.png")
    left, right = fig.axes
    assert _labelled_lines(left) == ["chosen", "rejected", "margins"]
    assert _labelled_lines(right) == ["accuracies"]
    chosen, _, margins = (line.get_ydata() for line in left.get_lines()[:3])
    assert chosen[-1] < chosen[0] and margins[-1] > margins[0]  # the lesson's point, drawn
    eval_history = [{"step": h["step"], **{f"eval_{k}": h[k] for k in DPO_KEYS}} for h in HISTORY[:5]]
    assert len(plots.plot_dpo_rewards(eval_history, prefix="eval_").axes) == 2


def test_reward_hacking_one_or_several_runs(tmp_path):
    def run(slope):
        return [{"step": s, "proxy_reward": 0.05 * s, "true_reward": slope * s, "kl": 0.1 * s} for s in range(10)]

    fig = plots.plot_reward_hacking({"no KL penalty": run(-0.02), "kl_coef=0.1": run(0.01)}, path=tmp_path / "h.png")
    _check_png(fig, tmp_path / "h.png")
    rewards, kl = fig.axes
    assert len(_labelled_lines(rewards)) == 4 and len(_labelled_lines(kl)) == 2
    assert "KL" in kl.get_ylabel()
    single = plots.plot_reward_hacking([{k: v for k, v in h.items() if k != "kl"} for h in run(0.0)])
    assert len(single.axes) == 1 and len(single.axes[0].get_lines()) == 2, "no kl logged: one panel"
    ppo_history = [{"step": h["step"], "reward/score": h["proxy_reward"], "reward/monitor": h["true_reward"],
                    "objective/kl": h["kl"]} for h in run(0.01)]
    fig = plots.plot_reward_hacking(ppo_history, proxy_key="reward/score", true_key="reward/monitor",
                                    kl_key="objective/kl")
    assert list(fig.axes[1].get_lines()[0].get_ydata()) == [h["objective/kl"] for h in ppo_history]
    with pytest.raises(KeyError, match="proxy_reward"):
        plots.plot_reward_hacking(ppo_history)


def test_reward_vs_kl_lines_and_points(tmp_path):
    runs = {"PPO": [(0.0, 0.1), (1.0, 0.3), (3.0, 0.5)], "DPO": (2.0, 0.45)}
    fig = plots.plot_reward_vs_kl(runs, best=1.0, path=tmp_path / "f.png")
    _check_png(fig, tmp_path / "f.png")
    (ax,) = fig.axes
    assert _labelled_lines(ax) == ["PPO", "DPO", "best possible (1.00)"]
    assert list(ax.get_lines()[0].get_xdata()) == [0.0, 1.0, 3.0]
    assert "KL" in ax.get_xlabel() and "nats" in ax.get_xlabel()
    assert len(plots.plot_reward_vs_kl([(0.0, 0.1), (2.0, 0.4)]).axes[0].get_lines()) == 1  # a bare list: one run
    assert any(t.get_text() == "DPO  0.45" for t in ax.texts), "a final policy is named beside its marker"


def test_reward_vs_kl_trajectory_by_step_and_the_best_of_n_frontier(tmp_path):
    import math

    from matplotlib.collections import LineCollection

    noisy = [(0.1 * s + (0.3 if s % 2 else -0.3), 0.01 * s + (0.05 if s % 3 else -0.05)) for s in range(1, 41)]
    frontier = {1: 0.3, 2: 0.4, 3: 0.45, 4: 0.5, 8: 0.55}
    fig = plots.plot_reward_vs_kl({"PPO": (4.1, 0.5)}, trajectories={"PPO, training": noisy}, best_of_n=frontier,
                                  best=1.0, path=tmp_path / "f.png")
    _check_png(fig, tmp_path / "f.png")
    ax = fig.axes[0]
    (path,) = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert list(path.get_array()) == list(range(2, 41)), "each segment coloured by the step it ends at"
    (x0, _), (x1, _) = path.get_segments()[0]
    assert abs(x1 - x0) < 0.6 - 0.1, "the path is smoothed (raw points jump by 0.6 in KL)"
    assert fig.axes[1].get_ylabel() == "PPO, training: training step"  # the colour bar
    bon = next(line for line in ax.get_lines() if line.get_label().startswith("best-of-n"))
    assert list(bon.get_xdata()) == pytest.approx([math.log(n) - (n - 1) / n for n in (1, 2, 3, 4, 8)])
    assert list(bon.get_ydata()) == [0.3, 0.4, 0.45, 0.5, 0.55]
    assert {t.get_text() for t in ax.texts} >= {"n=1", "n=8", "PPO  0.50"} and "n=3" not in {t.get_text() for t in ax.texts}


@pytest.mark.parametrize("kind", ["violin", "hist"])
def test_reward_distributions(tmp_path, kind):
    prompts = eval_prompts()[:3]
    result = EvalResult([Sample(p.text, Completion("good luck .", True, 4), p) for p in prompts])
    rewards = {"base": [-0.5, -0.3, 0.0, -0.4], "sft": [0.1, 0.2, 0.0], "eval": result}
    fig = plots.plot_reward_distributions(rewards, kind=kind, path=tmp_path / f"{kind}.png")
    _check_png(fig, tmp_path / f"{kind}.png")
    (ax,) = fig.axes
    if kind == "violin":
        assert [t.get_text() for t in ax.get_xticklabels()] == ["base", "sft", "eval"]
        assert list(ax.get_lines()[0].get_ydata()) == pytest.approx([-0.3, 0.1, -0.1])  # the means
    else:
        assert len(ax.patches) == 3 and "mean -0.30" in ax.get_legend().get_texts()[0].get_text()
    with pytest.raises(ValueError):
        plots.plot_reward_distributions(rewards, kind="box")


def test_stage_rewards(tmp_path):
    report = {"base": -0.38, "sft": {"reward": 0.1, "kl": 0.0}, "ppo": 0.55, "dpo": 0.42, "best_of_n": 0.6}
    fig = plots.plot_stage_rewards(report, path=tmp_path / "stages.png")
    _check_png(fig, tmp_path / "stages.png")
    (ax,) = fig.axes
    assert [b.get_height() for b in ax.patches] == pytest.approx([-0.38, 0.1, 0.55, 0.42, 0.6])
    assert [t.get_text() for t in ax.get_xticklabels()] == list(report)
    best = ax.get_lines()[0]
    assert best.get_ydata()[0] == pytest.approx(best_possible_reward())


@pytest.mark.parametrize("backend, expected", [(None, "agg"), ("module://matplotlib_inline.backend_inline",
                                                                  "module://matplotlib_inline.backend_inline")])
def test_backend_agg_only_when_none_was_chosen(backend, expected):
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    if backend:
        env["MPLBACKEND"] = backend  # what a Jupyter kernel sets
    code = "import rlhf_course.plots, matplotlib; print(matplotlib.get_backend())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip().lower() == expected
