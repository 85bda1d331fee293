"""The 7b profile, rehearsed on a CPU: a simulated T4 picks fp16, every trainer keeps fp32 trained weights,
the stand-in has the real Mistral tokenizer (pad = eos), masks are built by position, one 4-bit base
lives at a time, and the whole pipeline runs with the judge as its gold reward."""

import json
import math
from types import SimpleNamespace

import pytest
import torch

from rlhf_course import gold, profiles
from rlhf_course.loading import (ModelLoadError, free_memory, live_4bit_bases, load_policy, load_tokenizer,
                                 reference_policy)
from rlhf_course.profiles import PROFILE_ENV, REHEARSAL_ENV, detect_hardware, pick_profile, rehearsal_profile
from rlhf_course.sampling import answer_mask, prompt_mask, render_prompts, sample_ids


@pytest.fixture(scope="session")
def standin(tmp_path_factory):
    from rlhf_course.standin import build_standin

    return build_standin(tmp_path_factory.mktemp("standin"))


@pytest.fixture(scope="session")
def rehearsal(standin):
    return rehearsal_profile(standin)


# --- a simulated GPU: torch.cuda patched -------------------------------------------------------------

def _fake_gpu(monkeypatch, name: str, gib: float, capability: tuple[int, int]):
    native = capability >= (8, 0)
    props = SimpleNamespace(name=name, total_memory=int(gib * 2**30), major=capability[0], minor=capability[1])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=0: props)
    # torch's default counts emulation: a T4 answers True unless asked for native support
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation or native)
    monkeypatch.delenv(PROFILE_ENV, raising=False)


def test_a_simulated_t4_picks_the_7b_profile_in_fp16(monkeypatch):
    _fake_gpu(monkeypatch, "Tesla T4", 14.7, (7, 5))
    assert torch.cuda.is_bf16_supported()  # the trap: emulation counts by default
    hw = detect_hardware()
    assert hw.device == "cuda" and hw.bf16 is False
    p = pick_profile()
    assert (p.name, p.load_in_4bit, p.compute_dtype) == ("7b", True, torch.float16)
    assert p.recipe == profiles.RECIPE_7B and not p.has_ground_truth and p.one_base_at_a_time
    assert p.judge_model_id == profiles.JUDGE_7B


def test_a_simulated_a100_computes_in_bf16(monkeypatch):
    _fake_gpu(monkeypatch, "NVIDIA A100-SXM4-40GB", 39.4, (8, 0))
    assert pick_profile().compute_dtype == torch.bfloat16


def test_no_trainer_default_gives_a_7b_a_tiny_learning_rate():
    tiny, big = profiles.TINY_RECIPE, profiles.RECIPE_7B
    for field in ("sft_learning_rate", "rm_learning_rate", "ppo_learning_rate", "dpo_learning_rate",
                  "grpo_learning_rate", "pg_learning_rate"):
        assert getattr(big, field) < getattr(tiny, field) / 10, field  # a 7B's LoRA wants far smaller steps
    from rlhf_course.dpo import dpo_config
    from rlhf_course.ppo import PPOConfig

    t4 = pick_profile("7b", hardware=profiles.Hardware("cuda", "Tesla T4", 14.7, False, 1, 2))
    args = dpo_config(t4, steps=2, progress=False)
    assert (args.learning_rate, args.beta, args.fp16, args.bf16) == (big.dpo_learning_rate, big.dpo_beta, True, False)
    cfg = PPOConfig.for_profile(t4)
    assert (cfg.learning_rate, cfg.kl_coef, cfg.mixed_precision) == (big.ppo_learning_rate, big.ppo_kl_coef, "fp16")
    assert cfg.batch_size == t4.batch_size and cfg.batch_size % cfg.num_minibatches == 0


