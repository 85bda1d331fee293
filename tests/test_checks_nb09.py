"""Notebook 9's checks name the mistake: each known wrong implementation gets its own message, the
package's own function passes (test_exercises.py proves the stub fails and the solution passes)."""

import math

import pytest
import torch
import torch.nn.functional as F

from rlhf_course import dpo_family, grpo_variants, overoptimization, toyworld
from rlhf_course.checks import nb09_frontier as checks
from rlhf_course.checks.core import run_check


def _passes(check_fn, candidate):
    ok, printed = run_check(check_fn, candidate)
    assert ok is True and printed.startswith("✓"), printed


# --- 9.1 ---------------------------------------------------------------------------------------------------

def _fit(kind):
    def fit_best_of_n(d, gain):
        d_t, g = torch.tensor(d, dtype=torch.float64), torch.tensor(gain, dtype=torch.float64)
        if kind == "kl":
            d_t = d_t**2
        cols = [d_t, d_t**2 if kind == "beta_sign" else -d_t**2]
        if kind == "intercept":
            cols = [torch.ones_like(d_t)] + cols
        sol = torch.linalg.lstsq(torch.stack(cols, 1), g.unsqueeze(1)).solution.squeeze(1).tolist()
        return tuple(sol[-2:])
    return fit_best_of_n


@pytest.mark.parametrize("kind, words", [("beta_sign", "wrong sign"), ("intercept", "intercept"),
                                         ("kl", "sqrt(KL)")])
def test_fit_mistakes_are_named(kind, words, fails_with):
    fails_with(checks.check_fit_best_of_n, _fit(kind), words)


def test_fit_reference_passes():
    _passes(checks.check_fit_best_of_n, _fit("right"))
    _passes(checks.check_fit_best_of_n, overoptimization.fit_best_of_n)


# --- 9.2 ---------------------------------------------------------------------------------------------------

def _ensemble(kind):
    def ensemble_reward(scores, aggregate):
        if kind == "raw":
            z = scores
        elif kind == "dim":
            z = (scores - scores.mean(0, keepdim=True)) / scores.std(0, keepdim=True)
        else:
            z = (scores - scores.mean(1, keepdim=True)) / scores.std(1, keepdim=True)
        if aggregate == "mean":
            return z.mean(0)
        return z.max(0).values if kind == "max" else z.min(0).values
    return ensemble_reward


@pytest.mark.parametrize("kind, words", [("raw", "one scale"), ("dim", "across the members"), ("max", "LOWEST")])
def test_ensemble_mistakes_are_named(kind, words, fails_with):
    fails_with(checks.check_ensemble_reward, _ensemble(kind), words)


def test_ensemble_catches_an_in_place_change(fails_with):
    def in_place(scores, aggregate):
        scores -= scores.mean(1, keepdim=True)
        return overoptimization.ensemble_reward(scores, aggregate)

    fails_with(checks.check_ensemble_reward, in_place, "in place")


def test_ensemble_reference_passes():
    _passes(checks.check_ensemble_reward, _ensemble("right"))
    _passes(checks.check_ensemble_reward, overoptimization.ensemble_reward)


# --- 9.3 ---------------------------------------------------------------------------------------------------

def _steps(kind):
    def steps_in_order(prompt, response, ended=True):
        steps = toyworld.TIPS[prompt.task]
        sentences = toyworld.split_sentences(response)
        if kind != "no_ended" and not ended:
            return False
        if len(sentences) < (2 if kind == "two" else 3):
            return False
        if kind != "filler" and not all(s in steps for s in sentences):
            return False
        order = [steps.index(s) for s in sentences if s in steps]
        if kind == "consecutive":
            return order == list(range(order[0], order[0] + len(order)))
        if kind == "repeats":
            return all(a <= b for a, b in zip(order, order[1:]))
        if kind == "unordered":
            return True
        return all(a < b for a, b in zip(order, order[1:]))
    return steps_in_order


@pytest.mark.parametrize("kind, words", [
    ("unordered", "order TIPS lists"), ("two", "at least three"), ("filler", "filler fails"),
    ("repeats", "repeated step"), ("no_ended", "cut at the length limit"), ("consecutive", "only the order matters"),
])
def test_steps_mistakes_are_named(kind, words, fails_with):
    fails_with(checks.check_steps_in_order, _steps(kind), words)


def test_steps_reference_passes():
    _passes(checks.check_steps_in_order, _steps("right"))
    _passes(checks.check_steps_in_order, grpo_variants.steps_in_order)


def test_the_verifiable_reward_on_sampled_style_answers():
    rice = next(p for p in toyworld.eval_prompts() if p.task == "cook rice" and p.claim is None)
    good = toyworld.join_sentences(toyworld.TIPS["cook rice"][:3])
    assert grpo_variants.steps_reward([rice.text, rice.text], [good, good + " good luck ."]) == [1.0, 0.0]
    train, held_out = grpo_variants.rlvr_prompts()
    assert len(train) == 48 and len(held_out) == 12 and not {p.text for p in train} & {p.text for p in held_out}
    with pytest.raises(AssertionError, match="how-to"):
        grpo_variants.steps_in_order(next(p for p in held_out + toyworld.eval_prompts() if p.harmful), good)


