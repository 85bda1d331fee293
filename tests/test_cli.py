import os
import subprocess
import sys
import time

from rlhf_course.cli import main
from rlhf_course.doctor import hub_status
from rlhf_course.paths import data_path


def run_cli(*args, env=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "rlhf_course.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def test_doctor_reports_hardware_profile_versions_and_offline_hub():
    r = run_cli("doctor", env={"HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr
    for expected in ("hardware : no CUDA GPU", "profile  : tiny", "transformers : 5.23.0  ok",
                     "tiny model present", "HF_HUB_OFFLINE=1"):
        assert expected in r.stdout, expected


def test_hub_check_never_hangs():
    t0 = time.perf_counter()
    status = hub_status(timeout=1.0)
    assert time.perf_counter() - t0 < 3.0
    assert status.startswith(("reachable", "not reachable", "not checked"))


def test_generate_prints_answers_with_their_ground_truth(capsys):
    assert main(["generate", "-n", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("assistant:") == 2 and out.count("ground truth: helpful") == 2
    assert "answers/s" in out


def test_expected_failures_give_a_message_not_a_traceback():
    r = run_cli("generate", "--profile", "7b")
    assert r.returncode == 2
    assert "needs a CUDA GPU" in r.stderr and "Traceback" not in r.stderr + r.stdout


def test_validate_data_accepts_the_shipped_sets(capsys):
    files = [str(data_path("toy", "preferences_train.jsonl")), str(data_path("handwritten", "preferences.jsonl"))]
    assert main(["validate-data", *files]) == 0
    assert capsys.readouterr().out.count(": ok,") == 2
