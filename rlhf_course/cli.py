"""The `rlhf-course` command line: one sub-command per job, each a thin call into the package."""

from __future__ import annotations

import argparse
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


def cmd_make_toy_data(args: argparse.Namespace) -> int:
    from rlhf_course.toyworld import write_toy_data

    write_toy_data(args.out)
    return 0


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

    p = sub.add_parser("make-toy-data", help="regenerate the toy world's data sets (SFT demos, preference pairs)")
    p.add_argument("--out", default="data/toy")
    p.set_defaults(func=cmd_make_toy_data)
    return parser


def main(argv: list[str] | None = None) -> int:
    from rlhf_course.loading import ModelLoadError
    from rlhf_course.preferences import PreferenceDataError
    from rlhf_course.profiles import ProfileError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ProfileError, ModelLoadError, PreferenceDataError) as err:  # expected failures: a message, no traceback
        print(f"rlhf-course {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
