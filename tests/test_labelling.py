import json
import math
import random

import pytest

from rlhf_course import toyworld
from rlhf_course.cli import main
from rlhf_course.feedback import (Label, LabelFileError, LabellingSession, LabellingWidget, Pair, canonical_choice,
                                  cohen_kappa, compare_labels, fleiss_kappa, label_pairs, labels_to_preferences,
                                  merge_labels, pair_id, percent_agreement, read_labels, repair_torn_tail,
                                  sample_pairs, simulated_labeller)
from rlhf_course.preferences import validate_file, validate_records


def toy_pairs(n: int, seed: int = 0) -> list[Pair]:
    """n distinct pairs of toy-world answers (no model needed)."""
    rng = random.Random(seed)
    prompts = toyworld.train_prompts()
    pairs: dict[str, Pair] = {}
    while len(pairs) < n:
        p = rng.choice(prompts)
        a, b = toyworld.sample_response(p, rng, "base"), toyworld.sample_response(p, rng, "demo")
        if a != b:
            pair = Pair(p.text, a, b)
            pairs.setdefault(pair.id, pair)
    return list(pairs.values())


def lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- pairs ------------------------------------------------------------------------------------

def test_pair_id_is_order_independent_and_tells_pairs_apart():
    assert pair_id("q", "x .", "y .") == pair_id("q", "y .", "x .") == Pair("q", "y .", "x .").id
    assert len({pair_id("q", "x .", "y ."), pair_id("q2", "x .", "y ."), pair_id("q", "x .", "z ."),
                pair_id([{"role": "user", "content": "q"}], "x .", "y .")}) == 4


def test_sample_pairs_from_the_policy_are_seeded_distinct_and_shuffled(tiny, tokenizer):
    from rlhf_course.loading import load_policy

    model = load_policy(tiny, lora=False, verbose=False)
    prompts = toyworld.train_prompts()[:12]
    pairs = sample_pairs(model, tokenizer, prompts, max_new_tokens=24, temperature=tiny.temperature, seed=3)
    again = sample_pairs(model, tokenizer, prompts, max_new_tokens=24, temperature=tiny.temperature, seed=3)
    assert pairs == again and 0 < len(pairs) <= 12
    assert all(p.answer_a != p.answer_b for p in pairs)
    assert {p.prompt for p in pairs} <= {q.text for q in prompts}


# --- the session: crash safety, resume, undo ---------------------------------------------------

def test_every_label_is_on_disk_at_once_and_a_new_session_resumes_without_repeats(tmp_path):
    path, pairs = tmp_path / "me.jsonl", toy_pairs(6)
    session = LabellingSession(pairs, path, "alice")
    asked = []
    for decision in ("a", "b", "tie"):
        asked.append(session.current.id)
        session.record(decision)
        assert len(lines(path)) == len(asked)  # written before record() returned
    del session  # "the kernel crashed"

    resumed = LabellingSession(pairs, path)
    assert resumed.labeller == "alice" and resumed.resumed == 3 and resumed.progress == (3, 6)
    while not resumed.finished:
        assert resumed.current.id not in asked, "a labelled pair was asked again"
        asked.append(resumed.current.id)
        resumed.record("skip")
    assert sorted(asked) == sorted(p.id for p in pairs)
    assert [label.decision for label in read_labels(path).labels] == ["a", "b", "tie", "skip", "skip", "skip"]


def test_undo_takes_back_the_last_label_and_asks_that_pair_again(tmp_path):
    path, pairs = tmp_path / "me.jsonl", toy_pairs(4)
    session = LabellingSession(pairs, path, "bob")
    session.record("a")
    second = session.current
    session.record("b", much_better=True)
    undone = session.undo()
    assert undone.pair_id == second.id and undone.decision == "b"
    assert session.current == second and session.progress == (1, 4)
    assert lines(path)[-1]["type"] == "undo"
    session.record("tie")
    log = read_labels(path)  # replaying the file gives the same state
    assert log.ok and log.n_undone == 1 and [label.decision for label in log.labels] == ["a", "tie"]
    assert LabellingSession(pairs, path).current == session.current


