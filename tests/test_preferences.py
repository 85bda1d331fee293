"""Tests for rlhf_course.preferences: every kind of problem is one FILE:LINE: field: line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from datasets import Dataset

from rlhf_course.cli import main
from rlhf_course.preferences import (
    PreferenceDataError,
    Problem,
    detect_format,
    load_preferences,
    save_preferences,
    to_conversational,
    to_plain,
    validate_file,
    validate_records,
)

PLAIN = {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"}
CONV = {
    "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}],
    "chosen": [{"role": "assistant", "content": "4"}],
    "rejected": [{"role": "assistant", "content": "5"}],
}


def write_lines(tmp_path, lines, name="prefs.jsonl"):
    """Write raw lines (str, or dicts dumped as JSON) and return the path as a string."""
    path = tmp_path / name
    text = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n"
    path.write_text(text, encoding="utf-8")
    return str(path)


def lines_of(path):
    return [str(p) for p in validate_file(path).problems]


def assert_one_problem(path, prefix):
    """The file has exactly one problem, and its line starts with `prefix` (after the file name)."""
    lines = lines_of(path)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{path}:{prefix}"), lines


# ---------------------------------------------------------------------------- one test per kind of problem


def test_invalid_json(tmp_path):
    path = write_lines(tmp_path, [PLAIN, '{"prompt": "a", "chosen": "b",', PLAIN | {"chosen": "x"}])
    assert_one_problem(path, "2: json: invalid JSON")
    assert "column" in lines_of(path)[0]


def test_not_an_object(tmp_path):
    path = write_lines(tmp_path, [PLAIN, '["a", "b", "c"]'])
    assert_one_problem(path, "2: record: must be a JSON object")


@pytest.mark.parametrize("name", ["prompt", "chosen", "rejected"])
def test_missing_field(tmp_path, name):
    record = {k: v for k, v in PLAIN.items() if k != name}
    path = write_lines(tmp_path, [PLAIN, record])
    assert_one_problem(path, f"2: {name}: missing field")


def test_null_field(tmp_path):
    path = write_lines(tmp_path, [PLAIN | {"rejected": None}])
    assert_one_problem(path, "1: rejected: is null")


def test_wrong_types(tmp_path):
    path = write_lines(tmp_path, [PLAIN | {"prompt": 7}, PLAIN | {"chosen": {"text": "4"}}])
    assert lines_of(path) == [
        f"{path}:1: prompt: must be a string or a list of messages, got int",
        f"{path}:2: chosen: must be a string or a list of messages, got dict",
    ]


@pytest.mark.parametrize("margin, got", [("1.0", "got str"), (True, "got bool"), ([1], "got list")])
def test_margin_must_be_a_number(tmp_path, margin, got):
    path = write_lines(tmp_path, [PLAIN | {"margin": margin}])
    assert_one_problem(path, f"1: margin: must be a number, {got}")


@pytest.mark.parametrize("margin", ["NaN", "Infinity", "-Infinity"])
def test_margin_must_be_finite(tmp_path, margin):
    path = write_lines(tmp_path, ['{"prompt": "p", "chosen": "a", "rejected": "b", "margin": %s}' % margin])
    assert_one_problem(path, "1: margin: must be a finite number")


def test_empty_text(tmp_path):
    path = write_lines(tmp_path, [PLAIN | {"chosen": ""}, PLAIN | {"prompt": "  \n\t"}])
    assert lines_of(path) == [f"{path}:1: chosen: empty text", f"{path}:2: prompt: empty text"]


def test_empty_message_content(tmp_path):
    record = CONV | {"rejected": [{"role": "assistant", "content": " "}]}
    path = write_lines(tmp_path, [record])
    assert_one_problem(path, "1: rejected[0].content: empty text")


def test_chosen_identical_to_rejected(tmp_path):
    path = write_lines(tmp_path, [PLAIN | {"rejected": "4"}, CONV | {"rejected": CONV["chosen"]}])
    assert [line.split(" (")[0] for line in lines_of(path)] == [
        f"{path}:1: chosen: identical to rejected",
        f"{path}:2: chosen: identical to rejected",
    ]


def test_bad_messages(tmp_path):
    path = write_lines(tmp_path, [
        CONV | {"chosen": ["4"]},
        CONV | {"chosen": [{"content": "4"}]},
        CONV | {"prompt": [CONV["prompt"][0], {"role": "user"}]},
        CONV | {"rejected": [{"role": "bot", "content": "5"}]},
        CONV | {"prompt": []},
        CONV | {"chosen": [{"role": "assistant", "content": 4}]},
    ])
    assert lines_of(path) == [
        f'{path}:1: chosen[0]: must be a message {{"role": ..., "content": ...}}, got str',
        f"{path}:2: chosen[0].role: missing field",
        f"{path}:3: prompt[1].content: missing field",
        f"{path}:4: rejected[0].role: unknown role 'bot' (use one of: system, user, assistant, tool)",
        f"{path}:5: prompt: empty list of messages",
        f"{path}:6: chosen[0].content: must be a string, got int",
    ]


def test_non_utf8_bytes(tmp_path):
    path = tmp_path / "prefs.jsonl"
    good = json.dumps(PLAIN).encode()
    path.write_bytes(good + b"\n" + b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}\n' + b'{"prompt": 1}\n')
    lines = lines_of(path)
    assert lines[0].startswith(f"{path}:2: encoding: not valid UTF-8 (byte 0xe9")
    # the line after the bad bytes is still checked
    assert f"{path}:3: chosen: missing field" in lines



def test_a_bom_is_accepted_and_lines_keep_their_numbers(tmp_path):
    path = tmp_path / "prefs.jsonl"  # what Notepad's "UTF-8 with BOM" writes
    path.write_bytes(b"\xef\xbb\xbf" + (json.dumps(PLAIN) + "\n" + json.dumps({"prompt": "q"}) + "\n").encode())
    assert lines_of(path) == [f"{path}:2: chosen: missing field", f"{path}:2: rejected: missing field"]
    path.write_bytes(b"\xef\xbb\xbf" + (json.dumps(PLAIN) + "\n").encode())
    assert validate_file(path).ok and load_preferences(path)[0] == PLAIN

@pytest.mark.parametrize("content", ["", "\n\n   \n"])
def test_empty_file(tmp_path, content):
    path = tmp_path / "prefs.jsonl"
    path.write_text(content)
    assert lines_of(path) == [f"{path}:0: file: empty file: no records"]


def test_mixed_formats(tmp_path):
    path = write_lines(tmp_path, [PLAIN, CONV, PLAIN | {"chosen": "four"}])
    assert_one_problem(path, "2: prompt: conversational record in a plain-format file (format set by line 1)")
    path = write_lines(tmp_path, [CONV, PLAIN], name="conv.jsonl")
    assert_one_problem(path, "2: prompt: plain record in a conversational-format file (format set by line 1)")


def test_missing_file(tmp_path):
    path = str(tmp_path / "nope.jsonl")
    report = validate_file(path)
    assert [str(p) for p in report.problems] == [f"{path}:0: file: file not found"]
    assert not report.ok and report.n_records == 0 and report.format is None


# ---------------------------------------------------------------------------- several problems, reports


def test_all_problems_reported_with_line_numbers(tmp_path):
    path = write_lines(tmp_path, [
        PLAIN,                       # 1 ok
        "",                          # 2 blank: skipped, but still counted
        "not json",                  # 3
        PLAIN | {"chosen": ""},      # 4
        PLAIN | {"margin": "high"},  # 5
        {"prompt": "p"},             # 6 two missing fields
        PLAIN,                       # 7 ok
    ])
    report = validate_file(path)
    assert [(p.line, p.field) for p in report.problems] == [
        (3, "json"), (4, "chosen"), (5, "margin"), (6, "chosen"), (6, "rejected"),
    ]
    assert report.n_records == 5 and report.format == "plain"


def test_problem_and_error_formatting():
    problem = Problem("prefs.jsonl", 7, "chosen", "empty text")
    assert str(problem) == "prefs.jsonl:7: chosen: empty text"
    error = PreferenceDataError([problem] * 60)
    lines = str(error).splitlines()
    assert len(lines) == 51 and lines[-1] == "... and 10 more problems"
    assert isinstance(error, ValueError)


def test_validate_records_in_memory():
    report = validate_records([PLAIN, PLAIN | {"rejected": 3}])
    assert [str(p) for p in report.problems] == ["<records>:2: rejected: must be a string or a list of messages, got int"]
    assert validate_records([CONV]).format == "conversational"


# ---------------------------------------------------------------------------- loading and saving


def test_load_plain(tmp_path):
    path = write_lines(tmp_path, [PLAIN | {"margin": 1.5}, PLAIN | {"chosen": "four", "margin": 0.5}])
    ds = load_preferences(path)
    assert isinstance(ds, Dataset)
    assert ds.column_names == ["prompt", "chosen", "rejected", "margin"]
    assert len(ds) == 2 and ds["margin"] == [1.5, 0.5]


def test_load_conversational(tmp_path):
    path = write_lines(tmp_path, [CONV, CONV | {"source": "hand-written"}])
    ds = load_preferences(path)
    assert ds.column_names == ["prompt", "chosen", "rejected", "source"]  # extra key from row 2 kept
    assert len(ds) == 2
    assert ds[0]["prompt"] == CONV["prompt"] and ds[0]["chosen"] == CONV["chosen"]
    assert ds["source"] == [None, "hand-written"]


def test_load_several_files(tmp_path):
    a = write_lines(tmp_path, [PLAIN], name="a.jsonl")
    b = write_lines(tmp_path, [PLAIN | {"chosen": "four"}], name="b.jsonl")
    assert load_preferences([a, b])["chosen"] == ["4", "four"]


def test_load_raises_with_every_problem(tmp_path):
    a = write_lines(tmp_path, [PLAIN, "{oops", PLAIN | {"chosen": None}], name="a.jsonl")
    b = write_lines(tmp_path, [PLAIN | {"margin": "x"}], name="b.jsonl")
    with pytest.raises(PreferenceDataError) as info:
        load_preferences([a, tmp_path / "b.jsonl"])
    assert info.value.problems == validate_file(a).problems + validate_file(b).problems
    assert len(info.value.problems) == 3
    assert "Traceback" not in str(info.value) and f"{a}:2: json:" in str(info.value)


def test_load_rejects_files_of_different_formats(tmp_path):
    a = write_lines(tmp_path, [PLAIN], name="a.jsonl")
    b = write_lines(tmp_path, [CONV], name="b.jsonl")
    with pytest.raises(PreferenceDataError) as info:
        load_preferences([a, b])
    assert str(info.value).startswith(f"{b}:0: file: conversational file, but {a} is plain")


def test_save_load_round_trip(tmp_path):
    records = [
        PLAIN | {"margin": 2.0},
        {"prompt": "Ответь кратко: столица Франции?", "chosen": "Париж 🇫🇷", "rejected": "東京", "margin": 0.5},
    ]
    path = save_preferences(records, tmp_path / "out" / "prefs.jsonl")
    assert "Париж" in path.read_text(encoding="utf-8")  # written as text, not \u escapes
    ds = load_preferences(path)
    assert ds.to_list() == records
    again = save_preferences(ds, tmp_path / "again.jsonl")
    assert again.read_bytes() == path.read_bytes()


def test_save_conversational_round_trip(tmp_path):
    path = save_preferences([CONV, CONV | {"chosen": [{"role": "assistant", "content": "four"}]}], tmp_path / "c.jsonl")
    assert load_preferences(path)[0] == CONV


def test_save_refuses_bad_data(tmp_path):
    path = tmp_path / "sub" / "bad.jsonl"
    with pytest.raises(PreferenceDataError) as info:
        save_preferences([PLAIN, PLAIN | {"chosen": " "}], path)
    assert [str(p) for p in info.value.problems] == ["<records>:2: chosen: empty text"]
    assert not path.exists()


def test_load_hf_dataset():
    ds = Dataset.from_list([PLAIN, PLAIN | {"chosen": "four"}])
    assert load_preferences(ds) is ds
    bad = Dataset.from_list([PLAIN, PLAIN | {"rejected": "4"}])
    with pytest.raises(PreferenceDataError) as info:
        load_preferences(bad)
    assert str(info.value).startswith("<dataset>:2: chosen: identical to rejected")


# ---------------------------------------------------------------------------- conversion


def test_detect_format():
    assert detect_format(PLAIN) == "plain"
    assert detect_format(CONV) == "conversational"


def test_plain_conversational_round_trip():
    record = PLAIN | {"margin": 1.0, "id": 3}
    conv = to_conversational(record)
    assert conv["prompt"] == [{"role": "user", "content": "What is 2+2?"}]
    assert conv["chosen"] == [{"role": "assistant", "content": "4"}]
    assert conv["margin"] == 1.0 and conv["id"] == 3
    assert validate_records([conv]).ok
    assert to_conversational(conv) is conv
    assert to_plain(conv) == record


def test_to_plain_with_tokenizer():
    class FakeTokenizer:
        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            assert tokenize is False and add_generation_prompt is True
            return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"

    plain = to_plain(CONV, tokenizer=FakeTokenizer())
    assert plain == {"prompt": "<system>Be brief.<user>What is 2+2?<assistant>", "chosen": "4", "rejected": "5"}
    assert to_plain(CONV)["prompt"] == "Be brief.\nWhat is 2+2?"


# ---------------------------------------------------------------------------- the CLI


def test_cli_good_file(tmp_path, capsys):
    good = write_lines(tmp_path, [PLAIN, PLAIN | {"chosen": "four"}])
    assert main(["validate-data", good]) == 0
    assert capsys.readouterr().out.strip() == f"{good}: ok, 2 pairs, plain format"


def test_cli_bad_file(tmp_path, capsys):
    bad = write_lines(tmp_path, [PLAIN, "{", PLAIN | {"chosen": ""}])
    assert main(["validate-data", bad]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{bad}:2: json: invalid JSON")
    assert out[1] == f"{bad}:3: chosen: empty text"
    assert len(out) == 2


def test_cli_subprocess_has_no_traceback(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"prompt": "\xff"}\nnot json\n')
    result = subprocess.run(
        [sys.executable, "-m", "rlhf_course.cli", "validate-data", str(bad), str(tmp_path / "missing.jsonl")],
        capture_output=True, text=True,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stdout + result.stderr
    assert f"{bad}:1: encoding:" in result.stdout
    assert f"{bad}:2: json:" in result.stdout
    assert f"{tmp_path / 'missing.jsonl'}:0: file: file not found" in result.stdout
