"""PPO checkpoints (issue 10, sections 2 and 4): a kill at any filesystem step of a save leaves a
checkpoint to continue from; a damaged newest checkpoint falls back to the previous one and says so;
nothing is ever loaded with pickle, and a crafted checkpoint that would run code is refused."""

import errno
import json
import os
import pickle
import shutil
import sys
from pathlib import Path

import pytest
import torch

from rlhf_course import checkpoint_io, toyworld
from rlhf_course.errors import RunError
from rlhf_course.ppo import PPOConfig, PPOTrainer

ROOT = Path(__file__).resolve().parent.parent


# --- a kill at a chosen filesystem step, with Python's audit hooks ------------------------------
# Every file opened for writing, folder made, file or folder removed or renamed raises an audit
# event *before* it happens; raising there stops the save exactly after the steps before it.

class Killed(BaseException):
    """The process dying (not an Exception: nothing in the save may catch it)."""


WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
MUTATIONS = {"os.mkdir", "os.rename", "os.replace", "os.remove", "os.unlink", "os.rmdir", "shutil.rmtree",
             "shutil.move", "os.truncate"}
KILL = {"root": None, "at": None, "seen": []}


def _audit(event, args):
    root = KILL["root"]
    if root is None:
        return
    if event == "open":
        path, mode, flags = args
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (mode is None and flags & WRITE_FLAGS)
        if not writing:
            return
    elif event not in MUTATIONS:
        return
    else:
        path = args[0]
    if not isinstance(path, (str, bytes, os.PathLike)) or not os.fsdecode(path).startswith(root):
        return
    KILL["seen"].append(f"{event} {os.path.relpath(os.fsdecode(path), root)}")
    if KILL["at"] is not None and len(KILL["seen"]) - 1 == KILL["at"]:
        KILL["root"] = None
        raise Killed(KILL["seen"][-1])


sys.addaudithook(_audit)


def audited(save_file):
    """safetensors writes its files from Rust, without an audit event: announce them like an open."""
    def save(tensors, filename, *args, **kwargs):
        sys.audit("open", filename, "wb", 0)
        return save_file(tensors, filename, *args, **kwargs)
    return save


@pytest.fixture
def rust_writes_audited(monkeypatch):
    import peft.peft_model

    import rlhf_course.ppo

    for module, name in ((checkpoint_io, "save_file"), (rlhf_course.ppo, "save_file"),
                         (peft.peft_model, "safe_save_file")):
        monkeypatch.setattr(module, name, audited(getattr(module, name)))


def save_killed_at(trainer, directory: Path, at: int | None) -> list[str]:
    """Save, stopping before filesystem step number `at` (None: run to the end); the steps seen."""
    KILL.update(root=str(directory), at=at, seen=[])
    try:
        trainer.save_checkpoint(directory)
    except Killed:
        pass
    finally:
        KILL["root"] = None
    return KILL["seen"]


@pytest.fixture(scope="module")
def make_trainer(tiny, tokenizer):
    from rlhf_course.loading import load_policy

    def make():
        torch.manual_seed(0)
        policy = load_policy(tiny, verbose=False)
        config = PPOConfig(batch_size=4, num_minibatches=2, max_new_tokens=8, steps=3)
        return PPOTrainer(config, policy, tokenizer, toyworld.ground_truth_rewards,
                          [p.text for p in toyworld.train_prompts()])
    return make


