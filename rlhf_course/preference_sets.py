"""Public preference sets, and the layouts users bring, as TRL's conversational preference rows.

The 7b profile trains on a real preference set from the Hub, a slice sized to a T4:

    prefs = load_preference_set("HuggingFaceH4/ultrafeedback_binarized", split="train_prefs", n=2000)
    sft = load_sft_set("HuggingFaceH4/ultrafeedback_binarized", n=2000)
    prefs = load_preference_set("my_pairs.jsonl")           # a local file, in any layout below

Every row comes back in TRL's conversational layout and nothing else: `prompt`, a list of messages
ending with a user turn; `chosen` and `rejected`, one assistant message each; `margin` only when
every row has one. One record is converted by `to_trl_record`; the layouts it knows (`detect_layout`):

* "trl_plain", "trl_conversational": TRL's explicit prompt/chosen/rejected (plain strings or messages).
* "implicit_conversational": `chosen`/`rejected` hold the whole conversation and the last message is
  the answer; the shared turns before it are the prompt. HuggingFaceH4/ultrafeedback_binarized is
  this layout (its card: columns prompt, prompt_id, chosen, rejected, messages, score_chosen,
  score_rejected; its `prompt` string repeats the first user turn and is not needed).
* "hh_rlhf": Anthropic/hh-rlhf's text, `"\\n\\nHuman: ...\\n\\nAssistant: ..."` turns in `chosen` and
  `rejected`; the prompt is everything up to the last "\\n\\nAssistant:" (as TRL's
  examples/datasets/hh-rlhf-helpful-base.py splits it). In error messages `chosen[i]` is its i-th turn.

The checks are `rlhf_course.preferences`' own: a bad record is one line `SOURCE:N: field: problem`
(N is the JSONL line, or the row number from 1 of a Hub split), raised as `PreferenceDataError`.
Offline (HF_HUB_OFFLINE=1 or no network) the loaders say so in one line and use the course's
hand-written set, data/handwritten/preferences.jsonl.

What SFT trains on at 7b: demonstrations of the same distribution as the preference data, so the
SFT model (PPO's and DPO's reference, the anchor of their KL) already writes the kind of answer the
reward model and DPO will judge. For ultrafeedback_binarized that is its `train_sft` split, which
its card made for SFT from the chosen answers (prompt = the turns before the last assistant turn,
completion = that turn); for any other preference set, the chosen answers, as the DPO paper does
when no SFT model exists (Rafailov et al. 2023, arXiv:2305.18290, Sec. 4: the reference maximises
the likelihood of the preferred completions). Offline, the hand-written set's chosen answers.
"""

from __future__ import annotations

import dataclasses
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

import datasets

from rlhf_course.paths import data_path
from rlhf_course.preferences import (PreferenceDataError, Problem, ValidationReport, _check_messages, _read_jsonl,
                                     detect_format, load_preferences, to_conversational, validate_records)

TRL_LAYOUTS = ("trl_plain", "trl_conversational")  # the others: "implicit_conversational", "hh_rlhf"
HH_TURN = re.compile(r"\n\n(Human|Assistant):")  # Anthropic/hh-rlhf's turn markers
HH_ROLES = {"Human": "user", "Assistant": "assistant"}
HANDWRITTEN = ("handwritten", "preferences.jsonl")


@dataclass(frozen=True)
class PreferenceSet:
    """A public preference set the course knows: its card, its splits, how to load it."""

    card: str                                     # the dataset card that describes its columns
    splits: tuple[str, ...]                       # preference splits; the first is the default
    sft_splits: tuple[str, ...] = ()              # splits of demonstrations (`messages`) for SFT, if any
    load_kwargs: dict = field(default_factory=dict)  # defaults for datasets.load_dataset (override by name)


