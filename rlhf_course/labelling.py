"""Human feedback in the notebook: show a prompt and two answers, record which one is better, never
lose a label, and combine a class's labels into one preference dataset.

RLHF starts with people choosing between two answers (InstructGPT, arXiv:2203.02155, Sec. 3.4;
Anthropic's HH data, arXiv:2204.05862). This module lets students be those people:

    pairs = sample_pairs(policy, tokenizer, toyworld.train_prompts()[:20], temperature=profile.temperature)
    labelling_widget(pairs, "my_labels.jsonl")              # in a notebook: buttons A / B / tie / skip
    session = label_pairs(pairs, "sim.jsonl", labeller=simulated_labeller())   # the same, headless
    records = labels_to_preferences(session.labels)         # prompt / chosen / rejected (+ margin)
    result = merge_labels(["class/alice.jsonl", "class/bob.jsonl"])   # majority vote + agreement

The label file (docs/labels.md) is an append-only JSONL log: one line per decision, written and
fsync'ed the moment it is given, and an "undo" line that cancels the last decision. Replaying the log
gives the labels, so a crashed kernel loses nothing and a reopened session resumes where it stopped.

This module, top to bottom: 1. pairs and their order-independent id; 2. the label file (write, read,
check); 3. the labelling session (the pure core) and headless labelling; 4. the notebook widget;
5. labels -> preference records; 6. agreement between labellers (percent, Cohen's and Fleiss' kappa);
7. merging a class's label files.
"""

from __future__ import annotations

import errno
import hashlib
import html
import itertools
import json
import math
import os
import random
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable

from rlhf_course import toyworld
from rlhf_course.errors import CourseError
from rlhf_course.preferences import Problem, check_values, parse_jsonl_line

DECISIONS = ("a", "b", "tie", "skip")  # what a labeller can answer; ties and skips teach no preference
MUCH_BETTER_MARGIN = 1.0  # the `margin` of a "much better" label (Llama 2's margin loss, Eq. 2 of arXiv:2307.09288)
FIELDS = ("pair_id", "prompt", "answer_a", "answer_b", "decision", "much_better", "labeller", "time")
_NEW_FILE_LABELLERS: dict[str, str] = {}  # label file -> the id given to the first session on it (this kernel)


# ------------------------------------------------------------------------------ 1. pairs


def _canonical(prompt) -> str:
    return json.dumps(prompt, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def pair_id(prompt: str | list[dict], answer_1: str, answer_2: str) -> str:
    """A stable id for (prompt, two answers), the same whichever answer was shown first: the first 16
    hex digits of sha256 over the prompt and the two answers in sorted order."""
    key = _canonical([prompt, sorted([answer_1, answer_2])])
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True, eq=True)
class Pair:
    """A prompt and two answers, in the order they are shown: A first, then B."""

    prompt: str | list[dict]  # plain text, or a conversation (list of messages)
    answer_a: str
    answer_b: str

    @property
    def id(self) -> str:
        return pair_id(self.prompt, self.answer_a, self.answer_b)


def sample_pairs(model, tokenizer, prompts: list, *, max_new_tokens: int = 64, temperature: float = 1.0,
                 seed: int = 0, batch_size: int = 64) -> list[Pair]:
    """Two answers per prompt, sampled from the current policy, shown in a random (seeded) order.
    Prompts whose two answers are identical are left out (there is nothing to choose).
    `prompts`: texts, conversations or toy-world `Prompt`s; pass `temperature=profile.temperature`."""
    from rlhf_course.sampling import generate

    prompts = [p.text if isinstance(p, toyworld.Prompt) else p for p in prompts]
    answers = generate(model, tokenizer, prompts * 2, max_new_tokens, batch_size=batch_size,
                       temperature=temperature, seed=seed)
    rng = random.Random(seed)
    pairs = []
    for prompt, first, second in zip(prompts, answers[: len(prompts)], answers[len(prompts):]):
        a, b = first.text, second.text
        if rng.random() < 0.5:  # the order shown must not tell which answer came from where
            a, b = b, a
        if a != b:
            pairs.append(Pair(prompt, a, b))
    return pairs


