import copy
import math

import pytest
import torch

from rlhf_course import toyworld
from rlhf_course.evaluation import (EvalResult, Sample, answer_mask, best_possible_reward, evaluate_policy,
                                    is_refusal, is_sycophantic, kl_to_reference, refusal_probe, refusal_rate,
                                    sample_answers, sycophancy_probe, sycophancy_rate, win_rate, win_rate_from_scores,
                                    win_rate_vs)
from rlhf_course.loading import load_policy
from rlhf_course.sampling import Completion

PROMPTS = toyworld.eval_prompts()
BENIGN = [p for p in PROMPTS if not p.harmful and p.claim is None]
HARMFUL = [p for p in PROMPTS if p.harmful]
FALSE_CLAIM = [p for p in PROMPTS if p.claim_true is False]
TRUE_CLAIM = [p for p in PROMPTS if p.claim_true is True]
# a handful of held-out prompts of every kind: 2 benign, 1 harmful, 1 true claim, 2 false claims
FEW = BENIGN[:2] + HARMFUL[:1] + TRUE_CLAIM[:1] + FALSE_CLAIM[:2]
REFUSE, AGREE, DISAGREE = "sorry , i can not help with that .", "yes , that is right .", "no , that is not right ."


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny matmuls: one thread is faster than several fighting over a shared CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def base(tiny):
    return load_policy(tiny, lora=False, verbose=False)


@pytest.fixture(scope="module")
def perturbed(base):
    """The base model with every weight nudged: a different policy, close to the base."""
    model = copy.deepcopy(base)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * p.std() * torch.randn(p.shape, generator=gen))
    return model


# --- rates on hand-written answers ------------------------------------------------------------------

def test_refusal_and_sycophancy_rates_on_hand_written_answers():
    b1, b2 = BENIGN[:2]
    h1, h2 = HARMFUL[:2]
    f1, f2, f3 = FALSE_CLAIM[:3]
    t1 = TRUE_CLAIM[0]
    tip = toyworld.TIPS[b1.task][0] + " ."
    rows = [
        (b1, REFUSE), (b2, tip), (b2, tip + " good luck ."), (t1, REFUSE + " " + AGREE),  # 2 refusals
        (h1, REFUSE), (h2, "jump over the gate ."),                                        # harmful: 1 of 2 refuse
        (f1, AGREE), (f2, DISAGREE), (f3, DISAGREE + " " + AGREE), (f1, "good luck ."),  # false claims: 2 of 4 agree
    ]
    prompts = [p.text for p, _ in rows]            # texts, as a trainer would pass them
    completions = [Completion(t, True, 5) for _, t in rows]
    assert refusal_rate(prompts, completions) == 2 / 8, "benign: the 4 first rows and the 4 claims (a claim is benign)"
    assert refusal_rate(prompts, completions, harmful=True) == 1 / 2
    assert sycophancy_rate(prompts, completions) == 2 / 4
    # agreeing with a TRUE claim is not sycophancy; plain strings work as completions
    assert sycophancy_rate([t1, f1], [AGREE, DISAGREE]) == 0.0
    assert not is_sycophantic(t1, AGREE) and is_sycophantic(f1, AGREE) and is_refusal(REFUSE)
    assert math.isnan(refusal_rate([b1], [tip], harmful=True)), "no harmful prompt: undefined, not 0"
    assert math.isnan(sycophancy_rate([b1], [tip]))


def test_best_possible_reward_on_held_out_prompts():
    # 12 benign (1.0 each), 4 harmful (a refusal: 0.5), 24 claims (verdict 0.2 + five tips)
    assert best_possible_reward() == pytest.approx((12 * 1.0 + 4 * 0.5 + 24 * 1.2) / 40)


# --- win rate ------------------------------------------------------------------------------------------

def test_win_rate_golden_values():
    assert win_rate_from_scores([1, 2, 3], [0, 1, 2]) == 1.0
    assert win_rate_from_scores([1, 2, 3], [1, 2, 3]) == 0.5
    assert win_rate_from_scores([1, 2, 3, 4], [0, 2, 5, 3]) == (1 + 0.5 + 0 + 1) / 4
    assert win_rate_from_scores([0.1 + 0.2], [0.3]) == 0.5, "floating-point noise is a tie"


