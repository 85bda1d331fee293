"""The labelling session: which pair is next, record a decision, undo, resume; no user interface.

The widget (`feedback.widget`) is a thin view over this state machine, and `label_pairs` drives it
headless with a function in place of a person (a simulated student, the tests). Every decision is
written to the label file (`feedback.label_file`) before the session moves on.

    session = label_pairs(pairs, "sim.jsonl", labeller=simulated_labeller())
    session.labels, session.progress
"""

from __future__ import annotations

import errno
import uuid
from pathlib import Path
from typing import Callable, Iterable

from rlhf_course.feedback.label_file import (DECISIONS, Label, LabelFileError, LabelLog, LabelSaveError, _now,
                                             append_record, read_labels, repair_torn_tail)
from rlhf_course.feedback.pairs import Pair
from rlhf_course.preferences import Problem

LabellerFn = Callable[[Pair], "str | tuple[str, bool]"]  # labeller(pair) -> a decision, or (decision, much_better)
_NEW_FILE_LABELLERS: dict[str, str] = {}  # label file -> the id given to the first session on it (this kernel)


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

    def run(self, labeller: LabellerFn, limit: int | None = None) -> int:
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


def label_pairs(pairs: Iterable[Pair], path: str | Path, labeller: LabellerFn,
                *, labeller_id: str | None = None, limit: int | None = None) -> LabellingSession:
    """Headless labelling: the same session as the widget, with a function in place of a person.
    Resumes a file that already has labels. Returns the session (`.labels`, `.progress`)."""
    session = LabellingSession(pairs, path, labeller_id)
    session.run(labeller, limit)
    return session