def test_every_trainer_keeps_fp32_trained_weights_when_computing_in_fp16(tiny):
    """A T4's settings (4-bit base, fp16 compute) on the tiny model: TRL casts QLoRA adapters to bf16,
    which a T4 cannot train; every trainer must end with fp32 trained weights (and train one step)."""
    from rlhf_course.dpo import train_dpo
    from rlhf_course.grpo import train_grpo
    from rlhf_course.ppo import train_ppo
    from rlhf_course.reward_model import train_reward_model
    from rlhf_course.sft import train_sft

    t4like = tiny.replace(compute_dtype=torch.float16, load_in_4bit=True, batch_size=4, sft_steps=1, rm_steps=1,
                          dpo_steps=1, ppo_steps=1, max_new_tokens=8)
    runs = {
        "sft": lambda: train_sft(t4like, progress=False),
        "rm": lambda: train_reward_model(t4like, progress=False),
        "dpo": lambda: train_dpo(t4like, progress=False),
        "grpo": lambda: train_grpo(t4like, steps=1, num_generations=4, progress=False),
        "ppo": lambda: train_ppo(t4like, progress=False),
    }
    for name, run in runs.items():
        model = run().model
        trained = {p.dtype for p in model.parameters() if p.requires_grad}
        assert trained == {torch.float32}, f"{name}: trained weights in {trained}"
        del model
        free_memory()


# --- the stand-in: the real tokenizer, pad = eos, masks by position ----------------------------------

def test_the_standin_has_the_real_mistral_tokenizer_with_zephyrs_template(rehearsal):
    tok = load_tokenizer(rehearsal)
    assert len(tok) == 32000 and (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (1, 2, 2)
    assert tok("Hello world", add_special_tokens=False).input_ids == [22557, 1526]  # Mistral-7B v0.1's ids
    rendered = render_prompts(tok, ["how do i cook rice ?"])[0]
    assert rendered == "<s><|user|>\nhow do i cook rice ?</s>\n<|assistant|>\n"  # BOS once, as the model expects
    config = json.loads((rehearsal_model_dir(rehearsal) / "config.json").read_text())
    assert (config["model_type"], config["num_key_value_heads"], config["vocab_size"]) == ("mistral", 1, 32000)


def rehearsal_model_dir(profile):
    from pathlib import Path

    return Path(profile.model_id)


def test_masks_are_built_by_position_when_pad_is_eos(rehearsal):
    tok = load_tokenizer(rehearsal)
    model = load_policy(rehearsal, lora=False, verbose=False)
    try:
        torch.manual_seed(0)
        query, response, ended = sample_ids(model, tok, ["hi", "how do i cook rice ?"], 6)
    finally:
        del model
        free_memory()
    enc = tok(render_prompts(tok, ["hi", "how do i cook rice ?"]), padding=True, padding_side="left",
              add_special_tokens=False, return_tensors="pt")
    mask = prompt_mask(query, tok.pad_token_id)
    assert torch.equal(mask, enc["attention_mask"])  # the tokenizer's own mask, by position
    closing = (query == tok.eos_token_id) & (mask == 1)
    assert closing.sum(dim=1).tolist() == [1, 1]  # each prompt's real </s>: a pad-id mask would drop it
    assert not torch.equal(mask, (query != tok.pad_token_id).long())
    assert answer_mask(torch.tensor([[5, 6, 2, 2, 2]]), 2).tolist() == [[1, 1, 1, 0, 0]]  # the EOS counts, padding not


# --- one 4-bit base at a time -----------------------------------------------------------------------

def test_the_7b_profile_refuses_a_second_4bit_base_and_loads_again_once_freed(rehearsal):
    assert live_4bit_bases() == 0
    first = load_policy(rehearsal, verbose=False)
    with pytest.raises(ModelLoadError, match="already in memory.*free_memory"):
        load_policy(rehearsal, verbose=False)
    assert live_4bit_bases() == 1
    del first
    free_memory()
    assert live_4bit_bases() == 0
    second = load_policy(rehearsal, verbose=False)
    del second
    free_memory()


def test_the_reference_is_the_sft_adapters_frozen_copy_on_a_4bit_base(rehearsal, tmp_path):
    from rlhf_course.loading import add_reference_adapter
    from rlhf_course.sft import save_sft_model

    sft = load_policy(rehearsal, verbose=False)
    with torch.no_grad():
        for name, p in sft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)  # an SFT adapter that moved
    save_sft_model(sft, load_tokenizer(rehearsal), tmp_path / "sft")
    del sft
    free_memory()
    policy = load_policy(rehearsal, model_id=str(tmp_path / "sft"), verbose=False).eval()  # no LoRA dropout
    add_reference_adapter(policy)
    ids = torch.tensor([[1, 523, 28766, 1838, 28766, 28767, 13, 5845]])
    with torch.no_grad():
        sft_logits = policy(input_ids=ids).logits
        with policy.disable_adapter():
            base_logits = policy(input_ids=ids).logits
        for name, p in policy.named_parameters():
            if "lora_B.default" in name:
                p.add_(0.1)  # training moves the policy ...
        with reference_policy(policy):
            ref_logits = policy(input_ids=ids).logits
    assert torch.allclose(ref_logits, sft_logits, atol=1e-5)   # ... pi_ref stays the SFT model
    assert not torch.allclose(ref_logits, base_logits, atol=1e-3)  # not the base under it
    assert all(p.requires_grad for n, p in policy.named_parameters() if "lora_B.default" in n)
    assert not any(p.requires_grad for n, p in policy.named_parameters() if ".ref." in n)
    del policy
    free_memory()