def test_a_kill_at_every_filesystem_step_of_a_save_leaves_the_right_checkpoint(make_trainer, tmp_path,
                                                                             rust_writes_audited):
    trainer = make_trainer()
    ckpt, backup = tmp_path / "ckpt", tmp_path / "backup"
    for _ in range(2):                                            # steps 1 and 2 committed
        trainer.step()
        trainer.save_checkpoint(ckpt)
    trainer.step()                                                # the save of step 3 is the one killed
    shutil.copytree(ckpt, backup)
    steps = save_killed_at(trainer, ckpt, None)                   # a full save, to list its filesystem steps
    commit = steps.index("os.rename trainer_state.json.tmp")      # os.replace, atomic: the commit
    assert steps[0] == "shutil.rmtree step-000003" and steps[-1] == "os.rmdir step-000001", steps  # file by file
    assert {"open step-000003/adapter/adapter_model.safetensors", "open step-000003/optimizer.safetensors",
            "open step-000003/rng_state_0.safetensors", "open step-000003/trainer_state.json.tmp"} <= set(steps)

    resumed_at = []
    for at in range(len(steps) + 1):
        shutil.rmtree(ckpt)
        shutil.copytree(backup, ckpt)
        done = save_killed_at(trainer, ckpt, at if at < len(steps) else None)
        assert len(done) == min(at + 1, len(steps)), (at, done)
        found = checkpoint_io.find(ckpt)                          # what a resume continues from
        assert found is not None and found.note is None, (at, steps[at] if at < len(steps) else "end")
        resumed_at.append(found.step)
    # killed before the atomic replace of DIR/trainer_state.json: step 2; from it on: step 3
    assert resumed_at == [2] * (commit + 1) + [3] * (len(steps) - commit), list(zip(steps, resumed_at))

    # after the kill just before the commit, a fresh trainer resumes at step 2 ...
    shutil.rmtree(ckpt)
    shutil.copytree(backup, ckpt)
    save_killed_at(trainer, ckpt, commit)
    probe = make_trainer()
    probe.load_checkpoint(ckpt)
    assert probe.step_count == 2 and len(probe.history) == 2
    # ... and after the kill just after it, at step 3, and continues exactly as the trainer that was not killed
    shutil.rmtree(ckpt)
    shutil.copytree(backup, ckpt)
    save_killed_at(trainer, ckpt, commit + 1)
    expected = trainer.step()
    probe = make_trainer()
    probe.load_checkpoint(ckpt)
    assert probe.step_count == 3
    got = probe.step()
    for key in ("reward/score", "objective/kl", "loss/policy", "loss/value"):
        assert got[key] == pytest.approx(expected[key], abs=1e-6), key
    # the next save of the resumed run commits normally, keeps the one before it and removes the rest
    probe.save_checkpoint(ckpt)
    assert checkpoint_io.find(ckpt).step == 4
    assert sorted(p.name for p in ckpt.iterdir() if p.is_dir()) == ["step-000003", "step-000004"]


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one_and_says_so(make_trainer, tmp_path, capsys):
    trainer = make_trainer()
    ckpt = tmp_path / "ckpt"
    for _ in range(2):
        trainer.step()
        trainer.save_checkpoint(ckpt)
    newest = ckpt / "step-000002" / "optimizer.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])                 # truncated (a Drive sync cut short)
    probe = make_trainer()
    probe.load_checkpoint(ckpt)
    assert probe.step_count == 1
    note = capsys.readouterr().out
    assert "optimizer.safetensors is truncated or damaged" in note and "continuing from the previous one, step 1" in note

    (ckpt / "step-000001" / "value_head.safetensors").unlink()    # and the previous one loses a file
    with pytest.raises(RunError) as e:
        make_trainer().load_checkpoint(ckpt)
    message = str(e.value)
    assert "\n" not in message and "no intact checkpoint" in message and "value_head.safetensors is missing" in message


def test_a_file_of_the_right_size_but_unreadable_is_one_line_not_a_traceback(make_trainer, tmp_path):
    trainer = make_trainer()
    ckpt = tmp_path / "ckpt"
    trainer.step()
    trainer.save_checkpoint(ckpt)
    head = ckpt / "step-000001" / "value_head.safetensors"
    head.write_bytes(b"\0" * head.stat().st_size)                # same size, garbage inside
    with pytest.raises(RunError, match="cannot load this checkpoint") as e:
        make_trainer().load_checkpoint(ckpt)
    assert "\n" not in str(e.value)


