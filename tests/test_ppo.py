import pytest
import torch

from rlhf_course import ppo
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
    with pytest.raises(AssertionError, match="divide"):
        PPOConfig(batch_size=30, num_minibatches=4)
