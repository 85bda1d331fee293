import math

from matplotlib.figure import Figure

from rlhf_course import toyworld
from rlhf_course.feedback import (GroundTruthJudge, LoopConfig, LoopResult, RoundResult, iterative_loop, plot_rounds,
                                  read_labels, simulated_labeller)
from rlhf_course.sampling import generate


def test_two_tiny_rounds_sample_label_train_and_report_the_ground_truth_per_round(tiny, tokenizer, tmp_path):
    config = LoopConfig(rounds=2, prompts_per_round=24, dpo_steps=2, eval_n_per_prompt=1, seed=1)
    tiny_small = tiny.replace(batch_size=8)
    result = iterative_loop(tiny_small, simulated_labeller(seed=0), prompts=toyworld.train_prompts()[:24],
                            config=config, work_dir=tmp_path)
    assert [r.round for r in result.rounds] == [0, 1, 2]
    assert all(math.isfinite(r.reward) and -3 < r.reward < 2 for r in result.rounds)
    assert result.rewards == [r.reward for r in result.rounds]
    for k in (1, 2):
        r = result.rounds[k]
        assert 0 < r.n_preferences <= r.n_pairs <= 24 and "rewards/accuracies" in r.dpo
        log = read_labels(tmp_path / f"labels_round{k}.jsonl")  # each round's labels are kept, in the label-file format
        assert log.ok and len(log.labels) == r.n_pairs and len(result.labels[k - 1]) == r.n_pairs
        assert (tmp_path / f"round{k}" / "model.safetensors").exists()
    assert result.model_id == str(tmp_path / "round2")
    # the pairs of round 2 were sampled from round 1's model, not the start: on-policy
    from rlhf_course.loading import load_policy

    start = load_policy(tiny, lora=False, verbose=False)
    prompts = [p.text for p in toyworld.train_prompts()[:8]]
    before = generate(start, tokenizer, prompts, 16, do_sample=False)
    after = generate(result.model, tokenizer, prompts, 16, do_sample=False)
    assert [c.text for c in before] != [c.text for c in after], "DPO did not change the policy"


def test_a_judge_can_label_the_loop(tiny, tmp_path):
    config = LoopConfig(rounds=1, prompts_per_round=16, dpo_steps=1, eval_n_per_prompt=1)
    result = iterative_loop(tiny.replace(batch_size=8), GroundTruthJudge(), prompts=toyworld.train_prompts()[:16],
                            config=config, work_dir=tmp_path)
    labels = read_labels(tmp_path / "labels_round1.jsonl").labels
    assert len(result.rounds) == 2 and labels and {l.labeller for l in labels} == {"judge:ground-truth"}


def test_plot_rounds_draws_one_line_per_loop_and_the_ceiling():
    fake = LoopResult([RoundResult(0, 0.2, 1.0), RoundResult(1, 0.3, 1.0), RoundResult(2, 0.35, 0.9)], None, "x")
    fig = plot_rounds({"judge": fake, "people": fake}, best=1.07)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert len(ax.lines) == 3 and list(ax.lines[0].get_ydata()) == [0.2, 0.3, 0.35]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["start", "1", "2"]