# ------------------------------------------------------------------------------ 2. the label file


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
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        log.problems.append(Problem(path, 0, "file", f"cannot read file: {err.strerror or err}"))
        return log
    standing: dict[tuple[str, str], Label] = {}  # (labeller, pair_id) -> label; dicts keep insertion order
    raw_lines = data.splitlines()
    for line, raw in enumerate(raw_lines, start=1):
        def problem(name: str, message: str, line=line) -> None:
            log.problems.append(Problem(path, line, name, message))

        if not raw.strip():
            continue
        torn = line == len(raw_lines) and not data.endswith(b"\n")  # a crash cut the last write short
        try:
            record, bad = parse_jsonl_line(raw.decode("utf-8"))
        except UnicodeDecodeError:
            record, bad = None, ("encoding", "not valid UTF-8")
        if bad and torn:
            log.warnings.append(f"{path}:{line}: left out an unfinished last line (a write cut short by a crash): "
                                f"{raw[:60]!r}")
            continue
        if bad:
            problem(*bad)
            continue
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
    return log


# ------------------------------------------------------------------------------ 3. the labelling session


def _as_decision(answer) -> tuple[str, bool]:
    """A labeller function's answer: "a"/"b"/"tie"/"skip", or (decision, much_better)."""
    decision, much_better = (answer, False) if isinstance(answer, str) else answer
    if decision not in DECISIONS:
        raise ValueError(f"a decision is one of {', '.join(DECISIONS)}, not {decision!r}")
    return decision, bool(much_better) and decision in ("a", "b")


