"""The pipeline over several seeds: the aggregate is the mean (and sample std) of the per-seed reports, the
targets are checked on the means, and the report says 'within noise' exactly where two compared numbers
differ by less than their spread."""

import json
import math
from statistics import mean, stdev

import pytest

from rlhf_course.pipeline import TARGETS, aggregate_reports, comparison_sentences, flatten, run_seeds, target_lines
from rlhf_course.seeds import compare, format_mean_std, mean_std, within_noise


def test_mean_std_is_the_mean_and_the_sample_std():
    assert mean_std([0.8, 0.7, 0.9]) == pytest.approx((0.8, 0.1))  # n - 1 in the denominator
    m, s = mean_std([0.5])
    assert m == 0.5 and math.isnan(s)
    assert all(math.isnan(x) for x in mean_std([0.5, math.nan]))


def test_within_noise_when_the_difference_is_below_the_spread_of_a_difference():
    # spread sqrt(0.04² + 0.05²) = 0.064
    assert within_noise((0.81, 0.04), (0.79, 0.05))
    assert within_noise((0.85, 0.04), (0.79, 0.05))          # 0.06 < 0.064
    assert not within_noise((0.86, 0.04), (0.79, 0.05))      # 0.07 > 0.064
    assert not within_noise((0.81, 0.01), (0.70, 0.02))
    assert not within_noise((0.81, math.nan), (0.80, 0.05))  # one run: no spread to judge by


def test_the_sentence_says_within_noise_only_when_it_is():
    assert compare("PPO", (0.81, 0.04), "DPO", (0.79, 0.05)) == "PPO vs DPO: within noise (0.81 ± 0.04 vs 0.79 ± 0.05)"
    assert compare("PPO", (0.61, 0.01), "DPO", (0.70, 0.02)) == "PPO vs DPO: DPO ahead (0.61 ± 0.01 vs 0.70 ± 0.02)"
    assert compare("PPO", (0.61, 0.01), "DPO", (0.70, 0.02), what="gold reward") == \
        "PPO vs DPO (gold reward): DPO ahead (0.61 ± 0.01 vs 0.70 ± 0.02)"
    assert "within noise" not in compare("PPO", (0.81, math.nan), "DPO", (0.80, math.nan))
    assert format_mean_std((0.5, math.nan)) == "0.50"


def synthetic_report(seed: int, ppo: float, dpo: float) -> dict:
    return {"profile": "tiny", "model": "tiny", "rehearsal": False, "gold": "ground truth", "data": "the toy world",
            "rm_accuracy": 0.85 + seed / 100, "rm_bayes_accuracy": 0.872, "peak_rss_gb": 1.0,
            "reward": {"base": -0.2, "sft": 0.35, "ppo": 0.5 + seed / 10, "dpo": 0.45, "best_of_n": 0.55},
            "win_rate_vs_sft": {"ppo": ppo, "dpo": dpo, "best_of_n": 0.66},
            "kl_to_sft": {"ppo": 2.0, "dpo": 0.4}, "length": {"base": 18.0, "sft": 22.0, "ppo": 30.0, "dpo": 25.0,
                                                              "best_of_n": 30.0},
            "seconds": {"sft": 20.0, "total": 170.0 + seed}}


