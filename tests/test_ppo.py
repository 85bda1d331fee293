import math
import shutil

import pytest
import torch

from rlhf_course.errors import UsageError
from rlhf_course.ppo import (AdaptiveKLController, PPOConfig, compute_gae, compute_rewards, masked_whiten,
                             ppo_policy_loss, ppo_value_loss)

# --- the maths, against hand-computed values and naive re-implementations ---------------------


def test_rewards_put_the_score_on_the_last_real_token_and_penalise_kl():
    scores = torch.tensor([1.0, 2.0])
    logprobs = torch.tensor([[-1.0, -1.0, -1.0], [-1.0, -2.0, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, -1.0], [-1.0, -1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    rewards, kl = compute_rewards(scores, logprobs, ref, mask, kl_coef=0.1)
    assert torch.allclose(kl, torch.tensor([[0.5, 0.0, 0.0], [0.0, -1.0, 0.0]]))
    assert torch.allclose(rewards, torch.tensor([[-0.05, 0.0, 1.0], [0.0, 0.1 + 2.0, 0.0]]))


def naive_gae(rewards, values, mask, gamma, lam):
    B, T = rewards.shape
    adv = torch.zeros(B, T)
    for b in range(B):
        n = int(mask[b].sum())
        v = list(values[b, :n]) + [0.0]
        for t in range(n):
            adv[b, t] = sum((gamma * lam) ** l * (rewards[b, t + l] + gamma * v[t + l + 1] - v[t + l])
                            for l in range(n - t))
    return adv, adv + values * mask


@pytest.mark.parametrize("gamma, lam", [(1.0, 0.95), (0.9, 0.5), (1.0, 1.0)])
def test_gae_matches_the_definition(gamma, lam):
    g = torch.Generator().manual_seed(1)
    rewards, values = torch.randn(3, 6, generator=g), torch.randn(3, 6, generator=g)
    mask = torch.tensor([[1.0] * 6, [1.0] * 4 + [0.0] * 2, [1.0] + [0.0] * 5])
    rewards = rewards * mask
    adv, ret = compute_gae(rewards, values, mask, gamma, lam)
    want_adv, want_ret = naive_gae(rewards, values, mask, gamma, lam)
    assert torch.allclose(adv, want_adv, atol=1e-5) and torch.allclose(ret, want_ret, atol=1e-5)
    assert (adv * (1 - mask)).abs().sum() == 0, "no advantage on padding"


def test_gae_with_lambda_one_is_return_to_go_minus_value():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.2, 0.4, 0.6]])
    adv, ret = compute_gae(rewards, values, torch.ones(1, 3), 1.0, 1.0)
    assert torch.allclose(adv, torch.tensor([[0.8, 0.6, 0.4]])) and torch.allclose(ret, torch.ones(1, 3))


def test_policy_loss_at_ratio_one_and_when_clipped():
    mask = torch.ones(1, 2)
    adv = torch.tensor([[1.0, -1.0]])
    same = torch.zeros(1, 2)
    loss, stats = ppo_policy_loss(same, same, adv, mask, clip_coef=0.2)
    assert loss.item() == pytest.approx(0.0) and stats["clipfrac"] == 0 and stats["approx_kl"] == pytest.approx(0)
    # ratio 2 on both tokens: the positive advantage is clipped at 1.2, the negative one is not
    loss, stats = ppo_policy_loss(torch.log(torch.full((1, 2), 2.0)), same, adv, mask, clip_coef=0.2)
    assert loss.item() == pytest.approx((-1.2 + 2.0) / 2)
    assert stats["clipfrac"] == pytest.approx(0.5)


def test_value_loss_clips_the_update():
    mask = torch.ones(1, 1)
    loss, stats = ppo_value_loss(torch.tensor([[1.0]]), torch.tensor([[0.0]]), torch.tensor([[2.0]]), mask, 0.2)
    # unclipped (1-2)^2 = 1; clipped value 0.2 -> (0.2-2)^2 = 3.24; the max is taken
    assert loss.item() == pytest.approx(0.5 * 3.24) and stats["vf_clipfrac"] == 1.0


def test_masked_whiten_ignores_padding():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    w = masked_whiten(x, mask)
    assert w[0, 3] == 0 and w[0, :3].mean().abs() < 1e-6 and w[0, :3].std(unbiased=False) == pytest.approx(1, abs=1e-3)


