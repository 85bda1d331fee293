"""Reward over-optimisation, measured against the gold reward (Gao, Schulman, Hilton 2022, "Scaling laws
for reward model overoptimization", arXiv:2210.10760).

A reward model is a *proxy* for what people want. Optimise the proxy and it rises; the *gold* reward
(what people really want) rises with it at first, then peaks and falls: Goodhart's law. Gao et al.
measured it with a large "gold" reward model standing in for people. The toy world needs no stand-in:
its ground truth (`toyworld.score`) is the gold reward itself, exactly.

The lab, top to bottom:
  1. best-of-n      sample n answers per prompt from the SFT model, keep the proxy's favourite, for
                    n = 1 ... n_max; KL(best-of-n || SFT) = log n - (n-1)/n (`best_of_n.best_of_n_kl`);
  2. PPO            `ppo.PPOTrainer` with a weak KL penalty, evaluated every few iterations on held-out
                    prompts: (KL, proxy, gold) along training;
  3. the fits       Gao et al.'s functional forms of the gold reward against d = sqrt(KL):
                    best-of-n R(d) = d (alpha - beta d) (Eq. 1), RL R(d) = d (alpha - beta log d) (Eq. 2);
  4. the remedies   on the same axes: a stronger KL penalty; an ensemble of reward models, mean or
                    worst case (Coste et al. 2023, arXiv:2310.02743); a length penalty against the
                    labellers' verbosity bias (Singhal et al. 2023, arXiv:2310.03716).

    lab = run_lab(profile, LabConfig())          # or: rlhf-course overoptimization --out DIR
    lab["best_of_n"], lab["ppo"], lab["remedies"]

The proxy is the reward model trained on labels with a verbosity bias (`trained_models.reward_model_dir(profile,
"length_biased")`): where over-optimisation shows most clearly. Plots are in `overoptimization_plots`.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, field
from statistics import mean

import torch

from rlhf_course import toyworld, trained_models
from rlhf_course.best_of_n import best_of_n, best_of_n_kl, score_in_batches
from rlhf_course.errors import CourseError, UsageError
from rlhf_course.evaluation import evaluate_policy
from rlhf_course.parallel import one_thread, start_jobs
from rlhf_course.profiles import Profile, pick_profile
from rlhf_course.sampling import RewardFn


@dataclass
class LabConfig:
    """The lab's knobs. Defaults: `rlhf-course overoptimization` (about 3 minutes on 2 CPU cores)."""

    # best-of-n
    n_max: int = 64                   # answers sampled per prompt; every n <= n_max is estimated from them
    bon_prompts: int = 40             # held-out prompts (toyworld.eval_prompts(), 40 in all)
    # PPO
    ppo_steps: int = 20               # PPO iterations per run
    eval_every: int = 5               # evaluate on the held-out prompts every this many iterations
    eval_n_per_prompt: int = 2        # answers per held-out prompt at each evaluation
    weak_kl_coef: float = 0.01        # the over-optimised run: a KL penalty too weak to hold the policy
    # remedies
    kl_coef: float = 0.2              # the KL-penalty remedy (pipeline.PPO_KL_COEF)
    length_penalty: float = 0.05      # subtracted from the proxy per answer token (RM units per token)
    ensemble: tuple[str, ...] = ("mean", "worst")  # ensemble aggregates to run (Coste et al.'s mean and WCO)
    remedies_ppo: bool = True         # also train PPO against each remedy (False: best-of-n remedies only)
    seed: int = 0
    workers: int = 2                  # processes for the PPO runs (one thread each); 1 runs them in this process

    def __post_init__(self):
        assert self.n_max >= 2 and self.n_max & (self.n_max - 1) == 0, "n_max must be a power of two"
        assert self.ppo_steps % self.eval_every == 0, "ppo_steps must be a multiple of eval_every"


# --- 1. best-of-n, any selector, any value ---------------------------------------------------------

