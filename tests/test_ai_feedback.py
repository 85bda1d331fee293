import math

import pytest
import torch

from rlhf_course import toyworld
from rlhf_course.feedback import (CONSTITUTION, ConstitutionalJudge, GroundTruthJudge, Label, Pair, PrincipleJudge,
                                  RewardModelJudge, canonical_choice, cohen_kappa, critique, judge_agreement,
                                  judge_prompt, label_pairs, letter_logprobs, make_judge, merge_labels, principles,
                                  revise, simulated_labeller)
from rlhf_course.logprobs import sequence_logprobs
from rlhf_course.sampling import render_prompts
from tests.test_labelling import toy_pairs


def truth(pairs: list[Pair]) -> list[Label]:
    """The ground truth's own verdicts (no noise): the better answer wins, equal answers tie."""
    out = []
    for p in pairs:
        w = toyworld.parse_prompt(p.prompt)
        gap = toyworld.reward(w, p.answer_a) - toyworld.reward(w, p.answer_b)
        decision = "tie" if abs(gap) < 1e-9 else "a" if gap > 0 else "b"
        out.append(Label(p.id, p.prompt, p.answer_a, p.answer_b, decision, False, "truth"))
    return out


def test_a_sharp_ground_truth_judge_agrees_with_the_truth_and_noise_lowers_agreement():
    pairs = toy_pairs(120, seed=3)
    sharp = judge_agreement(GroundTruthJudge(toyworld.Labeller(temperature=1e-3)), truth(pairs), tie_band=0.01)
    assert sharp.n_items == 120 and sharp.percent == 100.0 and sharp.cohen_kappa == pytest.approx(1.0)
    noisy = GroundTruthJudge(toyworld.Labeller(temperature=1.0))
    first = judge_agreement(noisy, truth(pairs), sample=True, seed=0)
    again = judge_agreement(noisy, truth(pairs), sample=True, seed=0)
    assert first.percent == again.percent  # seeded
    assert 50 < first.percent < 95 and 0 < first.cohen_kappa < sharp.cohen_kappa
    # the numbers are those of feedback.cohen_kappa on the matched decisions
    labels = noisy.label(pairs, sample=True, seed=0)
    x = [canonical_choice(l) for l in truth(pairs)]
    y = [canonical_choice(l) for l in labels]
    assert first.cohen_kappa == pytest.approx(cohen_kappa(x, y))


def test_a_judge_writes_a_label_file_that_merges_with_a_persons(tmp_path):
    pairs = toy_pairs(20, seed=4)
    label_pairs(pairs, tmp_path / "student.jsonl", simulated_labeller(seed=1), labeller_id="student")
    labels = GroundTruthJudge().label(pairs, path=tmp_path / "judge.jsonl")
    assert len(labels) == 20 and {l.labeller for l in labels} == {"judge:ground-truth"}
    result = merge_labels([tmp_path])
    assert result.labellers == ["judge:ground-truth", "student"] and not result.skipped
    assert result.agreement.n_items == 20 and result.agreement.cohen_kappa is not None


def test_reward_model_judge_is_the_bradley_terry_probability_of_the_reward_model(tiny, tokenizer):
    from rlhf_course.loading import load_reward_model
    from rlhf_course.reward_model import score_texts

    torch.manual_seed(0)
    rm = load_reward_model(tiny, lora=False, tokenizer=tokenizer, verbose=False)
    pairs = toy_pairs(8, seed=6)
    judge = RewardModelJudge(rm, tokenizer)
    probs = judge(pairs)
    swapped = judge([Pair(p.prompt, p.answer_b, p.answer_a) for p in pairs])
    assert all(0 < p < 1 for p in probs)
    assert probs == pytest.approx([1 - q for q in swapped], abs=1e-5)
    r_a = score_texts(rm, tokenizer, [p.prompt for p in pairs], [p.answer_a for p in pairs])
    r_b = score_texts(rm, tokenizer, [p.prompt for p in pairs], [p.answer_b for p in pairs])
    assert probs == pytest.approx(torch.sigmoid(r_a - r_b).tolist(), abs=1e-5)
    assert isinstance(make_judge(tiny, reward_model=rm, tokenizer=tokenizer), RewardModelJudge)
    assert isinstance(make_judge(tiny), PrincipleJudge)
    assert isinstance(make_judge(tiny, labeller=toyworld.Labeller()), GroundTruthJudge)


def test_a_trained_reward_model_judge_mostly_agrees_with_the_ground_truth(tiny, tokenizer):
    from rlhf_course.reward_model import load_rm_data, train_reward_model

    rm = train_reward_model(tiny, steps=30, eval_dataset=load_rm_data("test").select(range(64)), progress=False)
    pairs = toy_pairs(150, seed=7)
    result = judge_agreement(RewardModelJudge(rm.model, tokenizer), [l for l in truth(pairs) if l.decision != "tie"])
    assert result.percent > 70 and result.cohen_kappa > 0.4, result


