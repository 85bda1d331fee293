"""Public preference sets and the layouts users bring (rlhf_course.preference_sets), offline.

The fixtures in tests/data/preference_sets/ are hand-written records in the exact column shapes of
the real sets (ultrafeedback_binarized's card, Anthropic/hh-rlhf's text); no Hub data is shipped.
The Hub is replaced by a monkeypatched `datasets.load_dataset` that serves those files.
"""

import json
from pathlib import Path

import datasets
import huggingface_hub.constants
import pytest

from rlhf_course.paths import data_path
from rlhf_course.preference_sets import (detect_layout, load_preference_set, load_sft_set, to_trl_record,
                                         validate_preference_file)
from rlhf_course.preferences import PreferenceDataError

FIXTURES = Path(__file__).parent / "data" / "preference_sets"
UF = "HuggingFaceH4/ultrafeedback_binarized"
HH = "Anthropic/hh-rlhf"


def records(name: str) -> list[dict]:
    return [json.loads(line) for line in (FIXTURES / name).read_text(encoding="utf-8").splitlines() if line.strip()]


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def as_set(rows) -> list[str]:
    """Rows in an order-free form (the loaders shuffle)."""
    return sorted(json.dumps(dict(r), sort_keys=True) for r in rows)


# ---------------------------------------------------------------------------- layouts, record by record


@pytest.mark.parametrize("name, layout", [("trl_plain.jsonl", "trl_plain"),
                                          ("trl_conversational.jsonl", "trl_conversational"),
                                          ("ultrafeedback_binarized.jsonl", "implicit_conversational"),
                                          ("hh_rlhf.jsonl", "hh_rlhf")])
def test_detect_layout(name, layout):
    assert {detect_layout(r) for r in records(name)} == {layout}
    assert detect_layout({"chosen": "an answer", "rejected": "another"}) == "unknown"


def test_trl_plain_becomes_conversational_and_keeps_its_margin():
    row = records("trl_plain.jsonl")[1]
    assert to_trl_record(row) == {
        "prompt": [user("Is it safe to charge my phone overnight?")],
        "chosen": [assistant(" Yes. Modern phones stop charging at full and only top up as needed.")],
        "rejected": [assistant(" No, it will explode.")],
        "margin": 2}


def test_trl_conversational_is_kept_as_is():
    row = records("trl_conversational.jsonl")[1]
    assert to_trl_record(row) == row
    assert [m["role"] for m in row["prompt"]] == ["system", "user", "assistant", "user"]


def test_ultrafeedback_binarized_prompt_is_the_shared_turns_and_other_columns_go():
    row = records("ultrafeedback_binarized.jsonl")[0]
    expected = {"prompt": [user("Write a haiku about autumn leaves.")],
                "chosen": [assistant("Red leaves drift and fall,\nwhispering to the cold ground,\nsummer says goodbye.")],
                "rejected": [assistant("Leaves are falling down. It is autumn now. The end.")]}
    assert to_trl_record(row) == expected  # no prompt_id, messages, scores; no margin unless asked
    assert to_trl_record(row, margin_from_scores=True) == {**expected, "margin": 8.5 - 4.0}


def test_implicit_multi_turn_conversation_without_a_prompt_column():
    shared = [{"role": "system", "content": "Be brief."}, user("Hi"), assistant("Hello!"), user("2+2?")]
    row = {"chosen": shared + [assistant("4")], "rejected": shared + [assistant("5")]}
    assert detect_layout(row) == "implicit_conversational"
    assert to_trl_record(row) == {"prompt": shared, "chosen": [assistant("4")], "rejected": [assistant("5")]}


def test_hh_rlhf_single_turn():
    assert to_trl_record(records("hh_rlhf.jsonl")[0]) == {
        "prompt": [user("How do I get a wine stain out of a carpet?")],
        "chosen": [assistant("Blot it with a clean cloth, then dab on a mix of dish soap and cold water and blot again.")],
        "rejected": [assistant("Rub it hard with hot water.")]}


def test_hh_rlhf_multi_turn_prompt_is_everything_up_to_the_last_assistant_turn():
    assert to_trl_record(records("hh_rlhf.jsonl")[1]) == {
        "prompt": [user("I want to start running."), assistant("Great! How much do you run now?"), user("Not at all.")],
        "chosen": [assistant("Start with run-walk intervals: one minute running, two minutes walking, "
                             "for twenty minutes, three times a week.")],
        "rejected": [assistant("Just run a 10k tomorrow.")]}


