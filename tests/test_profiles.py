import pytest
import torch

from rlhf_course.profiles import MODEL_7B, PROFILE_ENV, Hardware, ProfileError, pick_profile

CPU = Hardware("cpu", cpu_count=2)
T4 = Hardware("cuda", "Tesla T4", 14.7, bf16=False, n_gpus=1, cpu_count=2)
A100 = Hardware("cuda", "NVIDIA A100-SXM4-40GB", 39.4, bf16=True, n_gpus=1, cpu_count=12)
SMALL_GPU = Hardware("cuda", "NVIDIA GeForce RTX 3060", 11.8, bf16=True, n_gpus=1, cpu_count=8)


@pytest.fixture(autouse=True)
def _no_env_profile(monkeypatch):
    monkeypatch.delenv(PROFILE_ENV, raising=False)


def test_cpu_only_machine_gets_tiny_in_fp32():
    p = pick_profile(hardware=CPU)
    assert (p.name, p.device, p.load_in_4bit, p.compute_dtype) == ("tiny", "cpu", False, torch.float32)
    assert "no CUDA GPU" in p.reason
    assert p.model_path.endswith("data/tiny")


def test_t4_without_bf16_gets_7b_in_4bit_with_fp16_compute():
    p = pick_profile(hardware=T4)
    assert (p.name, p.model_id, p.load_in_4bit, p.compute_dtype) == ("7b", MODEL_7B, True, torch.float16)
    assert "fp16" in p.reason and "no bf16" in p.reason
    assert p.gradient_checkpointing


def test_a100_gets_bf16():
    p = pick_profile(hardware=A100)
    assert (p.name, p.compute_dtype) == ("7b", torch.bfloat16)


def test_small_gpu_falls_back_to_tiny_and_says_why():
    p = pick_profile(hardware=SMALL_GPU)
    assert p.name == "tiny" and "11.8 GiB" in p.reason


def test_lora_targets_are_the_same_in_both_profiles():
    assert pick_profile(hardware=CPU).lora_target_modules == pick_profile(hardware=T4).lora_target_modules == (
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def test_environment_variable_and_argument_override(monkeypatch):
    monkeypatch.setenv(PROFILE_ENV, "tiny")
    assert pick_profile(hardware=A100).name == "tiny"
    assert PROFILE_ENV in pick_profile(hardware=A100).reason
    assert pick_profile("7b", hardware=A100).name == "7b"  # the argument wins over the environment


def test_7b_without_gpu_is_a_clear_error():
    with pytest.raises(ProfileError, match="needs a CUDA GPU.*tiny"):
        pick_profile("7b", hardware=CPU)
    with pytest.raises(ProfileError, match="unknown profile 'huge'"):
        pick_profile("huge", hardware=CPU)


def test_forcing_7b_on_a_small_gpu_warns_in_the_reason():
    assert "expect out-of-memory" in pick_profile("7b", hardware=SMALL_GPU).reason


def test_replace_changes_one_number():
    p = pick_profile(hardware=CPU)
    assert p.replace(ppo_steps=3).ppo_steps == 3 and p.ppo_steps != 3
