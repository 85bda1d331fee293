"""GRPO's variants as TRL switches, DAPO's dynamic sampling, the verifiable reward; and the methods table
and the parallel runner on which the notebook's tables stand."""

import math

import pytest
import torch
from trl import GRPOConfig

from rlhf_course import grpo_variants as gv
from rlhf_course import methods, parallel, toyworld


def test_every_variant_is_a_set_of_grpo_config_fields(tmp_path):
    for name, settings in gv.VARIANTS.items():
        fields = {k: v for k, v in {**gv.COMMON, **settings}.items() if k != "dynamic_sampling"}
        config = GRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, **fields)  # TRL 1.16 takes every name
        for key, value in fields.items():
            assert getattr(config, key) == value, (name, key)
    assert gv.VARIANTS["dapo"]["epsilon_high"] > GRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False).epsilon
    assert gv.VARIANTS["dr_grpo"]["loss_type"] == "dr_grpo" and gv.VARIANTS["dr_grpo"]["scale_rewards"] == "none"
    assert gv.VARIANTS["grpo_beta0"]["beta"] == 0.0 and gv.VARIANTS["grpo"]["beta"] > 0
    assert gv.COMMON["num_iterations"] > 1  # or the clip never acts


def _batch(rewards_per_group: list[list[float]], T: int = 3) -> dict:
    """A scored batch as TRL's _generate_and_score_completions returns it, advantages = r - group mean."""
    r = torch.tensor(rewards_per_group, dtype=torch.float32)
    adv = (r - r.mean(dim=1, keepdim=True)).view(-1)
    n = adv.numel()
    return {"advantages": adv, "completion_mask": torch.ones(n, T, dtype=torch.long),
            "completion_ids": torch.arange(n * T).view(n, T), "prompt_ids": torch.arange(n).view(n, 1),
            "num_items_in_batch": torch.tensor(n * T)}


def test_dynamic_sampling_keeps_the_informative_groups_first():
    batch = _batch([[1, 1], [0, 1], [0, 0], [1, 0]])           # groups 1 and 3 informative
    kept, informative = gv.keep_informative_groups(batch, group_size=2, n_groups=2)
    assert informative.tolist() == [False, True, False, True]
    assert kept["prompt_ids"].view(-1).tolist() == [2, 3, 6, 7]   # the rows of groups 1 and 3, in order
    assert kept["completion_mask"].sum().item() == kept["num_items_in_batch"].item() == 12
    assert kept["completion_ids"][0].tolist() == batch["completion_ids"][2].tolist()


def test_dynamic_sampling_skips_the_uninformative_groups_that_fill_the_batch():
    batch = _batch([[1, 1], [0, 1], [0, 0], [1, 1]])           # only group 1 informative
    kept, _ = gv.keep_informative_groups(batch, group_size=2, n_groups=2)
    assert kept["advantages"].shape == (4,)
    assert kept["completion_mask"][:2].sum() == 6 and kept["completion_mask"][2:].sum() == 0
    assert kept["num_items_in_batch"].item() == 6


def test_dapo_trains_with_dynamic_sampling(tiny):
    profile = tiny.replace(batch_size=8, max_new_tokens=24)
    result = gv.train_variant(profile, "dapo", steps=2, num_generations=4)
    informative = [h["dynamic_sampling/informative"] for h in result.history if "dynamic_sampling/informative" in h]
    assert informative and all(0.0 <= x <= 1.0 for x in informative)
    assert 0.0 <= result.metrics["clip_ratio"] <= 1.0  # measured on the second update of the batch
    assert any(p.abs().sum() > 0 for n, p in result.model.named_parameters() if "lora_B" in n)


def test_methods_table_runs_and_summarises_over_seeds(tiny):
    profile = tiny.replace(batch_size=8, max_new_tokens=24)
    sizes = methods.Sizes(family_steps=2, family_batch=4, eval_n_per_prompt=1)
    table = methods.methods_table(profile, sizes, seeds=(0, 1), methods=["SimPO"])
    assert list(table["rows"]) == ["SFT (start)", "SimPO"]
    row = table["rows"]["SimPO"]
    assert len(row["runs"]) == 2 and set(row["mean"]) >= {"gold", "kl", "length", "seconds", "pass_rate"}
    assert row["std"]["gold"] == pytest.approx(abs(row["runs"][0]["gold"] - row["runs"][1]["gold"]) / math.sqrt(2))
    assert math.isnan(table["rows"]["SFT (start)"]["std"]["gold"])
    text = methods.markdown(table)
    assert "| SimPO | DPO family |" in text and " ± " in text


def _square(x):
    return x * x


def test_start_jobs_runs_in_other_processes_and_in_this_one():
    jobs = {k: (_square, (k,)) for k in range(3)}
    assert parallel.start_jobs(jobs, workers=2)() == {0: 0, 1: 1, 2: 4}
    assert parallel.start_jobs(jobs, workers=1)() == {0: 0, 1: 1, 2: 4}


def test_the_methods_need_the_gold_reward(tiny):
    from rlhf_course.errors import CourseError

    with pytest.raises(CourseError, match="gold reward"):
        methods.methods_table(tiny.replace(has_ground_truth=False))
    assert toyworld.eval_prompts()  # the table's judge: the 40 held-out prompts


def test_summarize_seeds_survives_a_column_that_is_nan_on_some_rows():
    rows = [{"gold": 0.4, "informative": math.nan}, {"gold": 0.5, "informative": math.nan}]
    table = methods.summarize_seeds({"GRPO": ("g", rows)}, methods.Sizes(), (0, 1))
    assert table["rows"]["GRPO"]["mean"]["gold"] == pytest.approx(0.45)
    assert math.isnan(table["rows"]["GRPO"]["mean"]["informative"])
