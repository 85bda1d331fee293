"""The Colab install (rlhf_course.colab): keep what Colab has in a tested range, install only the rest,
never touch torch, and restart when a package in use had to change.

The last test builds a Colab-like environment (a fresh venv with Colab's preinstalled versions of 2026-08-19,
all different from pyproject's pins but in range, and a stand-in of Colab's CUDA torch), imports packages in
it as a running Colab kernel has them, and runs the setup cell's install there: first pip's dry run
(`--dry-run --report`), then for real, then again as after the restart.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from rlhf_course import colab
from rlhf_course.exercises import SETUP_CELL
from rlhf_course.paths import REPO_ROOT

PINS = colab.pinned_requirements(REPO_ROOT)

# Colab's preinstalled versions on 2026-08-19 (googlecolab/backend-info, pip-freeze.gpu.txt) of the course's
# packages and of what they import; trl and bitsandbytes are not preinstalled, and transformers, tokenizers
# and datasets are older than the course needs. torch is the stand-in below (Colab's is a 2.5 GB CUDA build).
COLAB_PREINSTALLED = {
    "transformers": "5.15.0", "accelerate": "1.14.0", "datasets": "4.0.0", "peft": "0.20.0",
    "tokenizers": "0.22.2", "safetensors": "0.8.0", "matplotlib": "3.10.0", "tqdm": "4.67.3",
    "ipywidgets": "7.7.1", "nbformat": "5.11.1", "jupytext": "1.19.5", "huggingface-hub": "1.27.0",
    "numpy": "2.1.3", "pandas": "2.2.3", "pyarrow": "18.1.0", "fsspec": "2025.3.0",
    "ipython": "7.34.0", "ipykernel": "6.17.1", "traitlets": "5.7.1", "widgetsnbextension": "3.6.10",
}
COLAB_TORCH = "2.11.0+cu128"


def pin(name: str) -> str:
    return PINS[name].removeprefix("==")


# --- the plan: pure ------------------------------------------------------------------------------

def test_every_pin_lies_in_its_colab_range():
    ranges = colab.colab_ranges(PINS)
    assert set(ranges) == set(PINS)
    for name, spec in PINS.items():
        if name == "torch":
            continue
        assert Version(pin(name)) in ranges[name], f"{name}: pin {pin(name)} outside its Colab range {ranges[name]}"
    for name, lowest in colab.TESTED_WITH.items():
        assert name in PINS, f"TESTED_WITH names {name}, which pyproject.toml does not depend on"
        assert Version(lowest) <= Version(pin(name)), f"{name}: tested from {lowest}, above its pin {pin(name)}"


def test_plan_keeps_what_is_in_range_and_installs_the_rest():
    installed = {name: version for name, version in COLAB_PREINSTALLED.items()} | {"torch": COLAB_TORCH}
    installed["matplotlib"] = "3.9.4"        # older than tested
    installed["tqdm"] = "4.99.0"             # newer than tested
    plan = colab.plan_install(PINS, installed)
    assert plan.keep["torch"] == COLAB_TORCH and plan.keep["ipywidgets"] == "7.7.1"
    for name in ("accelerate", "peft", "safetensors", "nbformat", "jupytext"):
        assert plan.keep[name] == COLAB_PREINSTALLED[name], name
    assert set(plan.install) == {"trl", "bitsandbytes", "datasets", "transformers", "tokenizers", "matplotlib", "tqdm"}
    assert plan.why["trl"] == "missing" and "older" in plan.why["datasets"] and "older" in plan.why["matplotlib"]
    assert "newer" in plan.why["tqdm"]
    assert plan.install["trl"] == f"trl=={pin('trl')}"  # not in Colab: tested at its pin only
    assert SpecifierSet(plan.install["matplotlib"].removeprefix("matplotlib")) == \
        SpecifierSet(f">={colab.TESTED_WITH['matplotlib']},<={pin('matplotlib')}")
    assert not set(plan.keep) & set(plan.install)


def test_torch_and_ipywidgets_are_kept_at_any_version_and_torch_is_never_installed():
    installed = {n: pin(n) for n in PINS if n != "torch"} | {"torch": "2.4.0", "ipywidgets": "7.6.5"}
    plan = colab.plan_install(PINS, installed)
    assert plan.install == {} and plan.keep["torch"] == "2.4.0" and plan.keep["ipywidgets"] == "7.6.5"
    with pytest.raises(colab.ColabSetupError, match="no torch"):
        colab.plan_install(PINS, {n: pin(n) for n in PINS if n != "torch"})


def test_a_changed_distribution_in_use_is_stale():
    changed = colab.replaced({"datasets": "4.0.0", "tqdm": "4.67.3", "pyarrow": "18.1.0"},
                             {"datasets": "5.2.0", "tqdm": "4.67.3", "pyarrow": "24.0.0", "trl": "1.16.0"})
    assert changed == {"datasets": ("4.0.0", "5.2.0"), "pyarrow": ("18.1.0", "24.0.0"), "trl": (None, "1.16.0")}
    in_use = colab.distributions_in_use({"tqdm.auto": None, "pytest": None, "json": None})
    assert {"tqdm", "pytest"} <= in_use and "json" not in in_use


def test_the_setup_cell_fetches_the_course_where_setup_colab_looks():
    assert str(colab.COLAB_DIR) in SETUP_CELL and colab.REPO_URL in SETUP_CELL
    assert "from rlhf_course.colab import setup_colab" in SETUP_CELL
    assert "pip" not in SETUP_CELL  # every install goes through setup_colab, never a bare pip install -e


def test_restart_is_one_line_and_stops_the_cell():
    with pytest.raises(colab.RestartRuntime) as caught:
        colab.restart_runtime("datasets changed while in use")
    lines = caught.value._render_traceback_()  # what IPython shows instead of a traceback
    assert len(lines) == 1 and "datasets changed while in use" in lines[0] and "run this cell again" in lines[0]


# --- a Colab-like environment, for real ------------------------------------------------------------

CHILD = textwrap.dedent("""
    import json, sys
    for name in sys.argv[2].split(","):  # what a running Colab kernel has imported
        if name:
            __import__(name)
    from rlhf_course import colab
    mode = sys.argv[1]
    result = colab.install({repo!r}, dry_run=(mode == "dry"))
    print(json.dumps({{"keep": result.plan.keep, "install": result.plan.install, "why": result.plan.why,
                      "would_install": result.would_install, "changed": result.changed, "stale": result.stale,
                      "held_in_use": result.held_in_use, "summary": result.summary()}}))
