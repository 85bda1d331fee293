"""Shared by the package tests and the notebook run (nbval): no Hub access, quiet tokenizers."""

import os

# Set before anything imports transformers/huggingface_hub: an accidental Hub call fails loudly.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("RLHF_COURSE_PROFILE", "tiny")

from collections import defaultdict

_NOTEBOOK_SECONDS: dict[str, float] = defaultdict(float)


def pytest_collectstart(collector):
    """nbval: also ignore output types that are not deterministic text (images are skipped already)."""
    if str(getattr(collector, "fspath", "")).endswith(".ipynb"):
        collector.skip_compare += ("text/html", "application/javascript", "image/svg+xml")


def pytest_runtest_logreport(report):
    path = report.nodeid.split("::")[0]
    if path.endswith(".ipynb"):
        _NOTEBOOK_SECONDS[path] += report.duration


def pytest_terminal_summary(terminalreporter):
    """Per-notebook execution time against the budget (2 min each, 8 min for the course)."""
    if not _NOTEBOOK_SECONDS:
        return
    tr = terminalreporter
    tr.section("notebook durations (budget: 120 s each, 480 s in all)")
    for path, seconds in sorted(_NOTEBOOK_SECONDS.items()):
        tr.write_line(f"{seconds:7.1f} s  {path}{'   OVER BUDGET' if seconds > 120 else ''}")
    total = sum(_NOTEBOOK_SECONDS.values())
    tr.write_line(f"{total:7.1f} s  all notebooks{'   OVER BUDGET' if total > 480 else ''}")
