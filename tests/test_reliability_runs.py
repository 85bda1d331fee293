"""`rlhf-course train` and the other commands when something is off (issue 10, sections 2 and 3):
one clear line (exit code 2), never a traceback; a folder that holds checkpoints is never overwritten
unless --resume asks for it; a damaged newest Trainer checkpoint falls back to the previous one."""

import contextlib
import errno
import io
from collections import namedtuple
from pathlib import Path

import pytest
import transformers

from rlhf_course import runs
from rlhf_course.cli import main
from rlhf_course.errors import RunError
from rlhf_course.profiles import Hardware, ProfileError, pick_profile
from rlhf_course.runs import run_stage

from test_resume import killed_after_checkpoint


def cli(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exit_:  # argparse's own errors
            code = exit_.code
    return code, out.getvalue(), err.getvalue()


def one_error_line(err: str, command: str = "train") -> str:
    """The error: one line, the last of stderr (progress bars and library warnings may come before
    it: issue 10.5), and no traceback."""
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith(f"rlhf-course {command}: error: "), err
    assert err.rstrip("\n").splitlines()[-1] == errors[0], err
    return errors[0]


# --- --out that cannot be written to --------------------------------------------------------------

def test_out_that_is_a_file_or_under_a_file_is_one_line(tmp_path):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("my notes")
    code, _, err = cli("train", "dpo", "--out", str(a_file), "--max-steps", "2")
    assert code == 2 and f"--out {a_file} is a file, not a folder" in one_error_line(err)
    code, _, err = cli("train", "dpo", "--out", str(a_file / "run"), "--max-steps", "2")
    assert code == 2 and f"{a_file} is a file, not a folder" in one_error_line(err)
    assert a_file.read_text() == "my notes"


def test_out_that_is_read_only_is_one_line(tmp_path, monkeypatch):
    # the tests run as root, whom chmod does not stop: the write fails as it would for a student
    write_text = Path.write_text

    def read_only(self, *args, **kwargs):
        if self.parent == tmp_path / "ro":
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return write_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", read_only)
    code, _, err = cli("train", "dpo", "--out", str(tmp_path / "ro"), "--max-steps", "2")
    assert code == 2 and "cannot write there (Permission denied): choose a folder you can write to" in one_error_line(err)


# --- a full disk ----------------------------------------------------------------------------------

def test_a_disk_without_room_for_the_run_is_one_line_before_training(tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(runs.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 50_000, 50_000))
    code, _, err = cli("train", "sft", "--out", str(tmp_path / "run"), "--max-steps", "2")
    line = one_error_line(err)
    assert code == 2 and f"{tmp_path / 'run'}: not enough space on its disk (0.0 MiB free; this run writes about" in line
    need = runs.disk_needed("sft", pick_profile("tiny"), None)
    assert need > 2 * 2**20 and f"{runs._mib(need)}: two checkpoints and the model" in line  # tiny model: 2.8 MB
    assert not (tmp_path / "run").exists()


def test_a_disk_that_fills_up_while_training_is_one_line_naming_the_folder_and_the_space(tmp_path, monkeypatch):
    def disk_full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(transformers.Trainer, "_save_checkpoint", disk_full)
    code, _, err = cli("train", "sft", "--out", str(tmp_path / "run"), "--max-steps", "2", "--save-every", "1")
    line = one_error_line(err)
    assert code == 2 and f"no space left on the disk of {tmp_path / 'run'} (" in line
    assert "MiB free; this run writes about" in line and "then run again with --resume" in line


# --- --max-steps and --save-every ---------------------------------------------------------------

@pytest.mark.parametrize("value", ["0", "-3", "two"])
def test_max_steps_and_save_every_must_be_at_least_1(tmp_path, value):
    for option in ("--max-steps", "--save-every"):
        code, _, err = cli("train", "ppo", "--out", str(tmp_path / "run"), option, value)
        assert code == 2 and f"argument {option}: must be" in err and "Traceback" not in err
    for stage in ("ppo", "dpo"):  # the Python entry point too (PPO raised IndexError, DPO ran 60 steps)
        with pytest.raises(RunError, match="--max-steps must be a whole number of at least 1, got 0"):
            run_stage(stage, tmp_path / "run", profile="tiny", max_steps=0, progress=False)
    assert not (tmp_path / "run").exists()


# --- folders that hold checkpoints --------------------------------------------------------------

def test_a_folder_with_checkpoints_but_no_run_json_is_never_overwritten(tiny, tmp_path, monkeypatch):
    from rlhf_course.ppo import PPOTrainer

    profile = tiny.replace(batch_size=4, max_new_tokens=8)
    optimise = PPOTrainer.optimise

    def killed_in_the_third_iteration(self, batch):
        if self.step_count == 2:
            raise KeyboardInterrupt("the session died")
        return optimise(self, batch)

    monkeypatch.setattr(PPOTrainer, "optimise", killed_in_the_third_iteration)
    with pytest.raises(KeyboardInterrupt):
        run_stage("ppo", tmp_path / "run", profile=profile, max_steps=3, save_every=1, progress=False)
    monkeypatch.setattr(PPOTrainer, "optimise", optimise)
    (tmp_path / "run" / "run.json").unlink()  # lost (e.g. a Drive sync) or deleted by hand
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "run").rglob("*"))

    with pytest.raises(RunError, match="holds checkpoints .* but no run.json: add --resume"):
        run_stage("ppo", tmp_path / "run", profile=profile, max_steps=3, save_every=1, progress=False)
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "run").rglob("*")) == before
    resumed = run_stage("ppo", tmp_path / "run", profile=profile, max_steps=3, save_every=1, resume=True,
                        progress=False)
    assert resumed["resumed_from_step"] == 2 and resumed["steps"] == 3

    # and a folder with a model but nothing else
    (tmp_path / "other" / "model").mkdir(parents=True)
    with pytest.raises(RunError, match="holds a model"):
        run_stage("dpo", tmp_path / "other", profile="tiny", max_steps=2, progress=False)