def test_win_rate_pairs_answers_by_prompt_and_uses_the_judge():
    best = [(p.text, toyworld.best_response(p)) for p in FEW]
    filler = [(p.text, "good luck .") for p in FEW]
    assert win_rate(best, filler) == 1.0        # ground truth by default
    assert win_rate(filler, best) == 0.0
    assert win_rate(best, best) == 0.5
    mixed = best[:3] + filler[3:]              # 3 wins, 3 ties
    assert win_rate(mixed, filler) == (3 + 0.5 * 3) / 6
    # another judge: the longer answer wins -> the filler (3 words) loses to every best answer, refusal included
    longer = lambda prompts, completions: [float(len(c.split())) for c in completions]  # noqa: E731
    assert win_rate(filler, best, longer) == 0.0
    with pytest.raises(ValueError, match="same prompts"):
        win_rate(best, filler[::-1])


# --- KL --------------------------------------------------------------------------------------------------

def test_answer_mask_keeps_the_first_eos_and_drops_what_follows():
    eos = 7
    response = torch.tensor([[3, 4, eos, 0, 0], [3, 4, 5, 6, 1], [eos, 0, 0, 0, 0]])
    assert answer_mask(response, eos).tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]


def test_kl_estimators_match_a_direct_computation(base, perturbed, tokenizer):
    from rlhf_course.sampling import sample_ids

    torch.manual_seed(0)
    query, response, ended = sample_ids(perturbed, tokenizer, [p.text for p in FEW], 24)
    k1, k3 = kl_to_reference(perturbed, base, tokenizer, query, response)
    assert k1.shape == k3.shape == (len(FEW),)
    assert (k3 > 0).all(), "k3 = (r - 1) - log r is positive wherever the two models differ"
    # row 0, token by token, without padding: sum of log pi - log pi_ref over the answer
    n_q = int((query[0] != tokenizer.pad_token_id).sum())
    n_r = int(answer_mask(response, tokenizer.eos_token_id)[0].sum())
    ids = torch.cat([query[0, -n_q:], response[0, :n_r]])[None]
    with torch.no_grad():
        lp, lq = (torch.log_softmax(m(ids).logits[0, n_q - 1 : -1], -1).gather(-1, ids[0, n_q:, None])[:, 0]
                  for m in (perturbed, base))
    assert k1[0].item() == pytest.approx((lp - lq).sum().item(), abs=1e-4)
    assert k3[0].item() == pytest.approx((torch.exp(lq - lp) - 1 - (lq - lp)).sum().item(), abs=1e-4)


# --- evaluate_policy on the tiny model ------------------------------------------------------------

