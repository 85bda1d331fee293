"""Preference data (prompt / chosen / rejected) in TRL's formats: read, check, convert, write.

Two record formats, as TRL's DPO and reward trainers expect them:

* plain:          {"prompt": "...", "chosen": "...", "rejected": "..."}
* conversational: {"prompt": [{"role": "user", "content": "..."}],
                   "chosen": [{"role": "assistant", "content": "..."}], "rejected": [...]}

An optional numeric ``margin`` (Llama-2 margin loss) and any extra keys are kept.
On disk the data is JSONL: one JSON object per line; blank lines are skipped.

Every problem is reported as one line ``FILE:LINE: field: problem``, and all of them are
reported at once, so a student can fix a file in one pass instead of one error per run.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import datasets

from rlhf_course.errors import CourseError

FIELDS = ("prompt", "chosen", "rejected")
ROLES = ("system", "user", "assistant", "tool")
MAX_LINES_IN_ERROR = 50


@dataclass(frozen=True)
class Problem:
    """One thing to fix: where it is (file, 1-based line; 0 = the whole file) and what is wrong."""

    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.field}: {self.message}"


@dataclass
class ValidationReport:
    """The result of checking one file (or one in-memory collection of records)."""

    path: str
    problems: list[Problem] = field(default_factory=list)
    n_records: int = 0
    format: str | None = None  # "plain", "conversational", or None if no valid record was found

    @property
    def ok(self) -> bool:
        return not self.problems


class PreferenceDataError(CourseError, ValueError):
    """Raised by load/save when the data has problems; ``.problems`` lists every one of them."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        lines = [str(p) for p in self.problems[:MAX_LINES_IN_ERROR]]
        if len(self.problems) > MAX_LINES_IN_ERROR:
            lines.append(f"... and {len(self.problems) - MAX_LINES_IN_ERROR} more problems")
        super().__init__("\n".join(lines))


# ---------------------------------------------------------------------------- formats


def detect_format(record: dict) -> str:
    """"conversational" if the record's text fields are message lists, else "plain".

    The prompt decides; chosen/rejected are only consulted when the prompt is missing or broken.
    """
    for name in FIELDS:
        value = record.get(name)
        if isinstance(value, list):
            return "conversational"
        if isinstance(value, str):
            return "plain"
    return "plain"


def to_conversational(record: dict) -> dict:
    """Plain -> conversational (prompt as a user turn, answers as assistant turns); keeps other keys."""
    if detect_format(record) == "conversational":
        return record
    out = dict(record)
    out["prompt"] = [{"role": "user", "content": record["prompt"]}]
    for name in ("chosen", "rejected"):
        out[name] = [{"role": "assistant", "content": record[name]}]
    return out


def to_plain(record: dict, tokenizer=None) -> dict:
    """Conversational -> plain; keeps other keys.

    With a tokenizer the prompt is rendered by its chat template (what the model really sees),
    ending with the assistant header so the answers continue it; without one, contents are joined.
    """
    if detect_format(record) == "plain":
        return record
    out = dict(record)
    if tokenizer is not None:
        out["prompt"] = tokenizer.apply_chat_template(record["prompt"], tokenize=False, add_generation_prompt=True)
    else:
        out["prompt"] = "\n".join(m["content"] for m in record["prompt"])
    for name in ("chosen", "rejected"):
        messages = record[name]
        answer = [m for m in messages if m.get("role") == "assistant"] or messages  # no assistant turn: keep all
        out[name] = "\n".join(m["content"] for m in answer)
    return out


# ---------------------------------------------------------------------------- checking records


def _type_name(value) -> str:
    return "null" if value is None else type(value).__name__


def _check_text(value, where: str, problem) -> None:
    if not isinstance(value, str):
        problem(where, f"must be a string, got {_type_name(value)}")
    elif not value.strip():
        problem(where, "empty text")