""").format(repo=str(REPO_ROOT))


def run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def torch_stand_in(site_packages: Path) -> Path:
    """A dist-info that says torch 2.11.0+cu128 is installed, as in Colab: pip resolves against it exactly as
    against Colab's torch (its 2.5 GB CUDA build is not downloaded). Nothing may ever rewrite or remove it."""
    info = site_packages / f"torch-{COLAB_TORCH}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: torch\nVersion: {COLAB_TORCH}\n")
    (info / "INSTALLER").write_text("colab\n")
    (info / "RECORD").write_text(f"{info.name}/METADATA,,\n{info.name}/INSTALLER,,\n{info.name}/RECORD,,\n")
    return info


@pytest.fixture(scope="module")
def colab_like(tmp_path_factory):
    """A venv with Colab's preinstalled versions and the torch stand-in; skipped without a package index."""
    root = tmp_path_factory.mktemp("colab")
    probe = run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(root / "probe"), "tqdm==4.67.3"])
    if probe.returncode != 0:
        pytest.skip(f"no package index reachable (pip download tqdm==4.67.3 failed: {probe.stderr.strip()[-200:]})")
    venv = root / "venv"
    run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    t0 = time.perf_counter()
    built = run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                 *[f"{n}=={v}" for n, v in COLAB_PREINSTALLED.items()]])
    assert built.returncode == 0, built.stderr[-2000:]
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    torch_info = torch_stand_in(site)
    print(f"Colab-like environment built in {time.perf_counter() - t0:.0f} s")
    return python, torch_info