def test_evaluate_policy_on_the_tiny_base_model(base, perturbed, tokenizer):
    lengths = lambda prompts, completions: [float(c.n_tokens) for c in completions]  # noqa: E731
    result = evaluate_policy(base, tokenizer, FEW, n_per_prompt=3, max_new_tokens=32, reference=base,
                             reward_fn=lengths)
    s = result.summary()
    assert s["n_samples"] == len(result.samples) == 3 * len(FEW)
    assert all(type(v) is float for v in s.values()), "a flat dict of floats"
    assert [x.prompt for x in result.samples[:4]] == [FEW[0].text] * 3 + [FEW[1].text], "prompt-major order"
    for key in ("well_formed", "ended", "refusal_benign", "refusal_harmful", "sycophancy"):
        assert 0.0 <= s[key] <= 1.0, key
    assert 0 < s["length"] <= 32
    assert s["reward"] == pytest.approx(s["helpful"] + s["harmless"])
    truth = toyworld.ground_truth_rewards([x.prompt for x in result.samples], [x.completion for x in result.samples])
    assert s["reward"] == pytest.approx(sum(truth) / len(truth))
    assert s["rm_score"] == pytest.approx(s["length"])
    assert s["kl"] == 0.0 and s["kl_k3"] == 0.0, "KL of a model to itself is exactly zero"
    # the same seed gives the same answers; the caller's random stream is left as it was
    torch.manual_seed(123)
    again = evaluate_policy(base, tokenizer, FEW, n_per_prompt=3, max_new_tokens=32, baseline=result,
                            reward_fn=lengths)
    after = torch.rand(1)
    torch.manual_seed(123)
    assert torch.equal(after, torch.rand(1))
    assert [x.completion for x in again.samples] == [x.completion for x in result.samples]
    assert again.summary()["win_rate"] == 0.5 and again.summary()["win_rate_rm"] == 0.5
    other_seed = evaluate_policy(base, tokenizer, FEW, n_per_prompt=3, max_new_tokens=32, seed=1)
    assert [x.completion for x in other_seed.samples] != [x.completion for x in result.samples]
    with pytest.raises(ValueError, match="other prompts"):
        evaluate_policy(base, tokenizer, FEW[:2], n_per_prompt=1, max_new_tokens=8, baseline=result)
    # a different policy is measurably far from the reference
    drifted = evaluate_policy(perturbed, tokenizer, FEW, n_per_prompt=3, max_new_tokens=32, reference=base)
    assert drifted.summary()["kl"] > 0.5 and drifted.summary()["kl_k3"] > 0.5
    assert all(x.kl_k3 > 0 for x in drifted.samples)


def test_kl_with_disabled_adapter(tiny, tokenizer):
    policy = load_policy(tiny, verbose=False)  # fresh LoRA: B = 0, so the adapter changes nothing yet
    fresh = evaluate_policy(policy, tokenizer, FEW, n_per_prompt=2, max_new_tokens=24, reference="self")
    assert fresh.summary()["kl"] == 0.0 and fresh.summary()["kl_k3"] == 0.0
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    moved = evaluate_policy(policy, tokenizer, FEW, n_per_prompt=2, max_new_tokens=24, reference="self")
    assert moved.summary()["kl"] > 0 and all(x.kl_k3 > 0 for x in moved.samples)
    assert policy.training, "evaluation restores the model's train/eval mode"


def test_win_rate_vs_and_probes(base, perturbed, tokenizer):
    kw = dict(n_per_prompt=2, max_new_tokens=32)
    assert win_rate_vs(base, base, tokenizer, FEW, **kw) == 0.5, "same model, same seed: all ties"
    by_length = lambda prompts, completions: [-float(c.n_tokens) for c in completions]  # noqa: E731
    a = sample_answers(base, tokenizer, FEW, **kw)
    b = sample_answers(perturbed, tokenizer, FEW, **kw)
    assert win_rate_vs(base, perturbed, tokenizer, FEW, **kw, judge=by_length) == win_rate(a, b, by_length)
    rate = sycophancy_probe(base, tokenizer, FEW, **kw)
    samples = sample_answers(base, tokenizer, FALSE_CLAIM[:2], **kw)
    assert rate == sum(is_sycophantic(x.world, x.completion.text) for x in samples) / len(samples)
    rates = refusal_probe(base, tokenizer, FEW, **kw)
    assert set(rates) == {"benign", "harmful"} and all(0 <= r <= 1 for r in rates.values())


def test_prompts_outside_the_toy_world_get_everything_but_the_ground_truth(base, tokenizer):
    result = evaluate_policy(base, tokenizer, ["hello there , how are you ?"], n_per_prompt=2, max_new_tokens=8,
                             reference=base)
    s = result.summary()
    assert "reward" not in s and s["kl"] == 0.0 and s["n_samples"] == 2
    assert all(x.score is None and math.isnan(x.reward) for x in result.samples)


def test_eval_result_rewards_are_per_sample():
    samples = [Sample(p.text, Completion(toyworld.best_response(p), True, 10), p) for p in FEW]
    result = EvalResult(samples)
    assert result.rewards == [toyworld.reward(p, toyworld.best_response(p)) for p in FEW]
    assert result.summary()["reward"] == pytest.approx(best_possible_reward(FEW))
