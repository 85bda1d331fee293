"""Checks for notebook 1 (RL basics): returns, epsilon-greedy, the Bellman backup and value iteration.
Each compares with `rlhf_course.rl_basics` (the exercise's reference: same name, signature and return)
on small inputs it builds itself, with several discount factors, and names the usual mistake when a
known wrong formula matches the student's answer. Every call goes through `core.call`: an input changed
in place is a mistake too."""

from __future__ import annotations

import random

import torch

from rlhf_course import rl_basics
from rlhf_course.checks.core import CheckFailed, call, check, close, draws, same_on_layouts


def _matches(got, want, atol: float = 1e-6) -> bool:
    got, want = torch.as_tensor(got, dtype=torch.float64), torch.as_tensor(want, dtype=torch.float64)
    return got.shape == want.shape and torch.allclose(got, want, atol=atol, rtol=1e-6)


# --- 1.1 discounted return ---------------------------------------------------------------------------

@check(reference=rl_basics.discounted_return)
def check_discounted_return(discounted_return):
    """discounted_return(rewards, gamma) -> G_0 = sum_t gamma^t r_t."""
    if abs(float(call(discounted_return, [], 0.9))) > 1e-12:
        raise CheckFailed("an empty episode has return 0")
    rng = random.Random(0)
    cases = [([1.0, 1.0, 1.0], 0.5), ([0.0, 0.0, 0.0, 1.0], 0.9), ([2.0], 0.3), ([1.0, -2.0, 0.5, 3.0], 1.0)]
    cases += [([rng.uniform(-1, 1) for _ in range(rng.randint(1, 12))], rng.choice([0.0, 0.5, 0.9, 0.99]))
              for _ in range(20)]
    got = [float(call(discounted_return, list(rewards), gamma)) for rewards, gamma in cases]
    want = [rl_basics.discounted_return(rewards, gamma) for rewards, gamma in cases]
    if all(abs(a - b) < 1e-6 for a, b in zip(got, want)):
        return "G_0 = sum_t gamma^t r_t on 25 episodes, gamma from 0 to 1"
    wrong = {  # a known mistake is named only if it explains every case (several agree on some episodes)
        "gamma was ignored: each reward r_t must be weighted by gamma^t": lambda rs, g: sum(rs),
        "off by one: the first reward is not discounted (gamma^0 = 1), so use gamma^t, not gamma^(t+1)":
            lambda rs, g: sum(g ** (t + 1) * r for t, r in enumerate(rs)),
        "you discounted from the end of the episode: it is the FIRST reward that counts fully (gamma^0), "
        "later ones less": lambda rs, g: sum(g ** (len(rs) - 1 - t) * r for t, r in enumerate(rs)),
        "only the last reward was kept: sum over every step of the episode":
            lambda rs, g: g ** (len(rs) - 1) * rs[-1],
        "only the first reward was kept: sum over every step of the episode, each weighted by gamma^t":
            lambda rs, g: rs[0],
    }
    for message, formula in wrong.items():
        if all(abs(x - formula(rs, g)) < 1e-6 for x, (rs, g) in zip(got, cases)):
            raise CheckFailed(message)
    (rewards, gamma), x, y = next((c, x, y) for c, x, y in zip(cases, got, want) if abs(x - y) >= 1e-6)
    raise CheckFailed(f"discounted_return({[round(r, 2) for r in rewards]}, gamma={gamma}) = {x:.4f}, "
                      f"expected {y:.4f}")


# --- 1.2 returns to go ---------------------------------------------------------------------------------

def _forward_returns(rewards: torch.Tensor, gamma: float) -> torch.Tensor:
    """A common slip: the recursion run forwards, F_t = r_t + gamma F_{t-1} (the PAST, discounted)."""
    out, running = torch.zeros_like(rewards), torch.zeros_like(rewards[:, 0])
    for t in range(rewards.shape[1]):
        running = rewards[:, t] + gamma * running
        out[:, t] = running
    return out


