"""The `rlhf-course` command line: one sub-command per job, each a thin call into the package."""

from __future__ import annotations

import argparse
import json
import sys
import time

TINY_ADVICE = "pass --profile tiny"  # how a user of the command line picks the tiny profile


def _profile(name: str | None):
    from rlhf_course.profiles import pick_profile

    return pick_profile(name, tiny_advice=TINY_ADVICE)


def cmd_doctor(args: argparse.Namespace) -> int:
    from rlhf_course.doctor import diagnose

    text, problems = diagnose(args.profile, tiny_advice=TINY_ADVICE)
    print(text)
    for problem in problems:
        print(f"rlhf-course doctor: error: {problem}", file=sys.stderr)
    return 2 if problems else 0


def cmd_generate(args: argparse.Namespace) -> int:
    from rlhf_course import toyworld
    from rlhf_course.loading import load_policy, load_tokenizer
    from rlhf_course.sampling import generate

    profile = _profile(args.profile)
    tokenizer = load_tokenizer(profile)
    model = load_policy(profile, lora=False)
    prompts = args.prompt or [p.text for p in toyworld.eval_prompts()[: args.n]]
    t0 = time.perf_counter()
    answers = generate(model, tokenizer, prompts, profile.max_new_tokens, seed=args.seed)
    seconds = time.perf_counter() - t0
    for prompt, answer in zip(prompts, answers):
        print(f"\nuser:      {prompt}\nassistant: {answer.text}{'' if answer.ended else ' [cut at the length limit]'}")
        if profile.has_ground_truth:
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
            layout = f" (converted from the {report.layout} layout)" if report.layout else ""
            print(f"{path}: ok, {report.n_records} pairs, {report.format} format{layout}")
        failed |= not report.ok
    return 1 if failed else 0


def cmd_build_tiny(args: argparse.Namespace) -> int:
    from rlhf_course.tinymodel import build

    build(args.out)
    return 0


def cmd_build_checkpoints(args: argparse.Namespace) -> int:
    from rlhf_course.trained_models import build_all

    for name, path in build_all(_profile(args.profile)).items():
        print(f"{name}: {path}")
    return 0


def cmd_make_toy_data(args: argparse.Namespace) -> int:
    from rlhf_course.toyworld import write_toy_data

    write_toy_data(args.out)
    return 0


def cmd_exercises(args: argparse.Namespace) -> int:
    from rlhf_course.exercises import generate

    done = generate(check=args.check, execute=args.execute)
    for line in done.stale:
        print(line)
    if not args.check:
        print(f"wrote {len(done.written)} notebook(s)" + "".join(f"\n  {p}" for p in done.written))
    return 1 if done.stale else 0


def cmd_pipeline(args: argparse.Namespace) -> int:
    from rlhf_course.errors import RunError
    from rlhf_course.pipeline import run_pipeline, run_seeds
    from rlhf_course.profiles import rehearsal_profile

    if args.rehearsal != (args.model is not None):
        raise RunError("--rehearsal and --model DIR go together: DIR is a stand-in of the 7B "
                       "(`rlhf-course build-standin --out DIR`); the 7b profile's own model comes from the Hub")
    if args.rehearsal and args.profile not in (None, "7b"):
        raise RunError("a rehearsal runs the 7b profile's code: use --profile 7b (or leave --profile out)")
    profile = rehearsal_profile(args.model) if args.rehearsal else _profile(args.profile)
    if args.seeds:
        run_seeds(args.out, profile, args.seeds)
    else:
        run_pipeline(args.out, profile, seed=args.seed)
    return 0


def cmd_gpu_check(args: argparse.Namespace) -> int:
    from rlhf_course.gpu_check import check

    check(args.out, standin=args.standin, steps=args.steps, workdir=args.workdir)
    return 0


def cmd_build_standin(args: argparse.Namespace) -> int:
    from rlhf_course.standin import build_standin

    out = build_standin(args.out, seed=args.seed)
    print(f"wrote a stand-in of the 7B to {out} (model/ and judge/); rehearse with "
          f"`rlhf-course pipeline --profile 7b --model {out} --rehearsal --out DIR`")
    return 0


def cmd_overoptimization(args: argparse.Namespace) -> int:
    from rlhf_course.overoptimization import write_lab
    from rlhf_course.pipeline import quiet_libraries

    with quiet_libraries():  # one line per stage, not the libraries' bars and deprecation notices
        write_lab(args.out, args.profile)
    return 0


def cmd_labels_merge(args: argparse.Namespace) -> int:
    from rlhf_course.errors import UsageError
    from rlhf_course.feedback import merge_labels, merge_output_problem
    from rlhf_course.preferences import save_preferences

    if problem := merge_output_problem(args.out, args.inputs):
        raise UsageError(problem)
    result = merge_labels(args.inputs)
    for warning in result.warnings:
        print(f"warning: {warning}")
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

    ppo_config = {name: getattr(args, name) for name in getattr(args, "ppo_fields", ())}
    metrics = run_stage(args.stage, args.out, profile=_profile(args.profile), max_steps=args.max_steps,
                        resume=args.resume, sft=args.sft, rm=args.rm, save_every=args.save_every, seed=args.seed,
                        ppo_config=ppo_config)
    print(json.dumps(metrics, indent=1))
    return 0