def test_aggregate_of_synthetic_reports_and_its_noise_sentences():
    reports = [synthetic_report(0, 0.80, 0.60), synthetic_report(1, 0.84, 0.62), synthetic_report(2, 0.82, 0.61)]
    agg = aggregate_reports(reports, [0, 1, 2])
    assert agg["mean"]["win_rate_vs_sft/ppo"] == pytest.approx(0.82)
    assert agg["std"]["win_rate_vs_sft/ppo"] == pytest.approx(0.02)
    assert agg["per_seed"]["seconds/total"] == [170.0, 171.0, 172.0]
    assert agg["mean"]["rm_gap_to_bayes"] == pytest.approx(0.872 - 0.86)
    # the targets on the means: PPO 0.82 >= 0.8, DPO 0.61 not, the RM's gap 0.012 <= 0.02
    assert list(agg["targets"].values()) == [True, True, True, True, False]
    assert "PPO vs DPO (win rate vs SFT): PPO ahead (0.82 ± 0.02 vs 0.61 ± 0.01)" in agg["comparisons"]
    assert not any("within noise" in s for s in agg["comparisons"] if s.startswith("PPO vs DPO"))
    # DPO closer to PPO than their spread: the sentence appears
    close = [synthetic_report(0, 0.80, 0.81), synthetic_report(1, 0.84, 0.78), synthetic_report(2, 0.82, 0.84)]
    sentences = aggregate_reports(close, [0, 1, 2])["comparisons"]
    assert "PPO vs DPO (win rate vs SFT): within noise (0.82 ± 0.02 vs 0.81 ± 0.03)" in sentences
    assert "PPO vs DPO (gold reward): PPO ahead (0.60 ± 0.10 vs 0.45 ± 0.00)" in sentences  # 0.15 > 0.10
    # a comparison the run has no numbers for is left out, not invented
    stats = {k: mean_std([v]) for k, v in flatten(reports[0]).items() if not k.endswith("best_of_n")}
    assert [s.split(":")[0] for s in comparison_sentences(stats)] == ["PPO vs DPO (win rate vs SFT)",
                                                                      "PPO vs DPO (gold reward)"]


def test_the_targets_checklist_shows_each_number_and_when_it_is_within_noise_of_the_target():
    met = {t.name: False for t in TARGETS}
    stats = {t.key: (t.limit * 2, 0.0) for t in TARGETS}
    stats["win_rate_vs_sft/ppo"] = (0.79, 0.02)  # 0.01 under 0.8 with a spread of 0.02: within noise
    stats["win_rate_vs_sft/dpo"] = (0.61, 0.01)  # 0.19 under: not
    lines = dict(zip([t.name for t in TARGETS], target_lines(met, stats)))
    assert lines["PPO win rate vs SFT >= 0.8"] == "- [ ] PPO win rate vs SFT >= 0.8 (0.790 ± 0.020: within noise of the target)"
    assert lines["DPO win rate vs SFT >= 0.8"] == "- [ ] DPO win rate vs SFT >= 0.8 (0.610 ± 0.010)"
    assert lines["total <= 180s"] == "- [ ] total <= 180s (360.0 ± 0.0)"
    single_run = target_lines(met, {k: (m, math.nan) for k, (m, _) in stats.items()})
    assert "- [ ] PPO win rate vs SFT >= 0.8 (0.790)" in single_run  # one run: its value, no spread
    assert target_lines({}, stats) == ["- (targets are set against the toy world's ground truth; none on this profile)"]


def test_two_short_seeds_aggregate_to_the_mean_of_their_reports(tiny, tmp_path):
    short = tiny.replace(sft_steps=4, rm_steps=4, ppo_steps=2, dpo_steps=2)
    agg = run_seeds(tmp_path, short, [0, 1], progress=False)

    per_seed = [json.loads((tmp_path / f"seed-{s}" / "report.json").read_text()) for s in (0, 1)]
    assert [r["settings"]["seed"] for r in per_seed] == [0, 1]
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk == json.loads(json.dumps(agg, default=float))
    for key in ("rm_accuracy", "reward/ppo", "reward/dpo", "win_rate_vs_sft/ppo", "win_rate_vs_sft/dpo",
                "kl_to_sft/ppo", "seconds/total"):
        values = [flatten(r)[key] for r in per_seed]
        assert agg["per_seed"][key] == values
        assert agg["mean"][key] == pytest.approx(mean(values)) and agg["std"][key] == pytest.approx(stdev(values))
    assert per_seed[0]["reward"]["ppo"] != per_seed[1]["reward"]["ppo"]  # the seeds really differ
    md = (tmp_path / "report.md").read_text()
    assert "seeds 0 1" in md and "## Within noise or not" in md and "## Targets (on the means)" in md
    for sentence in agg["comparisons"]:
        assert f"- {sentence}" in md
    assert format_mean_std((agg["mean"]["win_rate_vs_sft/ppo"], agg["std"]["win_rate_vs_sft/ppo"])) in md