def test_saving_over_another_runs_checkpoint_is_refused(make_trainer, tmp_path):
    first = make_trainer()
    first.step()
    first.save_checkpoint(tmp_path / "ckpt")
    second = make_trainer()
    second.step()
    with pytest.raises(RunError, match="holds the checkpoint of another run: pass resume=True"):
        second.save_checkpoint(tmp_path / "ckpt")
    assert checkpoint_io.find(tmp_path / "ckpt").step == 1


def test_a_full_disk_while_saving_keeps_the_previous_checkpoint_and_says_how_much_is_needed(make_trainer, tmp_path,
                                                                                            monkeypatch):
    trainer = make_trainer()
    ckpt = tmp_path / "ckpt"
    trainer.step()
    trainer.save_checkpoint(ckpt)
    trainer.step()

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_io, "save_file", disk_full)
    with pytest.raises(RunError) as e:
        trainer.save_checkpoint(ckpt)
    message = str(e.value)
    assert f"no space left on the disk of {ckpt}" in message and "MiB" in message and "\n" not in message
    assert checkpoint_io.find(ckpt).step == 1 and not (ckpt / "step-000002").exists()


# --- no pickle ----------------------------------------------------------------------------------

class RunsCode:
    """What an attacker pickles: unpickling it runs a command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def crafted_old_checkpoint(folder: Path, marker: Path) -> None:
    """A checkpoint in the layout rlhf-course wrote before (state + pickled RNG/optimizer)."""
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text(json.dumps({"step": 2, "kl_coef": 0.05, "reward_shift": 0.0,
                                                           "reward_scale": 1.0, "history": []}))
    for name in ("rng_state_0.pt", "optimizer.pt"):
        (folder / name).write_bytes(pickle.dumps({"python": RunsCode(marker)}))


def test_a_crafted_checkpoint_that_would_run_code_is_refused_and_runs_nothing(make_trainer, tmp_path, capsys):
    from rlhf_course.cli import main

    marker = tmp_path / "pwned"
    old = tmp_path / "old"
    crafted_old_checkpoint(old, marker)
    with pytest.raises(RunError, match="pickled optimizer and RNG states, which can run code"):
        make_trainer().load_checkpoint(old)

    # the current layout with a pickle slipped in (listed in the file sizes, so the sizes match)
    trainer = make_trainer()
    ckpt = tmp_path / "ckpt"
    trainer.step()
    trainer.save_checkpoint(ckpt)
    folder = ckpt / "step-000001"
    (folder / "rng_state_0.pt").write_bytes(pickle.dumps(RunsCode(marker)))
    state = json.loads((folder / "trainer_state.json").read_text())
    state["files"]["rng_state_0.pt"] = (folder / "rng_state_0.pt").stat().st_size
    (folder / "trainer_state.json").write_text(json.dumps(state))
    with pytest.raises(RunError, match=r"holds pickle files \(rng_state_0.pt\), which can run code"):
        make_trainer().load_checkpoint(ckpt)

    # through the command line: `train ppo --resume` on the crafted folder is one line, exit 2
    run = tmp_path / "run"
    shutil.copytree(old, run / "checkpoints")
    (run / "run.json").write_text(json.dumps({"stage": "ppo", "profile": "tiny", "max_steps": 3, "sft": None,
                                              "rm": None, "seed": 0}))
    capsys.readouterr()
    assert main(["train", "ppo", "--out", str(run), "--max-steps", "3", "--resume", "--profile", "tiny"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rlhf-course train: error:") and "can run code" in err and err.count("\n") == 1, err
    # (refused before any model is loaded: nothing else is printed)
    assert not marker.exists(), "the crafted pickle ran"


def test_the_package_never_loads_a_pickle():
    offenders = []
    for path in (ROOT / "rlhf_course").rglob("*.py"):
        for n, line in enumerate(path.read_text().splitlines(), start=1):
            code = line.split("#")[0]
            if any(s in code for s in ("torch.load(", "pickle.load", "import pickle", "weights_only=False")):
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