def _check_messages(messages: list, name: str, problem) -> None:
    if not messages:
        problem(name, "empty list of messages")
    for i, message in enumerate(messages):
        where = f"{name}[{i}]"
        if not isinstance(message, dict):
            problem(where, f'must be a message {{"role": ..., "content": ...}}, got {_type_name(message)}')
            continue
        role = message.get("role")
        if "role" not in message:
            problem(f"{where}.role", "missing field")
        elif role not in ROLES:
            problem(f"{where}.role", f"unknown role {role!r} (use one of: {', '.join(ROLES)})")
        if "content" not in message:
            problem(f"{where}.content", "missing field")
        else:
            _check_text(message["content"], f"{where}.content", problem)


def _check_record(record: dict, problem) -> str:
    """Report the problems of one record through ``problem(field, message)``; return its format."""
    fmt = detect_format(record)
    for name in FIELDS:
        if name not in record:
            problem(name, "missing field")
            continue
        value = record[name]
        if value is None:
            problem(name, "is null")
        elif not isinstance(value, (str, list)):
            problem(name, f"must be a string or a list of messages, got {_type_name(value)}")
        elif fmt == "plain" and isinstance(value, list):
            problem(name, "must be a string like the prompt (plain format), got a list of messages")
        elif fmt == "conversational" and isinstance(value, str):
            problem(name, "must be a list of messages like the prompt (conversational format), got str")
        elif isinstance(value, str):
            _check_text(value, name, problem)
        else:
            _check_messages(value, name, problem)

    chosen = record.get("chosen")
    if chosen and (not isinstance(chosen, str) or chosen.strip()) and chosen == record.get("rejected"):
        problem("chosen", "identical to rejected (a pair must differ to teach a preference)")

    # A null margin counts as absent: datasets fills a column missing from some rows with None.
    margin = record.get("margin")
    if margin is not None:
        if isinstance(margin, bool) or not isinstance(margin, (int, float)):
            problem("margin", f"must be a number, got {_type_name(margin)}")
        elif not math.isfinite(margin):
            problem("margin", f"must be a finite number, got {margin}")
    return fmt


def _check_all(numbered: list[tuple[int, object]], source: str) -> tuple[list[Problem], str | None]:
    """Check (line, record) pairs; the first valid record fixes the format for the rest."""
    problems: list[Problem] = []
    formats: dict[int, str] = {}
    file_format = None
    format_line = 0
    for line, record in numbered:
        if not isinstance(record, dict):
            problems.append(Problem(source, line, "record", f"must be a JSON object {{...}}, got {_type_name(record)}"))
            continue
        found: list[Problem] = []
        fmt = _check_record(record, lambda f, m: found.append(Problem(source, line, f, m)))
        problems += found
        if any(isinstance(record.get(n), (str, list)) for n in FIELDS):  # else the format is unknown
            formats[line] = fmt
        if file_format is None and not found:
            file_format, format_line = fmt, line

    if file_format is not None:  # second pass, so records before the first valid one are checked too
        for line, fmt in formats.items():
            if fmt != file_format:
                msg = f"{fmt} record in a {file_format}-format file (format set by line {format_line})"
                problems.append(Problem(source, line, "prompt", msg))
    problems.sort(key=lambda p: p.line)  # stable: keeps the order within a line
    return problems, file_format


def validate_records(records: Iterable[dict], source: str = "<records>") -> ValidationReport:
    """Check in-memory records (a list, or a datasets.Dataset); line numbers are 1-based row numbers."""
    numbered = list(enumerate(records, start=1))
    problems, fmt = _check_all(numbered, source)
    if not numbered:
        problems.append(Problem(source, 0, "file", "empty file: no records"))
    return ValidationReport(source, problems, len(numbered), fmt)


# ---------------------------------------------------------------------------- files


