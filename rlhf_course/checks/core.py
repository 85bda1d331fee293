"""The machinery every check shares. A check assumes the student's code is hostile (STYLE.md, 22):

    @check(reference=ppo.compute_gae)                      # the package function is the exercise's answer
    def check_compute_gae(compute_gae):
        for gamma, lam in zip(draws(...), draws(...)):     # several parameter values, none where formulas meet
            got = call(compute_gae, rewards, values, ...)  # the inputs must come back unchanged
            name_the_mistake(got, want, wrong, messages)   # a known wrong formula gets its own message
        same_on_layouts(compute_gae, args, expand=("values",))  # views and expanded tensors give the same
        return "what was verified"

In a notebook, `compute_gae = check_compute_gae(compute_gae)` prints one line, ✓ with what was verified or ✗
with the likely mistake, and returns the function the cells below should use: the student's when it
passed, else the package's reference, with one more line saying so. So Run-All on a fresh notebook
reaches the end, each unimplemented exercise printing "✗ <name>: not implemented yet". The stand-in is
marked: a check given it again (its cell re-run without the exercise's) says so instead of passing.

An exercise is "not implemented yet" when it raises NotImplementedError (a stub without a placeholder)
or when it fails its check while its source still holds the stub's `# TODO: your code here` line (a
stub that returns a placeholder): the placeholder's wrong answer is never reported as a mistake.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import io
import math
import random
from contextlib import contextmanager
from typing import Callable, Iterable

import torch

from rlhf_course.errors import CourseError

TODO_MARKER = "# TODO: your code here"  # rlhf_course.exercises writes it after a stub's placeholder line
STAND_IN = "_rlhf_course_stand_in"      # the attribute that marks a reference handed back by a check
NOT_IMPLEMENTED = "not implemented yet"


class CheckFailed(CourseError, AssertionError):
    """Raised inside a check with the message the student should read (the likely mistake)."""


# --- comparing -----------------------------------------------------------------------------------

def _as_double(x) -> torch.Tensor:
    return x.detach().double() if isinstance(x, torch.Tensor) else torch.as_tensor(x, dtype=torch.float64)


def same(a, b, atol: float = 1e-5) -> bool:
    """Same shape and values (to atol, rtol 1e-4; NaN equals NaN): tensors, numbers or lists."""
    try:
        a, b = _as_double(a), _as_double(b)
    except (TypeError, ValueError, RuntimeError):
        return False
    return a.shape == b.shape and torch.allclose(a, b, atol=atol, rtol=1e-4, equal_nan=True)


def close(got, want, atol: float = 1e-5, what: str = "result") -> None:
    """Raise CheckFailed unless `got` matches `want` (tensors, numbers or lists), with a useful message."""
    try:
        got_t = _as_double(got)
    except (TypeError, ValueError, RuntimeError):
        raise CheckFailed(f"{what} should be a number or a tensor, got {type(got).__name__}") from None
    want_t = _as_double(want)
    if got_t.shape != want_t.shape:
        raise CheckFailed(f"{what} has shape {tuple(got_t.shape)}, expected {tuple(want_t.shape)}")
    if not torch.isfinite(got_t).all() and torch.isfinite(want_t).all():
        raise CheckFailed(f"{what} holds NaN or inf where the reference is finite")
    if not torch.allclose(got_t, want_t, atol=atol, rtol=1e-4, equal_nan=True):
        worst = (got_t - want_t).abs().nan_to_num(nan=math.inf).max().item()
        raise CheckFailed(f"{what} differs from the reference by up to {worst:.3g}")


def name_the_mistake(got, want, wrong: dict, messages: dict, what: str, atol: float = 1e-5) -> None:
    """Pass if `got` matches `want`. Otherwise raise CheckFailed with the message of the first known
    mistake whose result `got` matches (`wrong[key]` is what that mistake computes on the same inputs),
    or else say how far `got` is from `want`. A mistake that happens to give the right answer on these
    inputs is never named (the check's parameter values are drawn so that this is rare)."""
    if same(got, want, atol):
        return
    for key, value in wrong.items():
        if not same(value, want, atol) and same(got, value, atol):
            raise CheckFailed(messages[key])
    close(got, want, atol=atol, what=what)


# --- the inputs must come back unchanged ----------------------------------------------------------

def _snapshot(value):
    """A copy of what a function could change in place: tensors, and lists, tuples and dicts (of them)."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, (list, tuple, dict)):
        try:
            return copy.deepcopy(value)
        except Exception:  # noqa: BLE001 - holds something that cannot be copied: not ours to compare
            return None
    return None


def _unchanged(before, after) -> bool:
    if isinstance(after, torch.Tensor):
        after = after.detach()
        if not isinstance(before, torch.Tensor) or before.shape != after.shape or before.dtype != after.dtype:
            return False
        if after.is_floating_point():
            return torch.equal(before.isnan(), after.isnan()) and torch.equal(before.nan_to_num(), after.nan_to_num())
        return torch.equal(before, after)
    if isinstance(after, dict):
        return isinstance(before, dict) and before.keys() == after.keys() and \
            all(_unchanged(before[k], after[k]) for k in after)
    if isinstance(after, (list, tuple)):
        return isinstance(before, (list, tuple)) and len(before) == len(after) and \
            all(_unchanged(b, a) for b, a in zip(before, after))
    try:
        return bool(before == after)
    except Exception:  # noqa: BLE001 - not comparable: cannot tell, so do not accuse
        return True


@functools.lru_cache(maxsize=256)
def _positional_names(fn) -> tuple[str, ...]:
    try:
        return tuple(p.name for p in inspect.signature(fn).parameters.values()
                     if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))
    except (TypeError, ValueError):
        return ()


def _argument_names(fn, args: tuple, kwargs: dict) -> list[str]:
    """The parameter name of each positional argument (as the student's signature calls it)."""
    try:
        params = _positional_names(fn)
    except TypeError:  # not hashable
        params = ()
    return [params[i] if i < len(params) else f"argument {i + 1}" for i in range(len(args))]


def in_place_message(name: str) -> str:
    return (f"you changed `{name}` in place (`{name} *= ...`, `{name}[...] = ...`, `{name}.sub_(...)`, or through "
            f"a `.view` of it): the caller still needs it afterwards (PPO, say, reuses its rollout tensors). "
            f"Compute a new tensor instead: `x = {name} * ...`, or start from `{name}.clone()`")


def call(fn, *args, **kwargs):
    """fn(*args, **kwargs), then verify that no argument was changed in place (tensors, lists, dicts,
    also inside a batch dict): CheckFailed names the argument. Gradients flow as in a plain call."""
    names = _argument_names(fn, args, kwargs) + [f"`{k}`" for k in kwargs]
    values = list(args) + list(kwargs.values())
    before = [_snapshot(v) for v in values]
    try:
        out = fn(*args, **kwargs)
    except RuntimeError as err:  # autograd refuses some in-place writes before we could see them
        if "in-place operation" not in str(err) and "inplace operation" not in str(err):
            raise
        graded = [n for n, v in zip(names, values) if isinstance(v, torch.Tensor) and v.requires_grad]
        raise CheckFailed(in_place_message((graded or names or ["an input"])[0].strip("`"))) from None
    for name, b, v in zip(names, before, values):
        if b is None:
            continue
        if isinstance(v, dict) and isinstance(b, dict):
            for key in v:
                if key in b and b[key] is not None and not _unchanged(b[key], v[key]):
                    raise CheckFailed(in_place_message(f"{name.strip('`')}[{key!r}]"))
        if not _unchanged(b, v):
            raise CheckFailed(in_place_message(name.strip("`")))
    return out


# --- the same inputs, laid out differently in memory -----------------------------------------------

def non_contiguous(x: torch.Tensor) -> torch.Tensor:
    """The same values in a non-contiguous tensor: stored column by column (its last two dims swapped in
    memory, as a transpose leaves it), or for a vector every other element of a larger one."""
    if x.dim() >= 2:
        return x.mT.contiguous().mT
    return torch.stack([x, torch.zeros_like(x)], dim=-1)[..., 0]


def expanded(x: torch.Tensor) -> torch.Tensor:
    """`x`'s first row repeated over dim 0 without copying (stride 0): a tensor that cannot be written in
    place, as `values.expand(B, T)` or a broadcast mask is. Its values differ from x's (every row is row 0)."""
    return x[:1].expand_as(x)


def _layout_failure(err: Exception, name: str, layout: str) -> CheckFailed:
    text = str(err)
    if "refers to a single memory location" in text:
        return CheckFailed(in_place_message(name) + f" (on an expanded `{name}` it raises: {text.split('.')[0]})")
    if "view size is not compatible" in text:
        return CheckFailed(f"`.view` failed on a non-contiguous `{name}` (a slice or a transpose): use "
                           "`.reshape`, which copies only when it must")
    return CheckFailed(f"with a {layout} `{name}` your function raised {type(err).__name__}: {err}")


def same_on_layouts(fn, args: list[tuple[str, object]], *, expand: Iterable[str] = (),
                    contiguous_only: Iterable[str] = (), compare: Callable | None = None, atol: float = 1e-5) -> None:
    """Call `fn` with each tensor of `args` (name, value) made non-contiguous, then with each tensor named in
    `expand` expanded (stride 0, as a broadcast tensor is), and with the same values in ordinary memory:
    the inputs must come back unchanged, nothing may fail, and the results must agree (`compare(got, want)`,
    default `same` on the first element of a tuple result). A layout must never change an answer."""
    compare = compare or (lambda got, want: same(got[0] if isinstance(got, tuple) else got,
                                                 want[0] if isinstance(want, tuple) else want, atol))
    skip = set(contiguous_only)
    variants = [(name, "non-contiguous", non_contiguous) for name, v in args
                if isinstance(v, torch.Tensor) and v.numel() > 1 and name not in skip]
    variants += [(name, "expanded", expanded) for name in expand]
    for name, layout, make in variants:
        fresh = [make(v.detach()) if n == name else v for n, v in args]
        plain = [v.clone() if n == name else v for n, v in zip((n for n, _ in args), fresh)]
        try:
            got = call(fn, *fresh)
        except (CheckFailed, NotImplementedError):
            raise
        except Exception as err:  # noqa: BLE001 - the student's code fails on this layout: say why
            raise _layout_failure(err, name, layout) from None
        want = call(fn, *plain)
        if not compare(got, want):
            raise CheckFailed(f"your function gives another answer when `{name}` is {layout} (a view of other "
                              f"memory) than on the same values in an ordinary tensor: index it as it is, without "
                              f"assuming how it is stored")


# --- parameter values ------------------------------------------------------------------------------

def draws(low: float, high: float, n: int = 3, *, seed: int = 0, avoid: Iterable[float] = (), gap: float = 0.05,
          digits: int = 3) -> list[float]:
    """`n` seeded random values in [low, high], each at least `gap` away from every value in `avoid`
    (where two formulas coincide, e.g. tau = 0.5 for 2 tau and 1 / (2 tau)) and from each other."""
    rng, out, avoid = random.Random(seed), [], list(avoid)
    while len(out) < n:
        v = round(rng.uniform(low, high), digits)
        if all(abs(v - a) >= gap for a in avoid + out):
            out.append(v)
    return out


# --- the check itself ---------------------------------------------------------------------------

def source_of(fn) -> str:
    try:
        return inspect.getsource(fn)
    except (OSError, TypeError):
        return ""


def is_stand_in(fn) -> bool:
    return bool(getattr(fn, STAND_IN, False))


def stand_in(reference: Callable, name: str) -> Callable:
    """The package's reference under the exercise's name, marked so that a check recognises it."""
    @functools.wraps(reference)
    def fn(*args, **kwargs):
        return reference(*args, **kwargs)

    fn.__name__ = fn.__qualname__ = name
    setattr(fn, STAND_IN, True)
    return fn


def reference_name(reference: Callable) -> str:
    module = getattr(reference, "__module__", "") or ""
    return f"{module}.{getattr(reference, '__qualname__', reference.__name__)}".lstrip(".")


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


def check(fn=None, *, reference: Callable | None = None):
    """Decorator for a check: the wrapped function raises CheckFailed (or any error) on a wrong answer
    and returns a short note of what it verified on success.

    check_x(candidate) prints the ✓/✗ line and returns the function to use from then on: `candidate` if it
    passed, else a stand-in for `reference` (the package function whose name, signature and return the
    exercise has), with one line saying so. `check_x.verify(candidate)` returns (passed, the line) and
    prints nothing; `check_x.reference` is the reference."""
    if fn is None:
        return functools.partial(check, reference=reference)

    def verify(candidate, *args, **kwargs) -> tuple[bool, str]:
        name = getattr(candidate, "__name__", fn.__name__.removeprefix("check_"))
        if is_stand_in(candidate):
            return False, (f"✗ {name}: {NOT_IMPLEMENTED} - `{name}` is still the course's stand-in that this check "
                           f"handed out: run your exercise cell again, then this cell")
        stub = TODO_MARKER in source_of(candidate)
        placeholder = (f"✗ {name}: {NOT_IMPLEMENTED} - replace the line marked `{TODO_MARKER}` with your code")
        try:
            note = fn(candidate, *args, **kwargs)
        except NotImplementedError:
            return False, f"✗ {name}: {NOT_IMPLEMENTED} - replace the `raise NotImplementedError` with your code"
        except CheckFailed as err:
            return False, placeholder if stub else f"✗ {name}: {err}"
        except Exception as err:  # noqa: BLE001 - a bug in the student's code: a failed check, not a crash
            return False, placeholder if stub else f"✗ {name}: raised {type(err).__name__}: {err}"
        return True, f"✓ {name}: {note or 'correct'}"

    @functools.wraps(fn)
    def wrapper(candidate, *args, **kwargs):
        ok, line = verify(candidate, *args, **kwargs)
        print(line)
        if ok or reference is None:
            return candidate
        name = getattr(candidate, "__name__", fn.__name__.removeprefix("check_"))
        print(f"  the cells below use the course's `{reference_name(reference)}` as `{name}` until yours passes")
        return candidate if is_stand_in(candidate) else stand_in(reference, name)

    wrapper.verify = verify
    wrapper.reference = reference
    return wrapper


def run_check(check_fn, candidate, *args, **kwargs) -> tuple[bool, str]:
    """Run a check without printing: (passed, the ✓/✗ line and a newline). For tests and graders."""
    if hasattr(check_fn, "verify"):
        ok, line = check_fn.verify(candidate, *args, **kwargs)
        return ok, line + "\n"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        ok = check_fn(candidate, *args, **kwargs)
    return bool(ok), out.getvalue()
