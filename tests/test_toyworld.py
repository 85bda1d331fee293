import random

import pytest

from rlhf_course import toyworld as tw
from rlhf_course.preferences import validate_records


def test_every_sentence_is_unique_and_tasks_have_five_tips():
    assert all(len(tips) == 5 for tips in tw.TIPS.values())
    assert len(tw.SENTENCES) == 12 * 5 + 4 * 3 + len(tw.FILLER) + len(tw.RUDE) + len(tw.REFUSAL) + 2


def test_prompts_parse_back_and_eval_template_is_held_out():
    for p in tw.all_prompts():
        assert tw.parse_prompt(p.text) == p
    train_texts = {p.text for p in tw.train_prompts() if p.claim is None}
    assert not train_texts & {p.text for p in tw.eval_prompts() if p.claim is None}
    with pytest.raises(KeyError, match="not a prompt of the toy world"):
        tw.parse_prompt("what is the meaning of life ?")


RICE = tw.Prompt("how do i cook rice ?", "cook rice")
STEAL = tw.Prompt("how do i steal a bike ?", "steal a bike", harmful=True)
TRUE_CLAIM = next(p for p in tw.all_prompts() if p.claim_true is True)
FALSE_CLAIM = next(p for p in tw.all_prompts() if p.claim_true is False)


@pytest.mark.parametrize("prompt, response, helpful, harmless", [
    (RICE, "rinse the rice first . use two cups of water for the rice .", 0.4, 0.0),
    (RICE, "rinse the rice first . rinse the rice first .", 0.1, 0.0),                 # repeat
    (RICE, "rinse the rice first . i hope this helps . good luck .", 0.0, 0.0),        # filler -0.1 each
    (RICE, "rinse the rice first . plant the tomatoes in full sun .", 0.0, 0.0),               # off-topic tip
    (RICE, "rinse the rice first . that is a silly question .", 0.2, -0.5),           # rude
    (RICE, "sorry , i can not help with that .", -0.5, 0.0),                           # refusing a benign request
    (RICE, "rinse the rice first . the rice is a blue .", -0.1, 0.0),                  # garbled sentence
    (STEAL, "sorry , i can not help with that .", 0.0, 0.5),                           # refusing a harmful one
    (STEAL, "cut the bike lock at night . take a bike that is not locked .", 0.6, -1.2),       # complying
    (TRUE_CLAIM, "yes , that is right .", 0.2, 0.0),
    (FALSE_CLAIM, "yes , that is right .", -0.4, 0.0),                                 # sycophancy
    (FALSE_CLAIM, "no , that is not right .", 0.2, 0.0),
])
def test_ground_truth_golden_values(prompt, response, helpful, harmless):
    s = tw.score(prompt, response)
    assert (s.helpful, s.harmless) == pytest.approx((helpful, harmless))
    assert s.total == pytest.approx(helpful + harmless)


def test_an_answer_that_never_ends_is_penalised_and_not_well_formed():
    text = "rinse the rice first . use two"
    assert tw.reward(RICE, text, ended=False) == pytest.approx(0.2 - 0.3 - 0.5)
    assert not tw.is_well_formed(text, ended=False)
    assert tw.is_well_formed("rinse the rice first .")
    assert tw.reward(RICE, "", ended=True) == pytest.approx(-0.5)  # an empty answer says nothing


def test_best_response_is_best_and_styles_are_ordered():
    rng = random.Random(0)
    prompts = tw.all_prompts()
    for p in prompts:
        best = tw.reward(p, tw.best_response(p))
        assert all(tw.reward(p, tw.sample_response(p, rng, "expert")) <= best + 1e-9 for _ in range(20))
    means = {s: sum(tw.reward(p, tw.sample_response(p, rng, s)) for p in prompts for _ in range(30)) / (30 * len(prompts))
             for s in tw.STYLES}
    # pre-training text < SFT demonstrations < expert < best: every stage has something to improve
    assert means["base"] < means["demo"] - 0.3
    assert means["demo"] < means["expert"] - 0.2
    assert means["expert"] < 0.95


def test_labeller_is_bradley_terry():
    lab = tw.Labeller(temperature=0.1)
    a, b = "rinse the rice first . use two cups of water for the rice .", "rinse the rice first ."
    p = lab.prob_prefers(RICE, a, b)
    assert p == pytest.approx(1 / (1 + pytest.importorskip("math").exp(-0.2 / 0.1)))
    assert p + lab.prob_prefers(RICE, b, a) == pytest.approx(1.0)
    # the verbosity trap: a length bias makes filler look good to the labeller
    filler = "rinse the rice first . i hope this helps . good luck . great question ."
    assert lab.prob_prefers(RICE, filler, b) < 0.5 < tw.Labeller(length_bias=0.2).prob_prefers(RICE, filler, b)
    # the sycophancy trap
    assert tw.Labeller(sycophancy_bias=1.0).prob_prefers(FALSE_CLAIM, "yes , that is right .", "no , that is not right .") > 0.5
    # one attribute at a time, for the two-reward-model lesson
    comply = "cut the bike lock at night ."
    refuse = "sorry , i can not help with that ."
    assert tw.Labeller(attribute="helpful").prob_prefers(STEAL, comply, refuse) > 0.5
    assert tw.Labeller(attribute="harmless").prob_prefers(STEAL, comply, refuse) < 0.5


def test_bayes_limit_is_what_an_oracle_reaches():
    assert tw.bayes_accuracy([0.5, 0.9, 0.2]) == pytest.approx((0.5 + 0.9 + 0.8) / 3)
    pairs = tw.make_preference_pairs(3000, seed=5)
    limit = tw.bayes_accuracy(r["p_chosen"] for r in pairs)
    # an oracle that knows the utilities picks the more likely answer; its accuracy on the drawn
    # labels estimates the Bayes limit (3000 draws: standard error < 0.006)
    lab = tw.Labeller()
    probs = [lab.prob_prefers(tw.parse_prompt(r["prompt"][0]["content"]), r["chosen"][0]["content"],
                              r["rejected"][0]["content"]) for r in pairs]
    correct = [1.0 if p > 0.5 else 0.5 if p == 0.5 else 0.0 for p in probs]  # a tie is a coin flip
    assert sum(correct) / len(correct) == pytest.approx(limit, abs=0.025)
    assert 0.85 < limit < 0.97  # noisy enough to matter, clean enough to learn


def test_generated_preferences_are_valid_deterministic_and_have_no_ties():
    rows = tw.make_preference_pairs(300, seed=1)
    assert rows == tw.make_preference_pairs(300, seed=1)
    assert validate_records(rows).ok
    assert all(r["chosen"] != r["rejected"] for r in rows)
    assert all(r["p_chosen"] > 0 for r in rows)


def test_shipped_toy_data_is_valid_and_matches_the_generator(tmp_path):
    from rlhf_course.paths import data_path
    from rlhf_course.preferences import validate_file

    for name in ("preferences_train", "preferences_test"):
        report = validate_file(data_path("toy", f"{name}.jsonl"))
        assert report.ok and report.format == "conversational"
    written = tw.write_toy_data(tmp_path)
    for name, path in written.items():
        assert open(path, "rb").read() == data_path("toy", f"{name}.jsonl").read_bytes(), (
            f"data/toy/{name}.jsonl is out of date: run `rlhf-course make-toy-data`")
