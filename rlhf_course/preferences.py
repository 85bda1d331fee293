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
import os
import unicodedata
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
    layout: str | None = None  # a Hub set's layout the file was converted from (preference_sets.detect_layout)

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
# One code path for every way in: `validate_file` (and `rlhf-course validate-data`), `load_preferences`,
# `validate_records` and `save_preferences` all check with `_check_all`, and files are read by
# `read_jsonl` and turned into a dataset by `_check_files`, so they accept and reject the same data
# with the same messages.

MAX_DEPTH = 20          # nesting deeper than this is not preference data (and trips up pyarrow)
MAX_INT = 2**63 - 1     # a whole number must fit a dataset column (int64)


class TooLongNumber:
    """A whole number read from a file that no column can hold; reported where it stands."""

    def __init__(self, digits: str):
        self.n = len(digits.lstrip("-"))

    def __repr__(self) -> str:
        return f"<a whole number of {self.n} digits>"


def _parse_int(digits: str):
    # Python refuses to read integers of more than 4300 digits (a ValueError, not a JSON error):
    # look at the length first, so a 5,000-digit margin is a problem of its line, not a traceback.
    if len(digits) > 20:
        return TooLongNumber(digits)
    value = int(digits)
    return value if -MAX_INT - 1 <= value <= MAX_INT else TooLongNumber(digits)


class _DuplicateKey(ValueError):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    """json's object_pairs_hook: a key given twice in one object is an error (json keeps the last)."""
    out = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def parse_jsonl_line(text: str):
    """One JSONL line -> (value, None) or (None, (field, problem)); never raises (label files use it too)."""
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_int=_parse_int), None
    except json.JSONDecodeError as e:
        return None, ("json", f"invalid JSON: {e.msg} (column {e.colno})")
    except _DuplicateKey as e:
        return None, (e.key, "duplicate key in one JSON object (JSON would keep only the last value: which was meant?)")
    except RecursionError:
        return None, ("json", "nested too deeply to read")
    except ValueError as e:
        return None, ("json", f"unreadable: {str(e).splitlines()[0][:120]}")


def _type_name(value) -> str:
    return "null" if value is None else type(value).__name__


def _invisible(text: str) -> bool:
    """Only whitespace and characters that show nothing (zero-width spaces, joiners, BOMs, controls)."""
    return all(c.isspace() or unicodedata.category(c) in ("Cf", "Cc") for c in text)


def check_values(value, where: str, problem, depth: int = 0) -> None:
    """What any value of a record must not hold, wherever it is: NUL bytes, lone surrogates (not
    Unicode: they cannot be written as UTF-8), numbers no column can hold, absurd nesting."""
    if depth > MAX_DEPTH:
        problem(where, f"nested more than {MAX_DEPTH} levels deep")
    elif isinstance(value, str):
        if "\x00" in value:
            problem(where, "contains a NUL byte (\\x00)")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            problem(where, f"contains a lone surrogate ({value[e.start]!r}): not valid Unicode")
    elif isinstance(value, TooLongNumber):
        problem(where, f"a whole number of {value.n} digits: too large for a column (at most 19 digits)")
    elif isinstance(value, dict):
        for key, item in value.items():
            check_values(item, f"{where}.{key}" if where else str(key), problem, depth + 1)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            check_values(item, f"{where}[{i}]", problem, depth + 1)


def _check_text(value, where: str, problem) -> None:
    if not isinstance(value, str):
        problem(where, f"must be a string, got {_type_name(value)}")
    elif not value.strip():
        problem(where, "empty text")
    elif _invisible(value):
        code = next(f"U+{ord(c):04X}" for c in value if not c.isspace())
        problem(where, f"only invisible characters (e.g. {code}): empty to a reader")


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


def _check_turns(record: dict, problem) -> None:
    """A conversational record: the prompt holds a user turn and does not end with the assistant's;
    chosen and rejected are the assistant's reply only (the conversation is in the prompt)."""
    roles = [m.get("role") for m in record["prompt"]]
    if "user" not in roles:
        problem("prompt", "holds no user turn: the answers must reply to a user")
    elif roles[-1] == "assistant":
        problem(f"prompt[{len(roles) - 1}].role", "the prompt ends with an assistant turn: it must end with the "
                "turn the answers reply to (chosen and rejected hold the assistant's reply)")
    for name in ("chosen", "rejected"):
        for i, message in enumerate(record[name]):
            if message.get("role") == "user":
                problem(f"{name}[{i}].role", "a user turn inside the answer: chosen and rejected hold the "
                        "assistant's reply only (the conversation goes in prompt)")


