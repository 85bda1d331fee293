"""The `rlhf-course` command line: one sub-command per job, each a thin call into the package."""

from __future__ import annotations

import argparse
import json
import sys
import time


def cmd_doctor(args: argparse.Namespace) -> int:
    from rlhf_course.doctor import report

    print(report(args.profile))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from rlhf_course import toyworld
    from rlhf_course.loading import load_policy, load_tokenizer
    from rlhf_course.profiles import pick_profile
    from rlhf_course.sampling import generate

    profile = pick_profile(args.profile)
    tokenizer = load_tokenizer(profile)
    model = load_policy(profile, lora=False)
    prompts = args.prompt or [p.text for p in toyworld.eval_prompts()[: args.n]]
    t0 = time.perf_counter()
    answers = generate(model, tokenizer, prompts, profile.max_new_tokens, seed=args.seed)
    seconds = time.perf_counter() - t0
    for prompt, answer in zip(prompts, answers):
        print(f"\nuser:      {prompt}\nassistant: {answer.text}{'' if answer.ended else ' [cut at the length limit]'}")
        if profile.name == "tiny":
            try:
                s = toyworld.score(prompt, answer.text, answer.ended)
                print(f"           ground truth: helpful {s.helpful:+.2f}, harmless {s.harmless:+.2f}")
            except KeyError:
                pass  # a prompt from outside the toy world has no ground truth
    print(f"\n{len(prompts)} answers in {seconds:.2f}s ({len(prompts) / seconds:.1f} answers/s)")
    return 0


def cmd_validate_data(args: argparse.Namespace) -> int:
    from rlhf_course.preferences import validate_file

    failed = False
    for path in args.files:
        report = validate_file(path)
        for problem in report.problems:
            print(problem)
        if report.ok:
            print(f"{path}: ok, {report.n_records} pairs, {report.format} format")
        failed |= not report.ok
    return 1 if failed else 0


def cmd_build_tiny(args: argparse.Namespace) -> int:
    from rlhf_course.tinymodel import build

    build(args.out)
    return 0


def cmd_build_checkpoints(args: argparse.Namespace) -> int:
    from rlhf_course.checkpoints import build_checkpoints
    from rlhf_course.profiles import pick_profile

    for name, path in build_checkpoints(pick_profile(args.profile)).items():
        print(f"{name}: {path}")
    return 0


def cmd_make_toy_data(args: argparse.Namespace) -> int:
    from rlhf_course.toyworld import write_toy_data

    write_toy_data(args.out)
    return 0


def cmd_exercises(args: argparse.Namespace) -> int:
    from rlhf_course.exercises import generate

    paths = generate(check=args.check)
    if args.check:
        for p in paths:
            print(f"out of date: {p} (run `rlhf-course exercises`)")
        return 1 if paths else 0
    print(f"wrote {len(paths)} notebook(s)" + "".join(f"\n  {p}" for p in paths))
    return 0


def cmd_pipeline(args: argparse.Namespace) -> int:
    from rlhf_course.pipeline import run_pipeline

    run_pipeline(args.out, args.profile, seed=args.seed)
    return 0


def cmd_overoptimization(args: argparse.Namespace) -> int:
    from rlhf_course.overoptimization import write_lab

    write_lab(args.out, args.profile)
    return 0


def cmd_labels_merge(args: argparse.Namespace) -> int:
    from rlhf_course.labelling import merge_labels
    from rlhf_course.preferences import save_preferences

    result = merge_labels(args.inputs)
    for path, problems in result.skipped.items():
        for problem in problems:
            print(problem)
        print(f"{path}: skipped ({len(problems)} problems): fix the lines above, then merge again")
    if not result.records:
        print(f"rlhf-course labels merge: error: no preference pairs to write (files: {len(result.files)} usable, "
              f"{len(result.skipped)} skipped)", file=sys.stderr)
        return 2
    save_preferences(result.records, args.out)
    print(result.summary())
    print(f"wrote {len(result.records)} preference pairs to {args.out}")
    return 1 if result.skipped else 0


def cmd_train(args: argparse.Namespace) -> int:
    from rlhf_course.runs import run_stage

    metrics = run_stage(args.stage, args.out, profile=args.profile, max_steps=args.max_steps, resume=args.resume,
                        sft=args.sft, rm=args.rm, save_every=args.save_every, seed=args.seed)
    print(json.dumps(metrics, indent=1))
    return 0


def cmd_memory(args: argparse.Namespace) -> int:
    from rlhf_course.memory import METHODS, plan

    for method in [args.method] if args.method else METHODS:
        print(plan(args.model, method, args.gpu).table() + "\n")
    return 0