class LabellingSession:
    """The labelling loop without any user interface: which pair is next, record a decision, undo,
    progress. Every decision is appended to `path` at once; a new session on the same file (after a
    crash, or a restarted kernel) replays it and asks only the pairs not yet labelled.

    pairs: the pairs to label, in order (duplicates and identical answers are dropped).
    labeller: your id in the file (default: the id already in the file, or a new random one).
    """

    def __init__(self, pairs: Iterable[Pair], path: str | Path, labeller: str | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.repair_note = repair_torn_tail(self.path)
        log = read_labels(self.path) if self.path.exists() else LabelLog(str(self.path))
        if not log.ok:
            raise LabelFileError(log.problems)
        if len(log.labellers) > 1:
            raise self._error(f"holds the labels of {', '.join(log.labellers)} (one file per labeller): label into "
                              "another file; `rlhf-course labels merge` counts every labeller's file")
        if labeller and log.labellers and log.labellers != [labeller]:
            raise self._error(f"holds the labels of {log.labellers[0]}, not {labeller}: pass "
                              f"labeller={log.labellers[0]!r} to continue them, or use another file")
        # A new file: the id is shared with any other session this kernel opened on it (a cell run twice),
        # so both widgets write one labeller's labels.
        new_id = _NEW_FILE_LABELLERS.setdefault(str(self.path.resolve()), f"labeller-{uuid.uuid4().hex[:8]}")
        self.labeller = labeller or (log.labellers[0] if log.labellers else new_id)
        self.history: list[Label] = list(log.labels)  # the standing labels, oldest first (undo pops the last)
        self._size = self.path.stat().st_size if self.path.exists() else 0  # what this session has seen
        self.pairs: dict[str, Pair] = {}
        for pair in pairs:
            if pair.answer_a != pair.answer_b:
                self.pairs.setdefault(pair.id, pair)
        self._order = list(self.pairs)      # the order to ask in; an undone pair moves to the front
        self.resumed = len(self.labelled_ids & set(self.pairs))

    # -- state
    @property
    def labels(self) -> list[Label]:
        """Every standing label in the file (also of pairs not in this session), oldest first."""
        return list(self.history)

    @property
    def labelled_ids(self) -> set[str]:
        return {label.pair_id for label in self.history}

    @property
    def current(self) -> Pair | None:
        """The pair to show now, or None when every pair is labelled."""
        done = self.labelled_ids
        return next((self.pairs[i] for i in self._order if i not in done), None)

    @property
    def progress(self) -> tuple[int, int]:
        """(pairs of this session labelled, pairs in this session)."""
        return len(self.labelled_ids & set(self.pairs)), len(self.pairs)

    @property
    def finished(self) -> bool:
        return self.current is None

    # -- actions
    def record(self, decision: str, much_better: bool = False, pair: Pair | None = None) -> Label:
        """Label `pair` (default: the current one; the widget passes the pair it shows) and write it to
        the file before returning. Raises LabelSaveError when it cannot be written (nothing is lost)."""
        pair = pair or self.current
        if pair is None:
            raise RuntimeError("every pair is labelled already")
        decision, much_better = _as_decision((decision, much_better))
        label = Label(pair.id, pair.prompt, pair.answer_a, pair.answer_b, decision, much_better, self.labeller, _now())
        self._append(label.to_json())
        self.history = [h for h in self.history if h.pair_id != pair.id] + [label]  # a new decision replaces
        return label

    def undo(self) -> Label | None:
        """Take back the most recent label (written as an "undo" line); its pair is asked again next."""
        self._sync()
        if not self.history:
            return None
        label = self.history[-1]
        self._append({"type": "undo", "pair_id": label.pair_id, "labeller": self.labeller, "time": _now()})
        self.history.pop()
        if label.pair_id in self.pairs:
            self._order.remove(label.pair_id)
            self._order.insert(0, label.pair_id)
        return label

    def run(self, labeller: Callable[[Pair], str | tuple[str, bool]], limit: int | None = None) -> int:
        """Label the remaining pairs with `labeller(pair) -> decision` (or (decision, much_better)).
        Stops after `limit` labels. Returns how many labels were given."""
        n = 0
        while self.current is not None and (limit is None or n < limit):
            self.record(*_as_decision(labeller(self.current)))
            n += 1
        return n

    def status(self) -> str:
        done, total = self.progress
        return f"{done} / {total} pairs labelled ({self.path})"

    # -- the file
    def _error(self, message: str) -> LabelFileError:
        return LabelFileError([Problem(str(self.path), 0, "labeller", message)])

    def _sync(self) -> None:
        """Take in what another session wrote to this file since we last looked (the same cell shown
        twice); refuse if it was another labeller (two kernels, two people)."""
        size = self.path.stat().st_size if self.path.exists() else 0
        if size == self._size:
            return
        log = read_labels(self.path)
        if not log.ok:
            raise LabelFileError(log.problems)
        others = [name for name in log.labellers if name != self.labeller]
        if others:
            raise self._error(f"{', '.join(others)} is labelling into this file too (another notebook or kernel?): "
                              "one file per labeller; label into another file")
        self.history, self._size = list(log.labels), size

    def _append(self, record: dict) -> None:
        self._sync()
        try:
            append_record(self.path, record)
        except OSError as err:
            why = "the disk is full" if err.errno in (errno.ENOSPC, errno.EDQUOT) else (err.strerror or str(err))
            raise LabelSaveError(f"this label was NOT saved: {why} ({self.path}). The {len(self.history)} labels "
                                 "before it are kept; free some space, then click again") from err
        self._size = self.path.stat().st_size


def label_pairs(pairs: Iterable[Pair], path: str | Path, labeller: Callable[[Pair], str | tuple[str, bool]],
                *, labeller_id: str | None = None, limit: int | None = None) -> LabellingSession:
    """Headless labelling: the same session as the widget, with a function in place of a person.
    Resumes a file that already has labels. Returns the session (`.labels`, `.progress`)."""
    session = LabellingSession(pairs, path, labeller_id)
    session.run(labeller, limit)
    return session


def bradley_terry(u_a: float, u_b: float, temperature: float = 1.0) -> float:
    """P(a is preferred to b) = sigmoid((u_a - u_b) / T) (Bradley & Terry 1952), computed without overflow
    for any gap. T is the labeller's noise: T -> 0 always picks the better answer, T -> inf flips a coin."""
    z = (u_a - u_b) / temperature
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


def simulated_labeller(labeller: toyworld.Labeller = toyworld.Labeller(), *, seed: int = 0,
                       much_better_gap: float = 0.5, tie_gap: float = 0.05) -> Callable[[Pair], tuple[str, bool]]:
    """A simulated student for toy-world pairs: the Bradley-Terry `labeller` draws the decision; equal
    utilities (gap < `tie_gap`) are a tie; a gap of at least `much_better_gap` makes the winner
    "much better" (when the labeller picked the better answer)."""
    rng = random.Random(seed)

    def label(pair: Pair) -> tuple[str, bool]:
        prompt = toyworld.parse_prompt(toyworld.prompt_text(pair.prompt))
        gap = labeller.utility(prompt, pair.answer_a) - labeller.utility(prompt, pair.answer_b)
        if abs(gap) < tie_gap:
            return "tie", False
        a_wins = rng.random() < bradley_terry(gap, 0.0, labeller.temperature)
        return ("a" if a_wins else "b"), (gap if a_wins else -gap) >= much_better_gap
    return label


# ------------------------------------------------------------------------------ 4. the notebook widget


class LabellingWidget:
    """The labelling session in a notebook: the prompt, answers A and B side by side, buttons
    A better / B better / tie / skip, a "much better" box, undo, and a progress bar. A thin view:
    every button calls the session, which writes the label to disk before the view updates."""

    def __init__(self, session: LabellingSession):
        import ipywidgets as w

        self.session = session
        self.prompt = w.HTML()
        self.answers = [w.HTML(layout=w.Layout(width="50%", border="1px solid #bbb", padding="6px")) for _ in "ab"]
        self.much_better = w.Checkbox(value=False, description="much better", indent=False)
        self.buttons = {
            "a": w.Button(description="A is better", button_style="primary"),
            "b": w.Button(description="B is better", button_style="primary"),
            "tie": w.Button(description="tie"),
            "skip": w.Button(description="skip"),
        }
        self.undo_button = w.Button(description="undo", icon="undo")
        for decision, button in self.buttons.items():
            button.on_click(lambda _, d=decision: self.click(d))
        self.undo_button.on_click(lambda _: self.undo())
        self.bar = w.IntProgress(min=0, max=max(1, session.progress[1]), description="progress")
        self.status = w.HTML()
        self.box = w.VBox([
            self.prompt, w.HBox(self.answers),
            w.HBox([*self.buttons.values(), self.much_better, self.undo_button]),
            w.HBox([self.bar, self.status]),
        ])
        self.refresh()

    def _repr_mimebundle_(self, **kwargs):  # `display(widget)` shows the box
        if hasattr(self.box, "_repr_mimebundle_"):  # ipywidgets 8
            return self.box._repr_mimebundle_(**kwargs)
        # ipywidgets 7 (Colab's: its widget manager renders 7, not 8): the view that 7's display sends
        return {"text/plain": repr(self.box), "application/vnd.jupyter.widget-view+json":
                {"version_major": 2, "version_minor": 0, "model_id": self.box._model_id}}

    def refresh(self) -> None:
        pair, (done, total) = self.session.current, self.session.progress
        self.shown = pair
        self.bar.value = done
        note = f" (resumed: {self.session.resumed} already labelled)" if self.session.resumed else ""
        self.status.value = f"{done} / {total} labelled{note} &mdash; saved to <code>{html.escape(str(self.session.path))}</code>"
        for button in self.buttons.values():
            button.disabled = pair is None
        self.undo_button.disabled = not self.session.history
        if pair is None:
            self.prompt.value = "<b>All pairs are labelled. Thank you!</b>"
            for box in self.answers:
                box.value = ""
            return
        text = html.escape(toyworld.prompt_text(pair.prompt))
        self.prompt.value = f"<b>Prompt:</b> {text}<br>Which answer is better?"
        for box, name, answer in zip(self.answers, "AB", (pair.answer_a, pair.answer_b)):
            box.value = f"<b>{name}</b><br>{html.escape(answer)}"

    def click(self, decision: str) -> Label | None:
        """What a button does: record the decision about the pair shown (with the "much better" box),
        then show the next pair. A label that cannot be saved is said in red; the pair stays shown."""
        try:
            label = self.session.record(decision, self.much_better.value and decision in ("a", "b"), pair=self.shown)
        except (LabelSaveError, LabelFileError) as err:
            self._show_error(err)
            return None
        self.much_better.value = False
        self.refresh()
        return label

    def undo(self) -> Label | None:
        try:
            label = self.session.undo()
        except (LabelSaveError, LabelFileError) as err:
            self._show_error(err)
            return None
        self.refresh()
        return label

    def _show_error(self, err: Exception) -> None:
        self.status.value = f'<b style="color:#b00020">{html.escape(str(err))}</b>'

    def autolabel(self, labeller: Callable[[Pair], str | tuple[str, bool]], limit: int | None = None) -> int:
        """Let a function press the buttons (how the stored notebook run and the tests drive the widget)."""
        n = 0
        while self.shown is not None and (limit is None or n < limit):
            decision, much_better = _as_decision(labeller(self.shown))
            self.much_better.value = much_better
            if self.click(decision) is None:  # not saved: the widget says why
                break
            n += 1
        return n


def labelling_widget(pairs: Iterable[Pair], path: str | Path, labeller: str | None = None) -> LabellingWidget:
    """A labelling widget on a (new or resumed) label file: end a notebook cell with it to show it."""
    return LabellingWidget(LabellingSession(pairs, path, labeller))


# ------------------------------------------------------------------------------ 5. labels -> preference records


def labels_to_preferences(labels: Iterable[Label], *, much_better_margin: float = MUCH_BETTER_MARGIN,
                          conversational: bool = True) -> list[dict]:
    """Preference records from labels: "a"/"b" become prompt / chosen / rejected; ties and skips are
    dropped (they say nothing about which answer is better). Every record gets a `margin`:
    `much_better_margin` for a "much better" label, else 0 (Llama 2's margin loss; 0 = plain
    Bradley-Terry), and its `pair_id`. conversational=True: message lists, as the trainers here expect;
    False: plain strings (a conversation prompt stays a conversation)."""
    records = []
    for label in labels:
        if label.decision not in ("a", "b"):
            continue
        records.append(_record(label.prompt, label.chosen, label.rejected,
                               much_better_margin if label.much_better else 0.0, conversational,
                               pair_id=label.pair_id))
    return records


def _record(prompt, chosen: str, rejected: str, margin: float, conversational: bool, **extra) -> dict:
    if conversational or not isinstance(prompt, str):
        prompt = toyworld.user(prompt) if isinstance(prompt, str) else prompt
        chosen, rejected = toyworld.assistant(chosen), toyworld.assistant(rejected)
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, "margin": margin, **extra}


