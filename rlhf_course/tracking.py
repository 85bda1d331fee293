"""Training curves beside `history`, for comparing runs: TensorBoard, or trackio where it is installed.

TRL users ask for it with `report_to=`; here it is off by default, and the notebooks never need it (they
plot `history`). To compare runs:

    export RLHF_COURSE_REPORT_TO=tensorboard      # or trackio (pip install trackio); default: none
    rlhf-course pipeline --out runs/tiny          # every trainer writes its curves under runs/curves/
    tensorboard --logdir runs/curves              # in Colab: %load_ext tensorboard, %tensorboard --logdir ...

or per run: `PPOConfig(report_to="tensorboard")` for our PPO; the TRL trainers (SFT, reward model, DPO,
GRPO/RLOO) take it from `training.trl_common_args(report_to=...)` or the environment variable.
TensorBoard's event files go to $RLHF_COURSE_LOG_DIR (default runs/curves), one folder per run; trackio
keeps its own local database (`trackio show` opens its dashboard).

    1. "none" (the default) writes nothing and imports nothing;
    2. a choice whose package is missing is one clear line (UsageError), before any model loads;
    3. our PPO logs every number of its `history` rows at their step, as TRL's trainers log theirs.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
from datetime import datetime
from pathlib import Path

from rlhf_course.errors import UsageError

REPORT_TO_ENV = "RLHF_COURSE_REPORT_TO"
LOG_DIR_ENV = "RLHF_COURSE_LOG_DIR"
DEFAULT_LOG_DIR = "runs/curves"
PROJECT = "rlhf-course"  # trackio's project: every run of the course in one dashboard
INSTALL = {"tensorboard": "pip install -e '.[tracking]' (or pip install tensorboard)", "trackio": "pip install trackio"}
_RUNS = itertools.count(1)


def report_to(choice: str | None = None) -> str:
    """Where curves go besides `history`: `choice`, else $RLHF_COURSE_REPORT_TO, else "none" (detail 1).
    A choice that is unknown, or whose package is missing, is a UsageError (detail 2)."""
    choice = (choice or os.environ.get(REPORT_TO_ENV) or "none").strip().lower()
    if choice not in ("none", *INSTALL):
        raise UsageError(f"report_to={choice!r}: choose none, tensorboard or trackio (${REPORT_TO_ENV} sets it "
                         "for every trainer)")
    if choice != "none" and importlib.util.find_spec(choice) is None:
        raise UsageError(f"report_to={choice!r} needs the package {choice}: {INSTALL[choice]}")
    return choice


def run_name(kind: str) -> str:
    """A name that sorts by time and tells runs of one process apart: e.g. ppo-20261123-101502-1."""
    return f"{kind}-{datetime.now():%Y%m%d-%H%M%S}-{next(_RUNS)}"


def log_dir(name: str) -> Path:
    """The folder of one run's TensorBoard event files: $RLHF_COURSE_LOG_DIR/<name>."""
    return Path(os.environ.get(LOG_DIR_ENV) or DEFAULT_LOG_DIR) / name


class CurveLogger:
    """Writes `history` rows (dicts with a "step") to TensorBoard or trackio; with "none", does nothing.

        logger = CurveLogger(report_to(cfg.report_to), run_name("ppo"), config=asdict(cfg))
        logger.log(stats)   # every number in the row, at stats["step"] (detail 3)
        logger.close()
    """

    def __init__(self, choice: str, name: str, config: dict | None = None):
        self.choice, self.name, self.writer = choice, name, None
        if choice == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            self.dir = log_dir(name)
            self.writer = SummaryWriter(log_dir=str(self.dir))
            if config:
                self.writer.add_text("config", "\n".join(f"    {k} = {v!r}" for k, v in config.items()))
        elif choice == "trackio":
            import trackio

            self.writer = trackio
            trackio.init(project=PROJECT, name=name, config=config or {})

    def log(self, row: dict) -> None:
        if self.writer is None:
            return
        step = int(row["step"])
        numbers = {k: float(v) for k, v in row.items()
                   if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self.choice == "tensorboard":
            for key, value in numbers.items():
                self.writer.add_scalar(key, value, step)
        else:
            self.writer.log(numbers, step=step)

    def close(self) -> None:
        if self.writer is None:
            return
        if self.choice == "tensorboard":
            self.writer.close()
        else:
            self.writer.finish()
        self.writer = None