@check(reference=rl_basics.returns_to_go)
def check_returns_to_go(returns_to_go):
    """returns_to_go(rewards (B, T), gamma) -> (B, T) with G_t = r_t + gamma G_{t+1}."""
    g = torch.Generator().manual_seed(0)
    rewards = torch.randn(4, 7, generator=g)
    rewards[1, 4:] = 0.0  # an episode that ended early: zero rewards after its end
    T = rewards.shape[1]
    t = torch.arange(T, dtype=rewards.dtype)
    gammas = draws(0.3, 0.95, 3, seed=1)
    for gamma in gammas:
        got = call(returns_to_go, rewards, gamma)
        if not isinstance(got, torch.Tensor):
            raise CheckFailed(f"return a tensor of shape (B, T), not a {type(got).__name__}")
        want = rl_basics.returns_to_go(rewards, gamma)
        if got.shape != want.shape:
            raise CheckFailed(f"the returns have shape {tuple(got.shape)}, expected {tuple(want.shape)} (one per reward)")
        if _matches(got, want, 1e-5):
            continue
        wrong = {
            "you accumulated forwards in time (G_t built from r_0 .. r_t): a return looks ahead - loop t from "
            "T - 1 down to 0, G_t = r_t + gamma G_{t+1}": _forward_returns(rewards, gamma),
            "you summed the PAST rewards (a cumulative sum from the start): a return looks forward, from t to the end":
                torch.cumsum(rewards, dim=1),
            "gamma was ignored: later rewards must count less, G_t = r_t + gamma G_{t+1}":
                rewards.flip(1).cumsum(1).flip(1),
            "G_t must include r_t itself: G_t = r_t + gamma G_{t+1}, not gamma G_{t+1}":
                want - rewards,
            "discount relative to t, not to the start of the episode: in G_t the reward r_t is weighted 1, r_(t+1) gamma, ...":
                (rewards * gamma**t).flip(1).cumsum(1).flip(1),
        }
        for message, value in wrong.items():
            if _matches(got, value, 1e-5):
                raise CheckFailed(message)
        if _matches(got[:, 0], want[:, 0], 1e-5):
            raise CheckFailed("the first column (G_0) is right but later steps are not: fill every G_t, going backwards")
        close(got, want, atol=1e-5, what=f"the returns (gamma = {gamma})")
    sparse = torch.zeros(2, 5)
    sparse[:, -1] = torch.tensor([1.0, -0.5])
    close(call(returns_to_go, sparse, 1.0), rl_basics.returns_to_go(sparse, 1.0), what="returns of a reward at the end")
    same_on_layouts(returns_to_go, [("rewards", rewards), ("gamma", gammas[0])],
                    expand=("rewards",))
    return (f"G_t = r_t + gamma G_{{t+1}} at every step of a (4, 7) batch for gamma = {', '.join(map(str, gammas))}, "
            "a reward only at the end, and views of the rewards")


# --- 1.3 epsilon-greedy -------------------------------------------------------------------------------