# ------------------------------------------------------------------------------ 6. agreement between labellers


def canonical_choice(label: Label) -> str:
    """A decision independent of the order shown: "first" or "second" answer in sorted order, or "tie"
    (None for a skip). Two people who saw A and B swapped and preferred the same text agree."""
    if label.decision == "skip":
        return None
    if label.decision == "tie":
        return "tie"
    return "first" if label.chosen == min(label.answer_a, label.answer_b) else "second"


def cohen_kappa(ratings_1: list, ratings_2: list) -> float:
    """Cohen's kappa (1960) of two raters over the same items: (p_o - p_e) / (1 - p_e), with p_o the
    observed agreement and p_e the agreement expected by chance from each rater's own label rates.
    1 = perfect, 0 = chance level, < 0 = worse than chance. NaN when both always give one same label."""
    assert len(ratings_1) == len(ratings_2) > 0, "two non-empty lists of ratings of the same items"
    n = len(ratings_1)
    p_o = sum(x == y for x, y in zip(ratings_1, ratings_2)) / n
    count_1, count_2 = Counter(ratings_1), Counter(ratings_2)
    p_e = sum(count_1[c] * count_2[c] for c in count_1) / n**2
    return (p_o - p_e) / (1 - p_e) if p_e < 1 else math.nan


