"""Notebook 5's checks name the mistake: each typical wrong answer gets its own message."""

import torch
import torch.nn.functional as F

from rlhf_course.checks.nb05_reward_modelling import (
    check_bayes_accuracy,
    check_bradley_terry_loss,
    check_combine_rewards,
    check_margin_loss,
    check_preference_accuracy,
)


def test_bradley_terry_loss_mistakes_are_named(fails_with):
    fails_with(check_bradley_terry_loss, lambda c, r: -F.logsigmoid(r - c).mean(), "flipped")
    fails_with(check_bradley_terry_loss, lambda c, r: -torch.sigmoid(c - r).mean(), "mean of sigmoid")
    fails_with(check_bradley_terry_loss, lambda c, r: -F.logsigmoid(c - r).sum(), "summed")
    fails_with(check_bradley_terry_loss, lambda c, r: -torch.log(torch.sigmoid(c - r)).mean(), "infinite")
    fails_with(check_bradley_terry_loss, lambda c, r: torch.tensor(-F.logsigmoid(c - r).mean().item()),
                "gradient")
    assert check_bradley_terry_loss(lambda c, r: -F.logsigmoid(c - r).mean()) is True


def test_margin_loss_mistakes_are_named(fails_with):
    fails_with(check_margin_loss, lambda c, r, m: -F.logsigmoid(c - r).mean(), "forgot the margin")
    fails_with(check_margin_loss, lambda c, r, m: -F.logsigmoid(c - r + m).mean(), "subtract")
    fails_with(check_margin_loss, lambda c, r, m: -F.logsigmoid(c - r).mean() + m.mean(), "outside")
    fails_with(check_margin_loss, lambda c, r, m: -F.logsigmoid(c - r - m.mean()).mean(), "one margin")


def test_accuracy_and_bayes_mistakes_are_named(fails_with):
    fails_with(check_preference_accuracy, lambda c, r: (c > r).float().mean().item(), "ties count as wrong")
    fails_with(check_preference_accuracy, lambda c, r: (c >= r).float().mean().item(), "ties count as right")
    fails_with(check_bayes_accuracy, lambda ps: sum(ps) / len(ps), "averaged p_chosen")
    fails_with(check_bayes_accuracy, lambda ps: 1.0, "100% is impossible")
    assert check_bayes_accuracy(lambda ps: sum(max(p, 1 - p) for p in ps) / len(ps)) is True


def test_combine_rewards_mistakes_are_named(fails_with):
    def rule(h, s, unsafe, use):
        return torch.where(use, s, h)

    fails_with(check_combine_rewards, lambda h, s, u, safety_threshold=0.15: h, "helpfulness reward everywhere")
    fails_with(check_combine_rewards, lambda h, s, u, safety_threshold=0.15: rule(h, s, u, u),
                "only the unsafe flag")
    fails_with(check_combine_rewards,
                lambda h, s, u, safety_threshold=0.15: rule(h, s, u, u | (s < safety_threshold)), "a probability")
    fails_with(check_combine_rewards, lambda h, s, u, safety_threshold=0.15: (h + s) / 2, "sum")