def expected_pick(select_by: list[float], value: list[float], k: int) -> float:
    """The expected `value` of the answer with the highest `select_by` among k answers drawn without
    replacement from the n given, averaged exactly over all k-subsets. Sorted by the selector, the i-th
    smallest (1-based) is the pick of C(i-1, k-1) of the C(n, k) subsets (the unbiased estimator of pass@k,
    arXiv:2107.03374 Eq. 1, with the reward in place of pass/fail). `best_of_n.expected_best_of_k` is the
    case value = select_by. Ties in the selector go to the later answer in sorted order."""
    n = len(select_by)
    assert len(value) == n and 1 <= k <= n, f"need 1 <= k <= n and two lists of n values, got k={k}, n={n}"
    order = sorted(range(n), key=select_by.__getitem__)  # ascending by the selector
    return sum(math.comb(i - 1, k - 1) * value[order[i - 1]] for i in range(k, n + 1)) / math.comb(n, k)


@dataclass
class Draw:
    """n_max answers per prompt from one model, and every score we know of them (prompt-major lists)."""

    prompts: list[str]                # one per prompt
    completions: list[list]           # [prompt][sample] -> sampling.Completion
    gold: list[list[float]]           # the toy world's ground truth of each answer
    scores: dict[str, list[list[float]]] = field(default_factory=dict)  # selector name -> [prompt][sample]

    @property
    def lengths(self) -> list[list[float]]:
        return [[float(c.n_tokens) for c in row] for row in self.completions]

    def score(self, name: str, reward_fn: RewardFn, batch_size: int = 64) -> None:
        """Score every answer with `reward_fn` and keep the scores under `name`."""
        flat_p = [p for p, row in zip(self.prompts, self.completions) for _ in row]
        flat = score_in_batches(reward_fn, flat_p, [c for row in self.completions for c in row], batch_size)
        n = len(self.completions[0])
        self.scores[name] = [flat[i * n:(i + 1) * n] for i in range(len(self.prompts))]


def draw(model, tokenizer, prompts: list, n_max: int, proxy: RewardFn, *, seed: int = 0,
         max_new_tokens: int = 64, temperature: float = 1.0) -> Draw:
    """`best_of_n.best_of_n` with n = n_max: n_max answers per prompt, scored by the proxy ("proxy")
    and by the ground truth."""
    results = best_of_n(model, tokenizer, prompts, n_max, proxy, seed=seed, max_new_tokens=max_new_tokens,
                        temperature=temperature)
    texts = [r.prompt for r in results]
    gold = [toyworld.ground_truth_rewards([r.prompt] * n_max, r.samples) for r in results]
    return Draw(texts, [r.samples for r in results], gold, {"proxy": [r.rewards for r in results]})


def add_remedy_scores(d: Draw, members: list[str], length_penalty: float) -> None:
    """The remedies as selectors over the same answers: "ensemble_mean" and "ensemble_worst" of the
    members' scores (`ensemble_reward`, each member standardised over every answer of the draw), and
    "length_penalty", the proxy minus `length_penalty` per token."""
    scores = torch.tensor([[x for row in d.scores[m] for x in row] for m in members])      # (k, prompts * n)
    n = len(d.completions[0])
    for aggregate in ("mean", "worst"):
        flat = ensemble_reward(scores, aggregate).tolist()
        d.scores[f"ensemble_{aggregate}"] = [flat[i * n:(i + 1) * n] for i in range(len(d.prompts))]
    d.scores["length_penalty"] = [[s - length_penalty * c.n_tokens for s, c in zip(srow, crow)]
                                  for srow, crow in zip(d.scores["proxy"], d.completions)]


def best_of_n_curve(d: Draw, select_by: str = "proxy", ns: list[int] | None = None) -> list[dict]:
    """For each n: the KL of best-of-n, and the mean over prompts of the selector's score, the gold reward
    and the length (tokens) of the selector's pick. One row per n: {"n", "kl", "proxy", "gold", "length"}."""
    n_max = len(d.completions[0])
    ns = ns or [2**j for j in range(int(math.log2(n_max)) + 1)]
    sel, rows = d.scores[select_by], []
    for n in ns:
        rows.append({"n": n, "kl": best_of_n_kl(n),
                     "proxy": mean(expected_pick(s, s, n) for s in sel),
                     "gold": mean(expected_pick(s, g, n) for s, g in zip(sel, d.gold)),
                     "length": mean(expected_pick(s, ln, n) for s, ln in zip(sel, d.lengths))})
    return rows