KNOWN_SETS = {
    "HuggingFaceH4/ultrafeedback_binarized": PreferenceSet(
        "https://huggingface.co/datasets/HuggingFaceH4/ultrafeedback_binarized (MIT)",
        ("train_prefs", "test_prefs"), ("train_sft", "test_sft")),
    # Its default split concatenates the subsets' files, so a slice of the first n rows comes from
    # one subset; helpful-base is the one TRL's examples/datasets/hh-rlhf-helpful-base.py uses.
    # Pass data_dir="harmless-base" (red-team prompts) or data_dir=None (all) to choose another.
    "Anthropic/hh-rlhf": PreferenceSet(
        "https://huggingface.co/datasets/Anthropic/hh-rlhf (MIT)", ("train", "test"),
        load_kwargs={"data_dir": "helpful-base"}),
}


# ---------------------------------------------------------------------------- one record


def _is_hh_text(value) -> bool:
    return isinstance(value, str) and value.lstrip(" ").startswith(("\n\nHuman:", "Human:"))


def detect_layout(record: dict) -> str:
    """Which layout a record is in (the names above), or "unknown". A `chosen` that holds the whole
    conversation decides, unless the record has a conversational `prompt` of its own: then it is TRL's
    explicit layout with a user turn inside the answer, which the checks reject."""
    chosen = record.get("chosen")
    whole_conversation = isinstance(chosen, list) and any(
        not isinstance(m, dict) or m.get("role") != "assistant" for m in chosen)
    if whole_conversation and not isinstance(record.get("prompt"), list):
        return "implicit_conversational"
    if _is_hh_text(chosen):
        return "hh_rlhf"
    if "prompt" in record and "chosen" in record:
        return "trl_" + detect_format(record)
    return "unknown"


def _why_no_layout(record: dict) -> tuple[str, str]:
    """(field, problem) for a record that fits no layout."""
    chosen = record.get("chosen")
    if "chosen" not in record:
        return "chosen", "missing field"
    if isinstance(chosen, (str, list)):
        return "prompt", ("missing field: chosen holds only the answer, so give the prompt, or put the whole "
                          "conversation in chosen/rejected (messages, or '\\n\\nHuman: ...\\n\\nAssistant: ...' text)")
    return "chosen", f"must be a string or a list of messages, got {type(chosen).__name__}"


def _hh_turns(text: str) -> list[dict]:
    """Anthropic HH text (starting with a Human turn, see `_is_hh_text`) -> messages."""
    text = text.lstrip(" ")
    _, *rest = HH_TURN.split(text if text.startswith("\n\n") else "\n\n" + text)  # "", "Human", " hi", ...
    # one space follows each marker; the rest of the turn is kept as written
    return [{"role": HH_ROLES[who], "content": said.removeprefix(" ")} for who, said in zip(rest[::2], rest[1::2])]


def _split_conversations(chosen: list, rejected: list, problem) -> tuple[list, list, list] | None:
    """Two whole conversations -> (shared prompt, [chosen answer], [rejected answer]), or None after
    reporting what is wrong through problem(field, message)."""
    for name, turns in (("chosen", chosen), ("rejected", rejected)):
        last = len(turns) - 1
        if turns[last]["role"] != "assistant":
            problem(f"{name}[{last}].role", f"the conversation must end with the answer (assistant), got {turns[last]['role']!r}")
        elif last == 0 or turns[last - 1]["role"] != "user":
            problem(f"{name}[{last}]", "the answer must follow a user turn")
    if problem.found:
        return None
    if len(chosen) != len(rejected):
        problem("rejected", f"does not share chosen's prompt: {len(rejected) - 1} turns before the answer, "
                            f"chosen has {len(chosen) - 1}")
    else:
        differ = [i for i, (c, r) in enumerate(zip(chosen[:-1], rejected[:-1]))
                  if (c["role"], c["content"]) != (r["role"], r["content"])]
        if differ:
            problem(f"rejected[{differ[0]}]", f"does not share chosen's prompt: turn {differ[0]} differs")
    return None if problem.found else (chosen[:-1], chosen[-1:], rejected[-1:])


class _Problems(list):
    """Collects the Problems of one record: call it as problem(field, message)."""

    def __init__(self, source: str, index: int):
        super().__init__()
        self.source, self.index = source, index

    def __call__(self, field: str, message: str) -> None:
        self.append(Problem(self.source, self.index, field, message))

    @property
    def found(self) -> bool:
        return bool(self)

    def add_report(self, records: list[dict]) -> None:
        """preferences' checks on one record, numbered as this record."""
        self += [dataclasses.replace(p, line=self.index) for p in validate_records(records, self.source).problems]


