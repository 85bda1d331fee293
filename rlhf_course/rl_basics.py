"""RL basics on problems small enough to solve exactly (notebook 1): returns, a multi-armed bandit,
and a gridworld MDP with the Bellman equations.

    returns      discounted_return, returns_to_go
    bandit       Bandit (Sutton & Barto's 10-armed testbed), epsilon_greedy, ucb_action, run_bandit
    MDP          GridWorld (its dynamics as tensors P, R), bellman_backup, policy_evaluation,
                 value_iteration, greedy_policy (argmax with ties broken the same on every CPU)
    plots        plot_regret, plot_gridworld

References: Sutton & Barto, "Reinforcement Learning: An Introduction", 2nd ed. (2018) - chapter 2
(bandits), 3 (MDPs, returns, Bellman equations) and 4 (dynamic programming); Auer et al. 2002 (UCB1).
Everything is plain Python and torch, and fast: the notebook runs thousands of episodes in seconds.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from rlhf_course.plots import _finish, plt  # the shared Agg/inline backend choice and figure closing

# --- returns ---------------------------------------------------------------------------------------


def discounted_return(rewards: Sequence[float], gamma: float) -> float:
    """G_0 = r_0 + gamma r_1 + gamma^2 r_2 + ... (Sutton & Barto, Eq. 3.8)."""
    g = 0.0
    for r in reversed(rewards):  # Horner's rule: G_t = r_t + gamma G_{t+1}
        g = float(r) + gamma * g
    return g


def returns_to_go(rewards: torch.Tensor, gamma: float) -> torch.Tensor:
    """The return from every step on, G_t = r_t + gamma G_{t+1} (Sutton & Barto, Eq. 3.9).

    rewards: (B, T), one episode per row, zero after an episode ends. Returns (B, T).
    """
    returns = torch.zeros_like(rewards)   # (B, T)
    running = torch.zeros_like(rewards[:, 0])  # (B,): G_T = 0 after the last step
    for t in reversed(range(rewards.shape[1])):
        running = rewards[:, t] + gamma * running
        returns[:, t] = running
    return returns


# --- a multi-armed bandit ------------------------------------------------------------------------

@dataclass
class Bandit:
    """k slot machines. Pulling arm a pays a reward drawn from N(means[a], noise^2); the agent does not
    know the means. Sutton & Barto's 10-armed testbed (section 2.3) draws the means from N(0, 1)."""

    means: torch.Tensor  # (K,) float64: the expected reward of each arm, q*(a)
    noise: float = 1.0   # standard deviation of a reward around its arm's mean

    @classmethod
    def testbed(cls, k: int = 10, seed: int = 0) -> "Bandit":
        rng = random.Random(seed)
        return cls(torch.tensor([rng.gauss(0.0, 1.0) for _ in range(k)], dtype=torch.float64))

    @property
    def k(self) -> int:
        return len(self.means)

    @property
    def best_arm(self) -> int:
        return int(torch.argmax(self.means))

    def pull(self, arm: int, rng: random.Random) -> float:
        return float(self.means[arm]) + self.noise * rng.gauss(0.0, 1.0)


# choose(q_values (K,), counts (K,), t (1-based step), rng) -> the arm to pull
Chooser = Callable[[torch.Tensor, torch.Tensor, int, random.Random], int]


def epsilon_greedy(q_values: torch.Tensor, epsilon: float, rng: random.Random) -> int:
    """With probability epsilon a uniformly random arm (any of them); else the greedy arm, argmax Q
    (the first one on a tie). Sutton & Barto, section 2.2."""
    if rng.random() < epsilon:
        return rng.randrange(len(q_values))
    return int(torch.argmax(q_values))


def ucb_action(q_values: torch.Tensor, counts: torch.Tensor, t: int, c: float = 2.0) -> int:
    """Upper confidence bound: argmax_a Q(a) + c sqrt(ln t / N(a)) (Sutton & Barto, Eq. 2.10; UCB1,
    Auer et al. 2002). An arm never pulled (N(a) = 0) is maximising: try every arm once first."""
    if (counts == 0).any():
        return int(torch.argmin(counts))  # the first arm never pulled
    return int(torch.argmax(q_values + c * torch.sqrt(math.log(t) / counts)))


