"""Preference files a student might write by hand (issue 10, section 3): each problem is one
`FILE:LINE: field: problem`, `validate-data` and `load_preferences` agree on every case (one code
path), and one bad file does not stop the others of the same `validate-data` call."""

import contextlib
import io
import json

import pytest

from rlhf_course.cli import main
from rlhf_course.preferences import PreferenceDataError, load_preferences, save_preferences, validate_file

USER = [{"role": "user", "content": "how do i cook rice ?"}]
A, B = [{"role": "assistant", "content": "rinse it first ."}], [{"role": "assistant", "content": "good luck ."}]
CONV = {"prompt": USER, "chosen": A, "rejected": B}
PLAIN = '{"prompt": "how do i cook rice ?", "chosen": "rinse it first .", "rejected": "good luck ."'

# case -> (the file's lines, the expected problem lines after "FILE:"; [] = accepted)
CASES = {
    "valid": ([PLAIN + "}", PLAIN + ', "margin": 1.5}'], []),
    "duplicate key": ([PLAIN + ', "chosen": "the other answer ."}'],
                      ["1: chosen: duplicate key in one JSON object (JSON would keep only the last value"]),
    "whitespace-equal": (['{"prompt": "p", "chosen": "rinse it  first .", "rejected": " rinse it first .\\n"}'],
                         ["1: chosen: identical to rejected but for whitespace"]),
    "NUL byte": (['{"prompt": "how do i\\u0000 cook rice ?", "chosen": "a .", "rejected": "b ."}'],
                 ["1: prompt: contains a NUL byte"]),
    "invisible text": (['{"prompt": "p", "chosen": "\\u200b\\u2060 \\ufeff", "rejected": "b ."}'],
                       ["1: chosen: only invisible characters (e.g. U+200B)"]),
    "prompt ends with the assistant": ([json.dumps(CONV | {"prompt": USER + A})],
                                       ["1: prompt[1].role: the prompt ends with an assistant turn"]),
    "prompt without a user turn": ([json.dumps(CONV | {"prompt": [{"role": "system", "content": "be brief"}]})],
                                   ["1: prompt: holds no user turn"]),
    "user turn in an answer": ([json.dumps(CONV | {"chosen": USER + A})],
                               ["1: chosen[0].role: a user turn inside the answer"]),
    "absurd nesting": ([PLAIN + ', "meta": ' + "[" * 100_000 + "]" * 100_000 + "}"],
                       ["1: json: nested too deeply to read"]),
    "deep nesting": ([PLAIN + ', "meta": ' + "[" * 30 + "1" + "]" * 30 + "}"],
                     ["1: meta" + "[0]" * 20 + ": nested more than 20 levels deep"]),
    "5,000-digit margin": ([PLAIN + ', "margin": ' + "7" * 5000 + "}"],
                           ["1: margin: a whole number of 5000 digits: too large for a column"]),
    "int64 overflow": ([PLAIN + ', "id": 12345678901234567890}'],
                       ["1: id: a whole number of 20 digits: too large for a column"]),
    "lone surrogate": (['{"prompt": "p", "chosen": "a \\ud800 b", "rejected": "b ."}'],
                       ["1: chosen: contains a lone surrogate ('\\ud800'): not valid Unicode"]),
    "extra column of mixed types": ([PLAIN + ', "kind": 3}', PLAIN + ', "kind": "long"}'],
                                    ["2: kind: a string here, but a number on line 1 (a column holds one type)"]),
    "mixed types inside a list": ([PLAIN + ', "tags": ["a", 1]}'],
                                  ["0: file: cannot combine the records into one dataset (a column mixes types)"]),
    "invalid JSON": ([PLAIN], ["1: json: invalid JSON"]),
    "missing field": (['{"prompt": "p", "chosen": "a ."}'], ["1: rejected: missing field"]),
}


@pytest.mark.parametrize("case", CASES)
def test_validate_data_and_load_preferences_agree(tmp_path, case):
    lines, expected = CASES[case]
    path = tmp_path / "prefs.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogatepass")
    report = validate_file(path)
    try:
        load_preferences(path)
        loaded = []
    except PreferenceDataError as err:
        loaded = err.problems
    assert report.problems == loaded, "validate-data and load_preferences disagree"
    got = [str(p) for p in report.problems]
    assert len(got) == len(expected) and all(g.startswith(f"{path}:{e}") for g, e in zip(got, expected)), got
    assert all("\n" not in g for g in got)


def test_one_bad_file_does_not_stop_the_others(tmp_path):
    files = []
    for name, case in (("nested", "absurd nesting"), ("good", "valid"), ("margin", "5,000-digit margin")):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("\n".join(CASES[case][0]) + "\n")
        files.append(str(path))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["validate-data", *files])
    printed = out.getvalue()
    assert code == 1 and err.getvalue() == ""
    assert f"{files[0]}:1: json: nested too deeply to read" in printed
    assert f"{files[1]}: ok, 2 pairs, plain format" in printed
    assert f"{files[2]}:1: margin: a whole number of 5000 digits" in printed


def test_a_failed_save_leaves_the_previous_file_whole(tmp_path, monkeypatch):
    path = save_preferences([json.loads(PLAIN + "}")], tmp_path / "prefs.jsonl")
    before = path.read_bytes()

    def disk_full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("rlhf_course.preferences.os.fsync", disk_full)
    with pytest.raises(OSError):
        save_preferences([json.loads(PLAIN + "}")] * 3, path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["prefs.jsonl"]
