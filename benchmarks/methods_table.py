"""The methods table of notebook 9 and the README: the DPO family, online against offline DPO, and GRPO's
variants with a verifiable reward, each over several seeds, judged by the toy world's gold reward.

    python benchmarks/methods_table.py --out runs/methods --seeds 0 1 2 --workers 2

Writes DIR/methods.json (every run of every seed) and DIR/methods.md (mean ± std per cell). Each
(method, seed) run is independent; `--workers 2` runs two at a time, one thread each (2 cores).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from rlhf_course import methods
from rlhf_course.profiles import pick_profile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", choices=list(methods.METHODS), help="default: all")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    out = Path(args.out)
    table = methods.methods_table(pick_profile("tiny"), methods.Sizes(), tuple(args.seeds), args.methods, args.workers,
                                  save_runs=out / "runs.json")
    table["seconds_total"] = time.perf_counter() - start
    (out / "methods.json").write_text(json.dumps(table, indent=1))
    text = methods.markdown(table) + "\n\n" + methods.markdown(table, ("pass_rate",)) + "\n"
    (out / "methods.md").write_text(text)
    print(text)
    print(f"wrote {out / 'methods.json'} and {out / 'methods.md'} in {table['seconds_total']:.0f}s")


if __name__ == "__main__":
    main()
