"""docs/scaling.md maps every PPOConfig field onto TRL's GRPO/RLOO configs, verl and OpenRLHF: every field of
ours has a row, and every TRL field the page names exists in the installed TRL (a renamed field fails here)."""

import dataclasses
import re

from trl import GRPOConfig, RLOOConfig

from rlhf_course.paths import REPO_ROOT
from rlhf_course.ppo import PPOConfig

DOC = REPO_ROOT / "docs" / "scaling.md"


def table_rows() -> list[list[str]]:
    rows = [line.split(" | ") for line in DOC.read_text().splitlines() if line.startswith("| `")]
    rows = [row for row in rows if "PPOConfig" not in row[0]]  # the header row names the classes
    assert rows, "docs/scaling.md has no mapping table"
    return rows


def test_every_ppo_config_field_has_a_row():
    mapped = {name for row in table_rows() for name in re.findall(r"`(\w+)`", row[0])}
    fields = {f.name for f in dataclasses.fields(PPOConfig)}
    assert fields - mapped == set(), f"PPOConfig fields missing from docs/scaling.md: {sorted(fields - mapped)}"
    assert mapped - fields == set(), f"docs/scaling.md names fields PPOConfig does not have: {sorted(mapped - fields)}"


def test_every_trl_field_the_page_names_exists():
    trl_fields = {f.name for f in dataclasses.fields(GRPOConfig)} | {f.name for f in dataclasses.fields(RLOOConfig)}
    named = {name for row in table_rows() for name in re.findall(r"`(\w+)`", row[2])}
    assert named, "the TRL column names no field"
    assert named - trl_fields == set(), f"not fields of TRL's GRPOConfig/RLOOConfig: {sorted(named - trl_fields)}"
