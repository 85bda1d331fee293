"""Where the course finds its files: the repository's `data/` folder, or `RLHF_COURSE_DATA`."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
REPO_URL = "https://github.com/rlhf-course/rlhf-course"


def data_dir() -> Path:
    """The course data folder: `$RLHF_COURSE_DATA` if set, else `data/` in the repository checkout."""
    folder = Path(os.environ.get("RLHF_COURSE_DATA", REPO_ROOT / "data"))
    if not folder.is_dir():
        raise FileNotFoundError(
            f"course data folder not found: {folder}. Clone the repository "
            f"({REPO_URL}) and install it with `pip install -e .`, or point RLHF_COURSE_DATA at its data/ folder."
        )
    return folder


def data_path(*parts: str) -> Path:
    """A file under the course data folder, e.g. `data_path("tiny", "config.json")`."""
    return data_dir().joinpath(*parts)