@check(reference=rl_basics.epsilon_greedy)
def check_epsilon_greedy(epsilon_greedy):
    """epsilon_greedy(q_values (K,), epsilon, rng) -> an arm: random with probability epsilon, else argmax."""
    q = torch.tensor([0.1, -0.3, 0.8, 0.2, 0.5], dtype=torch.float64)  # the greedy arm is 2
    K, n = len(q), 4000

    def draw(eps: float, seed: int) -> list[int]:
        rng = random.Random(seed)
        arms = [call(epsilon_greedy, q, eps, rng) for _ in range(n)]
        for a in arms[:20]:
            if not isinstance(a, int) and not (isinstance(a, torch.Tensor) and a.numel() == 1):
                raise CheckFailed(f"return the arm's index (an int), not a {type(a).__name__}")
        return [int(a) for a in arms]

    greedy = draw(0.0, 0)
    if any(a == int(torch.argmin(q)) for a in greedy) and not any(a == 2 for a in greedy):
        raise CheckFailed("you picked the arm with the LOWEST value: exploit with argmax, the highest")
    if set(greedy) != {2}:
        share = sum(a == 2 for a in greedy) / n
        raise CheckFailed(f"with epsilon = 0 the agent must always exploit (the argmax arm), but it did so only "
                          f"{share:.0%} of the time. Is the test reversed? Explore when rng.random() < epsilon")
    uniform = draw(1.0, 1)
    if set(uniform) - set(range(K)):
        raise CheckFailed(f"arms must be in 0..{K - 1}; you returned {sorted(set(uniform) - set(range(K)))}")
    shares = [uniform.count(a) / n for a in range(K)]
    if shares[2] < 0.1:
        raise CheckFailed("when exploring, choose among ALL arms, the greedy one included (Sutton & Barto's "
                          "definition): with epsilon = 1 every arm should come up about 1/K of the time")
    if max(abs(s - 1 / K) for s in shares) > 0.03:
        raise CheckFailed(f"with epsilon = 1 every arm should be picked about 1/{K} of the time; you gave "
                          f"{[round(s, 2) for s in shares]}. Use rng.randrange(len(q_values)) to explore")
    eps = 0.2
    mixed = draw(eps, 2)
    share = mixed.count(2) / n
    expected = 1 - eps + eps / K
    if abs(share - (1 - eps)) < 0.015 and abs(share - expected) > 0.015:
        raise CheckFailed("exploration must pick among all arms, the greedy one included: with epsilon = 0.2 and "
                          f"K = {K}, the greedy arm should come up 1 - eps + eps/K = {expected:.2f} of the time")
    if abs(share - expected) > 0.025:
        raise CheckFailed(f"with epsilon = {eps} the greedy arm should be chosen {expected:.2f} of the time "
                          f"(1 - eps + eps/K), you chose it {share:.2f}")
    if draw(eps, 2) != mixed:
        raise CheckFailed("use the `rng` you are given for every random draw, so that a seed reproduces a run")
    eps2 = draws(0.35, 0.65, 1, seed=3)[0]
    share2, expected2 = draw(eps2, 4).count(2) / n, 1 - eps2 + eps2 / K
    if abs(share2 - expected2) > 0.03:
        raise CheckFailed(f"with epsilon = {eps2} the greedy arm should be chosen {expected2:.2f} of the time "
                          f"(1 - eps + eps/K), you chose it {share2:.2f}")
    tied = torch.tensor([0.1, 0.7, -0.3, 0.7, 0.2], dtype=torch.float64)  # arms 1 and 3 tie for the best
    picks = {int(call(epsilon_greedy, tied, 0.0, random.Random(s))) for s in range(20)}
    if picks != {1}:
        raise CheckFailed(f"on a tie for the highest value take the first such arm, as torch.argmax does (arm 1 of "
                          f"{tied.tolist()}); you picked {sorted(picks)}")
    return (f"always the argmax at epsilon 0 (the first on a tie), uniform at 1, the greedy arm 1 - eps + eps/K of "
            f"the time at 0.2 and {eps2}")


# --- 1.4 Bellman backup -------------------------------------------------------------------------------