def test_a_torn_last_line_from_a_crash_is_cut_and_the_rest_kept(tmp_path):
    path, pairs = tmp_path / "me.jsonl", toy_pairs(3)
    LabellingSession(pairs, path, "c").record("a")
    with open(path, "a") as f:
        f.write('{"type": "label", "pair_id": "12')  # the crash hit in the middle of a write
    assert "unfinished last line" in repair_torn_tail(path)
    session = LabellingSession(pairs, path)
    assert session.progress == (1, 3) and read_labels(path).ok


def test_a_broken_file_or_another_labellers_file_is_refused_with_file_and_line(tmp_path):
    path, pairs = tmp_path / "me.jsonl", toy_pairs(2)
    LabellingSession(pairs, path, "dana").record("a")
    with pytest.raises(ValueError, match="dana"):
        LabellingSession(pairs, path, "erin")
    with open(path, "a") as f:
        f.write('{"type": "label"}\n')
    with pytest.raises(LabelFileError, match=r"me.jsonl:2: pair_id: missing field"):
        LabellingSession(pairs, path)


def test_read_labels_reports_each_problem_as_file_line_field(tmp_path):
    good = Label(**{**Pair("how do i cook rice ?", "x .", "y .").__dict__, "pair_id": pair_id("how do i cook rice ?", "x .", "y ."),
                    "decision": "a", "labeller": "f", "time": "t"})
    bad_decision = {**good.to_json(), "decision": "A"}
    tampered = {**good.to_json(), "answer_b": "z ."}
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join([json.dumps(good.to_json()), "{not json", json.dumps(bad_decision), json.dumps(tampered),
                               json.dumps({"type": "undo", "pair_id": "nope", "labeller": "f"}), "[1, 2]"]) + "\n")
    log = read_labels(path)
    assert [str(p).split(": ")[0:2] for p in log.problems] == [
        [f"{path}:2", "json"], [f"{path}:3", "decision"], [f"{path}:4", "pair_id"], [f"{path}:5", "undo"],
        [f"{path}:6", "record"]]
    assert len(log.labels) == 1



def test_a_label_file_saved_with_a_bom_reads_and_a_bad_byte_names_its_line(tmp_path):
    """Label files are read by the same JSONL reader as preference files (`preferences.read_jsonl`): a
    UTF-8 BOM (a Windows editor) is accepted, and bytes that are not UTF-8 are a problem on their line."""
    pairs, path = toy_pairs(2), tmp_path / "me.jsonl"
    write_labels(path, "ana", pairs, ["a", "b"])
    before = read_labels(path).labels
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    log = read_labels(path)
    assert log.ok and log.labels == before
    path.write_bytes(path.read_bytes() + b'{"type": "label", "prompt": "caf\xe9"}\n')
    assert [str(p) for p in read_labels(path).problems] == [
        f"{path}:3: encoding: not valid UTF-8 (byte 0xe9 at byte 33); save the file as UTF-8"]

# --- headless labelling ------------------------------------------------------------------------

def test_headless_simulated_labeller_is_seeded_and_mostly_picks_the_better_answer(tmp_path):
    pairs = toy_pairs(60, seed=1)
    session = label_pairs(pairs, tmp_path / "sim.jsonl", simulated_labeller(seed=0), labeller_id="sim")
    again = label_pairs(pairs, tmp_path / "sim2.jsonl", simulated_labeller(seed=0), labeller_id="sim")
    assert session.finished and [l.decision for l in session.labels] == [l.decision for l in again.labels]
    right = wrong = 0
    for label in session.labels:
        prompt = toyworld.parse_prompt(label.prompt)
        gap = toyworld.reward(prompt, label.answer_a) - toyworld.reward(prompt, label.answer_b)
        if label.decision == "tie":
            assert abs(gap) < 0.05
        elif label.decision in ("a", "b"):
            right += (gap > 0) == (label.decision == "a")
            wrong += (gap > 0) != (label.decision == "a")
            if label.much_better:
                assert abs(gap) >= 0.5
    assert right > 4 * wrong
    assert any(label.much_better for label in session.labels)