def child(python: str, mode: str, imports: list[str]) -> dict:
    done = run([python, "-c", CHILD, mode, ",".join(imports)], env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin",
                                                                   "MPLBACKEND": "Agg", "HOME": str(Path.home())})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_colab_install_keeps_colabs_packages_and_torch(colab_like):
    python, torch_info = colab_like
    torch_files = {p.name: p.read_bytes() for p in torch_info.iterdir()}
    in_use = ["matplotlib.pyplot", "ipywidgets", "tqdm.auto", "datasets"]  # datasets: too old, must change

    dry = child(python, "dry", in_use)
    kept = set(dry["keep"])
    assert {"torch", "accelerate", "peft", "safetensors", "matplotlib", "tqdm", "ipywidgets", "nbformat",
            "jupytext"} <= kept, dry["keep"]
    assert set(dry["install"]) == {"trl", "bitsandbytes", "datasets", "transformers", "tokenizers"}, dry["install"]
    would = dry["would_install"]
    assert "torch" not in would and not kept & set(would), f"pip would replace kept packages: {would}"
    assert {"matplotlib", "ipywidgets", "tqdm"}.isdisjoint(would)  # in use: held where they are
    assert would["trl"] == pin("trl") and would["datasets"] == pin("datasets") and would["bitsandbytes"] == pin("bitsandbytes")

    done = child(python, "install", in_use)
    print(done["summary"])
    assert set(done["changed"]) == set(would), "the real install did something else than its dry run"
    assert not kept & set(done["changed"]) and "torch" not in done["changed"]
    assert {p.name: p.read_bytes() for p in torch_info.iterdir()} == torch_files  # the torch stand-in untouched
    assert "datasets" in done["stale"]  # imported, then replaced: the setup cell restarts the runtime
    assert {"matplotlib", "ipywidgets", "tqdm"}.isdisjoint(done["stale"])

    again = child(python, "install", [])  # after the restart: everything in place, nothing to install
    assert again["install"] == {} and again["changed"] == {} and again["stale"] == []
    assert again["keep"]["ipywidgets"] == "7.7.1" and again["keep"]["trl"] == pin("trl")


def test_the_labelling_widget_shows_itself_with_colabs_ipywidgets_7(tmp_path):
    """ipywidgets 7 (Colab's) has no `_repr_mimebundle_`: the widget sends the view bundle 7's display sends."""
    import types

    from rlhf_course.feedback import Pair, labelling_widget

    widget = labelling_widget([Pair("how do i cook rice ?", "rinse it .", "no .")], tmp_path / "l.jsonl")
    widget.box = types.SimpleNamespace(_model_id="abc123")  # a 7.x box: a model id, no _repr_mimebundle_
    bundle = widget._repr_mimebundle_()
    assert bundle["application/vnd.jupyter.widget-view+json"] == {"version_major": 2, "version_minor": 0,
                                                                   "model_id": "abc123"}


def test_the_course_is_installed_editable_once(tmp_path, monkeypatch):
    import shutil
    import types

    shutil.copy(REPO_ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    calls = []
    monkeypatch.setattr(colab, "pip", lambda args, python=sys.executable: calls.append(args) or
                        subprocess.CompletedProcess(args, 0, "", ""))
    colab.install_course(tmp_path)  # another clone than the one installed: installed, without dependencies
    assert calls == [["install", "-q", "--no-deps", "-e", str(tmp_path.resolve())]]

    url = json.dumps({"url": tmp_path.resolve().as_uri(), "dir_info": {"editable": True}})
    dist = types.SimpleNamespace(version=colab.tomllib.loads((tmp_path / "pyproject.toml").read_text())["project"]["version"],
                                 read_text=lambda name: url if name == "direct_url.json" else None)
    monkeypatch.setattr(colab.metadata, "distribution", lambda name: dist)
    colab.install_course(tmp_path)  # the setup cell run again: already so
    assert len(calls) == 1


def test_constraints_hold_versions_pip_can_read(tmp_path):
    path = colab.write_constraints(tmp_path / "c.txt", {"torch": "2.11.0+cu128", "odd": "2004d", "ipywidgets": "7.7.1"})
    assert path.read_text() == "ipywidgets==7.7.1\ntorch==2.11.0+cu128\n"