def to_trl_record(record: dict, *, source: str = "<record>", index: int = 1, margin_from_scores: bool = False) -> dict:
    """One record, in any layout above, as TRL's conversational row {prompt, chosen, rejected[, margin]}.

    Other columns are dropped. With `margin_from_scores`, score_chosen - score_rejected (ultrafeedback's
    scores) becomes the margin. Raises PreferenceDataError naming source, index and field.
    """
    problem = _Problems(source, index)
    if not isinstance(record, dict):
        raise PreferenceDataError([Problem(source, index, "record", f"must be a JSON object {{...}}, got {type(record).__name__}")])
    layout = detect_layout(record)
    if layout == "unknown":
        problem(*_why_no_layout(record))
    elif layout in TRL_LAYOUTS:
        problem.add_report([record])
        if not problem.found:
            out = to_conversational(record)
            prompt, chosen, rejected = out["prompt"], out["chosen"], out["rejected"]  # the prompt: checked above
            for name, answer in (("chosen", chosen), ("rejected", rejected)):
                if len(answer) != 1 or answer[0]["role"] != "assistant":
                    problem(name, f"must be one assistant message, got {[m['role'] for m in answer]}")
    else:  # the whole conversation in chosen and rejected
        turns = {}
        for name in ("chosen", "rejected"):
            value = record.get(name)
            if layout == "hh_rlhf" and not _is_hh_text(value):
                problem(name, "must be Anthropic HH text like chosen ('\\n\\nHuman: ...')")
            elif layout == "implicit_conversational" and not isinstance(value, list):
                problem(name, f"must be a list of messages like chosen, got {type(value).__name__}")
            else:
                turns[name] = _hh_turns(value) if layout == "hh_rlhf" else value
                _check_messages(turns[name], name, problem)
        split = None if problem.found else _split_conversations(turns["chosen"], turns["rejected"], problem)
        if split:
            prompt, chosen, rejected = split
    if problem.found:
        raise PreferenceDataError(problem)

    out = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    if margin_from_scores:
        out["margin"] = _score_margin(record, problem)
    elif record.get("margin") is not None:
        out["margin"] = record["margin"]
    problem.add_report([out])  # identical answers, a bad margin
    if problem.found:
        raise PreferenceDataError(problem)
    return out


def _score_margin(record: dict, problem):
    """ultrafeedback's score_chosen - score_rejected (GPT-4 ratings, as the card says), or None after a problem."""
    scores = [record.get("score_chosen"), record.get("score_rejected")]
    if all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in scores):
        return scores[0] - scores[1]
    problem("score_chosen", "margin_from_scores needs numbers in score_chosen and score_rejected")
    return None


def convert_records(numbered, source: str, *, margin_from_scores: bool = False) -> tuple[list[dict], list[Problem]]:
    """(index, record) pairs -> (the TRL rows of the good records, every problem of the bad ones)."""
    rows, problems = [], []
    for index, record in numbered:
        try:
            rows.append(to_trl_record(record, source=source, index=index, margin_from_scores=margin_from_scores))
        except PreferenceDataError as err:
            problems += err.problems
    return rows, problems


def validate_preference_file(path) -> ValidationReport:
    """Check a JSONL file in any layout above (what `rlhf-course validate-data` needs); never raises.
    `format` names the layouts found, e.g. "hh_rlhf" or "trl_plain+trl_conversational"."""
    numbered, problems = _read_jsonl(str(path))
    rows, found = convert_records(numbered, str(path))
    layouts = dict.fromkeys(detect_layout(r) for _, r in numbered if isinstance(r, dict))
    layouts.pop("unknown", None)
    return ValidationReport(str(path), sorted(problems + found, key=lambda p: p.line), len(numbered),
                            "+".join(layouts) if rows else None)


# ---------------------------------------------------------------------------- sets of records