def _read_jsonl(path: str) -> tuple[list[tuple[int, object]], list[Problem]]:
    """Parse a JSONL file into (line, value) pairs, reporting unreadable lines instead of stopping."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return [], [Problem(path, 0, "file", "file not found")]
    except OSError as e:
        return [], [Problem(path, 0, "file", f"cannot read file: {e.strerror or e}")]

    numbered, problems = [], []
    # Decode line by line, so one bad byte names its line and the other lines are still checked.
    for line, raw in enumerate(data.splitlines(), start=1):
        try:
            text = raw.decode("utf-8-sig" if line == 1 else "utf-8")  # tolerate a BOM (Windows editors)
        except UnicodeDecodeError as e:
            msg = f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at byte {e.start + 1}); save the file as UTF-8"
            problems.append(Problem(path, line, "encoding", msg))
            continue
        if not text.strip():
            continue
        try:
            numbered.append((line, json.loads(text)))
        except json.JSONDecodeError as e:
            problems.append(Problem(path, line, "json", f"invalid JSON: {e.msg} (column {e.colno})"))
    if not numbered and not problems:
        problems.append(Problem(path, 0, "file", "empty file: no records"))
    return numbered, problems


def _validate_path(path, check: bool = True) -> tuple[ValidationReport, list[dict]]:
    path = str(path)
    numbered, problems = _read_jsonl(path)
    if check:
        found, fmt = _check_all(numbered, path)
    else:  # still refuse non-objects: they cannot become dataset rows
        found = [Problem(path, n, "record", "must be a JSON object") for n, r in numbered if not isinstance(r, dict)]
        fmt = next((detect_format(r) for _, r in numbered if isinstance(r, dict)), None)
    problems = sorted(problems + found, key=lambda p: p.line)
    records = [r for _, r in numbered if isinstance(r, dict)]
    return ValidationReport(path, problems, len(numbered), fmt), records


def validate_file(path) -> ValidationReport:
    """Check a JSONL preference file; bad content is reported, never raised."""
    return _validate_path(path)[0]


def _to_dataset(records: list[dict], source: str) -> datasets.Dataset:
    # Dataset.from_list takes its columns from the first row only; use every key seen.
    columns = list(dict.fromkeys(k for r in records for k in r))
    try:
        return datasets.Dataset.from_list([{k: r.get(k) for k in columns} for r in records])
    except (TypeError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise PreferenceDataError([Problem(source, 0, "file", f"cannot combine the records into one dataset (a column mixes types): {e}")]) from e


def load_preferences(path_or_paths, *, validate: bool = True) -> datasets.Dataset:
    """Load JSONL file(s), or check a datasets.Dataset, into one Dataset ready for TRL.

    Raises PreferenceDataError with every problem of every file; nothing partial is returned.
    With ``validate=False`` only unreadable data (bad JSON, encoding, missing file) is an error.
    """
    if isinstance(path_or_paths, datasets.DatasetDict):
        raise TypeError(f"pass one split, e.g. data['train'] (splits: {', '.join(path_or_paths)})")
    if isinstance(path_or_paths, datasets.Dataset):
        if validate:
            report = validate_records(path_or_paths, "<dataset>")
            if not report.ok:
                raise PreferenceDataError(report.problems)
        return path_or_paths

    paths = path_or_paths if isinstance(path_or_paths, (list, tuple)) else [path_or_paths]
    problems: list[Problem] = []
    records: list[dict] = []
    first: ValidationReport | None = None
    for path in paths:
        report, file_records = _validate_path(path, check=validate)
        problems += report.problems
        records += file_records
        if report.format is None:
            continue
        if first is None:
            first = report
        elif report.format != first.format:  # one dataset column cannot hold both strings and message lists
            msg = (f"{report.format} file, but {first.path} is {first.format}; "
                   f"convert one with to_plain() or to_conversational()")
            problems.append(Problem(report.path, 0, "file", msg))
    if not paths:
        problems.append(Problem("<no files>", 0, "file", "no files given"))
    if problems:
        raise PreferenceDataError(problems)
    return _to_dataset(records, str(paths[0]))


def save_preferences(data, path) -> Path:
    """Check, then write records (a list of dicts or a Dataset) as UTF-8 JSONL; returns the path.

    Nothing is written if the data has problems.
    """
    source = "<dataset>" if isinstance(data, datasets.Dataset) else "<records>"
    records = list(data)
    report = validate_records(records, source)
    if not report.ok:
        raise PreferenceDataError(report.problems)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")  # keep non-ASCII text readable
    return path