UF_ROW = records("ultrafeedback_binarized.jsonl")[1]
HH_ROW = records("hh_rlhf.jsonl")[0]
MALFORMED = [  # (layout, record, "field: problem")
    ("trl_plain", {"prompt": "Hi", "chosen": "   ", "rejected": " Hello."}, "chosen: empty text"),
    ("trl_conversational", {"prompt": [user("Hi"), assistant("Hello")], "chosen": [assistant("a")],
                            "rejected": [assistant("b")]},
     "prompt[1].role: the prompt ends with an assistant turn"),
    ("implicit_conversational", {**UF_ROW, "chosen": UF_ROW["chosen"][:1]},
     "chosen[0].role: the conversation must end with the answer (assistant), got 'user'"),
    ("implicit_conversational", {**UF_ROW, "rejected": [user("Convert 6 km to miles."), UF_ROW["rejected"][1]]},
     "rejected[0]: does not share chosen's prompt: turn 0 differs"),
    ("implicit_conversational", {**UF_ROW, "rejected": UF_ROW["chosen"]},
     "chosen: identical to rejected (a pair must differ to teach a preference)"),
    ("hh_rlhf", {**HH_ROW, "rejected": "Rub it hard with hot water."},
     "rejected: must be Anthropic HH text like chosen ('\\n\\nHuman: ...')"),
    ("hh_rlhf", {**HH_ROW, "chosen": "\n\nHuman: How do I get a wine stain out of a carpet?\n\nAssistant:"},
     "chosen[1].content: empty text"),
    ("unknown", {"chosen": "Canberra.", "rejected": "Sydney."}, "prompt: missing field: chosen holds only the answer"),
]


@pytest.mark.parametrize("layout, record, problem", MALFORMED, ids=[f"{m[0]}-{i}" for i, m in enumerate(MALFORMED)])
def test_a_malformed_record_is_one_line_naming_source_index_and_field(layout, record, problem):
    assert detect_layout(record) == layout
    with pytest.raises(PreferenceDataError) as err:
        to_trl_record(record, source="pairs.jsonl", index=7)
    assert str(err.value).startswith(f"pairs.jsonl:7: {problem}")
    assert "\n" not in str(err.value)


def test_local_jsonl_errors_name_the_line():
    path = FIXTURES / "hh_rlhf_bad.jsonl"  # line 2 is blank: the bad record is on line 3
    expected = f"{path}:3: rejected[0]: does not share chosen's prompt: turn 0 differs"
    with pytest.raises(PreferenceDataError) as err:
        load_preference_set(str(path))
    assert str(err.value) == expected
    report = validate_preference_file(path)
    assert not report.ok and [str(p) for p in report.problems] == [expected]


@pytest.mark.parametrize("name, layout, n", [("trl_plain.jsonl", "trl_plain", 3), ("hh_rlhf.jsonl", "hh_rlhf", 3),
                                             ("ultrafeedback_binarized.jsonl", "implicit_conversational", 3)])
def test_validate_preference_file_accepts_every_layout(name, layout, n):
    report = validate_preference_file(FIXTURES / name)
    assert report.ok and report.n_records == n and report.format == layout


def test_local_file_loads_converted_with_a_random_n_by_seed():
    path = str(FIXTURES / "hh_rlhf.jsonl")
    everything = as_set(to_trl_record(r) for r in records("hh_rlhf.jsonl"))
    two = load_preference_set(path, n=2, seed=1)
    assert two.column_names == ["prompt", "chosen", "rejected"] and len(two) == 2
    assert set(as_set(two)) <= set(everything)
    assert as_set(load_preference_set(path, n=None)) == everything
    assert two.to_list() == load_preference_set(path, n=2, seed=1).to_list()


def test_margin_column_only_when_every_pair_has_one(tmp_path):
    plain = str(FIXTURES / "trl_plain.jsonl")  # a margin on 1 of 3 pairs
    for seed in range(4):  # whichever row comes first
        assert load_preference_set(plain, n=None, seed=seed).column_names == ["prompt", "chosen", "rejected"]
    full = tmp_path / "margins.jsonl"
    full.write_text("".join(json.dumps({**r, "margin": i}) + "\n" for i, r in enumerate(records("trl_plain.jsonl"))))
    rows = load_preference_set(str(full), n=None)
    assert rows.column_names == ["prompt", "chosen", "rejected", "margin"] and sorted(rows["margin"]) == [0, 1, 2]


# ---------------------------------------------------------------------------- the Hub, monkeypatched