def run_bandit(bandit: Bandit, choose: Chooser, steps: int, seed: int = 0) -> dict[str, list]:
    """Play `steps` rounds, keeping sample-average estimates Q(a) updated incrementally (Eq. 2.3).

    Returns lists over steps: "actions", "rewards", "regret" (cumulative: sum of q*(best) - q*(a_t),
    the expected reward lost by not always pulling the best arm) and "optimal" (1 if a_t was the best).
    """
    agent_rng, env_rng = random.Random(seed), random.Random(10_000 + seed)  # exploring never changes the noise
    means = bandit.means.tolist()  # plain floats: this loop runs thousands of times
    best, lost = max(means), 0.0
    q = [0.0] * bandit.k  # estimates of q*(a): sample averages of each arm's rewards
    n = [0] * bandit.k    # pulls of each arm
    out: dict[str, list] = {"actions": [], "rewards": [], "regret": [], "optimal": []}
    for t in range(1, steps + 1):
        a = int(choose(torch.tensor(q, dtype=torch.float64), torch.tensor(n, dtype=torch.float64), t, agent_rng))
        r = means[a] + bandit.noise * env_rng.gauss(0.0, 1.0)  # bandit.pull(a, env_rng)
        n[a] += 1
        q[a] += (r - q[a]) / n[a]  # Q_{n+1} = Q_n + (R_n - Q_n) / n: the running mean in O(1) (Eq. 2.3)
        lost += best - means[a]
        out["actions"].append(a)
        out["rewards"].append(r)
        out["regret"].append(lost)
        out["optimal"].append(float(means[a] == best))
    return out


def mean_curves(choose: Chooser, steps: int, runs: int, k: int = 10, seed: int = 0) -> dict[str, list[float]]:
    """`run_bandit` on `runs` testbeds (a new bandit each run), averaged per step: "regret", "optimal",
    "rewards"."""
    totals: dict[str, list[float]] = {}
    for i in range(runs):
        out = run_bandit(Bandit.testbed(k, seed=seed + i), choose, steps, seed=seed + i)
        for key in ("regret", "optimal", "rewards"):
            totals[key] = [a + b for a, b in zip(totals.get(key, [0.0] * steps), out[key])]
    return {key: [v / runs for v in values] for key, values in totals.items()}


# --- a small MDP: the gridworld --------------------------------------------------------------------

ACTIONS = ("up", "right", "down", "left")
MOVES = ((-1, 0), (0, 1), (1, 0), (0, -1))  # (row, col) change of each action
ARROWS = ("↑", "→", "↓", "←")


@dataclass(frozen=True)
class GridWorld:
    """A size x size grid. The agent starts in `start`; entering `goal` pays +1 and entering `pit` pays -1,
    and both end the episode. A move goes the chosen way with probability 1 - slip, else one of the
    three other ways (uniformly): the world is stochastic. Walking into the edge leaves you in place."""

    size: int = 4
    start: tuple[int, int] = (0, 0)
    goal: tuple[int, int] = (3, 3)
    pit: tuple[int, int] = (2, 2)
    slip: float = 0.2
    step_reward: float = 0.0  # paid on every other move (e.g. -0.04: a cost of living)

    @property
    def n_states(self) -> int:
        return self.size * self.size

    def state(self, cell: tuple[int, int]) -> int:
        return cell[0] * self.size + cell[1]

    def cell(self, state: int) -> tuple[int, int]:
        return divmod(state, self.size)

    def is_terminal(self, state: int) -> bool:
        return self.cell(state) in (self.goal, self.pit)

    def reward_for_entering(self, state: int) -> float:
        return {self.goal: 1.0, self.pit: -1.0}.get(self.cell(state), self.step_reward)

    def _next(self, state: int, move: int) -> int:
        (row, col), (dr, dc) = self.cell(state), MOVES[move]
        row, col = min(max(row + dr, 0), self.size - 1), min(max(col + dc, 0), self.size - 1)
        return self.state((row, col))

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The dynamics: P (S, A, S) with P[s, a, s'] = p(s' | s, a), and R (S, A) the expected reward of
        taking a in s. Terminal states loop on themselves with reward 0 (an episode that has ended)."""
        S, A = self.n_states, len(ACTIONS)
        P = torch.zeros(S, A, S, dtype=torch.float64)
        R = torch.zeros(S, A, dtype=torch.float64)
        for s in range(S):
            for a in range(A):
                if self.is_terminal(s):
                    P[s, a, s] = 1.0
                    continue
                for move in range(A):
                    p = 1.0 - self.slip if move == a else self.slip / (A - 1)
                    s2 = self._next(s, move)
                    P[s, a, s2] += p
                    R[s, a] += p * self.reward_for_entering(s2)
        return P, R

    def step(self, state: int, action: int, rng: random.Random) -> tuple[int, float, bool]:
        """The environment's side of the loop: (next state, reward, done)."""
        move = action if rng.random() >= self.slip else rng.choice([m for m in range(len(ACTIONS)) if m != action])
        s2 = self._next(state, move)
        return s2, self.reward_for_entering(s2), self.is_terminal(s2)

    def episode(self, policy: Callable[[int, random.Random], int], rng: random.Random,
                max_steps: int = 100) -> list[tuple[int, int, float]]:
        """Run one episode: a list of (state, action, reward) steps."""
        s, steps = self.state(self.start), []
        for _ in range(max_steps):
            a = policy(s, rng)
            s2, r, done = self.step(s, a, rng)
            steps.append((s, a, r))
            s = s2
            if done:
                break
        return steps


