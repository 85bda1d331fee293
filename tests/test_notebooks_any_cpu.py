"""The outputs nbval compares must not depend on the CPU's float kernels: an Intel and an AMD CPU (or
two generations of one) run other matrix kernels, and a float tie, a sampled token or a figure computed
from samples can then come out differently (an AMD EPYC once drew other arrows in notebook 1's
gridworld). The whole nbval run passes as it is (the README's command) and here again with PyTorch's
kernels on another code path (ATEN_CPU_CAPABILITY=default: no AVX2/AVX-512) and MKL's BLAS on its
conditional-numerical-reproducibility path (MKL_CBWR=COMPATIBLE), which reproduces the Intel/AMD
difference on one machine."""

import os
import subprocess
import sys

import pytest

from rlhf_course.paths import REPO_ROOT

OTHER_KERNELS = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE"}


@pytest.mark.skipif(all(os.environ.get(k) == v for k, v in OTHER_KERNELS.items()),
                    reason="this run already uses the other kernels")
def test_every_compared_notebook_output_is_the_same_on_other_cpu_kernels():
    # Two nbval runs side by side, every other notebook each: a notebook's kernel computes on one thread
    # (the setup cell), so on 2 cores this takes half the time of one run, and the kernels' slower code
    # path doubles a run's time.
    notebooks = sorted((REPO_ROOT / "solutions").glob("*.ipynb"))
    runs = [subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval", "--nbval-current-env",
         *map(str, notebooks[half::2])],
        cwd=REPO_ROOT, env={**os.environ, **OTHER_KERNELS}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True) for half in (0, 1)]
    for run in runs:
        stdout = run.communicate(timeout=3600)[0]
        summary = [line for line in stdout.splitlines() if "passed" in line or "failed" in line][-1:]
        assert run.returncode == 0, "nbval under " + " ".join(f"{k}={v}" for k, v in OTHER_KERNELS.items()) + \
            " differs:\n" + stdout[-6000:]
        assert summary and "failed" not in summary[0], summary