def add_train_and_memory(sub) -> None:
    p = sub.add_parser("train", help="one stage as a resumable job: DIR/checkpoints, DIR/model, DIR/metrics.json")
    p.add_argument("stage", choices=["sft", "rm", "ppo", "dpo"])
    p.add_argument("--out", required=True, help="the run's folder (in Colab: a Drive folder, to survive the session)")
    p.add_argument("--max-steps", type=int, help="steps of the whole run (PPO: iterations); default: the profile's")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--profile", choices=["tiny", "7b"])
    p.add_argument("--sft", help="the SFT model to start from (the --out folder of `train sft`); default: the base model")
    p.add_argument("--rm", help="ppo: the reward model (the --out folder of `train rm`); tiny default: the ground truth")
    p.add_argument("--save-every", type=int, help="steps between checkpoints (default: a tenth of the run; PPO: 10)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("memory", help="estimated peak GPU memory of the 7b profile, with its breakdown and whether it fits")
    p.add_argument("--model", default="mistral-7b", help="mistral-7b, zephyr-7b, openhermes-2.5, qwen2.5-7b, "
                   "llama-2-7b, tiny, or a config.json path (nothing is downloaded)")
    p.add_argument("--method", choices=["sft", "rm", "dpo", "ppo"], help="default: all four")
    p.add_argument("--gpu", choices=["t4", "l4", "a100", "a100-80"], default="t4")
    p.set_defaults(func=cmd_memory)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlhf-course", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("doctor", help="hardware, chosen profile and why, stack versions, Hub reachability")
    p.add_argument("--profile", choices=["tiny", "7b"], help="check this profile instead of the automatic one")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("generate", help="sample answers from the profile's base model")
    p.add_argument("--profile", choices=["tiny", "7b"])
    p.add_argument("--prompt", action="append", help="a prompt (repeatable); default: the toy world's prompts")
    p.add_argument("-n", type=int, default=6, help="how many toy-world prompts")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("validate-data", help="check preference files (JSONL); one line per problem as FILE:LINE: field: problem")
    p.add_argument("files", nargs="+", help="JSONL files with prompt/chosen/rejected records")
    p.set_defaults(func=cmd_validate_data)

    p = sub.add_parser("build-tiny", help="rebuild the tiny model and tokenizer (about two minutes on 2 cores)")
    p.add_argument("--out", default="data/tiny")
    p.set_defaults(func=cmd_build_tiny)

    p = sub.add_parser("build-checkpoints", help="rebuild the shipped SFT model and reward models (data/checkpoints)")
    p.add_argument("--profile", choices=["tiny", "7b"])
    p.set_defaults(func=cmd_build_checkpoints)

    p = sub.add_parser("make-toy-data", help="regenerate the toy world's data sets (SFT demos, preference pairs)")
    p.add_argument("--out", default="data/toy")
    p.set_defaults(func=cmd_make_toy_data)

    p = sub.add_parser("exercises", help="generate notebooks/ (exercises) from solutions/; --check: fail if stale")
    p.add_argument("--check", action="store_true", help="only check that notebooks/ is up to date")
    p.set_defaults(func=cmd_exercises)

    p = sub.add_parser("pipeline", help="the main job: SFT -> reward model -> PPO -> DPO -> best-of-N -> report")
    p.add_argument("--out", required=True, help="folder for report.json, report.md, plots and models")
    p.add_argument("--profile", choices=["tiny", "7b"])
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_pipeline)
    add_train_and_memory(sub)

    p = sub.add_parser("overoptimization", help="reward over-optimisation against the gold reward (Gao et al. 2022): "
                                                "best-of-n, PPO, fits, remedies -> DIR/overoptimization.json + plots")
    p.add_argument("--out", required=True, help="folder for overoptimization.json and the PNG plots")
    p.add_argument("--profile", choices=["tiny", "7b"])
    p.set_defaults(func=cmd_overoptimization)

    p = sub.add_parser("labels", help="students' label files (from the notebook's labelling widget)")
    labels = p.add_subparsers(dest="labels_command", required=True)
    p = labels.add_parser("merge", help="combine label files into one preference dataset (majority vote), "
                                        "print labellers, pairs and inter-annotator agreement; exit 1 if a file was skipped")
    p.add_argument("inputs", nargs="+", metavar="DIR", help="folders of label files (*.jsonl, searched recursively) or files")
    p.add_argument("--out", required=True, help="the merged preference file (JSONL, conversational, with margin and votes)")
    p.set_defaults(func=cmd_labels_merge)
    return parser


def main(argv: list[str] | None = None) -> int:
    from rlhf_course.errors import explain, free_accelerator_memory

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Exception as err:  # expected failures (errors.explain knows them): a message, no traceback
        message = explain(err)
        if message is None:
            raise
    free_accelerator_memory()
    print(f"rlhf-course {args.command}: error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