def test_constitutional_judge_cancels_position_bias_and_scores_letters_correctly(tiny, tokenizer):
    """The 7b judge's code path, on the tiny model (its verdicts mean nothing; the mechanics are checked)."""
    from rlhf_course.loading import load_policy

    model = load_policy(tiny, lora=False, verbose=False)
    pairs = toy_pairs(3, seed=8)
    judge = ConstitutionalJudge(model, tokenizer, batch_size=4)
    probs = judge(pairs)
    swapped = judge([Pair(p.prompt, p.answer_b, p.answer_a) for p in pairs])
    assert all(0 < p < 1 for p in probs)
    assert probs == pytest.approx([1 - q for q in swapped], abs=1e-5)  # judge(A, B) = 1 - judge(B, A)

    question = judge_prompt(pairs[0])
    assert CONSTITUTION in question and pairs[0].answer_a in question and question.endswith("A or B.")
    assert judge_prompt(pairs[0], swap=True).index(pairs[0].answer_b) < judge_prompt(pairs[0], swap=True).index(pairs[0].answer_a)
    # batched, padded log-probs equal the log-prob of each (question + letter) computed alone
    batched = letter_logprobs(model, tokenizer, [question, judge_prompt(pairs[1])], batch_size=3)
    assert batched.shape == (2, 2)
    text = render_prompts(tokenizer, [question])[0]
    for j, letter in enumerate("AB"):
        prompt_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids = tokenizer(text + letter, add_special_tokens=False)["input_ids"]
        mask = torch.tensor([[0] * len(prompt_ids) + [1] * (len(ids) - len(prompt_ids))])
        alone = sequence_logprobs(model, torch.tensor([ids]), torch.ones_like(mask), mask)
        assert batched[0, j].item() == pytest.approx(alone.item(), abs=1e-4)
    assert not math.isclose(batched[0, 0].item(), batched[0, 1].item())


def test_the_7b_judge_needs_the_model():
    from rlhf_course.profiles import Hardware, pick_profile

    big = pick_profile("7b", Hardware("cuda", "T4", 15.0, False, 1, 2))
    with pytest.raises(ValueError, match="model= and tokenizer="):
        make_judge(big)
    assert isinstance(make_judge(big, model=object(), tokenizer=object()), ConstitutionalJudge)


# --- the constitution applied at tiny scale: critique, revise, judge ----------------------------------

def test_the_constitution_has_five_named_principles():
    assert list(principles()) == ["Helpful", "Honest", "Harmless", "Respectful", "Concise"]


def _prompt(task: str, harmful: bool = False, claim_true: bool | None = None) -> toyworld.Prompt:
    return next(p for p in toyworld.all_prompts() if p.task == task and p.harmful == harmful and
                (p.claim_true is claim_true))


@pytest.mark.parametrize("prompt, answer, principle", [
    (lambda: _prompt("cook rice"), "rinse the rice first . figure it out yourself .", "Respectful"),
    (lambda: _prompt("cook rice"), "rinse the rice first . good luck .", "Concise"),
    (lambda: _prompt("cook rice"), "sorry , i can not help with that .", "Helpful"),
    (lambda: _prompt("steal a bike", harmful=True), "cut the bike lock at night .", "Harmless"),
    (lambda: _prompt("cook rice", claim_true=False), "yes , that is right .", "Honest"),
])
def test_each_principle_names_what_it_objects_to(prompt, answer, principle):
    p = prompt()
    names = {c.principle for c in critique(p.text, answer)}
    assert principle in names, critique(p.text, answer)
    assert set(names) <= set(principles())


def test_a_good_answer_gets_no_critique_and_revision_never_lowers_the_ground_truth():
    for p in toyworld.eval_prompts():
        best = toyworld.best_response(p)
        assert critique(p.text, best) == [] and revise(p.text, best) == best
    pairs = toy_pairs(200, seed=5)
    before = [toyworld.reward(p.prompt, a) for p in pairs for a in (p.answer_a, p.answer_b)]
    after = [toyworld.reward(p.prompt, revise(p.prompt, a)) for p in pairs for a in (p.answer_a, p.answer_b)]
    assert all(y >= x - 1e-9 for x, y in zip(before, after))
    assert sum(after) / len(after) > sum(before) / len(before) + 0.1
    # what the reviser cannot cut it leaves: at most a complaint about the answer as a whole (no steps at all)
    assert all(all(c.sentence == "" for c in critique(p.prompt, revise(p.prompt, a))) or revise(p.prompt, a) == a
               for p in pairs for a in (p.answer_a, p.answer_b))


def test_the_principle_judge_agrees_with_the_ground_truth_often_but_not_always():
    pairs = toy_pairs(200, seed=6)
    judge = PrincipleJudge()
    probs, swapped = judge(pairs), judge([Pair(p.prompt, p.answer_b, p.answer_a) for p in pairs])
    assert all(abs(a + b - 1) < 1e-12 for a, b in zip(probs, swapped))  # no position bias, by construction
    agreement = judge_agreement(judge, truth(pairs))
    assert 75 < agreement.percent < 100 and agreement.cohen_kappa > 0.5
