"""environment.yml (conda) and pyproject.toml (pip) must pin the same packages at the same versions."""

import re
import tomllib

from rlhf_course.doctor import TESTED_TORCH
from rlhf_course.paths import REPO_ROOT

PIN = re.compile(r"^([A-Za-z0-9_.-]+)==([^\s;]+)$")


def pyproject_pins() -> dict[str, str]:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    pins = {}
    for req in reqs:
        if req.startswith("rlhf-course"):
            continue
        m = PIN.match(req)
        if req.startswith("torch"):
            assert not m, "torch must stay a range in pyproject.toml, or Colab's CUDA torch gets replaced"
            pins["torch"] = TESTED_TORCH
            continue
        assert m, f"pyproject.toml: {req!r} is not pinned with =="
        pins[m[1].lower()] = m[2]
    return pins


def environment_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO_ROOT / "environment.yml").read_text().splitlines():
        m = re.match(r"^\s*-\s+([A-Za-z0-9_.-]+)==(\S+)\s*$", line)
        if m:
            pins[m[1].lower()] = m[2]
    return pins


def test_environment_yml_pins_match_pyproject():
    assert environment_pins() == pyproject_pins()


def test_environment_yml_installs_the_package_and_python():
    text = (REPO_ROOT / "environment.yml").read_text()
    assert "- -e ." in text and re.search(r"- python=3\.1[0-9]", text)


def test_torch_range_admits_the_tested_build():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    torch_req = next(r for r in project["dependencies"] if r.startswith("torch"))
    low = re.match(r"torch>=(\d+)\.(\d+)", torch_req)
    assert low and tuple(map(int, TESTED_TORCH.split(".")[:2])) >= (int(low[1]), int(low[2]))
