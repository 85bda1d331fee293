"""Labels -> preference records (prompt / chosen / rejected / margin), the data the trainers read.

    records = labels_to_preferences(session.labels)

"a" and "b" decisions become preference pairs; ties and skips say nothing about which answer is better
and are dropped. A "much better" label gets a margin (Llama 2's margin loss, arXiv:2307.09288, Eq. 2).
"""

from __future__ import annotations

from typing import Iterable

from rlhf_course import toyworld
from rlhf_course.feedback.label_file import Label

MUCH_BETTER_MARGIN = 1.0  # the `margin` of a "much better" label (Llama 2's margin loss, Eq. 2 of arXiv:2307.09288)


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
