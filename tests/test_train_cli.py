"""`rlhf-course train`: the stages chained through their folders, and a run killed for real (SIGKILL)."""

import json
import os
import subprocess
import sys
import time


from rlhf_course.cli import main
from rlhf_course.runs import NOT_COMPARED


def metrics(folder) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def test_sft_then_reward_model_then_ppo_through_their_folders(tmp_path, capsys):
    sft, rm, ppo = tmp_path / "sft", tmp_path / "rm", tmp_path / "ppo"
    assert main(["train", "sft", "--out", str(sft), "--max-steps", "3"]) == 0
    assert (sft / "model" / "model.safetensors").is_file()  # the merged SFT model later stages start from
    assert main(["train", "rm", "--out", str(rm), "--sft", str(sft), "--max-steps", "3"]) == 0
    assert (rm / "model" / "adapter_model.safetensors").is_file()
    assert main(["train", "ppo", "--out", str(ppo), "--sft", str(sft), "--rm", str(rm), "--max-steps", "2"]) == 0
    capsys.readouterr()
    assert metrics(sft)["steps"] == 3 and metrics(sft)["loss"] > 0
    assert 0 <= metrics(rm)["accuracy"] <= 1 and "bayes_accuracy" in metrics(rm)
    m = metrics(ppo)
    assert m["stage"] == "ppo" and m["steps"] == 2
    assert isinstance(m["reward"], float) and isinstance(m["reward_monitor"], float)  # RM reward; ground truth
    for folder in (sft, rm, ppo):
        weights = [p.name for p in folder.rglob("*") if p.suffix in (".safetensors", ".bin", ".pt", ".pth")]
        assert not [w for w in weights if w.endswith(".bin") and w != "training_args.bin"], weights
        assert any(w.endswith(".safetensors") for w in weights)


def run_cli(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "RLHF_COURSE_PROFILE": "tiny"}
    return subprocess.Popen([sys.executable, "-m", "rlhf_course.cli", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_dpo_killed_with_sigkill_and_resumed_ends_with_the_same_metrics(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    args = ["train", "dpo", "--max-steps", "6", "--save-every", "1"]
    assert main([*args, "--out", str(straight)]) == 0

    proc = run_cli(*args, "--out", str(killed))
    second = killed / "checkpoints" / "checkpoint-2" / "trainer_state.json"
    deadline = time.monotonic() + 120
    while not second.exists():
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, "no checkpoint within 2 minutes"
        time.sleep(0.02)
    proc.kill()  # SIGKILL: no clean-up, possibly in the middle of writing the next checkpoint
    proc.wait()
    assert not (killed / "metrics.json").exists(), "the run was killed before its end"

    resumed = run_cli(*args, "--out", str(killed), "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()[-2000:]
    a, b = metrics(straight), metrics(killed)
    assert b["resumed_from_step"] >= 2
    assert {k: v for k, v in a.items() if k not in NOT_COMPARED} == {k: v for k, v in b.items() if k not in NOT_COMPARED}


def test_ppo_settings_from_the_command_line_reach_the_run_and_bad_ones_are_one_line(tmp_path, capsys):
    sft, rm, ppo = tmp_path / "sft", tmp_path / "rm", tmp_path / "ppo"
    assert main(["train", "sft", "--out", str(sft), "--max-steps", "2"]) == 0
    assert main(["train", "rm", "--out", str(rm), "--sft", str(sft), "--max-steps", "2"]) == 0
    capsys.readouterr()
    assert main(["train", "ppo", "--out", str(tmp_path / "bad"), "--sft", str(sft), "--kl-coef", "-0.1"]) == 2
    assert capsys.readouterr().err.strip().endswith("PPOConfig.kl_coef must be 0 or more, got -0.1")
    assert not (tmp_path / "bad").exists()  # refused before anything was written
    assert main(["train", "sft", "--out", str(tmp_path / "x"), "--kl-coef", "0.1"]) == 2
    assert "for `train ppo` only" in capsys.readouterr().err
    args = ["train", "ppo", "--out", str(ppo), "--sft", str(sft), "--rm", str(rm), "--max-steps", "1",
            "--kl-coef", "0.07", "--num-ppo-epochs", "1", "--no-whiten-advantages"]
    assert main(args) == 0
    run = json.loads((ppo / "run.json").read_text())
    assert run["ppo_config"] == {"kl_coef": 0.07, "num_ppo_epochs": 1, "whiten_advantages": False}
    state = json.loads((ppo / "checkpoints" / "trainer_state.json").read_text())
    assert state["config"]["kl_coef"] == 0.07 and state["config"]["whiten_advantages"] is False