# --- 2. the remedies as reward functions -----------------------------------------------------------

def ensemble_reward(scores: torch.Tensor, aggregate: str = "mean") -> torch.Tensor:
    """Combine k reward models' scores of the same N answers, (k, N) -> (N,): put each member on one scale
    (mean 0, std 1 over the N answers: a Bradley-Terry reward is defined only up to a shift and its scale
    is arbitrary), then take the mean ("mean") or the lowest ("worst", Coste et al.'s worst-case
    optimisation, WCO) over the members, answer by answer."""
    assert scores.dim() == 2 and scores.shape[1] > 1, "scores: (k members, N answers), N > 1"
    assert aggregate in ("mean", "worst"), f"aggregate must be 'mean' or 'worst', not {aggregate!r}"
    z = (scores - scores.mean(dim=1, keepdim=True)) / (scores.std(dim=1, keepdim=True) + 1e-6)   # (k, N)
    return z.mean(dim=0) if aggregate == "mean" else z.min(dim=0).values                          # (N,)


class Ensemble:
    """An ensemble of reward models (Coste et al. 2023, arXiv:2310.02743, Sec. 4): "mean" averages the
    members' scores, "worst" takes the lowest (worst-case optimisation, WCO). Called with our reward
    protocol. 1. Each member is first put on one scale, mean 0 and std 1 on a calibration set of the
    starting policy's answers (`calibrate`): a Bradley-Terry reward is defined only up to a shift, so
    without it the worst case would always be the member with the lowest offset."""

    def __init__(self, members: list[RewardFn], aggregate: str = "mean"):
        assert aggregate in ("mean", "worst"), f"aggregate must be 'mean' or 'worst', not {aggregate!r}"
        assert len(members) >= 2, "an ensemble needs at least two reward models"
        self.members, self.aggregate = members, aggregate
        self.shift, self.scale = [0.0] * len(members), [1.0] * len(members)
        self.__name__ = f"ensemble_{aggregate}"

    def calibrate(self, prompts: list, completions: list) -> Ensemble:
        for i, member in enumerate(self.members):
            s = torch.tensor(score_in_batches(member, prompts, completions))
            self.shift[i], self.scale[i] = s.mean().item(), s.std().item() + 1e-6
        return self

    def member_scores(self, prompts: list, completions: list) -> torch.Tensor:
        """(k, B): each member's score of each answer, on the calibration set's scale (a batch of PPO's
        rollouts is too small, and too uniform late in training, to standardise on by itself)."""
        return torch.tensor([[(r - self.shift[i]) / self.scale[i] for r in m(prompts, completions)]
                             for i, m in enumerate(self.members)])

    def __call__(self, prompts: list, completions: list) -> list[float]:
        s = self.member_scores(prompts, completions)                          # (k, B)
        return (s.mean(dim=0) if self.aggregate == "mean" else s.min(dim=0).values).tolist()


def length_penalised(reward_fn: RewardFn, coef: float) -> RewardFn:
    """r(x, y) - coef * |y| (|y| in tokens, end-of-sequence included): a length penalty against a reward
    model that learned its labellers' taste for long answers (Singhal et al. 2023, arXiv:2310.03716, Sec. 5)."""
    def penalised(prompts: list, completions: list) -> list[float]:
        return [r - coef * c.n_tokens for r, c in zip(reward_fn(prompts, completions), completions)]

    penalised.__name__ = f"length_penalised_{coef:g}"
    return penalised


# --- 3. the functional forms (Gao et al. 2022, Sec. 3) -----------------------------------------------