def test_label_pairs_with_a_limit_stops_and_resumes(tmp_path):
    pairs, path = toy_pairs(5), tmp_path / "x.jsonl"
    assert label_pairs(pairs, path, lambda p: "a", limit=2).progress == (2, 5)
    assert label_pairs(pairs, path, lambda p: ("b", True)).progress == (5, 5)
    assert [(l.decision, l.much_better) for l in read_labels(path).labels] == [("a", False)] * 2 + [("b", True)] * 3


# --- labels -> preference records ----------------------------------------------------------------

def test_labels_become_valid_preference_records_with_margins(tmp_path):
    pairs = toy_pairs(4)
    decisions = iter([("a", True), ("b", False), ("tie", False), ("skip", False)])
    session = label_pairs(pairs, tmp_path / "m.jsonl", lambda p: next(decisions))
    records = labels_to_preferences(session.labels)
    assert len(records) == 2  # the tie and the skip teach no preference
    assert records[0]["chosen"] == [{"role": "assistant", "content": pairs[0].answer_a}] and records[0]["margin"] == 1.0
    assert records[1]["chosen"][0]["content"] == pairs[1].answer_b and records[1]["margin"] == 0.0
    assert validate_records(records).ok and validate_records(records).format == "conversational"
    plain = labels_to_preferences(session.labels, conversational=False, much_better_margin=3)
    assert plain[0]["prompt"] == pairs[0].prompt and plain[0]["margin"] == 3
    assert validate_records(plain).format == "plain"


# --- agreement ---------------------------------------------------------------------------------

def test_cohen_kappa_golden_value():
    # Wikipedia's example: 50 items, yes/yes 20, yes/no 5, no/yes 10, no/no 15 -> p_o 0.7, p_e 0.5, kappa 0.4
    r1 = ["yes"] * 20 + ["yes"] * 5 + ["no"] * 10 + ["no"] * 15
    r2 = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert cohen_kappa(r1, r2) == pytest.approx(0.4)
    assert cohen_kappa(["a", "b", "a"], ["a", "b", "a"]) == pytest.approx(1.0)
    assert cohen_kappa(["a", "b"], ["b", "a"]) == pytest.approx(-1.0)
    assert math.isnan(cohen_kappa(["a", "a"], ["a", "a"]))


