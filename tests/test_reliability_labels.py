"""Labels that must never be lost (issue 10, section 2): writes are whole lines or nothing, a torn
last line is repaired before the next append and only warned about by the merge, a full disk is a
clear message in the widget, a file opened twice stays one labeller's, and `labels merge --out`
never overwrites a label file."""

import contextlib
import errno
import io
import json

import pytest

from rlhf_course.cli import main
from rlhf_course.feedback import label_file
from rlhf_course.feedback import (LabelFileError, LabellingSession, LabellingWidget, LabelSaveError, merge_labels,
                                  read_labels)

from test_labelling import toy_pairs, write_labels


def cli(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def write_half_then_fail(fd, data):
    """The disk fills up in the middle of a write: half the line is written, then ENOSPC."""
    label_file.os.write(fd, data[: len(data) // 2])
    raise OSError(errno.ENOSPC, "No space left on device")


# --- torn lines ---------------------------------------------------------------------------------

def test_the_merge_reads_past_a_torn_last_line_with_a_warning(tmp_path):
    pairs = toy_pairs(3)
    folder = tmp_path / "class"
    write_labels(folder / "ana.jsonl", "ana", pairs, ["a", "b", "a"])
    write_labels(folder / "ben.jsonl", "ben", pairs, ["a", "b", "b"])
    with open(folder / "ana.jsonl", "ab") as f:
        f.write(b'{"type": "label", "pair_id": "9c1f')  # the kernel died in the middle of a write
    result = merge_labels([folder])
    assert not result.skipped and result.labellers == ["ana", "ben"] and result.n_labels["a"] + result.n_labels["b"] == 6
    assert result.warnings == [f"{folder / 'ana.jsonl'}:4: left out an unfinished last line (a write cut short by a "
                               "crash): b'{\"type\": \"label\", \"pair_id\": \"9c1f'"]
    code, out, _ = cli("labels", "merge", str(folder), "--out", str(tmp_path / "merged.jsonl"))
    assert code == 0 and f"warning: {folder / 'ana.jsonl'}:4: left out an unfinished last line" in out
    assert "2 label files merged, 0 skipped; 2 labellers" in out


def test_a_torn_line_is_repaired_before_the_next_append(tmp_path):
    path, pairs = tmp_path / "me.jsonl", toy_pairs(3)
    session = LabellingSession(pairs, path, "ana")
    session.record("a")
    with open(path, "ab") as f:
        f.write(b'{"type": "label", "dec')  # a write of another session, cut short
    session.record("b")
    log = read_labels(path)
    assert log.ok and not log.warnings and [label.decision for label in log.labels] == ["a", "b"]
    assert path.read_bytes().endswith(b"\n") and len(path.read_text().splitlines()) == 2


def test_a_label_file_with_absurd_lines_is_skipped_with_file_and_line_not_a_traceback(tmp_path):
    pairs = toy_pairs(2)
    write_labels(tmp_path / "ana.jsonl", "ana", pairs, ["a", "b"])
    with open(tmp_path / "ana.jsonl", "a") as f:
        f.write('{"type": "label", "time": ' + "9" * 5000 + "}\n" + "[" * 100_000 + "]" * 100_000 + "\n"
                + '{"type": "undo", "type": "label"}\n')
    result = merge_labels([tmp_path])
    found = {(p.line, p.field): p.message for p in result.skipped[str(tmp_path / "ana.jsonl")]}
    assert found[(3, "time")] == "a whole number of 5000 digits: too large for a column (at most 19 digits)"
    assert found[(4, "json")] == "nested too deeply to read"
    assert found[(5, "type")].startswith("duplicate key in one JSON object")


# --- a full disk ----------------------------------------------------------------------------------

def test_a_full_disk_loses_no_saved_label_and_leaves_no_partial_line(tmp_path, monkeypatch):
    path, pairs = tmp_path / "me.jsonl", toy_pairs(4)
    session = LabellingSession(pairs, path, "ana")
    first = session.record("a")
    before = path.read_bytes()
    monkeypatch.setattr(label_file, "_write_all", write_half_then_fail)
    with pytest.raises(LabelSaveError) as e:
        session.record("b")
    message = str(e.value)
    assert "this label was NOT saved: the disk is full" in message and "The 1 labels before it are kept" in message
    assert path.read_bytes() == before, "whole lines or nothing: the half-written line was cut off"
    assert session.history == [first] and session.progress == (1, 4)
    monkeypatch.undo()  # space freed: labelling goes on, and the file opens
    session.record("b")
    assert [label.decision for label in LabellingSession(pairs, path).labels] == ["a", "b"]


def test_a_full_disk_is_a_red_message_in_the_widget_and_the_pair_stays(tmp_path, monkeypatch):
    path, pairs = tmp_path / "w.jsonl", toy_pairs(3)
    widget = LabellingWidget(LabellingSession(pairs, path, "ana"))
    widget.buttons["a"].click()
    shown = widget.shown
    monkeypatch.setattr(label_file, "_write_all", write_half_then_fail)
    widget.buttons["b"].click()  # no exception escapes a button callback
    assert "color:#b00020" in widget.status.value and "NOT saved: the disk is full" in widget.status.value
    assert widget.shown == shown and widget.bar.value == 1
    assert widget.autolabel(lambda pair: "b") == 0  # stops instead of clicking forever
    monkeypatch.undo()
    widget.buttons["b"].click()
    assert widget.bar.value == 2 and "NOT saved" not in widget.status.value
    assert [label.decision for label in read_labels(path).labels] == ["a", "b"] and read_labels(path).ok


# --- one file, one labeller ---------------------------------------------------------------------

def test_a_new_file_opened_twice_in_one_kernel_stays_one_labellers_file(tmp_path):
    path, pairs = tmp_path / "mine.jsonl", toy_pairs(4)
    first, second = LabellingWidget(LabellingSession(pairs, path)), LabellingWidget(LabellingSession(pairs, path))
    assert first.session.labeller == second.session.labeller  # the cell was run twice
    first.buttons["a"].click()           # on pair 0
    second.buttons["b"].click()          # the older view still shows pair 0: the person's latest click wins
    second.buttons["tie"].click()        # pair 1
    log = read_labels(path)
    assert log.ok and len(log.labellers) == 1 and [label.decision for label in log.labels] == ["b", "tie"]
    reopened = LabellingSession(pairs, path)
    assert reopened.progress == (2, 4) and reopened.labeller == first.session.labeller


def test_two_labellers_on_one_file_get_a_clear_line_and_advice_that_works(tmp_path):
    path, pairs = tmp_path / "shared.jsonl", toy_pairs(4)
    ana, ben = LabellingSession(pairs, path, "ana"), LabellingSession(pairs, path, "ben")  # e.g. two kernels
    ana.record("a")
    with pytest.raises(LabelFileError) as e:
        ben.record("b")
    assert str(e.value) == (f"{path}:0: labeller: ana is labelling into this file too (another notebook or kernel?): "
                            "one file per labeller; label into another file")
    assert read_labels(path).labellers == ["ana"]

    with pytest.raises(LabelFileError, match="pass labeller='ana' to continue them") as e:
        LabellingSession(pairs, path, "ben")
    assert LabellingSession(pairs, path, "ana").progress == (1, 4)  # the advice works

    # a file that holds two labellers (written before this fix): no labeller= advice, which could not work
    ben_file = tmp_path / "ben.jsonl"
    LabellingSession(pairs, ben_file, "ben").record("b")
    with open(path, "a") as f:
        f.write(ben_file.read_text())
    with pytest.raises(LabelFileError) as e:
        LabellingSession(pairs, path)
    assert "holds the labels of ana, ben (one file per labeller): label into another file" in str(e.value)
    assert "labeller=" not in str(e.value)
    assert LabellingSession(pairs, tmp_path / "another.jsonl").progress == (0, 4)  # the advice works


# --- labels merge --out ---------------------------------------------------------------------------

def test_labels_merge_never_overwrites_a_label_file(tmp_path):
    pairs = toy_pairs(3)
    folder = tmp_path / "class"
    write_labels(folder / "ana.jsonl", "ana", pairs, ["a", "b", "a"])
    write_labels(tmp_path / "elsewhere" / "zoe.jsonl", "zoe", pairs, ["a", "a", "a"])
    labels = {p: p.read_bytes() for p in (folder / "ana.jsonl", tmp_path / "elsewhere" / "zoe.jsonl")}
    (tmp_path / "out_dir").mkdir()
    cases = {
        folder / "ana.jsonl": "is one of the label files being merged: it is never overwritten",
        tmp_path / "elsewhere" / "zoe.jsonl": "is a label file: it is never overwritten",
        folder / "merged.jsonl": "is inside",
        tmp_path / "out_dir": "is a folder: name the merged file",
    }
    for out, expected in cases.items():
        code, printed, err = cli("labels", "merge", str(folder), "--out", str(out))
        assert code == 2 and printed == "" and err.count("\n") == 1, (out, err)
        assert err.startswith(f"rlhf-course labels: error: --out {out} ") and expected in err, err
    assert {p: p.read_bytes() for p in labels} == labels and not (folder / "merged.jsonl").exists()

    merged = tmp_path / "merged.jsonl"  # a merge written before is a preference file: merging again replaces it
    assert cli("labels", "merge", str(folder), "--out", str(merged))[0] == 0
    assert cli("labels", "merge", str(folder), "--out", str(merged))[0] == 0
    assert len(merged.read_text().splitlines()) == 3 and all("chosen" in json.loads(line)
                                                            for line in merged.read_text().splitlines())
