"""The label file: an append-only JSONL log of labelling decisions that never loses a label.

One line per decision (docs/labels.md), written and fsync'ed the moment it is given, and an "undo"
line that cancels the last decision. A line is written whole or not at all (a full disk cuts a
half-written line off again); a torn last line that a crash left is repaired before anything is
appended after it. Replaying the log (`read_labels`) gives the labels still standing and every
problem as FILE:LINE: field: problem, so a crashed kernel loses nothing and a reopened session
resumes where it stopped.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from rlhf_course.errors import CourseError
from rlhf_course.feedback.pairs import Pair, pair_id
from rlhf_course.preferences import Problem, check_values, read_jsonl

DECISIONS = ("a", "b", "tie", "skip")  # what a labeller can answer; ties and skips teach no preference
FIELDS = ("pair_id", "prompt", "answer_a", "answer_b", "decision", "much_better", "labeller", "time")


@dataclass(frozen=True)
class Label:
    """One decision about one pair, as written in the label file."""

    pair_id: str
    prompt: str | list[dict]
    answer_a: str
    answer_b: str
    decision: str             # "a", "b", "tie" or "skip"
    much_better: bool = False  # only with "a" or "b": the labeller found the winner much better
    labeller: str = ""
    time: str = ""            # ISO 8601, UTC

    @property
    def pair(self) -> Pair:
        return Pair(self.prompt, self.answer_a, self.answer_b)

    @property
    def chosen(self) -> str | None:
        return {"a": self.answer_a, "b": self.answer_b}.get(self.decision)

    @property
    def rejected(self) -> str | None:
        return {"a": self.answer_b, "b": self.answer_a}.get(self.decision)

    def to_json(self) -> dict:
        return {"type": "label", **{name: getattr(self, name) for name in FIELDS}}


class LabelFileError(CourseError, ValueError):
    """A label file with problems; `.problems` lists every one of them (FILE:LINE: field: problem)."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class LabelSaveError(CourseError, OSError):
    """A label could not be written (a full disk, a read-only folder); the labels before it are kept."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]


def append_record(path: str | Path, record: dict) -> None:
    """Append one JSON line and force it to disk (fsync): a crash right after loses nothing. The
    line is written whole or not at all: a write that fails half-way (a full disk) is cut off again,
    and a torn last line that a crash left is repaired before anything is appended after it."""
    path = Path(path)
    if path.exists() and path.stat().st_size and not _ends_with_newline(path):
        repair_torn_tail(path)
    line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        try:
            _write_all(fd, line)
            os.fsync(fd)
        except OSError:
            os.ftruncate(fd, size)  # whole lines or nothing: the labels before this one stay readable
            raise
    finally:
        os.close(fd)


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def repair_torn_tail(path: str | Path) -> str | None:
    """A crash in the middle of a write can leave a last line without its newline. If that line is not
    valid JSON it was never a complete decision: cut it off (the file is truncated after its last
    newline, never rewritten). Returns a note when something was done."""
    path = Path(path)
    if not path.exists():
        return None
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return None
    cut = data.rfind(b"\n") + 1  # 0: the only line is torn
    tail = data[cut:]
    try:
        json.loads(tail.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        os.truncate(path, cut)
        note = f"{path}: removed an unfinished last line (a write cut by a crash): {tail[:60]!r}"
    else:
        with open(path, "ab") as f:
            f.write(b"\n")
        note = f"{path}: added the missing newline at the end"
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return note


def _type_name(value) -> str:
    return "null" if value is None else type(value).__name__


def _check_label(record: dict, problem: Callable[[str, str], None]) -> None:
    """Report through problem(field, message) what is wrong with one "label" record."""
    for name in FIELDS:
        if name not in record:
            problem(name, "missing field")
    prompt = record.get("prompt")
    if "prompt" in record and not (isinstance(prompt, str) and prompt.strip()) and not (
            isinstance(prompt, list) and prompt and all(isinstance(m, dict) and "content" in m for m in prompt)):
        problem("prompt", f"must be a non-empty string or a list of messages, got {_type_name(prompt)}")
    for name in ("answer_a", "answer_b", "labeller", "time", "pair_id"):
        if name in record and not isinstance(record[name], str):
            problem(name, f"must be a string, got {_type_name(record[name])}")
    for name in ("answer_a", "answer_b"):
        if isinstance(record.get(name), str) and not record[name].strip():
            problem(name, "empty text")
    if isinstance(record.get("answer_a"), str) and record.get("answer_a") == record.get("answer_b"):
        problem("answer_b", "identical to answer_a (a pair must differ)")
    decision = record.get("decision")
    if "decision" in record and decision not in DECISIONS:
        problem("decision", f"must be one of {', '.join(DECISIONS)}, got {decision!r}")
    much_better = record.get("much_better")
    if "much_better" in record and not isinstance(much_better, bool):
        problem("much_better", f"must be true or false, got {_type_name(much_better)}")
    elif much_better and decision in ("tie", "skip"):
        problem("much_better", f"only an 'a' or 'b' decision can be much better, not {decision!r}")
    if all(isinstance(record.get(n), str) for n in ("pair_id", "answer_a", "answer_b")) and \
            isinstance(prompt, (str, list)) and record["pair_id"] != pair_id(prompt, record["answer_a"], record["answer_b"]):
        problem("pair_id", "does not match the prompt and answers (was the file edited?)")


@dataclass
class LabelLog:
    """A label file replayed: the labels still standing (in the order given), and any problems."""

    path: str
    labels: list[Label] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    n_undone: int = 0
    warnings: list[str] = field(default_factory=list)  # e.g. an unfinished last line, left out

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def labellers(self) -> list[str]:
        return sorted({label.labeller for label in self.labels})


def read_labels(path: str | Path) -> LabelLog:
    """Replay a label file. Each line is checked; a problem is reported as FILE:LINE: field: problem
    and its line is left out. A later decision about the same pair by the same labeller replaces the
    earlier one; an "undo" line removes that labeller's most recent label of its pair."""
    path = str(path)
    log = LabelLog(path)
    jsonl = read_jsonl(path)  # unreadable lines (not UTF-8, not JSON) come back as problems naming their line
    for bad in jsonl.problems:
        if jsonl.torn_tail and bad.line == jsonl.torn_tail[0]:  # a crash cut the last write short
            log.warnings.append(f"{path}:{bad.line}: left out an unfinished last line (a write cut short by a crash): "
                                f"{jsonl.torn_tail[1][:60]!r}")
        else:
            log.problems.append(bad)
    standing: dict[tuple[str, str], Label] = {}  # (labeller, pair_id) -> label; dicts keep insertion order
    for line, record in jsonl.records:
        def problem(name: str, message: str, line=line) -> None:
            log.problems.append(Problem(path, line, name, message))

        if not isinstance(record, dict):
            problem("record", f"must be a JSON object {{...}}, got {_type_name(record)}")
            continue
        kind = record.get("type")
        if kind == "undo":
            key = (record.get("labeller"), record.get("pair_id"))
            if not all(isinstance(k, str) for k in key):
                problem("undo", "an undo needs the string fields labeller and pair_id")
                continue
            if key not in standing:
                problem("undo", f"nothing to undo: no standing label of pair {key[1]!r} by {key[0]!r}")
                continue
            del standing[key]
            log.n_undone += 1
        elif kind == "label":
            before = len(log.problems)
            _check_label(record, problem)
            check_values(record, "", problem)  # NUL bytes, lone surrogates, numbers no column holds, nesting
            if len(log.problems) > before:
                continue
            label = Label(**{name: record[name] for name in FIELDS})
            standing.pop((label.labeller, label.pair_id), None)  # a new decision replaces (and moves) the old
            standing[(label.labeller, label.pair_id)] = label
        else:
            problem("type", f'must be "label" or "undo", got {kind!r}')
    log.labels = list(standing.values())
    log.problems.sort(key=lambda p: p.line)  # FILE:LINE order, as the file reads
    return log