def percent_agreement(ratings: list[list]) -> float:
    """Mean pairwise agreement: for each item rated by >= 2 raters, the share of rater pairs that gave
    the same label; averaged over those items (Fleiss' P-bar). Returns NaN when no item has two ratings."""
    per_item = []
    for item in ratings:
        n = len(item)
        if n >= 2:
            per_item.append(sum(c * (c - 1) for c in Counter(item).values()) / (n * (n - 1)))
    return sum(per_item) / len(per_item) if per_item else math.nan


def fleiss_kappa(ratings: list[list]) -> float:
    """Fleiss' kappa (1971) for many raters: (P-bar - P_e) / (1 - P_e). `ratings`: one list of labels per
    item (any number of raters; items with fewer than two ratings are ignored). P-bar is the mean
    pairwise agreement per item, P_e = sum_j p_j^2 with p_j the share of all ratings in category j.
    With varying numbers of raters per item this is the usual generalisation (each item's agreement
    over its own rater pairs; p_j over all ratings of the items used). NaN if P_e = 1."""
    items = [item for item in ratings if len(item) >= 2]
    if not items:
        return math.nan
    p_bar = percent_agreement(items)
    totals = Counter(itertools.chain.from_iterable(items))
    n_ratings = sum(totals.values())
    p_e = sum((c / n_ratings) ** 2 for c in totals.values())
    return (p_bar - p_e) / (1 - p_e) if p_e < 1 else math.nan