# --- the judge, and the whole rehearsal ---------------------------------------------------------------

def test_the_gold_reward_is_the_ground_truth_on_tiny_and_the_judge_on_7b(tiny, rehearsal):
    from rlhf_course import toyworld

    assert gold.gold_reward_fn(tiny) is toyworld.ground_truth_rewards
    judge = gold.gold_reward_fn(rehearsal)
    assert isinstance(judge, gold.JudgeModel)
    scores = judge(["how do i cook rice ?", "how do i cook rice ?"], ["rinse it first .", "rinse it first ."])
    assert len(scores) == 2 and all(math.isfinite(s) for s in scores) and scores[0] == pytest.approx(scores[1])
    assert judge.gib() < 0.1  # the stand-in judge; Skywork-Reward-V2-Qwen3-0.6B is ~1.2 GB in bf16


def test_the_rehearsal_pipeline_writes_the_7b_report(rehearsal, tmp_path, monkeypatch):
    from rlhf_course.pipeline import run_pipeline

    monkeypatch.setenv(PROFILE_ENV, "7b")
    report = run_pipeline(tmp_path / "run", rehearsal, progress=False)
    assert (report["profile"], report["rehearsal"]) == ("7b", True)
    assert report["gold"].startswith("judge ") and "hand-written" in report["data"]  # offline fallback
    for stage in ("base", "sft", "ppo", "dpo", "best_of_n"):
        assert math.isfinite(report["reward"][stage]), stage
    for stage in ("ppo", "dpo"):
        assert math.isfinite(report["win_rate_vs_sft"][stage]) and math.isfinite(report["kl_to_sft"][stage])
    assert report["targets"] == {}  # no ground truth: no targets
    assert (tmp_path / "run" / "sft" / "adapter_config.json").is_file()  # the SFT model is an adapter on 7b
    assert (tmp_path / "run" / "report.md").read_text().count("judged reward") >= 1
    assert live_4bit_bases() == 0


def test_the_gpu_check_runs_its_stages_on_the_standin(tmp_path):
    from rlhf_course.gpu_check import STAGES, check

    rows = check(tmp_path / "rows.json", standin=True, steps=1, workdir=tmp_path)
    assert [r["stage"] for r in rows] == list(STAGES) and not any("error" in r for r in rows)
    assert all(r["live_4bit_bases_after"] == 0 for r in rows)
    assert all(r["seconds_per_step"] > 0 for r in rows if r["stage"] != "generate")
    assert json.loads((tmp_path / "rows.json").read_text())[0]["weights"] == "stand-in"


def test_the_rehearsal_is_picked_by_the_environment(standin, monkeypatch):
    monkeypatch.setenv(PROFILE_ENV, "7b")
    monkeypatch.setenv(REHEARSAL_ENV, str(standin))
    p = pick_profile()
    assert p.rehearsal and p.device == "cpu" and p.load_in_4bit and p.model_id == str(standin / "model")
    monkeypatch.setenv(REHEARSAL_ENV, str(standin / "nothing"))
    with pytest.raises(profiles.ProfileError, match="build-standin"):
        pick_profile()