@pytest.fixture
def fake_hub(monkeypatch):
    """datasets.load_dataset serving the fixture files; records each call's (id, split, kwargs)."""
    files = {UF: "ultrafeedback_binarized.jsonl", HH: "hh_rlhf.jsonl", "someone/trl-pairs": "trl_plain.jsonl",
             "someone/broken": "hh_rlhf_bad.jsonl"}
    calls = []

    def load_dataset(path, split=None, **kwargs):
        calls.append((path, split, kwargs))
        rows = datasets.Dataset.from_list(records(files[path]))
        n = int(split.split("[:")[1].rstrip("]")) if "[:" in split else len(rows)
        return rows.select(range(min(n, len(rows))))

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_hub_set_is_loaded_as_a_split_slice_and_converted(fake_hub):
    rows = load_preference_set(UF, split="train_prefs", n=2, seed=0)
    assert fake_hub == [(UF, "train_prefs[:2]", {})]
    assert rows.column_names == ["prompt", "chosen", "rejected"]
    assert as_set(rows) == as_set(to_trl_record(r) for r in records("ultrafeedback_binarized.jsonl")[:2])

    margins = load_preference_set(UF, n=3, margin_from_scores=True)
    assert fake_hub[-1][1] == "train_prefs[:3]"  # the set's first preference split
    assert sorted(margins["margin"]) == [4.0, 4.5, 6.5]


def test_hub_defaults_split_and_load_arguments_per_set(fake_hub):
    load_preference_set(HH, n=3)
    load_preference_set(HH, split="test", n=1, data_dir="harmless-base")
    load_preference_set("someone/trl-pairs", n=2)
    assert fake_hub == [(HH, "train[:3]", {"data_dir": "helpful-base"}),
                        (HH, "test[:1]", {"data_dir": "harmless-base"}),
                        ("someone/trl-pairs", "train[:2]", {})]
    with pytest.raises(PreferenceDataError, match="no split 'train' here; use one of: train_prefs, test_prefs"):
        load_preference_set(UF, split="train", n=3)


def test_bad_hub_rows_are_dropped_and_counted(fake_hub, capsys):
    rows = load_preference_set("someone/broken", n=10)
    out = capsys.readouterr().out.strip().splitlines()
    assert len(rows) == 1 and out == [
        "load_preference_set: dropped 1 of 2 rows of someone/broken[train] that fit no layout or fail the checks "
        "(first: someone/broken[train]:2: rejected[0]: does not share chosen's prompt: turn 0 differs)"]
    with pytest.raises(PreferenceDataError):
        load_preference_set("someone/broken", n=10, drop_invalid=False)


# ---------------------------------------------------------------------------- offline: the hand-written set


def handwritten_pairs() -> list[dict]:
    """The hand-written set as TRL conversational pairs, written out here (plain -> one user turn and
    one assistant turn each); its margin is on 44 of 128 rows only, so the loaders drop the column."""
    lines = data_path("handwritten", "preferences.jsonl").read_text(encoding="utf-8").splitlines()
    return [{"prompt": [user(r["prompt"])], "chosen": [assistant(r["chosen"])], "rejected": [assistant(r["rejected"])]}
            for r in map(json.loads, filter(str.strip, lines))]