def cmd_memory(args: argparse.Namespace) -> int:
    from rlhf_course.gpu_memory import METHODS, plan

    for method in [args.method] if args.method else METHODS:
        print(plan(args.model, method, args.gpu).table() + "\n")
    return 0


def at_least_1(text: str) -> int:
    """argparse type: a whole number >= 1 (a run of 0 steps, or a checkpoint every 0 steps, means nothing)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_config_arguments(parser, config_cls, title: str, skip=()) -> list[str]:
    """Every field of a config dataclass as an option (`--kl-coef 0.1`), with the field's one-line help;
    an option not given stays None, so the profile's value holds. Returns the fields' names."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(config_cls)
    group = parser.add_argument_group(title)
    names = []
    for f in dataclasses.fields(config_cls):
        if f.name in skip:
            continue
        flag, help_ = "--" + f.name.replace("_", "-"), f.metadata.get("help", "")
        kind = next((t for t in typing.get_args(hints[f.name]) if t is not type(None)), hints[f.name])  # X | None -> X
        if kind is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_)
        else:
            shown = help_ if f.default is None else f"{help_} (default: {f.default})"
            group.add_argument(flag, dest=f.name, type=kind, default=None, metavar=kind.__name__.upper(),
                               help=shown.replace("%", "%%"))
        names.append(f.name)
    return names


def add_train_and_memory(sub, ppo_options: bool = False) -> None:
    p = sub.add_parser("train", help="one stage as a resumable job: DIR/checkpoints, DIR/model, DIR/metrics.json")
    p.add_argument("stage", choices=["sft", "rm", "ppo", "dpo"])
    p.add_argument("--out", required=True, help="the run's folder (in Colab: a Drive folder, to survive the session)")
    p.add_argument("--max-steps", type=at_least_1, help="steps of the whole run (PPO: iterations); default: the profile's")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--profile", choices=["tiny", "7b"])
    p.add_argument("--sft", help="the SFT model to start from (the --out folder of `train sft`); default: the base model")
    p.add_argument("--rm", help="ppo: the reward model (the --out folder of `train rm`); tiny default: the ground truth")
    p.add_argument("--save-every", type=at_least_1, help="steps between checkpoints (default: a tenth of the run; PPO: 10)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_train)
    if ppo_options:  # only when the command is `train`: reading PPOConfig imports torch and peft
        from rlhf_course.ppo import PPOConfig

        names = add_config_arguments(p, PPOConfig, "PPO settings (train ppo; default: the profile's, its recipe's "
                                                   "learning rate and kl_coef)", skip=("steps", "seed"))
        p.set_defaults(ppo_fields=names)

    p = sub.add_parser("memory", help="estimated peak GPU memory of the 7b profile, with its breakdown and whether it fits")
    p.add_argument("--model", default="mistral-7b", help="mistral-7b, zephyr-7b, openhermes-2.5, qwen2.5-7b, "
                   "llama-2-7b, tiny, or a config.json path (nothing is downloaded)")
    p.add_argument("--method", choices=["sft", "rm", "dpo", "ppo"], help="default: all four")
    p.add_argument("--gpu", choices=["t4", "l4", "a100", "a100-80"], default="t4")
    p.set_defaults(func=cmd_memory)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
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

    p = sub.add_parser("exercises", help="build solutions/NN.ipynb and notebooks/NN.ipynb from the masters solutions/NN.py")
    p.add_argument("--check", action="store_true", help="only check that both notebooks of every master are up to date")
    p.add_argument("--execute", nargs="*", metavar="NN", help="run these lessons' notebooks (none named: those whose code changed)")
    p.set_defaults(func=cmd_exercises)

    p = sub.add_parser("pipeline", help="the main job: SFT -> reward model -> PPO -> DPO -> best-of-N -> report")
    p.add_argument("--out", required=True, help="folder for report.json, report.md, plots and models")
    p.add_argument("--profile", choices=["tiny", "7b"])
    seed = p.add_mutually_exclusive_group()
    seed.add_argument("--seed", type=int, default=0)
    seed.add_argument("--seeds", type=int, nargs="+", metavar="S", help="one run per seed into OUT/seed-S/, and "
                      "OUT/report.md with each number as mean ± std over the seeds")
    p.add_argument("--rehearsal", action="store_true", help="run the 7b profile's code on this machine's CPU, at "
                   "rehearsal sizes, with the stand-in --model DIR (built by `build-standin`)")
    p.add_argument("--model", metavar="DIR", help="with --rehearsal: the stand-in folder")
    p.set_defaults(func=cmd_pipeline)

    p = sub.add_parser("gpu-check", help="the 7b profile's stages on this CUDA GPU with a random-weight Mistral-7B, "
                                         "capped to a T4's 15 GB in fp16: peak memory and speed per stage")
    p.add_argument("--out", help="also write the rows as JSON here")
    p.add_argument("--steps", type=int, default=3, help="steps per stage")
    p.add_argument("--standin", action="store_true", help="run on the CPU with the stand-in (no memory figures)")
    p.add_argument("--workdir", help="where the random model and adapters go (default: a temporary folder)")
    p.set_defaults(func=cmd_gpu_check)

    p = sub.add_parser("build-standin", help="a stand-in of the 7B (Mistral's architecture shrunk, random weights, "
                                             "the real Mistral tokenizer) for rehearsals on a CPU")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_build_standin)
    add_train_and_memory(sub, ppo_options=bool(argv) and argv[0] == "train")

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

    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
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
