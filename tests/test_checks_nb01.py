"""Notebook 1's checks name the usual mistakes: each known-wrong answer gets its own message."""

import random

import torch

from rlhf_course import rl_basics
from rlhf_course.checks.nb01_rl_basics import (
    check_bellman_backup,
    check_discounted_return,
    check_epsilon_greedy,
    check_returns_to_go,
    check_value_iteration,
)


def test_the_reference_implementations_pass(capsys):
    assert check_discounted_return(rl_basics.discounted_return)
    assert check_returns_to_go(rl_basics.returns_to_go)
    assert check_epsilon_greedy(rl_basics.epsilon_greedy)
    assert check_bellman_backup(rl_basics.bellman_backup)
    assert check_value_iteration(rl_basics.value_iteration)
    assert capsys.readouterr().out.count("✓") == 5


def test_discounted_return_mistakes(fails_with):
    fails_with(check_discounted_return, lambda rs, g: sum(rs), "gamma was ignored")
    fails_with(check_discounted_return, lambda rs, g: sum(g ** (t + 1) * r for t, r in enumerate(rs)),
                "off by one")
    fails_with(check_discounted_return, lambda rs, g: sum(g ** (len(rs) - 1 - t) * r for t, r in enumerate(rs)),
                "from the end")


def test_returns_to_go_mistakes(fails_with):
    fails_with(check_returns_to_go, lambda r, g: torch.cumsum(r, dim=1), "PAST rewards")
    fails_with(check_returns_to_go, lambda r, g: r.flip(1).cumsum(1).flip(1), "gamma was ignored")

    def in_place(rewards, gamma):
        for t in reversed(range(rewards.shape[1] - 1)):
            rewards[:, t] += gamma * rewards[:, t + 1]
        return rewards

    fails_with(check_returns_to_go, in_place, "in place")


def test_epsilon_greedy_mistakes(fails_with):
    fails_with(check_epsilon_greedy, lambda q, eps, rng: int(torch.argmin(q)), "LOWEST")

    def reversed_test(q, eps, rng):
        return int(torch.argmax(q)) if rng.random() < eps else rng.randrange(len(q))

    fails_with(check_epsilon_greedy, reversed_test, "reversed")

    def explores_other_arms_only(q, eps, rng):
        best = int(torch.argmax(q))
        if rng.random() < eps:
            return rng.choice([a for a in range(len(q)) if a != best])
        return best

    fails_with(check_epsilon_greedy, explores_other_arms_only, "greedy one included")
    unseeded = random.Random(123)
    fails_with(check_epsilon_greedy, lambda q, eps, rng: rl_basics.epsilon_greedy(q, eps, unseeded),
                "rng")


def test_bellman_backup_mistakes(fails_with):
    fails_with(check_bellman_backup, lambda V, P, R, g: R + P @ V, "gamma is missing")
    fails_with(check_bellman_backup, lambda V, P, R, g: g * (P @ V), "immediate reward")
    fails_with(check_bellman_backup, lambda V, P, R, g: R + g * V[:, None], "LAST axis")
    fails_with(check_bellman_backup, lambda V, P, R, g: R.clone(), "only the immediate reward")
    fails_with(check_bellman_backup, lambda V, P, R, g: (R + g * (P @ V)).max(dim=1).values, "every action")


def test_value_iteration_mistakes(fails_with):
    def one_sweep(P, R, gamma):
        Q = rl_basics.bellman_backup(torch.zeros(P.shape[0], dtype=P.dtype), P, R, gamma)
        return Q.max(dim=1).values, Q.argmax(dim=1)

    fails_with(check_value_iteration, one_sweep, "one sweep")
    fails_with(check_value_iteration, lambda P, R, g: (torch.zeros(P.shape[0], dtype=P.dtype),
                                                      torch.zeros(P.shape[0], dtype=torch.long)), "all zeros")

    def averages(P, R, gamma):
        uniform = torch.full(P.shape[:2], 1 / P.shape[1], dtype=P.dtype)
        V = rl_basics.policy_evaluation(P, R, uniform, gamma)
        return V, rl_basics.bellman_backup(V, P, R, gamma).argmax(dim=1)

    fails_with(check_value_iteration, averages, "MAX over actions")

    def argmin_policy(P, R, gamma):
        V, _ = rl_basics.value_iteration(P, R, gamma)
        return V, rl_basics.bellman_backup(V, P, R, gamma).argmin(dim=1)

    fails_with(check_value_iteration, argmin_policy, "argmin instead of argmax")
