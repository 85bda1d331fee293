"""The machinery every check shares: the ✓/✗ line, and catching what a stub or a bug raises."""

from __future__ import annotations

import contextlib
import functools
import io
from contextlib import contextmanager

import torch

from rlhf_course.errors import CourseError


class CheckFailed(CourseError, AssertionError):
    """Raised inside a check with the message the student should read (the likely mistake)."""


def close(got, want, atol: float = 1e-5, what: str = "result") -> None:
    """Raise CheckFailed unless `got` matches `want` (tensors, numbers or lists), with a useful message."""
    got_t = torch.as_tensor(got, dtype=torch.float64) if not isinstance(got, torch.Tensor) else got.double()
    want_t = torch.as_tensor(want, dtype=torch.float64) if not isinstance(want, torch.Tensor) else want.double()
    if got_t.shape != want_t.shape:
        raise CheckFailed(f"{what} has shape {tuple(got_t.shape)}, expected {tuple(want_t.shape)}")
    if not torch.allclose(got_t, want_t, atol=atol, rtol=1e-4):
        worst = (got_t - want_t).abs().max().item()
        raise CheckFailed(f"{what} differs from the reference by up to {worst:.3g}")


def same(a, b, atol: float = 1e-5) -> bool:
    """Same shape and values (to atol, rtol 1e-4): tensors, numbers or lists."""
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    return a.shape == b.shape and torch.allclose(a, b, atol=atol, rtol=1e-4)


def name_the_mistake(got, want, wrong: dict, messages: dict, what: str, atol: float = 1e-5) -> None:
    """Pass if `got` matches `want`. Otherwise raise CheckFailed with the message of the first known
    mistake whose result `got` matches (`wrong[key]` is what that mistake computes), or else say how
    far `got` is from `want`."""
    if same(got, want, atol):
        return
    for key, value in wrong.items():
        if same(got, value, atol):
            raise CheckFailed(messages[key])
    close(got, want, atol=atol, what=what)


@contextmanager
def quiet_loading():
    """No "Loading weights" progress bar in the check's output (it would differ from run to run)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def check(fn):
    """Decorator for a check: the wrapped function raises CheckFailed (or any error) on a wrong answer
    and returns a short note of what it verified on success. The wrapper prints the ✓/✗ line."""

    @functools.wraps(fn)
    def wrapper(candidate, *args, **kwargs) -> bool:
        name = getattr(candidate, "__name__", fn.__name__.removeprefix("check_"))
        try:
            note = fn(candidate, *args, **kwargs)
        except NotImplementedError:
            print(f"✗ {name}: not implemented yet - replace the `raise NotImplementedError` with your code")
            return False
        except CheckFailed as err:
            print(f"✗ {name}: {err}")
            return False
        except Exception as err:  # a bug in the student's code: report it as a failed check, not a crash
            print(f"✗ {name}: raised {type(err).__name__}: {err}")
            return False
        print(f"✓ {name}: {note or 'correct'}")
        return True

    return wrapper


def run_check(check_fn, candidate, *args, **kwargs) -> tuple[bool, str]:
    """Run a check without printing: (passed, the ✓/✗ line it would have printed). For tests and graders."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        ok = check_fn(candidate, *args, **kwargs)
    return ok, out.getvalue()
