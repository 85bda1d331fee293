"""The main job end to end, with a few steps per stage: every stage runs and the report has what the
README promises (the full run's numbers are measured by `rlhf-course pipeline`, not asserted here)."""

import json
import warnings

import pytest

from rlhf_course.errors import UsageError
from rlhf_course.pipeline import check_targets, flatten, run_pipeline


def test_a_short_pipeline_writes_the_report_the_readme_promises(tiny, tmp_path, capfd):
    short = tiny.replace(sft_steps=4, rm_steps=4, ppo_steps=2, dpo_steps=2)
    with warnings.catch_warnings(record=True) as caught:  # pytest would otherwise catch them out of sight
        warnings.simplefilter("always")
        report = run_pipeline(tmp_path, short, progress=True, side_by_side=True)  # as on 2 cores

    # what a person reads: one summary line per stage, no trainer log dicts, no deprecation warnings
    out, err = capfd.readouterr()
    printed = out + err
    lines = [line for line in out.splitlines() if line.strip()]
    for stage in ("sft", "reward model", "ppo", "dpo", "best of n"):
        assert sum(line.startswith(f"{stage:<13}") for line in lines) == 1, (stage, out)
    assert "{'loss'" not in printed and "{'train_runtime'" not in printed, printed[-2000:]
    assert "FutureWarning" not in printed, printed[-2000:]
    assert not [w for w in caught if issubclass(w.category, FutureWarning)], [str(w.message) for w in caught]

    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk["profile"] == "tiny" and on_disk == json.loads(json.dumps(report, default=float))
    for stage in ("sft", "reward_model", "ppo", "dpo", "best_of_n", "total"):
        assert report["seconds"][stage] > 0
    assert set(report["reward"]) == {"base", "sft", "ppo", "dpo", "best_of_n"}
    assert set(report["win_rate_vs_sft"]) >= {"ppo", "dpo"} and set(report["kl_to_sft"]) == {"ppo", "dpo"}
    assert all(0 <= report["win_rate_vs_sft"][k] <= 1 for k in ("ppo", "dpo"))
    assert 0.5 < report["rm_bayes_accuracy"] < 1 and 0 <= report["rm_accuracy"] <= 1
    assert report["peak_rss_gb"] > 0
    assert report["settings"]["ppo_steps"] == 2  # the profile's numbers reached the trainers' report

    md = (tmp_path / "report.md").read_text()
    assert "| ppo |" in md and "## Targets" in md
    ppo_win = f"{report['win_rate_vs_sft']['ppo']:.3f}"  # each target is shown with the number it judged
    assert f"] PPO win rate vs SFT >= 0.8 ({ppo_win})" in md
    for png in ("stage_rewards.png", "reward_distributions.png", "ppo_training.png", "dpo_rewards.png", "reward_vs_kl.png"):
        assert (tmp_path / png).stat().st_size > 1000 and f"({png})" in md
    assert (tmp_path / "sft" / "model.safetensors").exists() and (tmp_path / "rm" / "adapter_model.safetensors").exists()
    assert report["settings"]["ppo_side_by_side"] is True

    # PPO in a second process beside DPO and best-of-N, or every stage in turn here: the same numbers
    in_turn = run_pipeline(tmp_path / "in_turn", short, progress=False, side_by_side=False)
    assert in_turn["settings"]["ppo_side_by_side"] is False
    numbers = [k for k in flatten(report) if not k.startswith("seconds") and k != "peak_rss_gb"]
    same = lambda r: json.dumps([{k: flatten(r)[k] for k in numbers}, r["stages"]], sort_keys=True)  # noqa: E731 (NaN == NaN)
    assert same(in_turn) == same(report)


def test_side_by_side_is_refused_where_stages_must_take_turns(tiny, tmp_path):
    with pytest.raises(UsageError, match="one stage at a time"):
        run_pipeline(tmp_path, tiny.replace(device="cuda"), side_by_side=True)


def test_targets_are_judged_from_the_report():
    numbers = {"seconds/total": 170.0, "peak_rss_gb": 1.0, "rm_gap_to_bayes": 0.87 - 0.86,
               "win_rate_vs_sft/ppo": 0.81, "win_rate_vs_sft/dpo": 0.5}
    assert list(check_targets(numbers, "ground truth").values()) == [True, True, True, True, False]
    assert list(check_targets({**numbers, "seconds/total": 181.0}, "ground truth").values())[0] is False
    assert list(check_targets({**numbers, "rm_gap_to_bayes": 0.021}, "ground truth").values())[2] is False
    assert check_targets(numbers, "judge Skywork/Skywork-Reward-V2-Qwen3-0.6B") == {}