def _fit(features: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    """Least squares through the origin: features (N, 2) hold d and -d^2 (or -d log d), so the two
    coefficients are alpha and beta themselves."""
    alpha, beta = torch.linalg.lstsq(features, target.unsqueeze(1)).solution.squeeze(1).tolist()
    return alpha, beta


def fit_best_of_n(d: list[float], gain: list[float]) -> tuple[float, float]:
    """Least squares (alpha, beta) of R(d) = d (alpha - beta d), Eq. 1 of arXiv:2210.10760, where R is the
    gold reward minus the starting policy's and d = sqrt(KL)."""
    d_t, r = torch.tensor(d, dtype=torch.float64), torch.tensor(gain, dtype=torch.float64)
    return _fit(torch.stack([d_t, -d_t**2], dim=1), r)


def fit_rl(d: list[float], gain: list[float]) -> tuple[float, float]:
    """Least squares (alpha, beta) of R(d) = d (alpha - beta log d), Eq. 2 of arXiv:2210.10760 (d > 0)."""
    d_t, r = torch.tensor(d, dtype=torch.float64), torch.tensor(gain, dtype=torch.float64)
    keep = d_t > 0
    return _fit(torch.stack([d_t[keep], -d_t[keep] * torch.log(d_t[keep])], dim=1), r[keep])


def best_of_n_form(d: float, alpha: float, beta: float) -> float:
    return d * (alpha - beta * d)


def rl_form(d: float, alpha: float, beta: float) -> float:
    return d * (alpha - beta * math.log(d)) if d > 0 else 0.0


def peak(form: str, alpha: float, beta: float) -> float:
    """d at which the fitted gold reward peaks: alpha / (2 beta) for best-of-n, exp(alpha / beta - 1) for RL
    (inf when beta <= 0: the fit has no peak)."""
    if beta <= 0:
        return math.inf
    return alpha / (2 * beta) if form == "best_of_n" else math.exp(min(alpha / beta - 1, 50.0))


def fit_curve(rows: list[dict], form: str) -> dict:
    """Fit a curve's gold reward (rows with "kl" and "gold", the first row the starting policy) with
    Gao et al.'s form for `form` ("best_of_n" or "rl"). Returns alpha, beta, the peak's d and KL."""
    d = [math.sqrt(max(r["kl"], 0.0)) for r in rows]
    gain = [r["gold"] - rows[0]["gold"] for r in rows]
    alpha, beta = (fit_best_of_n if form == "best_of_n" else fit_rl)(d, gain)
    d_peak = peak(form, alpha, beta)
    return {"form": form, "alpha": alpha, "beta": beta, "gold_start": rows[0]["gold"],
            "d_peak": d_peak, "kl_peak": d_peak**2}


def rises_then_falls(rows: list[dict], key: str = "gold", tol: float = 0.0) -> bool:
    """The curve's `key` peaks strictly inside it and ends more than `tol` below its peak."""
    values = [r[key] for r in rows]
    top = max(range(len(values)), key=values.__getitem__)
    return 0 < top < len(values) - 1 and values[-1] < values[top] - tol


# --- 4. PPO, evaluated along training ----------------------------------------------------------------

def ppo_curve(profile: Profile, tokenizer, *, reward: str = "proxy", kl_coef: float, steps: int,
              eval_every: int, eval_n_per_prompt: int = 2, length_penalty: float = 0.0, seed: int = 0,
              progress: bool = False) -> list[dict]:
    """PPO from the SFT model (`ppo.PPOTrainer`, its defaults otherwise) against `reward`: "proxy" (the
    length-biased reward model), "ensemble_mean" / "ensemble_worst" (`Ensemble` of the length-biased
    ensemble, `trained_models.reward_model_ensemble`), optionally `length_penalised`. Every `eval_every`
    iterations (and before the first) the policy is evaluated on the held-out prompts: KL to the SFT model
    (`evaluation.kl_to_reference`, k1, per answer), the optimised reward's mean ("proxy"), the gold reward
    and the length. One row per evaluation: {"step", "kl", "proxy", "gold", "length"}."""
    from rlhf_course.loading import load_policy
    from rlhf_course.ppo import AdapterRewardModel, PPOConfig, PPOTrainer

    torch.manual_seed(seed)  # the LoRA adapter's initialisation
    policy = load_policy(profile, model_id=trained_models.sft_model(profile), verbose=False)
    eval_prompts = [p.text for p in toyworld.eval_prompts()]
    if reward == "proxy":
        reward_fn = AdapterRewardModel(policy, tokenizer, trained_models.reward_model_dir(profile, "length_biased"))
    elif reward in ("ensemble_mean", "ensemble_worst"):
        # every member is one more LoRA adapter on the policy's base (ppo.AdapterRewardModel)
        members = [AdapterRewardModel(policy, tokenizer, path, adapter_name=f"reward{i}")
                   for i, path in enumerate(trained_models.reward_model_ensemble(profile))]
        reward_fn = Ensemble(members, reward.removeprefix("ensemble_"))
        calib_prompts = random.Random(seed).sample([p.text for p in toyworld.train_prompts()], 64)
        calib = evaluate_policy(policy, tokenizer, calib_prompts, n_per_prompt=1, seed=seed + 1,
                                max_new_tokens=profile.max_new_tokens, temperature=profile.temperature)
        reward_fn.calibrate([s.prompt for s in calib.samples], [s.completion for s in calib.samples])
    else:
        raise ValueError(f"unknown reward {reward!r}: 'proxy', 'ensemble_mean' or 'ensemble_worst'")
    if length_penalty:
        reward_fn = length_penalised(reward_fn, length_penalty)
    config = PPOConfig(batch_size=profile.batch_size, max_new_tokens=profile.max_new_tokens,
                       temperature=profile.temperature, kl_coef=kl_coef, steps=steps, seed=seed)
    trainer = PPOTrainer(config, policy, tokenizer, reward_fn, [p.text for p in toyworld.train_prompts()])
    rows = []
    for step in range(steps + 1):
        if step % eval_every == 0:
            result = evaluate_policy(trainer.policy, tokenizer, eval_prompts, n_per_prompt=eval_n_per_prompt,
                                     seed=seed + 1, reference="self", reward_fn=reward_fn,
                                     max_new_tokens=profile.max_new_tokens, temperature=profile.temperature)
            s = result.summary()
            rows.append({"step": step, "kl": s["kl"], "proxy": s["rm_score"], "gold": s["reward"],
                         "length": s["length"]})
            if progress:
                print(f"  PPO {reward}{' - length penalty' if length_penalty else ''}, kl_coef {kl_coef:g}: "
                      f"step {step:3d} KL {s['kl']:6.2f} proxy {s['rm_score']:+.2f} gold {s['reward']:+.3f} "
                      f"length {s['length']:.0f}", flush=True)
        if step < steps:
            trainer.step()
    return rows


def ppo_job(profile: Profile, kwargs: dict) -> list[dict]:
    """`ppo_curve` with its own tokenizer: a job for `parallel.start_jobs`."""
    from rlhf_course.loading import load_tokenizer

    return ppo_curve(profile, load_tokenizer(profile, trained_models.sft_model(profile)), **kwargs)


# --- 5. the whole lab --------------------------------------------------------------------------------

def run_lab(profile: Profile, config: LabConfig = LabConfig(), progress: bool = True) -> dict:
    """Best-of-n and PPO against the length-biased reward model, the fits, and the remedies, measured
    against the gold reward. Returns the dict `rlhf-course overoptimization` writes as JSON."""
    if not profile.has_ground_truth:
        raise CourseError("the over-optimisation lab measures every policy against the toy world's gold reward, "
                          f"which the {profile.name} profile does not have: run it with --profile tiny")
    from rlhf_course.loading import load_policy, load_tokenizer
    from rlhf_course.reward_model import load_trained_reward_model, reward_fn

    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    sft = trained_models.sft_model(profile)
    tokenizer = load_tokenizer(profile, sft)
    policy = load_policy(profile, lora=False, model_id=sft, verbose=False)
    rms = [reward_fn(load_trained_reward_model(profile, path, verbose=False), tokenizer)
           for path in trained_models.reward_model_ensemble(profile)]
    default_rm = reward_fn(load_trained_reward_model(profile, trained_models.reward_model_dir(profile), verbose=False),
                           tokenizer)
    sample = dict(max_new_tokens=profile.max_new_tokens, temperature=profile.temperature)

    # 2. (started first, so that they run in other processes while this one does best-of-n) PPO with a weak
    #    KL penalty, and the same against each remedy: independent runs
    run = dict(steps=config.ppo_steps, eval_every=config.eval_every, eval_n_per_prompt=config.eval_n_per_prompt,
               seed=config.seed, progress=progress and config.workers <= 1)
    jobs = {"weak_kl": dict(kl_coef=config.weak_kl_coef)}
    if config.remedies_ppo:
        jobs["kl_penalty"] = dict(kl_coef=config.kl_coef)
        jobs |= {f"ensemble_{a}": dict(reward=f"ensemble_{a}", kl_coef=config.weak_kl_coef) for a in config.ensemble}
        jobs["length_penalty"] = dict(kl_coef=config.weak_kl_coef, length_penalty=config.length_penalty)
    collect = start_jobs({name: (ppo_job, (profile, {**run, **kw})) for name, kw in jobs.items()}, config.workers)

    # 1. best-of-n: one draw of n_max answers per prompt gives every n
    prompts = [p.text for p in toyworld.eval_prompts()[: config.bon_prompts]]
    d = draw(policy, tokenizer, prompts, config.n_max, rms[0], seed=config.seed, **sample)
    d.score("default_rm", default_rm)
    for i, member in enumerate(rms[1:], start=1):
        d.score(f"member{i}", member)
    bon = best_of_n_curve(d)
    seconds["best_of_n"] = time.perf_counter() - t0
    if progress:
        print(f"best-of-n, n = 1 ... {config.n_max} on {len(prompts)} prompts ({seconds['best_of_n']:.0f}s)")
        for r in bon:
            print(f"  n {r['n']:3d}  KL {r['kl']:.2f}  proxy {r['proxy']:+.2f}  gold {r['gold']:+.3f}  "
                  f"length {r['length']:.1f}", flush=True)

    # the remedies for best-of-n: other selectors over the same answers
    add_remedy_scores(d, ["proxy"] + [f"member{i}" for i in range(1, len(rms))], config.length_penalty)
    remedies_bon = {name: best_of_n_curve(d, name) for name in
                    [f"ensemble_{a}" for a in config.ensemble] + ["length_penalty"]}

    ppo_curves = collect()
    seconds["ppo_runs"] = time.perf_counter() - t0
    if progress and config.workers > 1:  # the workers ran quietly: their curves now
        for name, rows in ppo_curves.items():
            print(f"PPO {name}: " + ", ".join(f"step {r['step']} KL {r['kl']:.2f} proxy {r['proxy']:+.2f} "
                                             f"gold {r['gold']:+.3f}" for r in rows), flush=True)
    ppo, remedies_ppo = ppo_curves.pop("weak_kl"), ppo_curves

    seconds["total"] = time.perf_counter() - t0
    return {
        "best_of_n": bon,
        "ppo": ppo,
        "remedies": {"best_of_n": remedies_bon, "ppo": remedies_ppo},
        "best_of_n_default_rm": best_of_n_curve(d, "default_rm"),
        "fits": {"best_of_n": fit_curve(bon, "best_of_n"), "ppo": fit_curve(ppo, "rl")},
        "shape": {"best_of_n_gold_rises_then_falls": rises_then_falls(bon),
                  "best_of_n_proxy_keeps_rising": all(a["proxy"] < b["proxy"] for a, b in zip(bon, bon[1:])),
                  "ppo_gold_rises_then_falls": rises_then_falls(ppo),
                  "ppo_proxy_rises": ppo[-1]["proxy"] > ppo[0]["proxy"]},
        "config": asdict(config),
        "seconds": seconds,
    }


# --- 6. plots and the lab's files ---------------------------------------------------------------------

def plot_curve(rows: list[dict], fit: dict | None = None, *, title: str, ax=None):
    """Proxy and gold reward against d = sqrt(KL): the gold reward's points with the fitted form drawn
    through them (left axis), the proxy on a second axis. Returns the figure (closed, shown once)."""
    import matplotlib.pyplot as plt

    from rlhf_course import plots  # noqa: F401  (chooses a file backend outside notebooks)

    own = ax is None
    fig, ax = plt.subplots(figsize=(5.5, 3.8), layout="constrained") if own else (ax.figure, ax)
    d = [math.sqrt(max(r["kl"], 0.0)) for r in rows]
    ax.plot(d, [r["gold"] for r in rows], "o", color="C0", label="gold (ground truth)")
    if fit is not None:
        form = best_of_n_form if fit["form"] == "best_of_n" else rl_form
        grid = [max(d) * i / 100 for i in range(1, 101)]
        ax.plot(grid, [fit["gold_start"] + form(x, fit["alpha"], fit["beta"]) for x in grid], "-", color="C0",
                alpha=0.7, label=f"fit d(α - β{'d' if fit['form'] == 'best_of_n' else ' log d'}): "
                                 f"α={fit['alpha']:.2f}, β={fit['beta']:.2f}")
    ax.set(xlabel="d = √KL (√nats)", ylabel="gold reward", title=title)
    ax.grid(alpha=0.3)
    twin = ax.twinx()
    twin.plot(d, [r["proxy"] for r in rows], "s--", color="C3", ms=4, label="proxy (reward model)")
    twin.set_ylabel("proxy reward-model score", color="C3")
    handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    ax.legend(handles=handles, fontsize="small", loc="lower center")
    if own:
        plt.close(fig)
    return fig


def plot_remedies(curves: dict[str, list[dict]], *, title: str, ax=None):
    """Gold reward against d = sqrt(KL), one line per run (the over-optimised run and its remedies)."""
    import matplotlib.pyplot as plt

    from rlhf_course import plots  # noqa: F401

    own = ax is None
    fig, ax = plt.subplots(figsize=(5.5, 3.8), layout="constrained") if own else (ax.figure, ax)
    for i, (name, rows) in enumerate(curves.items()):
        ax.plot([math.sqrt(max(r["kl"], 0.0)) for r in rows], [r["gold"] for r in rows], "o-", ms=4,
                color=f"C{i}", label=name)
    ax.set(xlabel="d = √KL (√nats)", ylabel="gold reward", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    if own:
        plt.close(fig)
    return fig


def write_lab(out_dir, profile: Profile | str | None = None, config: LabConfig = LabConfig(),
              progress: bool = True) -> dict:
    """`rlhf-course overoptimization --out DIR`: run the lab, write DIR/overoptimization.json and the plots
    DIR/best_of_n.png, DIR/ppo.png, DIR/remedies.png."""
    import json
    from pathlib import Path

    import matplotlib.pyplot as plt

    out = Path(out_dir)
    written = [out / name for name in ("overoptimization.json", "best_of_n.png", "ppo.png", "remedies.png")]
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file: give a folder for overoptimization.json and the plots")
    if existing := [p.name for p in written if p.exists()]:  # checked before the run, not after it
        raise UsageError(f"{out} already holds a lab's results ({', '.join(existing)}): give another --out "
                         "or move them away; they are never overwritten")
    profile = profile if isinstance(profile, Profile) else pick_profile(profile)
    with one_thread(config.workers > 1):  # this process samples best-of-n while the workers train: one core each
        lab = run_lab(profile, config, progress=progress)
    out.mkdir(parents=True, exist_ok=True)
    (out / "overoptimization.json").write_text(json.dumps(lab, indent=1))
    for rows, fit, name, title in ((lab["best_of_n"], lab["fits"]["best_of_n"], "best_of_n.png",
                                    f"Best-of-n, n = 1 ... {config.n_max}"),
                                   (lab["ppo"], lab["fits"]["ppo"], "ppo.png", f"PPO, kl_coef {config.weak_kl_coef:g}")):
        plot_curve(rows, fit, title=title).savefig(out / name, dpi=120)  # plot_curve closes its own figure
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), layout="constrained")
    plot_remedies({"proxy (length-biased RM)": lab["best_of_n"], **lab["remedies"]["best_of_n"]},
                  title="Best-of-n: remedies", ax=axes[0])
    plot_remedies({f"kl_coef {config.weak_kl_coef:g}": lab["ppo"], **lab["remedies"]["ppo"]},
                  title="PPO: remedies", ax=axes[1])
    fig.savefig(out / "remedies.png", dpi=120)
    plt.close(fig)
    if progress:
        shape = ", ".join(f"{k} {v}" for k, v in lab["shape"].items())
        print(f"wrote {out / 'overoptimization.json'} and 3 plots in {lab['seconds']['total']:.0f}s ({shape})")
    return lab
