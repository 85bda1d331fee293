"""Human and AI feedback: label pairs of answers, check the labels, agree, merge, and loop.

One module per step, in the order a notebook-4 student meets them:

    pairs.py           a prompt and two answers sampled from the policy (`Pair`, `sample_pairs`)
    label_file.py      the append-only, fsync'ed JSONL log of decisions (`read_labels`, `Label`)
    session.py         the labelling state machine: next pair, record, undo, resume (`label_pairs`)
    simulated.py       a simulated Bradley-Terry student (`simulated_labeller`, `bradley_terry`)
    widget.py          the ipywidgets view of a session (`labelling_widget`)
    to_preferences.py  labels -> prompt / chosen / rejected / margin (`labels_to_preferences`)
    agreement.py       percent agreement, Cohen's and Fleiss' kappa (`compare_labels`)
    merge.py           a class's label files -> one preference dataset (`merge_labels`)
    ai_feedback.py     AI judges (RLAIF, Constitutional AI) that label like a person
    iterative.py       the iterative on-policy loop: sample -> label -> DPO -> repeat

Every public name is importable from here: `from rlhf_course.feedback import labelling_widget`.
The names of ai_feedback and iterative are loaded on first use (they import torch and TRL, which
`rlhf-course labels merge` does not need).
"""

import importlib

from rlhf_course.feedback.agreement import (Agreement, canonical_choice, cohen_kappa, compare_labels, fleiss_kappa,
                                            labeller_agreement, percent_agreement)
from rlhf_course.feedback.label_file import (DECISIONS, FIELDS, Label, LabelFileError, LabelLog, LabelSaveError,
                                             append_record, read_labels, repair_torn_tail)
from rlhf_course.feedback.merge import (MergeResult, is_label_file, label_files, majority, merge_labels,
                                        merge_output_problem)
from rlhf_course.feedback.pairs import Pair, pair_id, sample_pairs
from rlhf_course.feedback.session import LabellingSession, label_pairs
from rlhf_course.feedback.simulated import bradley_terry, simulated_labeller
from rlhf_course.feedback.to_preferences import MUCH_BETTER_MARGIN, labels_to_preferences
from rlhf_course.feedback.widget import LabellingWidget, labelling_widget

_LAZY = {  # name -> the module that defines it, imported when the name is first asked for
    **dict.fromkeys(["CONSTITUTION", "JUDGE_PROMPT", "Judge", "GroundTruthJudge", "RewardModelJudge",
                     "ConstitutionalJudge", "PrincipleJudge", "Critique", "critique", "revise", "principles",
                     "helpful_steps", "judge_prompt", "letter_logprobs", "make_judge", "judge_agreement"],
                    "rlhf_course.feedback.ai_feedback"),
    **dict.fromkeys(["LoopConfig", "RoundResult", "LoopResult", "label_round", "iterative_loop", "plot_rounds"],
                    "rlhf_course.feedback.iterative"),
}

__all__ = [
    "Agreement", "canonical_choice", "cohen_kappa", "compare_labels", "fleiss_kappa", "labeller_agreement",
    "percent_agreement", "DECISIONS", "FIELDS", "Label", "LabelFileError", "LabelLog", "LabelSaveError",
    "append_record", "read_labels", "repair_torn_tail", "MergeResult", "is_label_file", "label_files", "majority",
    "merge_labels", "merge_output_problem", "Pair", "pair_id", "sample_pairs", "LabellingSession", "label_pairs",
    "bradley_terry", "simulated_labeller", "MUCH_BETTER_MARGIN", "labels_to_preferences", "LabellingWidget",
    "labelling_widget", *_LAZY,
]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)


def __dir__() -> list[str]:
    return sorted(__all__)