def _rows_dataset(rows: list[dict]) -> datasets.Dataset:
    columns = [c for c in ("prompt", "chosen", "rejected", "completion") if c in rows[0]]
    if all("margin" in r for r in rows):  # TRL's reward trainer reads the margin of every row
        columns.append("margin")
    return datasets.Dataset.from_dict({c: [r[c] for r in rows] for c in columns})


def _from_hub(source: str, split: str | None, n: int | None, load_kwargs: dict, sft: bool):
    """(numbered rows of the split's slice, their name), or (None, why) when the Hub cannot be reached."""
    known = KNOWN_SETS.get(source)
    if known is None:
        splits = ("train",)  # an unknown set: any split may be asked for
    else:
        splits = known.sft_splits if sft and known.sft_splits else known.splits
    split = split or splits[0]
    if known and split not in splits:
        raise PreferenceDataError([Problem(source, 0, "split", f"no split {split!r} here; use one of: {', '.join(splits)}")])
    kwargs = {**(known.load_kwargs if known else {}), **load_kwargs}
    try:  # only the slice a T4 trains on becomes a Dataset (datasets' split slicing, "train[:2000]")
        data = datasets.load_dataset(source, split=split if n is None else f"{split}[:{n}]", **kwargs)
    except ConnectionError as err:  # what datasets raises offline (OfflineModeIsEnabled) and when the Hub is unreachable
        return None, ("HF_HUB_OFFLINE=1 and it is not in the local cache" if datasets.config.HF_HUB_OFFLINE
                      else f"the Hub is unreachable: {err}")
    except datasets.exceptions.DatasetNotFoundError as err:  # a typo, or a gated set without a token
        raise PreferenceDataError([Problem(source, 0, "source", str(err).splitlines()[0])]) from None
    return list(enumerate(data, start=1)), f"{source}[{split}]"


def _records(caller: str, source, split, n, load_kwargs: dict, sft: bool) -> tuple[list, str, str]:
    """(numbered records, their name, where they came from: "file", "hub" or "fallback")."""
    if Path(source).suffix == ".jsonl" or Path(source).is_file():
        numbered, problems = _read_jsonl(str(source))
        if problems:  # unreadable lines, or no file
            raise PreferenceDataError(problems)
        return numbered, str(source), "file"
    numbered, name = _from_hub(source, split, n, load_kwargs, sft)
    if numbered is not None:
        return numbered, name, "hub"
    path = data_path(*HANDWRITTEN)
    records = list(load_preferences(path))
    what = "the chosen answers of " if sft else ""
    print(f"{caller}: {source} is not available ({name}); using {what}the course's hand-written set instead: "
          f"{path} ({min(n or len(records), len(records))} of its {len(records)} pairs)")
    return list(enumerate(records, start=1)), str(path), "fallback"


def _load(caller: str, source, split, n, seed, load_kwargs: dict, *, sft: bool, margin_from_scores: bool = False,
          drop_invalid: bool | None = None) -> datasets.Dataset:
    """`n` rows of `source` as TRL rows: preference rows, or SFT prompt/completion rows when `sft`."""
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"n must be a positive number of rows, or None for all, got {n!r}")
    numbered, name, where = _records(caller, source, split, n, load_kwargs, sft)
    known = KNOWN_SETS.get(source)
    if sft and where == "hub" and known and known.sft_splits:
        rows, problems = _sft_rows(numbered, name)
    else:
        rows, problems = convert_records(numbered, name, margin_from_scores=margin_from_scores)
        if sft:
            rows = [{"prompt": r["prompt"], "completion": r["chosen"]} for r in rows]
    drop = where == "hub" if drop_invalid is None else drop_invalid  # a Hub set cannot be fixed by its user
    if problems and not (drop and rows):
        raise PreferenceDataError(problems)
    if not rows:
        raise PreferenceDataError([Problem(name, 0, "file", "no records")])
    if problems:
        print(f"{caller}: dropped {len({p.line for p in problems})} of {len(numbered)} rows of {name} "
              f"that fit no layout or fail the checks (first: {problems[0]})")
    random.Random(seed).shuffle(rows)
    return _rows_dataset(rows[:n])


