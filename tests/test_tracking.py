"""report_to: curves in TensorBoard (or trackio) when asked, nothing by default."""

import os
import sys
import types

import pytest

from rlhf_course import tracking
from rlhf_course.errors import UsageError


def scalars(folder) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_off_by_default_and_clear_about_what_is_missing(monkeypatch):
    monkeypatch.delenv(tracking.REPORT_TO_ENV, raising=False)
    assert tracking.report_to() == "none"
    monkeypatch.setenv(tracking.REPORT_TO_ENV, "TensorBoard")
    assert tracking.report_to() == "tensorboard" and tracking.report_to("none") == "none"  # the argument wins
    with pytest.raises(UsageError, match="choose none, tensorboard or trackio"):
        tracking.report_to("wandb")
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UsageError, match="pip install trackio"):
        tracking.report_to("trackio")
    tracking.CurveLogger("none", "x").log({"step": 1, "loss": 1.0})  # nothing written, nothing imported


def test_tensorboard_gets_every_number_at_its_step(tmp_path, monkeypatch):
    monkeypatch.setenv(tracking.LOG_DIR_ENV, str(tmp_path))
    logger = tracking.CurveLogger("tensorboard", "run", config={"kl_coef": 0.05})
    for step in (1, 2, 3):
        logger.log({"step": step, "reward/score": 0.5 * step, "note": "text is skipped", "ok": True})
    logger.close()
    assert scalars(tmp_path / "run") == {"reward/score": [(1, 0.5), (2, 1.0), (3, 1.5)]}


def test_trackio_gets_the_rows_when_asked(monkeypatch):
    calls = []
    fake = types.SimpleNamespace(init=lambda **kw: calls.append(("init", kw)),
                                 log=lambda row, step: calls.append(("log", row, step)),
                                 finish=lambda: calls.append(("finish",)))
    monkeypatch.setitem(sys.modules, "trackio", fake)
    logger = tracking.CurveLogger("trackio", "ppo-1", config={"steps": 2})
    logger.log({"step": 2, "loss": 0.25})
    logger.close()
    assert calls == [("init", {"project": tracking.PROJECT, "name": "ppo-1", "config": {"steps": 2}}),
                     ("log", {"loss": 0.25}, 2), ("finish",)]


def test_trl_trainers_take_report_to_from_the_common_arguments(tiny, tmp_path, monkeypatch):
    from transformers import TrainingArguments

    from rlhf_course.training import trl_common_args

    monkeypatch.delenv(tracking.REPORT_TO_ENV, raising=False)
    assert trl_common_args(tiny, 10, str(tmp_path), False)["report_to"] == "none"
    monkeypatch.setenv(tracking.LOG_DIR_ENV, str(tmp_path / "curves"))
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    args = trl_common_args(tiny, 10, str(tmp_path / "sft"), False, report_to="tensorboard")
    assert args["report_to"] == "tensorboard" and args["run_name"].startswith("sft-")
    assert os.environ["TENSORBOARD_LOGGING_DIR"] == str(tmp_path / "curves" / args["run_name"])
    assert TrainingArguments(**args).report_to == ["tensorboard"]  # what Trainer reads


def test_our_ppo_writes_its_history_to_tensorboard(tiny, tokenizer, tmp_path, monkeypatch):
    from rlhf_course import toyworld
    from rlhf_course.loading import load_policy
    from rlhf_course.ppo import PPOConfig, PPOTrainer

    monkeypatch.setenv(tracking.LOG_DIR_ENV, str(tmp_path))
    cfg = PPOConfig(batch_size=8, num_minibatches=2, num_ppo_epochs=1, max_new_tokens=16, steps=2,
                    report_to="tensorboard")
    result = PPOTrainer(cfg, load_policy(tiny, verbose=False), tokenizer, toyworld.ground_truth_rewards,
                        [p.text for p in toyworld.train_prompts()]).train(progress=False)
    (run,) = tmp_path.iterdir()
    assert run.name.startswith("ppo-")
    logged = scalars(run)
    assert logged["reward/score"] == [(h["step"], pytest.approx(h["reward/score"])) for h in result.history]
    assert {"objective/kl", "loss/value", "policy/clipfrac"} <= set(logged)
