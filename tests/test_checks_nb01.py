"""Notebook 1's checks cannot be fooled: the reference passes, and every wrong answer of the set below -
in place, degenerate, and each mistake the exercise headers promise - gets ✗ with its own message."""

import random

import pytest
import torch

from rlhf_course import rl_basics
from rlhf_course.checks.core import run_check as run
from rlhf_course.checks.nb01_rl_basics import (
    check_bellman_backup,
    check_discounted_return,
    check_epsilon_greedy,
    check_returns_to_go,
    check_value_iteration,
)

CHECKS = [(check_discounted_return, rl_basics.discounted_return), (check_returns_to_go, rl_basics.returns_to_go),
          (check_epsilon_greedy, rl_basics.epsilon_greedy), (check_bellman_backup, rl_basics.bellman_backup),
          (check_value_iteration, rl_basics.value_iteration)]


@pytest.mark.parametrize("check_fn, reference", CHECKS, ids=lambda c: getattr(c, "__name__", ""))
def test_the_reference_passes_and_is_what_the_check_hands_back(check_fn, reference, capsys):
    assert run(check_fn, reference)[0] is True
    assert check_fn.reference is reference
    assert check_fn(reference) is reference  # passed: the student's own function is kept


def _forward(rewards, gamma):
    out, running = torch.zeros_like(rewards), torch.zeros_like(rewards[:, 0])
    for t in range(rewards.shape[1]):
        running = rewards[:, t] + gamma * running
        out[:, t] = running
    return out


WRONG = {
    check_discounted_return: [
        (lambda rs, g: sum(rs), "gamma was ignored"),
        (lambda rs, g: sum(g ** (t + 1) * r for t, r in enumerate(rs)), "off by one"),
        (lambda rs, g: sum(g ** (len(rs) - 1 - t) * r for t, r in enumerate(rs)), "from the end"),
        (lambda rs, g: rs[0] if rs else 0.0, "only the first reward"),
        (lambda rs, g: (rs.reverse(), rl_basics.discounted_return(rs[::-1], g))[1], "changed `rs` in place"),
    ],
    check_returns_to_go: [
        (_forward, "accumulated forwards"),                                    # the promised forward recursion
        (lambda r, g: torch.cumsum(r, dim=1), "PAST rewards"),
        (lambda r, g: r.flip(1).cumsum(1).flip(1), "gamma was ignored"),
        (lambda r, g: rl_basics.returns_to_go(r, g) - r, "include r_t itself"),
        (lambda r, g: rl_basics.returns_to_go(r, 0.9), "returns (gamma = "),   # one gamma only: the draws catch it
    ],
    check_epsilon_greedy: [
        (lambda q, eps, rng: int(torch.argmin(q)), "LOWEST"),
        (lambda q, eps, rng: int(torch.argmax(q)) if rng.random() < eps else rng.randrange(len(q)), "reversed"),
        (lambda q, eps, rng: rng.randrange(len(q)) if rng.random() < eps else len(q) - 1 - int(torch.argmax(q.flip(0))),
         "first such arm"),                                                    # ties: the last maximum
    ],
    check_bellman_backup: [
        (lambda V, P, R, g: R + P @ V, "gamma is missing"),
        (lambda V, P, R, g: g * (P @ V), "immediate reward"),
        (lambda V, P, R, g: R + g * V[:, None], "LAST axis"),
        (lambda V, P, R, g: R + 0.0, "only the immediate reward"),
        (lambda V, P, R, g: (R + g * (P @ V)).max(dim=1).values, "every action"),
        (lambda V, P, R, g: R + 0.9 * (P @ V), "(gamma = "),                  # degenerate: one gamma
        (lambda V, P, R, g: R.add_(g * (P @ V)), "changed `R` in place"),
        (lambda V, P, R, g: R + g * (P.view(-1, P.shape[-1]) @ V).view(R.shape), ".reshape"),  # non-contiguous P
    ],
}


def _in_place_returns(rewards, gamma):
    for t in reversed(range(rewards.shape[1] - 1)):
        rewards[:, t] += gamma * rewards[:, t + 1]
    return rewards


def _one_sweep(P, R, gamma):
    Q = rl_basics.bellman_backup(torch.zeros(P.shape[0], dtype=P.dtype), P, R, gamma)
    return Q.max(dim=1).values, Q.argmax(dim=1)


def _averages(P, R, gamma):
    uniform = torch.full(P.shape[:2], 1 / P.shape[1], dtype=P.dtype)
    V = rl_basics.policy_evaluation(P, R, uniform, gamma)
    return V, rl_basics.bellman_backup(V, P, R, gamma).argmax(dim=1)


def _argmin_policy(P, R, gamma):
    V, _ = rl_basics.value_iteration(P, R, gamma)
    return V, rl_basics.bellman_backup(V, P, R, gamma).argmin(dim=1)


def _normalises_P_in_place(P, R, gamma):
    P /= P.sum(dim=2, keepdim=True)  # rows already sum to 1: the values do not change, but P is written
    return rl_basics.value_iteration(P, R, gamma)


WRONG[check_returns_to_go].append((_in_place_returns, "changed `rewards` in place"))
WRONG[check_value_iteration] = [
    (_one_sweep, "one sweep"),
    (lambda P, R, g: (torch.zeros(P.shape[0], dtype=P.dtype), torch.zeros(P.shape[0], dtype=torch.long)), "all zeros"),
    (_averages, "MAX over actions"),
    (_argmin_policy, "argmin instead of argmax"),
    (lambda P, R, g: rl_basics.value_iteration(P, R, 0.9), "V on a random MDP"),   # one gamma only
    (_normalises_P_in_place, "changed `P` in place"),
]
CASES = [pytest.param(check_fn, fn, words, id=f"{check_fn.__name__}:{words}")
         for check_fn, wrongs in WRONG.items() for fn, words in wrongs]


@pytest.mark.parametrize("check_fn, wrong, words", CASES)
def test_each_wrong_answer_gets_its_message(check_fn, wrong, words, fails_with):
    fails_with(check_fn, wrong, words)


def test_epsilon_greedy_must_use_the_given_rng(fails_with):
    unseeded = random.Random(123)
    fails_with(check_epsilon_greedy, lambda q, eps, rng: rl_basics.epsilon_greedy(q, eps, unseeded), "rng")


def test_exploring_only_the_other_arms_is_named(fails_with):
    def explores_other_arms_only(q, eps, rng):
        best = int(torch.argmax(q))
        if rng.random() < eps:
            return rng.choice([a for a in range(len(q)) if a != best])
        return best

    fails_with(check_epsilon_greedy, explores_other_arms_only, "greedy one included")