def test_adaptive_kl_controller_moves_toward_the_target():
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=100)
    ctl.update(current_kl=12.0, n_samples=10)  # too much KL: beta goes up by 1 + 0.2 * 10/100
    assert ctl.value == pytest.approx(0.1 * 1.02)
    ctl.update(current_kl=0.0, n_samples=10)
    assert ctl.value < 0.1 * 1.02


def test_config_derives_the_minibatch_and_rejects_uneven_splits():
    assert PPOConfig(batch_size=32, num_minibatches=4).minibatch_size == 8
    with pytest.raises(UsageError, match="divide"):
        PPOConfig(batch_size=30, num_minibatches=4)


# --- the trainer on the tiny model ----------------------------------------------------------------

import subprocess
import sys

from rlhf_course import toyworld
from rlhf_course.loading import load_policy
from rlhf_course.paths import REPO_ROOT
from rlhf_course.ppo import AdapterRewardModel, PPOTrainer
from rlhf_course.sampling import Completion

PROMPTS = [p.text for p in toyworld.train_prompts()]


def shorter_is_better(prompts, completions):
    return [-c.n_tokens / 10 for c in completions]


def lora_state(model, adapter="default"):
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n and f".{adapter}." in n}


def test_ppo_optimises_the_reward_it_is_given(tiny, tokenizer):
    """Behaviour check: an easy reward (shorter answers) must go up within a few iterations, the
    reference (adapter disabled) must not move, and every logged statistic must be finite."""
    policy = load_policy(tiny, verbose=False)
    base_before = {n: p.detach().clone() for n, p in policy.named_parameters() if "lora_" not in n}
    cfg = PPOConfig(batch_size=16, num_minibatches=2, num_ppo_epochs=2, learning_rate=1e-3, max_new_tokens=32, steps=12)
    result = PPOTrainer(cfg, policy, tokenizer, shorter_is_better, PROMPTS,
                        monitor_fn=toyworld.ground_truth_rewards).train(progress=False)
    scores = [h["reward/score"] for h in result.history]
    assert sum(scores[-3:]) / 3 > sum(scores[:3]) / 3 + 0.3, scores
    assert all(torch.equal(p, base_before[n]) for n, p in policy.named_parameters() if "lora_" not in n)
    for key in ("objective/kl", "policy/approx_kl", "policy/clipfrac", "policy/entropy", "loss/value",
                "reward/monitor", "kl_coef", "rollout/ended"):
        assert all(math.isfinite(h[key]) for h in result.history), key
    assert result.history[-1]["objective/kl"] > 0


@pytest.fixture(scope="module")
def reward_adapter(tmp_path_factory, tiny):
    """A reward model trained for a few steps with TRL's RewardTrainer + LoRA (SEQ_CLS), saved."""
    from rlhf_course.reward_model import train_reward_model

    out = tmp_path_factory.mktemp("rm")
    train_reward_model(tiny, steps=4, out_dir=str(out), progress=False)
    return out


def test_adapter_reward_model_matches_the_sequence_classifier(tiny, tokenizer, reward_adapter):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    classifier = PeftModel.from_pretrained(
        AutoModelForSequenceClassification.from_pretrained(tiny.model_path, num_labels=1), reward_adapter).eval()
    classifier.config.pad_token_id = tokenizer.pad_token_id
    prompts = ["how do i cook rice ?", "any tips to bake bread ?"]
    answers = [Completion("rinse the rice first .", True, 6), Completion("good luck . that is a silly question .", True, 10)]
    texts = [tokenizer.apply_chat_template(toyworld.user(p) + toyworld.assistant(a.text), tokenize=False)
             for p, a in zip(prompts, answers)]
    with torch.no_grad():
        want = classifier(**tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)).logits[:, 0]
    policy = load_policy(tiny, verbose=False)
    got = AdapterRewardModel(policy, tokenizer, reward_adapter)(prompts, answers)
    assert torch.allclose(torch.tensor(got), want, atol=1e-4), (got, want)
    assert policy.active_adapter == "default"