def test_trl_trainers_never_overwrite_checkpoints_unless_asked(tiny, tmp_path):
    from rlhf_course.dpo import load_dpo_data, train_dpo

    (tmp_path / "checkpoint-2").mkdir()
    (tmp_path / "checkpoint-2" / "trainer_state.json").write_text("{}")
    with pytest.raises(RunError, match="holds the checkpoints of another run: pass resume=True"):
        train_dpo(tiny.replace(batch_size=4), load_dpo_data().select(range(8)), steps=2, checkpoint_dir=tmp_path,
                  progress=False)
    assert (tmp_path / "checkpoint-2" / "trainer_state.json").read_text() == "{}"


def test_a_truncated_newest_dpo_checkpoint_falls_back_to_the_previous_one(tiny, tmp_path, capsys):
    from rlhf_course.dpo import load_dpo_data, train_dpo

    profile = tiny.replace(batch_size=8)
    data = load_dpo_data().select(range(24))
    run = dict(steps=6, progress=False, seed=3)
    full = train_dpo(profile, data, **run)
    ckpt = tmp_path / "checkpoints"
    with killed_after_checkpoint(4):
        train_dpo(profile, data, checkpoint_dir=ckpt, save_every=2, **run)
    newest = ckpt / "checkpoint-4" / "adapter_model.safetensors"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a sync cut short
    assert runs.checkpoint_step("dpo", ckpt) == 2
    capsys.readouterr()

    resumed = train_dpo(profile, data, checkpoint_dir=ckpt, save_every=2, resume=True, **run)
    out = capsys.readouterr().out
    assert "checkpoint-4: adapter_model.safetensors is truncated" in out and "damaged-checkpoint-4" in out
    assert resumed.metrics == full.metrics
    assert (ckpt / "damaged-checkpoint-4").is_dir() and runs.checkpoint_step("dpo", ckpt) == 6


def test_a_damaged_ppo_checkpoint_through_the_cli_is_one_line(tiny, tmp_path):
    profile = tiny.replace(batch_size=4, max_new_tokens=8)
    run_stage("ppo", tmp_path / "run", profile=profile, max_steps=1, save_every=1, progress=False)
    (tmp_path / "run" / "metrics.json").unlink()  # as if killed after its checkpoint
    for folder in (tmp_path / "run" / "checkpoints").glob("step-*"):
        (folder / "value_head.safetensors").unlink()
    with pytest.raises(RunError, match="no intact checkpoint to resume from .*value_head.safetensors is missing"):
        run_stage("ppo", tmp_path / "run", profile=profile, max_steps=1, save_every=1, resume=True, progress=False)


# --- profiles: advice for the caller's way of choosing --------------------------------------------

def test_the_7b_profile_on_a_cpu_advises_the_callers_own_way_to_pick_tiny(tmp_path, monkeypatch):
    monkeypatch.delenv("RLHF_COURSE_PROFILE", raising=False)
    code, _, err = cli("pipeline", "--out", str(tmp_path / "p"), "--profile", "7b")
    line = one_error_line(err, "pipeline")
    assert code == 2 and "Use the tiny profile: pass --profile tiny." in line and "profile='tiny'" not in line
    with pytest.raises(ProfileError) as e:
        pick_profile("7b", Hardware("cpu"))
    assert "Use the tiny profile: pass profile='tiny'." in str(e.value)
    monkeypatch.setenv("RLHF_COURSE_PROFILE", "7b")
    with pytest.raises(ProfileError, match="unset RLHF_COURSE_PROFILE"):
        pick_profile(None, Hardware("cpu"))


def test_doctor_with_a_profile_that_cannot_run_here_exits_non_zero(monkeypatch):
    monkeypatch.setenv("RLHF_COURSE_PROFILE", "7b")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, out, err = cli("doctor")
    assert code == 2 and "profile  : ERROR: the 7b profile needs a CUDA GPU" in out
    assert "unset RLHF_COURSE_PROFILE" in one_error_line(err, "doctor")
    monkeypatch.setenv("RLHF_COURSE_PROFILE", "tiny")
    assert cli("doctor")[0] == 0