def bellman_backup(V: torch.Tensor, P: torch.Tensor, R: torch.Tensor, gamma: float) -> torch.Tensor:
    """Action values from state values: Q(s, a) = R(s, a) + gamma sum_s' P(s' | s, a) V(s')
    (Sutton & Barto, Eq. 3.13-3.14 and 4.2). V (S,), P (S, A, S), R (S, A) -> Q (S, A)."""
    return R + gamma * torch.einsum("sat,t->sa", P, V)


def policy_evaluation(P: torch.Tensor, R: torch.Tensor, policy: torch.Tensor, gamma: float,
                      tol: float = 1e-10, max_iters: int = 10_000) -> torch.Tensor:
    """V^pi by iterating the Bellman expectation equation V(s) = sum_a pi(a | s) Q(s, a) (Eq. 4.5).
    policy: (S, A) probabilities. Returns V (S,)."""
    V = torch.zeros(P.shape[0], dtype=P.dtype)
    for _ in range(max_iters):
        V_new = (policy * bellman_backup(V, P, R, gamma)).sum(dim=1)
        done = (V_new - V).abs().max() < tol
        V = V_new
        if done:
            break
    return V


def value_iteration(P: torch.Tensor, R: torch.Tensor, gamma: float, tol: float = 1e-10,
                    max_iters: int = 10_000) -> tuple[torch.Tensor, torch.Tensor]:
    """The optimal values by iterating the Bellman optimality equation V(s) = max_a Q(s, a) (Eq. 4.10),
    until no value moves by tol. Returns (V (S,), the greedy policy (S,) long: argmax_a Q(s, a))."""
    V = torch.zeros(P.shape[0], dtype=P.dtype)
    for _ in range(max_iters):
        V_new = bellman_backup(V, P, R, gamma).max(dim=1).values
        done = (V_new - V).abs().max() < tol
        V = V_new
        if done:
            break
    return V, greedy_policy(bellman_backup(V, P, R, gamma))


def greedy_policy(Q: torch.Tensor, tol: float = 1e-9) -> torch.Tensor:
    """pi(s) = argmax_a Q(s, a): Q (S, A) -> (S,) long, ties broken toward the first action.

    Two actions that are worth exactly the same in exact arithmetic (the gridworld is symmetric about
    its diagonal) differ in the last bits of a float, and which one comes out ahead then depends on the
    CPU's matrix kernels (an Intel and an AMD CPU pick different arrows). Values within `tol` of the best
    count as a tie, and the first of them wins, on every machine."""
    best = Q.max(dim=1, keepdim=True).values                  # (S, 1)
    return (Q >= best - tol).to(torch.uint8).argmax(dim=1)    # argmax returns the first maximal index


def random_mdp(n_states: int = 6, n_actions: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A random MDP (P (S, A, S) with rows that sum to 1, R (S, A)), for tests and checks."""
    g = torch.Generator().manual_seed(seed)
    P = torch.rand(n_states, n_actions, n_states, generator=g, dtype=torch.float64) ** 3  # some near-zero
    P = P / P.sum(dim=2, keepdim=True)
    R = torch.randn(n_states, n_actions, generator=g, dtype=torch.float64)
    return P, R


# --- plots -------------------------------------------------------------------------------------------

def plot_regret(curves: dict[str, dict[str, list[float]]], title: str = "Bandit: regret and optimal actions"):
    """Two panels per strategy name: cumulative regret and % optimal action, over steps."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
    for i, (name, c) in enumerate(curves.items()):
        steps = range(1, len(c["regret"]) + 1)
        ax1.plot(steps, c["regret"], color=f"C{i}", label=name)
        ax2.plot(steps, [100 * x for x in _running_mean(c["optimal"], 20)], color=f"C{i}", label=name)
    ax1.set(xlabel="step", ylabel="cumulative regret", title="regret (lower is better)")
    ax2.set(xlabel="step", ylabel="% optimal arm (20-step mean)", title="how often the best arm is pulled", ylim=(0, 100))
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(title)
    return _finish(fig, None)


def _running_mean(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def plot_gridworld(world: GridWorld, values: dict[str, torch.Tensor], policy: torch.Tensor | None = None,
                   title: str = "Gridworld: state values"):
    """One heat map of V per entry of `values`; the greedy `policy` (S,) drawn as arrows on the last."""
    fig, axes = plt.subplots(1, len(values), figsize=(3.6 * len(values), 3.6), layout="constrained", squeeze=False)
    for k, (ax, (name, V)) in enumerate(zip(axes[0], values.items())):
        grid = V.reshape(world.size, world.size).float()
        ax.imshow(grid, cmap="RdYlGn", vmin=-1, vmax=1)
        for s in range(world.n_states):
            r, c = world.cell(s)
            label = {world.goal: "goal", world.pit: "pit"}.get((r, c))
            if label is None and policy is not None and k == len(values) - 1:
                label = ARROWS[int(policy[s])]
            text = f"{float(V[s]):.2f}" + (f"\n{label}" if label else "")
            ax.text(c, r, text, ha="center", va="center", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(name)
    fig.suptitle(title)
    return _finish(fig, None)
