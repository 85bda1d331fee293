"""Checks for the notebooks' exercises: `check_<name>(<your function>)` prints one clear line,
✓ with what was verified or ✗ with the likely mistake, and returns True/False.

Each check is self-contained: it builds its own small inputs (random tensors, toy-world text, at
most the tiny model), compares with the reference implementation in the package, and names the
mistakes students make most often. One module per notebook; all checks are importable from here.
"""

from rlhf_course.checks.core import CheckFailed, check, close

__all__ = ["CheckFailed", "check", "close"]