@pytest.fixture
def hub_offline(monkeypatch):
    """HF_HUB_OFFLINE=1 as datasets and huggingface_hub read it (at import), whatever the shell says."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_offline_falls_back_to_the_handwritten_set_in_one_line(hub_offline, tmp_path, capsys):
    rows = load_preference_set(UF, n=None, cache_dir=str(tmp_path))  # an empty cache: the real load_dataset
    out = capsys.readouterr().out.strip().splitlines()
    path = data_path("handwritten", "preferences.jsonl")
    assert out == [f"load_preference_set: {UF} is not available (HF_HUB_OFFLINE=1 and it is not in the local cache); "
                   f"using the course's hand-written set instead: {path} (128 of its 128 pairs)"]
    assert rows.column_names == ["prompt", "chosen", "rejected"]
    assert as_set(rows) == as_set(handwritten_pairs())


def test_unreachable_hub_falls_back_too(monkeypatch, capsys):
    def unreachable(path, **kwargs):  # what datasets 5 raises when the Hub cannot be reached
        raise ConnectionError(f"Couldn't reach '{path}' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    rows = load_preference_set(HH, n=5)
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith(
        f"load_preference_set: {HH} is not available (the Hub is unreachable: Couldn't reach '{HH}' on the Hub "
        "(LocalEntryNotFoundError)); using the course's hand-written set instead:")
    assert out[0].endswith("(5 of its 128 pairs)")
    assert len(rows) == 5 and set(as_set(rows)) <= set(as_set(handwritten_pairs()))


# ---------------------------------------------------------------------------- the length budget


def test_length_filter_counts_prompt_and_answer_through_the_chat_template(tokenizer, capsys):
    rows = load_preference_set(str(FIXTURES / "hh_rlhf.jsonl"), n=None)

    def tokens(prompt, answer):  # independent of the module: the chat template over prompt + answer
        return len(tokenizer.apply_chat_template(prompt + answer, tokenize=True, return_dict=True)["input_ids"])

    longest = [max(tokens(r["prompt"], r["chosen"]), tokens(r["prompt"], r["rejected"])) for r in rows]
    budget = sorted(longest)[1]  # between the shortest pairs and the longest one
    assert len(set(longest)) == 3, longest
    kept = load_preference_set(str(FIXTURES / "hh_rlhf.jsonl"), n=None, tokenizer=tokenizer, max_length=budget)
    assert as_set(kept) == as_set(r for r, n in zip(rows, longest) if n <= budget) and len(kept) == 2
    assert capsys.readouterr().out.strip() == f"kept 2 of 3 rows within max_length={budget} tokens (dropped 1 longer)"


# ---------------------------------------------------------------------------- what SFT trains on


def test_sft_from_ultrafeedback_uses_the_train_sft_messages(fake_hub):
    rows = load_sft_set(UF, n=3)
    assert fake_hub == [(UF, "train_sft[:3]", {})]
    assert rows.column_names == ["prompt", "completion"]
    assert as_set(rows) == as_set({"prompt": r["messages"][:-1], "completion": r["messages"][-1:]}
                                  for r in records("ultrafeedback_binarized.jsonl"))


def test_sft_from_a_multi_turn_conversation_ends_at_the_last_assistant_turn(monkeypatch):
    turns = [user("Hi"), assistant("Hello!"), user("A joke?"), assistant("Why did the chicken..."), user("Thanks")]
    monkeypatch.setattr(datasets, "load_dataset", lambda path, split, **kw: datasets.Dataset.from_list([{"messages": turns}]))
    assert load_sft_set(UF, n=1).to_list() == [{"prompt": turns[:3], "completion": [turns[3]]}]
    monkeypatch.setattr(datasets, "load_dataset", lambda path, split, **kw: datasets.Dataset.from_list([{"messages": [user("Hi")]}]))
    with pytest.raises(PreferenceDataError, match=r"^HuggingFaceH4/ultrafeedback_binarized\[train_sft\]:1: messages: "
                                                  "needs an assistant turn that follows a user turn$"):
        load_sft_set(UF, n=1)


def test_sft_from_any_other_preference_set_is_its_chosen_answers(fake_hub):
    rows = load_sft_set(HH, n=3)
    assert fake_hub == [(HH, "train[:3]", {"data_dir": "helpful-base"})]
    assert as_set(rows) == as_set({"prompt": p["prompt"], "completion": p["chosen"]}
                                  for p in map(to_trl_record, records("hh_rlhf.jsonl")))
    local = load_sft_set(str(FIXTURES / "trl_plain.jsonl"), n=None)
    assert as_set(local) == as_set({"prompt": p["prompt"], "completion": p["chosen"]}
                                   for p in map(to_trl_record, records("trl_plain.jsonl")))


def test_sft_offline_trains_on_the_handwritten_chosen_answers(hub_offline, tmp_path, capsys):
    rows = load_sft_set(UF, n=None, cache_dir=str(tmp_path))
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith(f"load_sft_set: {UF} is not available (HF_HUB_OFFLINE=1")
    assert "using the chosen answers of the course's hand-written set instead" in out[0]
    assert as_set(rows) == as_set({"prompt": p["prompt"], "completion": p["chosen"]} for p in handwritten_pairs())


@pytest.mark.parametrize("name, layout", [("ultrafeedback_binarized", "implicit_conversational"),
                                          ("hh_rlhf", "hh_rlhf"), ("trl_conversational", None)])
def test_validate_data_and_load_preferences_take_the_hub_layouts_from_local_jsonl(name, layout):
    from rlhf_course.preferences import load_preferences, validate_file

    path = FIXTURES / f"{name}.jsonl"
    report = validate_file(path)
    assert report.ok and report.layout == layout and report.format == "conversational"
    rows = load_preferences(path)
    assert len(rows) == report.n_records
    assert list(rows) == [to_trl_record(r, source=str(path), index=i)
                          for i, r in enumerate(map(json.loads, path.read_text().splitlines()), start=1)]


def test_a_bad_record_in_a_hub_layout_file_is_one_line_in_both():
    from rlhf_course.preferences import PreferenceDataError, load_preferences, validate_file

    path = FIXTURES / "hh_rlhf_bad.jsonl"
    report = validate_file(path)
    with pytest.raises(PreferenceDataError) as err:
        load_preferences(path)
    assert [str(p) for p in report.problems] == [str(p) for p in err.value.problems]
    assert str(report.problems[0]).startswith(f"{path}:3: ")