@dataclass
class Agreement:
    """How much labellers agree on the pairs two or more of them labelled."""

    n_items: int          # pairs labelled (not skipped) by >= 2 labellers
    percent: float        # mean pairwise agreement, in %
    fleiss_kappa: float
    cohen_kappa: float | None = None  # when exactly two labellers are compared

    def __str__(self) -> str:
        if not self.n_items:
            return "agreement: no pair was labelled by two labellers"
        cohen = f", Cohen's kappa {self.cohen_kappa:.2f}" if self.cohen_kappa is not None else ""
        return (f"agreement on {self.n_items} pairs labelled by 2+ labellers: {self.percent:.1f}% "
                f"(Fleiss' kappa {self.fleiss_kappa:.2f}{cohen})")


def _choices_by_pair(labels: Iterable[Label]) -> dict[str, dict[str, str]]:
    """pair_id -> {labeller: canonical choice}; skips left out; a labeller's last label of a pair counts."""
    out: dict[str, dict[str, str]] = defaultdict(dict)
    for label in labels:
        choice = canonical_choice(label)
        if choice is not None:
            out[label.pair_id][label.labeller] = choice
        else:
            out[label.pair_id].pop(label.labeller, None)
    return out


def labeller_agreement(labels: Iterable[Label]) -> Agreement:
    """Agreement between the labellers of a set of labels (several labellers' labels mixed)."""
    by_pair = _choices_by_pair(labels)
    items = [list(votes.values()) for votes in by_pair.values() if len(votes) >= 2]
    labellers = sorted({name for votes in by_pair.values() for name in votes})
    cohen = None
    if len(labellers) == 2:
        both = [v for v in by_pair.values() if len(v) == 2]
        if both:
            cohen = cohen_kappa([v[labellers[0]] for v in both], [v[labellers[1]] for v in both])
    return Agreement(len(items), 100 * percent_agreement(items) if items else math.nan, fleiss_kappa(items), cohen)


def compare_labels(labels_1: Iterable[Label], labels_2: Iterable[Label]) -> Agreement:
    """Agreement between two sets of labels of the same pairs (e.g. a person and an AI judge), matched by
    pair id whatever order each was shown in. Pairs skipped by either side are left out."""
    first = {label.pair_id: canonical_choice(label) for label in labels_1}
    second = {label.pair_id: canonical_choice(label) for label in labels_2}
    common = [i for i in first if i in second and first[i] is not None and second[i] is not None]
    if not common:
        return Agreement(0, math.nan, math.nan, math.nan)
    x, y = [first[i] for i in common], [second[i] for i in common]
    return Agreement(len(common), 100 * sum(a == b for a, b in zip(x, y)) / len(common),
                     fleiss_kappa([[a, b] for a, b in zip(x, y)]), cohen_kappa(x, y))


# ------------------------------------------------------------------------------ 7. a class's labels


@dataclass
class MergeResult:
    """A class's label files combined into one preference dataset."""

    records: list[dict]                          # prompt / chosen / rejected / margin / votes / votes_chosen
    files: list[str]                             # the files merged
    skipped: dict[str, list[Problem]]            # files left out, with every problem found in them
    labellers: list[str]
    n_labels: dict[str, int]                     # standing labels per decision: a, b, tie, skip
    n_pairs: int                                 # distinct pairs labelled
    n_no_preference: int                         # pairs with only ties and skips
    n_no_majority: int                           # pairs whose a/b votes split evenly
    agreement: Agreement
    warnings: list[str] = field(default_factory=list)  # e.g. an unfinished last line, left out (FILE:LINE)

    def summary(self) -> str:
        lines = [f"{len(self.files)} label files merged, {len(self.skipped)} skipped; "
                 f"{len(self.labellers)} labellers",
                 f"labels: {sum(self.n_labels.values())} ({', '.join(f'{k} {v}' for k, v in self.n_labels.items())})",
                 f"pairs: {self.n_pairs} labelled -> {len(self.records)} preference pairs "
                 f"({self.n_no_preference} only tie/skip, {self.n_no_majority} without a majority: dropped)",
                 str(self.agreement)]
        return "\n".join(lines)


def label_files(paths: Iterable[str | Path]) -> list[Path]:
    """The label files behind command-line arguments: a file as is, a folder's *.jsonl (recursively)."""
    out: list[Path] = []
    for path in map(Path, paths):
        out += sorted(path.rglob("*.jsonl")) if path.is_dir() else [path]
    return out