@check(reference=rl_basics.bellman_backup)
def check_bellman_backup(bellman_backup):
    """bellman_backup(V (S,), P (S, A, S), R (S, A), gamma) -> Q (S, A)."""
    P, R = rl_basics.random_mdp(6, 3, seed=1)
    V = torch.randn(6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    gammas = draws(0.5, 0.97, 3, seed=4)
    for gamma in gammas:
        got = call(bellman_backup, V, P, R, gamma)
        want = rl_basics.bellman_backup(V, P, R, gamma)
        if not isinstance(got, torch.Tensor):
            raise CheckFailed(f"return a tensor Q of shape (S, A), not a {type(got).__name__}")
        if got.shape == (6,):
            raise CheckFailed("return Q(s, a) for every action, shape (S, A): the max over actions comes later "
                              "(value iteration)")
        if _matches(got, want):
            continue
        wrong = {
            "gamma is missing: future values are discounted, Q = R + gamma P V": R + torch.einsum("sat,t->sa", P, V),
            "the immediate reward R(s, a) is missing: Q = R + gamma P V": gamma * torch.einsum("sat,t->sa", P, V),
            "P[s, a, s'] is the probability of landing in s': weight V(s') by it (sum over the LAST axis of P), "
            "don't use V(s) of the current state": R + gamma * V[:, None],
            "that is only the immediate reward R(s, a): add the discounted value of where you land, "
            "gamma sum_s' P(s' | s, a) V(s')": R,
            "sum over the next state s' (the last axis of P), not over the current state":
                R + gamma * torch.einsum("sat,s->ta", P, V),
        }
        for message, value in wrong.items():
            if _matches(got, value):
                raise CheckFailed(message)
        close(got, want, what=f"Q (gamma = {gamma})")
    same_on_layouts(bellman_backup, [("V", V), ("P", P), ("R", R), ("gamma", gammas[0])],
                    expand=("R",))
    return (f"Q(s, a) = R(s, a) + gamma sum_s' P(s' | s, a) V(s') on a random 6-state, 3-action MDP, "
            f"gamma = {', '.join(map(str, gammas))}")


# --- 1.5 value iteration ------------------------------------------------------------------------------

@check(reference=rl_basics.value_iteration)
def check_value_iteration(value_iteration):
    """value_iteration(P, R, gamma) -> (V* (S,), greedy policy (S,))."""
    world = rl_basics.GridWorld()
    cases = {"the gridworld": (world.tensors(), 0.9),
             "a random MDP": (rl_basics.random_mdp(8, 3, seed=3), draws(0.5, 0.85, 1, seed=5)[0])}
    for name, ((P, R), gamma) in cases.items():
        out = call(value_iteration, P, R, gamma)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise CheckFailed("return a pair (V, policy)")
        V, policy = out
        V_star, _ = rl_basics.value_iteration(P, R, gamma)
        S = P.shape[0]
        if tuple(V.shape) == (S, P.shape[1]):
            raise CheckFailed("V has shape (S, A): that is Q. V(s) = max_a Q(s, a), shape (S,)")
        if not _matches(V, V_star, 1e-5):
            one_sweep = rl_basics.bellman_backup(torch.zeros(S, dtype=P.dtype), P, R, gamma).max(dim=1).values
            uniform = rl_basics.policy_evaluation(P, R, torch.full(P.shape[:2], 1 / P.shape[1], dtype=P.dtype), gamma)
            if not bool(V.abs().sum()):
                raise CheckFailed("V is still all zeros: repeat V(s) <- max_a Q(s, a) with Q = bellman_backup(V, P, R, "
                                  "gamma) until the values stop changing")
            if _matches(V, one_sweep, 1e-5):
                raise CheckFailed("that is one sweep: repeat the backup until the values stop changing (by < tol)")
            if _matches(V, uniform, 1e-4):
                raise CheckFailed("you averaged over actions - that evaluates the random policy. Value iteration "
                                  "takes the MAX over actions (the Bellman optimality equation)")
            if _matches(V, R.max(dim=1).values, 1e-5):
                raise CheckFailed("V is only the best immediate reward: back up gamma P V as well (use bellman_backup)")
            close(V, V_star, atol=1e-5, what=f"V on {name}")
        policy = torch.as_tensor(policy).long()
        if tuple(policy.shape) != (S,):
            raise CheckFailed(f"the policy should hold one action per state, shape ({S},), not {tuple(policy.shape)}")
        Q = rl_basics.bellman_backup(V_star, P, R, gamma)
        chosen = Q.gather(1, policy[:, None]).squeeze(1)
        if not torch.allclose(chosen, Q.max(dim=1).values, atol=1e-6):
            bad = int((chosen < Q.max(dim=1).values - 1e-6).nonzero()[0])
            hint = (" (argmin instead of argmax?)" if torch.equal(policy, Q.argmin(dim=1)) else "")
            raise CheckFailed(f"the policy is not greedy with respect to V* on {name}: in state {bad} it picks action "
                              f"{int(policy[bad])}, but action {int(Q[bad].argmax())} has a higher Q{hint}")
    return f"V* and a greedy policy on the gridworld (gamma = 0.9) and on a random MDP (gamma = {gamma})"
