"""Expected failures, said in a few lines with what to do instead of a traceback.

Some failures are part of the course's normal life: a Colab session without a GPU, a T4 out of
memory, the Hub unreachable or a gated model without a token, a preference file with bad records,
a notebook newer than the installed package. Each has an exception type whose message says what
happened and what to do; `explain(err)` turns any of them (and CUDA's out-of-memory error) into
that message, and three places show it without a traceback:

    rlhf-course train dpo ...                   # the CLI: `rlhf-course train: error: ...`, exit code 2
    errors.install_notebook_handler()           # a notebook: the message instead of a traceback
    with errors.friendly_errors(): main()       # a script: the message, then exit code 2

Every such exception derives from `CourseError` (the one root; each keeps a second base such as
ValueError where callers already catch that), so one handler knows them all. Anything else is a
bug and keeps its full traceback.
"""

from __future__ import annotations

import gc
import re
import sys
from contextlib import contextmanager
from pathlib import Path

# No module-level torch: colab.py derives its error from CourseError and runs before torch matters.


class CourseError(Exception):
    """An expected failure of the course's own making; the message says what to do."""


class RunError(CourseError):
    """A training run cannot start as asked (e.g. its folder holds another run)."""


class UsageError(CourseError, ValueError):
    """An argument that cannot work as given (e.g. an output file that would overwrite an input)."""


class PlanError(CourseError, ValueError):
    """A memory plan was asked for a model, method or GPU it does not know."""


class OutOfMemory(CourseError):
    """The GPU ran out of memory; the message names the settings that need less."""


class VersionError(CourseError):
    """The installed rlhf-course is older than the notebook needs."""


# Hugging Face tokens start with "hf_"; redact anything like one from every message we show.
TOKEN_PATTERN = re.compile(r"hf_[A-Za-z0-9]{20,}")


def redact(text: str) -> str:
    return TOKEN_PATTERN.sub("hf_***", text)


def expected_errors() -> tuple[type[BaseException], ...]:
    """The exception types that mean "expected failure": shown as a message, never as a traceback."""
    import torch

    return (CourseError, torch.cuda.OutOfMemoryError)


def explain(err: BaseException) -> str | None:
    """The short message for an expected failure, or None for anything else (a bug: keep the traceback)."""
    import torch

    if isinstance(err, torch.cuda.OutOfMemoryError):
        return memory_advice()
    if isinstance(err, expected_errors()):
        return redact(str(err))
    return None


# --- out of memory -----------------------------------------------------------------------------

def memory_advice(profile=None, checkpoint_dir: str | Path | None = None, method: str | None = None) -> str:
    """What to change when the GPU runs out of memory, with the profile's current numbers if known."""
    p = profile
    now = (lambda name: f" (now {getattr(p, name)})") if p is not None else (lambda name: "")
    batch = f"batch_size={max(1, p.batch_size // 2)}, gradient_accumulation_steps={p.gradient_accumulation_steps * 2}" \
        if p is not None else "batch_size=..., gradient_accumulation_steps=..."
    lines = [
        "CUDA out of memory: the GPU cannot hold this run. Settings that need less memory, most effective first:",
        f"  - a smaller batch, the same effective batch: profile.replace({batch}){now('batch_size')}",
        f"  - shorter sequences: max_prompt_length{now('max_prompt_length')}, max_new_tokens{now('max_new_tokens')}",
        f"  - gradient checkpointing on: gradient_checkpointing=True{now('gradient_checkpointing')}",
        f"  - a smaller LoRA rank: lora_r{now('lora_r')}",
        "  - 4-bit weights: load_in_4bit=True (the 7b profile's default)",
        f"  See the plan: rlhf-course memory --method {method or 'dpo'} --gpu t4",
    ]
    if checkpoint_dir is not None:
        lines.append(f"  The last checkpoint in {checkpoint_dir} is kept: run again with --resume (resume=True) "
                     "after changing the settings that do not change the run (gradient checkpointing, "
                     "batch split into accumulation steps).")
    return "\n".join(lines)


def free_accelerator_memory() -> None:
    """Give cached GPU memory back after a failure, so the notebook can continue."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --- showing them ------------------------------------------------------------------------------

@contextmanager
def friendly_errors(prog: str = "rlhf-course"):
    """For scripts: an expected failure prints `prog: error: message` and exits with code 2.
    The traceback is dropped on purpose (it holds the GPU tensors of the failed step)."""
    try:
        yield
    except BaseException as err:  # noqa: BLE001 - re-raised below unless it is an expected failure
        message = explain(err)
        if message is None:
            raise
    else:
        return
    free_accelerator_memory()  # outside the except block: the failed frames are gone by now
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _notebook_handler(shell, etype, value, tb, tb_offset=None):
    message = explain(value)
    if message is None:  # not ours after all: the usual traceback
        return shell.showtraceback((etype, value, tb), tb_offset=tb_offset)
    free_accelerator_memory()
    print(f"{etype.__name__}: {message}", file=sys.stderr)
    return None


def install_notebook_handler() -> bool:
    """In Jupyter/Colab: show the course's expected failures as their message, without a traceback
    (the cell still fails, so "Run all" stops there). Returns False outside IPython."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    if shell is None:
        return False
    shell.set_custom_exc(expected_errors(), _notebook_handler)
    return True


# --- the package version a notebook needs ------------------------------------------------------

def require(minimum: str, installed: str | None = None) -> None:
    """Raise `VersionError` with the fix when the installed rlhf-course is older than `minimum`."""
    from packaging.version import Version

    from rlhf_course import __version__

    installed = installed or __version__
    if Version(installed) < Version(minimum):
        raise VersionError(
            f"this notebook needs rlhf-course >= {minimum}, you have {installed}: run "
            "`git pull && pip install -e .` in the course folder (in Colab: run the setup cell again, "
            "then Runtime > Restart session)")
