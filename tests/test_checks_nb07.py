"""Notebook 7's checks cannot be fooled: the package's functions pass, and every wrong answer below - in
place, at one beta or tau only (tau = 0.5, where 2 tau = 1 / (2 tau)), unstable at a wide gap, `>=` on the
ties of the first step, and each promised mistake - gets ✗ with its own message (test_exercises.py proves
the stub fails and the solution passes)."""

import contextlib

import pytest
import torch
import torch.nn.functional as F

from rlhf_course import dpo
from rlhf_course.checks import nb07_dpo as checks
from rlhf_course.checks.core import run_check as _run
from rlhf_course.logprobs import sequence_logprobs, token_logprobs


@pytest.mark.parametrize("check_fn, reference", [(checks.check_dpo_loss, dpo.dpo_loss),
                                                 (checks.check_ipo_loss, checks.ipo_loss_reference)])
def test_the_package_function_passes(check_fn, reference):
    assert check_fn.reference is reference
    assert _run(check_fn, reference)[0] is True


def _seq(shift=True, mask="completion_shifted"):
    def sequence_logps(model, input_ids, attention_mask, completion_mask):
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        if not shift:
            return (token_logprobs(logits, input_ids) * completion_mask).sum(1)
        logps = token_logprobs(logits[:, :-1], input_ids[:, 1:])
        m = {"completion_shifted": completion_mask[:, 1:], "completion_unshifted": completion_mask[:, :-1],
             "attention": attention_mask[:, 1:]}[mask]
        return (logps * m).sum(1)
    return sequence_logps


def test_sequence_logps_mistakes_are_named():
    assert "not shifted" in _run(checks.check_sequence_logps, _seq(shift=False))[1]
    assert "off by one" in _run(checks.check_sequence_logps, _seq(mask="completion_unshifted"))[1]
    assert "prompt tokens too" in _run(checks.check_sequence_logps, _seq(mask="attention"))[1]
    ok, printed = _run(checks.check_sequence_logps, _seq())
    assert ok is True and "✓" in printed, printed
    assert _run(checks.check_sequence_logps, sequence_logprobs)[0] is True

    def masks_in_place(model, input_ids, attention_mask, completion_mask):
        completion_mask[:, -1] = 0
        return sequence_logprobs(model, input_ids, attention_mask, completion_mask)

    assert "changed `completion_mask` in place" in _run(checks.check_sequence_logps, masks_in_place)[1]


def _loss(kind):
    def dpo_loss(pc, pr, rc, rr, *, beta):
        lc, lr = pc - rc, pr - rr
        if kind == "unstable":
            loss = -torch.log(torch.sigmoid(beta * (lc - lr))).mean()
        elif kind == "fixed_beta":
            loss = -F.logsigmoid(0.1 * (lc - lr)).mean()
        elif kind == "in_place":
            pc -= rc
            loss = -F.logsigmoid(beta * (pc - lr)).mean()
        elif kind == "beta_outside":
            loss = -beta * F.logsigmoid(lc - lr).mean()
        elif kind == "ref_sign":
            loss = -F.logsigmoid(beta * ((pc + rc) - (pr + rr))).mean()
        elif kind == "swapped":
            loss = -F.logsigmoid(beta * (lr - lc)).mean()
        else:
            loss = -F.logsigmoid(beta * (lc - lr)).mean()
        scale = 1.0 if kind == "no_beta_rewards" else beta
        return loss, scale * lc.detach(), scale * lr.detach()
    return dpo_loss


@pytest.mark.parametrize("kind, message", [
    ("beta_outside", "beta is outside the sigmoid"), ("ref_sign", "added, not subtracted"),
    ("swapped", "chosen and rejected are swapped"), ("no_beta_rewards", "missing beta"),
    ("unstable", "use -F.logsigmoid(x)"), ("fixed_beta", "beta is fixed at 0.1"), ("in_place", "in place"),
])
def test_dpo_loss_mistakes_are_named(kind, message, fails_with):
    fails_with(checks.check_dpo_loss, _loss(kind), message)
    assert _run(checks.check_dpo_loss, _loss("right"))[0] is True


def _batch_loss(reference_off: bool, ties_right: bool = False):
    def dpo_batch_loss(model, batch, *, beta):
        seq = _seq()
        args = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
        pc, pr = seq(model, *args).chunk(2)
        with torch.no_grad(), (model.disable_adapter() if reference_off else contextlib.nullcontext()):
            rc, rr = seq(model, *args).chunk(2)
        loss, cr, rj = dpo.dpo_loss(pc, pr, rc, rr, beta=beta)
        right = (cr >= rj) if ties_right else (cr > rj)
        return loss, {"rewards/chosen": cr.mean().item(), "rewards/rejected": rj.mean().item(),
                      "rewards/accuracies": right.float().mean().item(), "rewards/margins": (cr - rj).mean().item()}
    return dpo_batch_loss


def test_dpo_batch_loss_catches_a_reference_that_is_the_policy_and_ties_counted_right():
    assert "margins are exactly 0" in _run(checks.check_dpo_batch_loss, _batch_loss(reference_off=False))[1]
    printed = _run(checks.check_dpo_batch_loss, _batch_loss(reference_off=True, ties_right=True))[1]
    assert "counts ties as right" in printed, printed
    ok, printed = _run(checks.check_dpo_batch_loss, _batch_loss(reference_off=True))
    assert ok is True and "✓" in printed, printed
    ok, printed = _run(checks.check_dpo_batch_loss, dpo.dpo_batch_loss)
    assert ok is True, printed


def test_ipo_loss_mistakes_are_named():
    def h(pc, pr, rc, rr):
        return (pc - rc) - (pr - rr)

    assert "not 1 / tau" in _run(checks.check_ipo_loss, lambda pc, pr, rc, rr, tau: ((h(pc, pr, rc, rr) - 1 / tau) ** 2).mean())[1]
    assert "not 2 tau" in _run(checks.check_ipo_loss, lambda pc, pr, rc, rr, tau: ((h(pc, pr, rc, rr) - 2 * tau) ** 2).mean())[1]
    assert "DPO's loss" in _run(checks.check_ipo_loss, lambda pc, pr, rc, rr, tau: -F.logsigmoid(tau * h(pc, pr, rc, rr)).mean())[1]
    # tau = 0.5, where 2 tau = 1 / (2 tau): a formula right only there is caught by the other draws
    assert "tau = " in _run(checks.check_ipo_loss, lambda pc, pr, rc, rr, tau: ((h(pc, pr, rc, rr) - 1.0) ** 2).mean())[1]
    ok, printed = _run(checks.check_ipo_loss, lambda pc, pr, rc, rr, tau: ((h(pc, pr, rc, rr) - 1 / (2 * tau)) ** 2).mean())
    assert ok is True and "✓" in printed