# --- 9.4 ---------------------------------------------------------------------------------------------------

def _simpo(kind):
    def simpo_loss(pc, pr, lc, lr, beta, gamma):
        if kind == "no_length":
            lc, lr = torch.ones_like(lc), torch.ones_like(lr)
        rc, rr = beta * pc / lc, beta * pr / lr
        margin = gamma if kind != "gamma_plus" else -gamma
        losses = -torch.log(torch.sigmoid(rc - rr - margin)) if kind == "unstable" else -F.logsigmoid(rc - rr - margin)
        scale = 1.0 / beta if kind == "no_beta_rewards" else 1.0
        return (losses.sum() if kind == "sum" else losses.mean()), scale * rc.detach(), scale * rr.detach()
    return simpo_loss


@pytest.mark.parametrize("kind, words", [("no_length", "lengths"), ("gamma_plus", "wrong sign"),
                                         ("sum", "do not sum"), ("no_beta_rewards", "missing beta"),
                                         ("unstable", "overflows")])
def test_simpo_mistakes_are_named(kind, words, fails_with):
    fails_with(checks.check_simpo_loss, _simpo(kind), words)


def test_simpo_reference_passes():
    _passes(checks.check_simpo_loss, _simpo("right"))
    _passes(checks.check_simpo_loss, lambda *a: dpo_family.simpo_loss(*a[:4], beta=a[4], gamma=a[5]))
    assert math.isfinite(dpo_family.simpo_loss(torch.tensor([-3.0]), torch.tensor([-4.0]), torch.tensor([3.0]),
                                               torch.tensor([2.0]))[0].item())


def test_simpo_checks_several_betas_so_a_fixed_beta_does_not_pass(fails_with):
    """A loss that ignores the caller's beta and gamma coincides with the right one at the first setting only."""
    def fixed(pc, pr, lc, lr, beta, gamma):
        return dpo_family.simpo_loss(pc, pr, lc, lr, beta=2.0, gamma=0.8)
    fails_with(checks.check_simpo_loss, fixed, "")


# --- the rest of each header's list of mistakes ------------------------------------------------------------

def _fit_from_reference(kind):
    def fit_best_of_n(d, gain):
        alpha, beta = overoptimization.fit_best_of_n(d, gain)
        if kind == "swapped":
            return beta, alpha
        # the RL form's features: d and -d log d
        d_t, g = torch.tensor(d, dtype=torch.float64), torch.tensor(gain, dtype=torch.float64)
        log_d = torch.where(d_t > 0, torch.log(d_t.clamp_min(1e-12)), torch.zeros_like(d_t))
        cols = torch.stack([d_t, -d_t * log_d], 1)
        return tuple(torch.linalg.lstsq(cols, g.unsqueeze(1)).solution.squeeze(1).tolist())
    return fit_best_of_n


@pytest.mark.parametrize("kind, words", [("swapped", "swapped"), ("rl_form", "RL form")])
def test_more_fit_mistakes_are_named(kind, words, fails_with):
    fails_with(checks.check_fit_best_of_n, _fit_from_reference(kind), words)


def _ensemble_variant(kind):
    def ensemble_reward(scores, aggregate):
        centred = scores - scores.mean(1, keepdim=True)
        if kind == "centre_only":
            z = centred
        elif kind == "population":
            z = centred / scores.std(1, keepdim=True, unbiased=False)
        else:
            z = centred / scores.std(1, keepdim=True)
        if kind == "swapped_aggregates":
            return z.min(0).values if aggregate == "mean" else z.mean(0)
        return z.mean(0) if aggregate == "mean" else z.min(0).values
    return ensemble_reward


@pytest.mark.parametrize("kind, words", [("centre_only", "divide by its std"), ("population", "sample standard"),
                                         ("swapped_aggregates", "swapped")])
def test_more_ensemble_mistakes_are_named(kind, words, fails_with):
    fails_with(checks.check_ensemble_reward, _ensemble_variant(kind), words)


def test_ensemble_catches_an_in_place_change_on_a_non_contiguous_view(fails_with):
    def in_place_if_strided(scores, aggregate):
        if not scores.is_contiguous():
            scores.sub_(scores.mean(1, keepdim=True))  # a change only the transposed case can see
        return overoptimization.ensemble_reward(scores, aggregate)

    fails_with(checks.check_ensemble_reward, in_place_if_strided, "transposed view")


@pytest.mark.parametrize("case, words", [("off topic", "another task"), ("empty", "empty answer")])
def test_steps_off_topic_and_empty_are_named(case, words, fails_with):
    def wrong_on(name):
        expected = {n: (prompt, response, verdict) for n, prompt, response, verdict, _ in checks._steps_cases()}
        _, bad_response, right = expected[name]

        def steps_in_order(prompt, response, ended=True):
            verdict = grpo_variants.steps_in_order(prompt, response, ended)
            return (not right) if response == bad_response and ended else verdict
        return steps_in_order

    fails_with(checks.check_steps_in_order, wrong_on(case), words)