def _normalised(value):
    """Text with its whitespace collapsed (messages: each content), to compare chosen with rejected."""
    if isinstance(value, str):
        return " ".join(value.split())
    if isinstance(value, list):
        return [(m.get("role"), _normalised(m.get("content"))) if isinstance(m, dict) else m for m in value]
    return value


def _check_record(record: dict, problem) -> str:
    """Report the problems of one record through ``problem(field, message)``; return its format."""
    fmt = detect_format(record)
    found_before = []
    count = lambda f, m: (found_before.append(f), problem(f, m))  # noqa: E731
    for name in FIELDS:
        if name not in record:
            count(name, "missing field")
            continue
        value = record[name]
        if value is None:
            count(name, "is null")
        elif not isinstance(value, (str, list)):
            count(name, f"must be a string or a list of messages, got {_type_name(value)}")
        elif fmt == "plain" and isinstance(value, list):
            count(name, "must be a string like the prompt (plain format), got a list of messages")
        elif fmt == "conversational" and isinstance(value, str):
            count(name, "must be a list of messages like the prompt (conversational format), got str")
        elif isinstance(value, str):
            _check_text(value, name, count)
        else:
            _check_messages(value, name, count)
    if fmt == "conversational" and not found_before:
        _check_turns(record, count)

    chosen, rejected = record.get("chosen"), record.get("rejected")
    answers_ok = not any(f.startswith(("chosen", "rejected")) for f in found_before)
    if isinstance(chosen, (str, list)) and isinstance(rejected, (str, list)) and chosen and answers_ok:
        if chosen == rejected:
            problem("chosen", "identical to rejected (a pair must differ to teach a preference)")
        elif _normalised(chosen) == _normalised(rejected):
            problem("chosen", "identical to rejected but for whitespace (a pair must differ to teach a preference)")

    # A null margin counts as absent: datasets fills a column missing from some rows with None.
    margin = record.get("margin")
    if margin is not None and not isinstance(margin, TooLongNumber):
        if isinstance(margin, bool) or not isinstance(margin, (int, float)):
            problem("margin", f"must be a number, got {_type_name(margin)}")
        elif not math.isfinite(margin):
            problem("margin", f"must be a finite number, got {margin}")
    check_values(record, "", problem)
    return fmt


def _kind(value) -> str | None:
    """The column type a value asks for (None: any column can hold it)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", list: "list", dict: "object"}.get(type(value), type(value).__name__)


def _check_all(numbered: list[tuple[int, object]], source: str) -> tuple[list[Problem], str | None]:
    """Check (line, record) pairs; the first valid record fixes the format for the rest, and the
    first value of each extra column its type (a dataset column holds one type)."""
    problems: list[Problem] = []
    formats: dict[int, str] = {}
    file_format = None
    format_line = 0
    column_kinds: dict[str, tuple[str, int]] = {}  # extra column -> (type, first line)
    for line, record in numbered:
        if not isinstance(record, dict):
            problems.append(Problem(source, line, "record", f"must be a JSON object {{...}}, got {_type_name(record)}"))
            continue
        found: list[Problem] = []
        fmt = _check_record(record, lambda f, m: found.append(Problem(source, line, f, m)))
        for key, value in record.items():
            if key in FIELDS or key == "margin" or (kind := _kind(value)) is None:
                continue
            first_kind, first_line = column_kinds.setdefault(key, (kind, line))
            if kind != first_kind:
                found.append(Problem(source, line, key, f"a {kind} here, but a {first_kind} on line {first_line} "
                                                        "(a column holds one type)"))
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


@dataclass
class JsonlFile:
    """A JSONL file read line by line (`read_jsonl`): the values that parsed and the lines that did not."""

    path: str
    records: list[tuple[int, object]] = field(default_factory=list)  # (1-based line, value); blank lines skipped
    problems: list[Problem] = field(default_factory=list)            # one per unreadable line (or the file)
    torn_tail: tuple[int, bytes] | None = None  # (line, bytes): an unreadable last line without its newline


def read_jsonl(path: str | Path) -> JsonlFile:
    """The one JSONL reader, for preference and label files: a UTF-8 BOM on the first line is accepted
    (Windows editors write one); a line that is not UTF-8 or not JSON is a problem naming its line, and
    the other lines are still read. An unreadable last line without a newline is also kept as
    `torn_tail` (label files treat it as a write a crash cut short). An empty file is not a problem here."""
    path = str(path)
    out = JsonlFile(path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        out.problems.append(Problem(path, 0, "file", "file not found"))
        return out
    except IsADirectoryError:
        out.problems.append(Problem(path, 0, "file", "a folder, not a file"))
        return out
    except OSError as e:
        out.problems.append(Problem(path, 0, "file", f"cannot read file: {e.strerror or e}"))
        return out

    raw_lines = data.splitlines()
    # Decode line by line, so one bad byte names its line and the other lines are still checked.
    for line, raw in enumerate(raw_lines, start=1):
        try:
            text = raw.decode("utf-8-sig" if line == 1 else "utf-8")
        except UnicodeDecodeError as e:
            value, problem = None, ("encoding", f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at byte {e.start + 1}); "
                                                "save the file as UTF-8")
        else:
            if not text.strip():
                continue
            value, problem = parse_jsonl_line(text)
        if problem is None:
            out.records.append((line, value))
            continue
        out.problems.append(Problem(path, line, *problem))
        if line == len(raw_lines) and not data.endswith(b"\n"):
            out.torn_tail = (line, raw)
    return out


def _read_jsonl(path: str) -> tuple[list[tuple[int, object]], list[Problem]]:
    """A preference file's (line, value) pairs and its unreadable lines; an empty file is a problem."""
    jsonl = read_jsonl(path)
    if not jsonl.records and not jsonl.problems:
        return [], [Problem(path, 0, "file", "empty file: no records")]
    return jsonl.records, jsonl.problems


