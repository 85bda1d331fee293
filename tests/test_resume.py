"""Checkpoints and resume: a run killed mid-way and resumed ends exactly like an uninterrupted one.

The TRL trainers (SFT, reward model, DPO) use Trainer's own checkpoints; PPO has its own
(tests/test_ppo.py), exercised here through `rlhf-course train` with a simulated CUDA out-of-memory.
"""

import json
from contextlib import contextmanager

import pytest
import torch
import transformers

from rlhf_course.cli import main
from rlhf_course.errors import OutOfMemory, RunError
from rlhf_course.runs import NOT_COMPARED, checkpoint_step, run_stage
from rlhf_course.training import checkpoint_args, last_checkpoint


class Killed(Exception):
    """The session dying right after a checkpoint was written."""


@contextmanager
def killed_after_checkpoint(step: int):
    save = transformers.Trainer._save_checkpoint

    def save_then_die(self, *args, **kwargs):
        save(self, *args, **kwargs)
        if self.state.global_step == step:
            raise Killed(f"killed after the checkpoint of step {step}")

    transformers.Trainer._save_checkpoint = save_then_die
    try:
        with pytest.raises(Killed):
            yield
    finally:
        transformers.Trainer._save_checkpoint = save


def trained_state(model) -> dict:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def assert_same_weights(a, b):
    a, b = trained_state(a), trained_state(b)
    assert a.keys() == b.keys() and a
    assert all(torch.equal(a[n], b[n]) for n in a), "adapter weights differ after the resume"


def test_dpo_killed_and_resumed_ends_exactly_like_an_uninterrupted_run(tiny, tmp_path):
    from rlhf_course.dpo import load_dpo_data, train_dpo

    profile = tiny.replace(batch_size=8)
    data = load_dpo_data().select(range(24))  # 3 batches per epoch: the kill at step 4 is mid-epoch
    run = dict(steps=8, progress=False, seed=3)
    full = train_dpo(profile, data, **run)
    ckpt = tmp_path / "checkpoints"
    with killed_after_checkpoint(4):
        train_dpo(profile, data, checkpoint_dir=ckpt, save_every=2, **run)
    assert last_checkpoint(ckpt).endswith("checkpoint-4")
    resumed = train_dpo(profile, data, checkpoint_dir=ckpt, save_every=2, resume=True, **run)

    assert resumed.metrics == full.metrics  # train_loss, rewards/*, logps/*: exactly
    assert [(h["step"], h["loss"]) for h in resumed.history] == [(h["step"], h["loss"]) for h in full.history]
    assert_same_weights(resumed.model, full.model)
    # what a checkpoint holds: the adapter as safetensors, optimizer, scheduler, RNG states, step and log
    files = {p.name for p in (ckpt / "checkpoint-8").iterdir()}
    assert {"adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"} <= files
    pickles = {p.name for p in ckpt.rglob("*.bin")}
    assert pickles <= {"training_args.bin"}, "model weights are never pickled"
    assert not list(ckpt.rglob("pytorch_model*")) and not list(ckpt.rglob("adapter_model.bin"))


@pytest.mark.parametrize("stage", ["sft", "rm"])
def test_sft_and_reward_model_resume_exactly(tiny, tmp_path, stage):
    from rlhf_course.reward_model import load_rm_data, train_reward_model
    from rlhf_course.sft import load_sft_data, train_sft

    profile = tiny.replace(batch_size=8)
    if stage == "sft":
        train, data = train_sft, dict(dataset=load_sft_data().select(range(24)))
    else:
        train, data = train_reward_model, dict(dataset=load_rm_data().select(range(24)),
                                               eval_dataset=load_rm_data("test").select(range(32)))
    full = train(profile, steps=6, progress=False, **data)
    with killed_after_checkpoint(2):
        train(profile, steps=6, progress=False, checkpoint_dir=tmp_path, save_every=2, **data)
    resumed = train(profile, steps=6, progress=False, checkpoint_dir=tmp_path, save_every=2, resume=True, **data)
    drop = lambda m: {k: v for k, v in m.items() if k != "train_seconds"}  # noqa: E731
    assert drop(resumed.metrics) == drop(full.metrics)
    assert_same_weights(resumed.model, full.model)  # the reward model's score head included


def test_a_checkpoint_cut_short_is_skipped_and_saving_follows_the_log(tmp_path):
    (tmp_path / "checkpoint-2").mkdir()
    (tmp_path / "checkpoint-2" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-4").mkdir()  # the session died while writing it: no trainer_state.json
    assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")
    assert last_checkpoint(tmp_path / "missing") is None
    assert checkpoint_args(None, None, 100, 5) == {"save_strategy": "no"}
    args = checkpoint_args(tmp_path, 3, 100, 5)
    assert args["save_steps"] == 5 and args["save_only_model"] is False and args["save_total_limit"] == 2
    assert checkpoint_args(tmp_path, None, 100, 5)["save_steps"] == 10  # default: a tenth of the run


def test_train_refuses_to_mix_two_runs_in_one_folder(tmp_path, capsys):
    settings = {"stage": "dpo", "profile": "tiny", "max_steps": 4, "sft": None, "rm": None, "seed": 0}
    (tmp_path / "run.json").write_text(json.dumps(settings))
    assert main(["train", "dpo", "--out", str(tmp_path), "--max-steps", "4"]) == 2
    err = capsys.readouterr().err
    assert "rlhf-course train: error:" in err and "add --resume" in err and "Traceback" not in err
    with pytest.raises(RunError, match="--resume must repeat the run's settings \\(max_steps: 4 then, 8 now\\)"):
        run_stage("dpo", tmp_path, profile="tiny", max_steps=8, resume=True, progress=False)
    with pytest.raises(Exception, match="not a model folder"):
        run_stage("dpo", tmp_path / "new", profile="tiny", sft=str(tmp_path / "nowhere"), progress=False)


def test_ppo_out_of_memory_keeps_the_checkpoint_and_the_resumed_run_ends_the_same(tiny, tmp_path, monkeypatch):
    from rlhf_course.ppo import PPOTrainer

    profile = tiny.replace(batch_size=8, max_new_tokens=24)
    run = dict(profile=profile, max_steps=3, save_every=1, progress=False)
    full = run_stage("ppo", tmp_path / "full", **run)

    optimise = PPOTrainer.optimise

    def out_of_memory_in_the_last_iteration(self, batch):
        if self.step_count == 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return optimise(self, batch)

    monkeypatch.setattr(PPOTrainer, "optimise", out_of_memory_in_the_last_iteration)
    with pytest.raises(OutOfMemory) as failure:
        run_stage("ppo", tmp_path / "run", **run)
    message = str(failure.value)
    for expected in ("CUDA out of memory", "batch_size=4, gradient_accumulation_steps=2", "max_new_tokens (now 24)",
                     "gradient_checkpointing=True", "lora_r (now 16)", "(step 2) is kept", "--resume"):
        assert expected in message, expected
    assert checkpoint_step("ppo", tmp_path / "run" / "checkpoints") == 2
    assert not (tmp_path / "run" / "metrics.json").exists()

    monkeypatch.setattr(PPOTrainer, "optimise", optimise)
    resumed = run_stage("ppo", tmp_path / "run", resume=True, **run)
    assert resumed["resumed_from_step"] == 2 and "reward" in resumed
    same = lambda m: {k: v for k, v in m.items() if k not in NOT_COMPARED}  # noqa: E731
    assert same(resumed) == same(full)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == resumed
    assert (tmp_path / "run" / "model" / "adapter_model.safetensors").is_file()