def load_preference_set(source: str, *, split: str | None = None, n: int | None = 1000, seed: int = 0,
                        tokenizer=None, max_length: int | None = None, margin_from_scores: bool = False,
                        drop_invalid: bool | None = None, **load_kwargs) -> datasets.Dataset:
    """`n` preference pairs of `source` as TRL conversational rows (prompt, chosen, rejected[, margin]).

    source: a Hub id (KNOWN_SETS, or any set in a layout above) or a local JSONL file.
    split: a Hub split (default: the set's first preference split; ignored for a local file).
    n: how many pairs: the first n of a Hub split (`split[:n]`), a random n of a local file; None = all.
    seed: shuffles the rows (their order, and which n of a local file).
    tokenizer, max_length: drop pairs whose prompt + longer answer exceeds max_length tokens through
        the chat template, so a T4 batch fits; how many were dropped is printed.
    drop_invalid: drop bad records (printing how many) instead of raising; default: on the Hub only.
    load_kwargs: passed to datasets.load_dataset (e.g. data_dir, revision).
    Offline, one line says so and the hand-written set is returned, converted the same way.
    """
    rows = _load("load_preference_set", source, split, n, seed, load_kwargs, sft=False,
                 margin_from_scores=margin_from_scores, drop_invalid=drop_invalid)
    return rows if max_length is None else filter_by_length(rows, tokenizer, max_length)


def _sft_rows(numbered, source: str) -> tuple[list[dict], list[Problem]]:
    """A set's SFT split: each row's `messages` -> prompt (the turns before the last assistant turn) and
    completion (that turn)."""
    rows, problems = [], []
    for index, record in numbered:
        problem = _Problems(source, index)
        messages = record.get("messages")
        if not isinstance(messages, list):
            problem("messages", f"must be a list of messages, got {type(messages).__name__}")
        else:
            _check_messages(messages, "messages", problem)
        answers = [] if problem.found else [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        if not problem.found and (not answers or answers[-1] == 0 or messages[answers[-1] - 1]["role"] != "user"):
            problem("messages", "needs an assistant turn that follows a user turn")
        if problem.found:
            problems += problem
        else:
            rows.append({"prompt": messages[:answers[-1]], "completion": [messages[answers[-1]]]})
    return rows, problems


def load_sft_set(source: str, *, split: str | None = None, n: int | None = 1000, seed: int = 0,
                 tokenizer=None, max_length: int | None = None, drop_invalid: bool | None = None,
                 **load_kwargs) -> datasets.Dataset:
    """`n` demonstrations as TRL's conversational prompt/completion rows, what `sft.train_sft` takes
    (see the module docstring for what SFT trains on at 7b and why). A set with an SFT split
    (ultrafeedback_binarized: train_sft, the default) gives its `messages`; any other preference set,
    local file included, its chosen answers. Arguments as in `load_preference_set`."""
    rows = _load("load_sft_set", source, split, n, seed, load_kwargs, sft=True, drop_invalid=drop_invalid)
    return rows if max_length is None else filter_by_length(rows, tokenizer, max_length, answers=("completion",))


def filter_by_length(rows: datasets.Dataset, tokenizer, max_length: int,
                     answers: tuple[str, ...] = ("chosen", "rejected")) -> datasets.Dataset:
    """Keep the rows whose prompt + each answer is at most `max_length` tokens, rendered through the
    chat template as TRL renders them (`reward_model.tokenize_conversations`); prints how many went."""
    from rlhf_course.reward_model import tokenize_conversations  # heavy (trl): only when filtering

    if tokenizer is None:
        raise ValueError("max_length needs the tokenizer whose chat template will render the rows")
    lengths = [list(map(len, tokenize_conversations(tokenizer, rows["prompt"], rows[a]))) for a in answers]
    keep = [i for i in range(len(rows)) if all(column[i] <= max_length for column in lengths)]
    print(f"kept {len(keep)} of {len(rows)} rows within max_length={max_length} tokens "
          f"(dropped {len(rows) - len(keep)} longer)")
    return rows.select(keep)