HUB_LAYOUTS = ("implicit_conversational", "hh_rlhf")  # converted to TRL's rows on reading


def _validate_path(path, check: bool = True) -> tuple[ValidationReport, list[dict]]:
    path = str(path)
    numbered, problems = _read_jsonl(path)
    from rlhf_course.preference_sets import convert_records, detect_layout  # it imports this module

    layout = next((detect_layout(r) for _, r in numbered if isinstance(r, dict)), None)
    if layout in HUB_LAYOUTS:  # whole conversations (ultrafeedback_binarized) or hh-rlhf text: TRL's rows
        records, found = convert_records(numbered, path)
        problems = sorted(problems + found, key=lambda p: p.line)
        return ValidationReport(path, problems, len(numbered), "conversational", layout), records
    if check:
        found, fmt = _check_all(numbered, path)
    else:  # still refuse what cannot become dataset rows: non-objects, values no column can hold
        found = [Problem(path, n, "record", "must be a JSON object") for n, r in numbered if not isinstance(r, dict)]
        for n, r in numbered:
            check_values(r, "", lambda f, m, n=n: found.append(Problem(path, n, f, m)))
        fmt = next((detect_format(r) for _, r in numbered if isinstance(r, dict)), None)
    problems = sorted(problems + found, key=lambda p: p.line)
    records = [r for _, r in numbered if isinstance(r, dict)]
    return ValidationReport(path, problems, len(numbered), fmt), records


def _to_dataset(records: list[dict], source: str) -> tuple[datasets.Dataset | None, list[Problem]]:
    # Dataset.from_list takes its columns from the first row only; use every key seen.
    columns = list(dict.fromkeys(k for r in records for k in r))
    try:
        return datasets.Dataset.from_list([{k: r.get(k) for k in columns} for r in records]), []
    except (TypeError, ValueError, OverflowError, RecursionError) as e:  # pyarrow's ArrowInvalid is a ValueError
        msg = f"cannot combine the records into one dataset (a column mixes types): {str(e).splitlines()[0][:200]}"
        return None, [Problem(source, 0, "file", msg)]


def _check_files(paths: list, validate: bool = True
                 ) -> tuple[list[Problem], datasets.Dataset | None, list[ValidationReport]]:
    """Read, check and combine files: every problem of every file, and the dataset when there is none."""
    problems: list[Problem] = []
    records: list[dict] = []
    reports: list[ValidationReport] = []
    first: ValidationReport | None = None
    for path in paths:
        report, file_records = _validate_path(path, check=validate)
        reports.append(report)
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
        return problems, None, reports
    dataset, found = _to_dataset(records, str(paths[0]))
    return found, dataset, reports


def validate_file(path) -> ValidationReport:
    """Check a JSONL preference file exactly as `load_preferences` does (it loads it, too); bad
    content is reported, never raised."""
    problems, _, (report,) = _check_files([path])
    return ValidationReport(report.path, problems, report.n_records, report.format, report.layout)


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

    paths = list(path_or_paths) if isinstance(path_or_paths, (list, tuple)) else [path_or_paths]
    problems, dataset, _ = _check_files(paths, validate)
    if problems:
        raise PreferenceDataError(problems)
    return dataset


def save_preferences(data, path) -> Path:
    """Check, then write records (a list of dicts or a Dataset) as UTF-8 JSONL; returns the path.

    Nothing is written if the data has problems. The file is written next to `path` and renamed
    over it when complete, so a crash or a full disk never leaves a half-written file behind.
    """
    source = "<dataset>" if isinstance(data, datasets.Dataset) else "<records>"
    records = list(data)
    report = validate_records(records, source)
    if not report.ok:
        raise PreferenceDataError(report.problems)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")  # keep non-ASCII text readable
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