def is_label_file(path: str | Path, lines: int = 5) -> bool:
    """Whether `path` looks like a label file: a "label" or "undo" record among its first lines."""
    try:
        with open(path, "rb") as f:
            for raw in itertools.islice((r for r in f if r.strip()), lines):
                try:
                    record = json.loads(raw.decode("utf-8-sig"))
                except ValueError:
                    continue
                if isinstance(record, dict) and record.get("type") in ("label", "undo"):
                    return True
    except OSError:
        return False
    return False


def merge_output_problem(out: str | Path, inputs: Iterable[str | Path]) -> str | None:
    """Why the merged file must not be written to `out` (None: it may): a folder, one of the label
    files being merged, any existing label file, or a .jsonl inside a folder being merged (the next
    merge would read it as a label file). Nobody's labels are ever overwritten."""
    out = Path(out)
    if out.is_dir():
        return f"--out {out} is a folder: name the merged file, e.g. --out class_preferences.jsonl"
    files = {p.resolve() for p in label_files(inputs)}
    if out.resolve() in files:
        return f"--out {out} is one of the label files being merged: it is never overwritten; choose another name"
    if out.exists() and is_label_file(out):
        return f"--out {out} is a label file: it is never overwritten; choose another name"
    for folder in (Path(p) for p in inputs):
        if folder.is_dir() and out.suffix == ".jsonl" and out.resolve().is_relative_to(folder.resolve()):
            return (f"--out {out} is inside {folder}, which is being merged: the next merge would read it as a "
                    "label file; write it outside that folder")
    return None


def majority(votes: list[str]) -> str | None:
    """The answer with the most votes, or None when the top two tie (an even split teaches nothing)."""
    ranked = Counter(votes).most_common()
    if not ranked or (len(ranked) > 1 and ranked[0][1] == ranked[1][1]):
        return None
    return ranked[0][0]


def merge_labels(paths: Iterable[str | Path], *, much_better_margin: float = MUCH_BETTER_MARGIN,
                 conversational: bool = True) -> MergeResult:
    """Merge students' label files (files, or folders of *.jsonl) into preference records.

    1. A file with any problem is skipped as a whole, and every problem is reported (FILE:LINE). An
       unfinished last line (a crash in the middle of a write) is only a warning: the rest is merged.
    2. Each labeller votes once per pair (their last standing label); ties and skips are not votes.
    3. Votes are counted on the answers' text, so two people who saw A and B swapped still agree.
    4. The majority answer is `chosen`; an even split is dropped. `votes` and `votes_chosen` keep the
       count; `margin` is the mean margin of the winning votes (`much_better_margin` per "much better").
    """
    files = label_files(paths)
    skipped: dict[str, list[Problem]] = {}
    labels: list[Label] = []
    warnings: list[str] = []
    for path in files:
        log = read_labels(path)
        warnings += log.warnings
        if log.ok:
            labels += log.labels
        else:
            skipped[str(path)] = log.problems
    merged = [str(p) for p in files if str(p) not in skipped]

    final: dict[tuple[str, str], Label] = {}  # (pair_id, labeller) -> the last label: one vote each
    for label in labels:
        final.pop((label.pair_id, label.labeller), None)
        final[(label.pair_id, label.labeller)] = label
    by_pair: dict[str, list[Label]] = defaultdict(list)
    for (pid, _), label in final.items():
        by_pair[pid].append(label)

    records, n_no_preference, n_no_majority = [], 0, 0
    for pid, votes in by_pair.items():
        preferences = [v for v in votes if v.decision in ("a", "b")]
        if not preferences:
            n_no_preference += 1
            continue
        winner = majority([v.chosen for v in preferences])
        if winner is None:
            n_no_majority += 1
            continue
        winners = [v for v in preferences if v.chosen == winner]
        loser = winners[0].rejected
        margin = sum(much_better_margin if v.much_better else 0.0 for v in winners) / len(winners)
        records.append(_record(winners[0].prompt, winner, loser, margin, conversational, pair_id=pid,
                               votes=len(preferences), votes_chosen=len(winners)))

    counts = Counter(label.decision for label in final.values())
    return MergeResult(
        records=records, files=merged, skipped=skipped,
        labellers=sorted({label.labeller for label in final.values()}),
        n_labels={d: counts.get(d, 0) for d in DECISIONS},
        n_pairs=len(by_pair), n_no_preference=n_no_preference, n_no_majority=n_no_majority,
        agreement=labeller_agreement(final.values()), warnings=warnings,
    )