def test_one_4bit_base_carries_policy_value_head_and_reward_model(tiny, tokenizer, reward_adapter):
    """The 7B shape, on the tiny model: one NF4 base, two adapters, no second copy of the weights."""
    import bitsandbytes as bnb

    policy = load_policy(tiny, load_in_4bit=True, verbose=False)
    rm = AdapterRewardModel(policy, tokenizer, reward_adapter)
    assert sum(isinstance(m, bnb.nn.Linear4bit) for m in policy.modules()) == 28
    reward_before, policy_before = lora_state(policy, "reward"), lora_state(policy, "default")
    cfg = PPOConfig(batch_size=8, num_minibatches=2, num_ppo_epochs=1, max_new_tokens=24, steps=2)
    trainer = PPOTrainer(cfg, policy, tokenizer, rm, PROMPTS)
    head_before = trainer.accelerator.unwrap_model(trainer.model).value_head.weight.detach().clone()
    result = trainer.train(progress=False)
    assert len(result.history) == 2 and math.isfinite(result.metrics["reward"])
    assert all(torch.equal(p, reward_before[n]) for n, p in lora_state(policy, "reward").items()), "RM adapter moved"
    assert any(not torch.equal(p, policy_before[n]) for n, p in lora_state(policy, "default").items())
    assert not torch.equal(trainer.accelerator.unwrap_model(trainer.model).value_head.weight, head_before)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch_two_processes(checkpoint_dir) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
         "--num_machines", "1", "--main_process_port", str(_free_port()), "--mixed_precision", "no",
         "--dynamo_backend", "no", str(REPO_ROOT / "tests" / "scripts" / "ppo_two_processes.py"), str(checkpoint_dir)],
        capture_output=True, text=True, timeout=300)


def test_ppo_runs_data_parallel_on_two_cpu_processes(tmp_path):
    """`accelerate launch` runs the unchanged trainer on 2 processes; DDP keeps their adapters equal; a
    checkpoint holds each process's random streams, and a resume gives each its own back."""
    r = _launch_two_processes(tmp_path / "ckpt")
    if r.returncode != 0 and "Signal 6 (SIGABRT)" in r.stderr:
        # Seen once (a clean-clone CI run, 2026-11-23; not reproduced in 3 reruns): a worker aborted in native code
        # (no Python error). Retry once; a real failure of our code fails both times.
        first = r.stderr
        shutil.rmtree(tmp_path / "ckpt", ignore_errors=True)
        r = _launch_two_processes(tmp_path / "ckpt")
        assert r.returncode == 0, "failed twice; first failure:\n" + first[:3000] + "\nsecond:\n" + r.stderr[:3000]
    assert r.returncode == 0, r.stderr[:3000] + "\n...\n" + r.stderr[-2000:]
    assert "processes=2 in_sync=True changed=True steps=2" in r.stdout, r.stdout + r.stderr[-2000:]
    assert "resumed=True" in r.stdout, r.stdout + r.stderr[-2000:]
    assert {p.name for p in (tmp_path / "ckpt" / "step-000002").glob("rng_state_*")} == {
        "rng_state_0.safetensors", "rng_state_0.json", "rng_state_1.safetensors", "rng_state_1.json"}


def test_a_run_killed_and_resumed_ends_exactly_like_an_uninterrupted_one(tiny, tmp_path):
    from rlhf_course.ppo import train_ppo

    kw = dict(batch_size=8, num_minibatches=2, max_new_tokens=24, progress=False)
    full = train_ppo(tiny, steps=4, **kw)
    train_ppo(tiny, steps=2, checkpoint_dir=tmp_path / "ckpt", save_every=2, **kw)  # "killed" after 2 iterations
    resumed = train_ppo(tiny, steps=4, checkpoint_dir=tmp_path / "ckpt", resume=True, **kw)
    assert [h["step"] for h in resumed.history] == [1, 2, 3, 4]
    for key in ("reward/score", "objective/kl", "loss/policy", "loss/value"):
        assert resumed.history[-1][key] == pytest.approx(full.history[-1][key], abs=1e-6), key
    a, b = lora_state(full.model), lora_state(resumed.model)
    assert all(torch.allclose(a[n], b[n], atol=1e-7) for n in a)
    folders = sorted(p.name for p in (tmp_path / "ckpt").iterdir() if p.is_dir())
    assert folders == ["step-000002", "step-000004"], folders  # the committed checkpoint and the one before it
    assert (tmp_path / "ckpt" / "step-000004" / "adapter" / "adapter_model.safetensors").exists()
    assert not [p for p in (tmp_path / "ckpt").rglob("*") if p.suffix in (".pt", ".pth", ".bin", ".tmp")]