def test_fleiss_kappa_golden_values():
    # by hand: items [a,a,a], [a,a,b], [b,b,b]: P_i = 1, 1/3, 1 -> P-bar 7/9; p_a 5/9, p_b 4/9 -> P_e 41/81
    items = [["a", "a", "a"], ["a", "a", "b"], ["b", "b", "b"]]
    assert percent_agreement(items) == pytest.approx(7 / 9)
    assert fleiss_kappa(items) == pytest.approx(22 / 40)
    # Fleiss (1971) as on Wikipedia: 10 subjects, 14 raters, 5 categories -> kappa 0.210
    table = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1], [7, 7, 0, 0, 0],
             [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    ratings = [[c for c, n in enumerate(row) for _ in range(n)] for row in table]
    assert fleiss_kappa(ratings) == pytest.approx(0.20993, abs=1e-5)
    # two raters per item: Fleiss' kappa is Scott's pi; items with one rating are ignored
    assert fleiss_kappa([["x", "x"], ["x", "y"], ["y", "y"], ["y"]]) == pytest.approx((2 / 3 - 0.5) / 0.5)


def test_compare_labels_matches_pairs_shown_in_either_order():
    p = Pair("how do i cook rice ?", "rinse the rice first .", "good luck .")
    swapped = Pair(p.prompt, p.answer_b, p.answer_a)
    mk = lambda pair, d, who: Label(pair.id, pair.prompt, pair.answer_a, pair.answer_b, d, False, who)  # noqa: E731
    assert canonical_choice(mk(p, "a", "x")) == canonical_choice(mk(swapped, "b", "y"))
    result = compare_labels([mk(p, "a", "x")], [mk(swapped, "b", "y")])
    assert result.n_items == 1 and result.percent == 100.0


# --- merging a class's labels -----------------------------------------------------------------

def write_labels(path, who: str, pairs: list[Pair], decisions: list, swap: bool = False) -> None:
    shown = [Pair(p.prompt, p.answer_b, p.answer_a) if swap else p for p in pairs]
    flip = {"a": "b", "b": "a", "tie": "tie", "skip": "skip"}
    it = iter(decisions)

    def decide(pair):
        d, much = next(it) if isinstance(decisions[0], tuple) else (next(it), False)
        return (flip[d] if swap else d), much  # the same opinion about the same text, whatever the order shown
    label_pairs(shown, path, decide, labeller_id=who)


@pytest.fixture
def class_dir(tmp_path):
    pairs = toy_pairs(4, seed=5)
    folder = tmp_path / "class"
    folder.mkdir()
    # pair 0: a, a, b -> chosen a (2 of 3), pair 1: a, b (even) -> dropped, pair 2: b (much better), tie, skip ->
    # chosen b with one vote; pair 3: tie, tie, skip -> no preference
    write_labels(folder / "ann.jsonl", "ann", pairs, [("a", False), ("a", False), ("b", True), ("tie", False)])
    write_labels(folder / "ben.jsonl", "ben", pairs, [("a", True), ("b", False), ("tie", False), ("tie", False)], swap=True)
    write_labels(folder / "sub" / "cat.jsonl", "cat", pairs, [("b", False), ("skip", False), ("skip", False), ("skip", False)])
    return folder, pairs


def test_merge_majority_with_counts_drops_ties_skips_and_even_splits(class_dir):
    folder, pairs = class_dir
    result = merge_labels([folder])
    assert result.labellers == ["ann", "ben", "cat"] and not result.skipped and len(result.files) == 3
    assert result.n_labels == {"a": 3, "b": 3, "tie": 3, "skip": 3}  # letters as shown and result.n_pairs == 4
    assert result.n_no_majority == 1 and result.n_no_preference == 1
    by_id = {r["pair_id"]: r for r in result.records}
    assert set(by_id) == {pairs[0].id, pairs[2].id}
    r0, r2 = by_id[pairs[0].id], by_id[pairs[2].id]
    assert r0["chosen"][0]["content"] == pairs[0].answer_a and (r0["votes"], r0["votes_chosen"]) == (3, 2)
    assert r0["margin"] == pytest.approx(0.5)  # one of the two winning votes said "much better"
    assert r2["chosen"][0]["content"] == pairs[2].answer_b and (r2["votes"], r2["votes_chosen"]) == (1, 1)
    assert r2["margin"] == 1.0
    assert validate_records(result.records).ok
    # agreement on the pairs labelled (not skipped) by two or more: pair 0 [A, A, B], pair 1 [A, B],
    # pair 2 [B, tie], pair 3 [tie, tie] -> P_i 1/3, 0, 0, 1
    assert result.agreement.n_items == 4
    assert result.agreement.percent == pytest.approx(100 * (1 / 3 + 0 + 0 + 1) / 4)


def test_merge_skips_a_malformed_file_and_reports_file_and_line(class_dir):
    folder, _ = class_dir
    broken = folder / "dan.jsonl"
    text = (folder / "ann.jsonl").read_text().splitlines()
    text[1] = text[1].replace('"decision": "a"', '"decision": "maybe"')
    broken.write_text("\n".join(text + ["oops"]) + "\n")
    result = merge_labels([folder])
    assert list(result.skipped) == [str(broken)]
    assert [str(p).split(": ")[:2] for p in result.skipped[str(broken)]] == [[f"{broken}:2", "decision"], [f"{broken}:5", "json"]]
    assert str(broken) not in result.files and result.labellers == ["ann", "ben", "cat"]


def test_cli_labels_merge_prints_the_summary_and_writes_a_valid_file(class_dir, tmp_path, capsys):
    folder, _ = class_dir
    out = tmp_path / "merged.jsonl"
    assert main(["labels", "merge", str(folder / "ann.jsonl"), str(folder / "ben.jsonl"), str(folder / "sub"),
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for expected in ("3 label files merged, 0 skipped; 3 labellers", "pairs: 4 labelled -> 2 preference pairs",
                     "agreement on 4 pairs labelled by 2+ labellers: 33.3% (Fleiss' kappa", "wrote 2 preference pairs"):
        assert expected in printed, expected
    assert validate_file(out).ok and main(["validate-data", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 2


def test_cli_labels_merge_exit_codes(class_dir, tmp_path, capsys):
    folder, _ = class_dir
    (folder / "bad.jsonl").write_text("{broken\n")
    out = tmp_path / "merged.jsonl"
    assert main(["labels", "merge", str(folder), "--out", str(out)]) == 1  # merged, but a file was skipped
    printed = capsys.readouterr().out
    assert f"{folder / 'bad.jsonl'}:1: json: invalid JSON" in printed and "skipped (1 problems)" in printed
    assert out.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["labels", "merge", str(empty), "--out", str(tmp_path / "none.jsonl")]) == 2
    assert "no preference pairs" in capsys.readouterr().err and not (tmp_path / "none.jsonl").exists()


def test_cli_merges_two_labellers_with_cohen_kappa(tmp_path, capsys):
    pairs = toy_pairs(4, seed=2)
    write_labels(tmp_path / "x.jsonl", "x", pairs, ["a", "a", "b", "b"])
    write_labels(tmp_path / "y.jsonl", "y", pairs, ["a", "b", "b", "b"], swap=True)
    assert main(["labels", "merge", str(tmp_path / "x.jsonl"), str(tmp_path / "y.jsonl"), "--out",
                 str(tmp_path / "o.jsonl")]) == 0
    # canonical choices differ from the letters, but agreement is 3 of 4 either way
    assert "agreement on 4 pairs labelled by 2+ labellers: 75.0%" in capsys.readouterr().out
    result = merge_labels([tmp_path / "x.jsonl", tmp_path / "y.jsonl"])
    x = [canonical_choice(l) for l in read_labels(tmp_path / "x.jsonl").labels]
    y = [canonical_choice(l) for l in read_labels(tmp_path / "y.jsonl").labels]
    assert result.agreement.cohen_kappa == pytest.approx(cohen_kappa(x, y))


# --- the widget ------------------------------------------------------------------------------

def test_the_widget_buttons_drive_the_session(tmp_path):
    pairs, path = toy_pairs(3), tmp_path / "w.jsonl"
    widget = LabellingWidget(LabellingSession(pairs, path, "gus"))
    assert pairs[0].answer_a.split()[0] in widget.answers[0].value and widget.bar.value == 0
    widget.much_better.value = True
    widget.buttons["a"].click()  # what a person's click does
    assert widget.bar.value == 1 and not widget.much_better.value and pairs[1].answer_b.split()[0] in widget.answers[1].value
    widget.undo_button.click()
    assert widget.bar.value == 0 and widget.session.current == pairs[0]
    assert widget.autolabel(lambda p: "b") == 3
    assert widget.bar.value == 3 and all(b.disabled for b in widget.buttons.values())
    assert "All pairs are labelled" in widget.prompt.value
    labels = read_labels(path).labels
    assert [l.decision for l in labels] == ["b"] * 3 and not any(l.much_better for l in labels)
    assert "application/vnd.jupyter.widget-view+json" in widget._repr_mimebundle_()
