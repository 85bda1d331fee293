"""A class's labels: merge every student's label file into one preference dataset (majority vote).

    result = merge_labels(["class/alice.jsonl", "class/bob.jsonl"])   # or a folder of *.jsonl
    print(result.summary())                                            # counts and agreement

`rlhf-course labels merge` runs it; `merge_output_problem` says why an output path would overwrite
somebody's labels (it never does).
"""

from __future__ import annotations

import itertools
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from rlhf_course.feedback.agreement import Agreement, labeller_agreement
from rlhf_course.feedback.label_file import DECISIONS, Label, read_labels
from rlhf_course.feedback.to_preferences import MUCH_BETTER_MARGIN, _record
from rlhf_course.preferences import Problem


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
