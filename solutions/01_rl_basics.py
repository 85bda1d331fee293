# %% [markdown]
# # 1. RL basics: agents, returns, bandits and a small MDP
#
# RLHF is reinforcement learning with a reward that comes from people. Before we train a language
# model with it, we meet the vocabulary on problems small enough to solve exactly: an **agent**
# acting in an **environment**, a **policy**, **rewards** and the **return** it maximises. Then two
# classic problems: a multi-armed bandit (how to explore) and a gridworld (the Bellman equations).
# At the end we map all of it onto a language model answering a prompt.
#
# **Learning goals**
# - name the parts of the agent-environment loop, and compute a discounted return and the returns-to-go
#   of every step of an episode;
# - explain the exploration-exploitation trade-off, implement epsilon-greedy and read a regret curve;
# - write the Bellman equations of a small MDP, and solve it with policy evaluation and value iteration;
# - say what the state, the action, the policy, the episode and the reward are when the agent is a
#   language model.
#
# **Prerequisites**: notebook 0 (the toy world and the tiny model); Python and a little PyTorch
# (tensors, indexing). No RL background.
#
# **Estimated time**: 30-40 minutes to work through. The notebook runs in well under a minute on a
# laptop CPU, on either profile (it uses the tiny model only).

# %%
# SETUP CELL (inserted by rlhf_course.exercises)

# %%
import random
import warnings

import torch
from transformers.utils import logging as hf_logging

from rlhf_course import toyworld
from rlhf_course.checks.nb01_rl_basics import (check_bellman_backup, check_discounted_return, check_epsilon_greedy,
                                               check_returns_to_go, check_value_iteration)
from rlhf_course.loading import load_policy, load_tokenizer
from rlhf_course.logprobs import token_logprobs
from rlhf_course.profiles import pick_profile
from rlhf_course.rl_basics import (ACTIONS, ARROWS, Bandit, GridWorld, greedy_policy, mean_curves, plot_gridworld,
                                   plot_regret, policy_evaluation, ucb_action)
from rlhf_course.sampling import sample_ids

# %%
warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation notices, not our business here
hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()

# %% [markdown]
# ## 1. The agent-environment loop
#
# At each step $t$ the **agent** sees the **state** $s_t$, picks an **action** $a_t$ from its
# **policy** $\pi(a \mid s_t)$, and the **environment** answers with a **reward** $r_t$ and the next
# state $s_{t+1}$. One run from a start state to an end is an **episode** (a *trajectory*
# $s_0, a_0, r_0, s_1, a_1, r_1, \dots$).
#
# Our first environment is a 4 x 4 **gridworld**. The agent starts in the top-left corner; entering
# the bottom-right corner (the goal) pays +1 and entering the pit pays -1, and both end the episode.
# The floor is slippery: a move goes the way the agent chose 80% of the time, and one of the other
# three ways otherwise. Walking into a wall leaves you where you are.
#
# Here is the loop, with a policy that picks a random action every time:

# %%
world = GridWorld()  # 4 x 4, start (0, 0), goal (3, 3), pit (2, 2), slip 0.2
print(f"{world.n_states} states, {len(ACTIONS)} actions {ACTIONS}; start {world.start}, goal {world.goal}, pit {world.pit}")


def random_policy(state: int, rng: random.Random) -> int:
    return rng.randrange(len(ACTIONS))


rng = random.Random(0)
state, steps = world.state(world.start), []
for t in range(100):
    action = random_policy(state, rng)                          # the agent acts
    next_state, reward, done = world.step(state, action, rng)   # the environment answers
    steps.append((state, action, reward))
    state = next_state
    if done:
        break
for s, a, r in steps[:6]:
    print(f"state {world.cell(s)}  action {ACTIONS[a]:<5}  reward {r:+.0f}")
print(f"... the episode ended after {len(steps)} steps in {world.cell(state)} with reward {steps[-1][2]:+.0f}")


# %% [markdown]
# The agent's goal is not the next reward but the **return**, the (discounted) sum of all the rewards
# from now on (Sutton & Barto, *Reinforcement Learning: An Introduction*, Eq. 3.8; we index the
# reward that follows action $a_t$ as $r_t$):
#
# $$G_0 = r_0 + \gamma r_1 + \gamma^2 r_2 + \dots = \sum_{t=0}^{T-1} \gamma^t r_t, \qquad 0 \le \gamma \le 1.$$
#
# The **discount factor** $\gamma$ makes a reward now worth more than the same reward later, and keeps
# the sum finite when episodes never end. With $\gamma = 0.9$, reaching the goal in 5 steps is worth
# $0.9^4 \approx 0.66$, in 20 steps only $0.9^{19} \approx 0.14$: discounting rewards speed.
# In RLHF an episode is one answer of a few dozen tokens, and $\gamma = 1$.
#
# ### Exercise 1.1 — The discounted return
# *Difficulty ●○○ · importance: high (every RL algorithm maximises this number) · about 5 minutes ·
# checked against `rlhf_course.rl_basics.discounted_return` on 25 episodes, gamma from 0 to 1.*
#
# **Mistakes the check names**: gamma ignored; every reward discounted once too often ($\gamma^{t+1}$);
# discounting from the end of the episode; only the first or the last reward kept; the `rewards` list
# changed in place.
#
# <details><summary>Hint 2 (the formula, as code)</summary>
#
# Reward $r_t$ is weighted $\gamma^t$: `gamma**t * r` for each `t, r` of `enumerate(rewards)`, added up
# with `sum(...)`.
#
# </details>

# %%
def discounted_return(rewards: list[float], gamma: float) -> float:
    """G_0 = sum_t gamma^t r_t for the rewards r_0, r_1, ... of one episode."""
    # SOLUTION
    # STUB return 0.0
    # HINT each reward counts a little less than the one before it: what weight does the reward at step t get?
    return sum(gamma**t * r for t, r in enumerate(rewards))
    # END SOLUTION


# %%
discounted_return = check_discounted_return(discounted_return)

# %% [markdown]
# How good is the random policy? Its return varies from episode to episode (the policy and the floor
# are random), so we average over many episodes. This **Monte Carlo** average estimates the expected
# return from the start state, the *value* $V^\pi(s_0)$ that section 3 computes exactly.

# %%
rng = random.Random(1)
episodes = [world.episode(random_policy, rng) for _ in range(2000)]  # each: [(state, action, reward), ...]
mc_random = sum(discounted_return([r for *_, r in ep], 0.9) for ep in episodes) / len(episodes)
print(f"random policy: {sum(ep[-1][2] > 0 for ep in episodes) / len(episodes):.0%} of episodes reach the goal, "
      f"{sum(len(ep) for ep in episodes) / len(episodes):.1f} steps on average")
print(f"Monte Carlo estimate of V(start) with gamma = 0.9: {mc_random:.2f}")


# %% [markdown]
# ### Exercise 1.2 — Returns-to-go for every step, on a batch
# *Difficulty ●●○ · importance: high (REINFORCE in notebook 2 weights every action by its return-to-go) ·
# about 10 minutes · checked against `rlhf_course.rl_basics.returns_to_go` on a (4, 7) batch, and on
# rewards that arrive only at the end.*
#
# An action can only change what happens *after* it, so algorithms credit the action $a_t$ with the
# **return-to-go** $G_t = \sum_{k \ge t} \gamma^{k-t} r_k$. Computing each $G_t$ from scratch costs
# $O(T^2)$; the recursion
#
# $$G_t = r_t + \gamma\, G_{t+1}, \qquad G_T = 0$$
#
# gives all of them in one backward pass. Write it for a batch of episodes, one per row of a
# `(B, T)` tensor (episodes that ended early have zero rewards after their end). Return a new tensor;
# do not change `rewards`.
#
# **Mistakes the check names**: the recursion run forwards in time; the past rewards summed (a plain
# cumulative sum); gamma ignored; $r_t$ left out of $G_t$; discounting relative to the start of the
# episode; only $G_0$ filled in; `rewards` changed in place (or an answer that changes when `rewards` is
# a view). It tries three values of gamma.
#
# <details><summary>Hint 2 (the loop)</summary>
#
# Keep a `(B,)` tensor `running`, starting at 0 ($G_T$). For `t` in `reversed(range(T))`:
# `running = rewards[:, t] + gamma * running`, then `returns[:, t] = running`.
#
# </details>

# %%
def returns_to_go(rewards: torch.Tensor, gamma: float) -> torch.Tensor:
    """G_t = r_t + gamma * G_{t+1} for every step. rewards: (B, T) -> returns (B, T)."""
    assert rewards.ndim == 2, "rewards: (B, T), one episode per row"
    B, T = rewards.shape
    returns = torch.zeros_like(rewards)  # (B, T)
    # SOLUTION
    # HINT which G_t can you write down without knowing any other? Start there, and walk the recursion
    running = torch.zeros(B, dtype=rewards.dtype)  # G_T = 0
    for t in reversed(range(T)):
        running = rewards[:, t] + gamma * running
        returns[:, t] = running
    # END SOLUTION
    return returns


# %%
returns_to_go = check_returns_to_go(returns_to_go)

# %%
ep = episodes[0]
rewards = torch.tensor([[r for *_, r in ep]])  # (1, T): one episode
G = returns_to_go(rewards, 0.9)
print(f"an episode of {rewards.shape[1]} steps ending with reward {rewards[0, -1]:+.0f}")
print("G_t, last 5 steps:", [round(g, 3) for g in G[0, -5:].tolist()])
print(f"G_0 = {G[0, 0]:.4f}; discounted_return gives {discounted_return(rewards[0].tolist(), 0.9):.4f}")

# %% [markdown]
# ## 2. Multi-armed bandits: exploring versus exploiting
#
# Strip away the states: one situation, $k$ slot machines ("arms"), each paying a noisy reward around
# an unknown mean $q_*(a)$. Every episode is one pull. The agent keeps an estimate $Q(a)$ of each
# arm's mean (the average of the rewards it has seen from it) and must choose between
#
# * **exploiting**: pulling the arm that looks best now, $\arg\max_a Q(a)$, and
# * **exploring**: pulling another arm, whose estimate may be wrong because it was tried too rarely.
#
# A purely greedy agent can lock onto a mediocre arm forever. **Epsilon-greedy** explores with
# probability $\varepsilon$ (a uniformly random arm) and exploits otherwise (Sutton & Barto, section 2.2).
# **UCB** explores *where it is unsure*: it pulls $\arg\max_a Q(a) + c\sqrt{\ln t / N(a)}$, a bonus
# that shrinks as an arm's pull count $N(a)$ grows (Eq. 2.10; Auer et al. 2002).
#
# We score a strategy by its **regret**, the expected reward lost to not pulling the best arm every time:
# $\text{regret}_T = \sum_{t=1}^{T} \big(q_*(a^*) - q_*(a_t)\big)$. Lower is better; a strategy that
# has found the best arm adds (almost) nothing more.
#
# The test problem is Sutton & Barto's 10-armed testbed: arm means drawn from $\mathcal{N}(0, 1)$,
# rewards with noise of standard deviation 1.

# %%
bandit = Bandit.testbed(k=10, seed=0)
print("arm means q*(a):", [round(m, 2) for m in bandit.means.tolist()])
print(f"best arm: {bandit.best_arm} (mean {bandit.means.max():.2f})")


# %% [markdown]
# ### Exercise 1.3 — Epsilon-greedy
# *Difficulty ●○○ · importance: medium (exploration returns in RLHF as sampling temperature and the
# entropy bonus) · about 5 minutes · checked statistically: always the greedy arm at $\varepsilon = 0$,
# uniform at $\varepsilon = 1$, and the right mix at $\varepsilon = 0.2$.*
#
# With probability `epsilon` return a uniformly random arm (any of the $K$, the greedy one included);
# otherwise return the arm with the highest `q_values` (the first one on a tie, as `torch.argmax`
# does). Draw every random number from `rng` (a `random.Random`), so a seed reproduces a run.
#
# **Mistakes the check names**: the lowest arm instead of the highest; the explore test reversed;
# exploring only the other arms (the greedy one excluded); an uneven random arm; the last arm of a tie
# instead of the first; random numbers not drawn from `rng`.
#
# <details><summary>Hint 2 (the two branches)</summary>
#
# `if rng.random() < epsilon:` explore with `rng.randrange(len(q_values))`; else exploit with
# `int(torch.argmax(q_values))`.
#
# </details>

# %%
def epsilon_greedy(q_values: torch.Tensor, epsilon: float, rng: random.Random) -> int:
    """The arm to pull: random with probability epsilon, else argmax_a Q(a). q_values: (K,)."""
    # SOLUTION
    # STUB return 0
    # HINT one uniform draw from rng decides between exploring and exploiting
    if rng.random() < epsilon:
        return rng.randrange(len(q_values))
    return int(torch.argmax(q_values))
    # END SOLUTION


# %%
epsilon_greedy = check_epsilon_greedy(epsilon_greedy)

# %% [markdown]
# Now your `epsilon_greedy` plays the testbed, against pure greed and UCB. Each curve averages 30
# runs of 1,000 pulls, each run on a freshly drawn bandit. (`mean_curves` calls
# `choose(Q, N, t, rng)` at every step, with the current estimates `Q`, the pull counts `N` and the
# step `t`.)

# %%
strategies = {
    "greedy (epsilon = 0)": lambda Q, N, t, rng: epsilon_greedy(Q, 0.0, rng),
    "epsilon = 0.01": lambda Q, N, t, rng: epsilon_greedy(Q, 0.01, rng),
    "epsilon = 0.1": lambda Q, N, t, rng: epsilon_greedy(Q, 0.1, rng),
    "UCB (c = 2)": lambda Q, N, t, rng: ucb_action(Q, N, t, c=2.0),
}
curves = {name: mean_curves(choose, steps=1000, runs=30, seed=0) for name, choose in strategies.items()}
for name, c in curves.items():
    print(f"{name:<22} regret after 1000 pulls: {c['regret'][-1]:6.1f}   "
          f"best arm pulled in the last 100: {sum(c['optimal'][-100:]):.0f}%")
regrets = {name: c["regret"][-1] for name, c in curves.items()}
print("UCB has the lowest regret:", min(regrets, key=regrets.get) == "UCB (c = 2)")
print("epsilon = 0.1 beats pure greed:", regrets["epsilon = 0.1"] < regrets["greedy (epsilon = 0)"])

# %%
plot_regret(curves)

# %% [markdown]
# Greedy regret grows in a straight line: having locked onto a worse arm, it loses the same amount
# every step. Epsilon-greedy finds the best arm quickly but keeps paying for its random pulls
# ($\varepsilon = 0.1$ explores 10% of the time forever; $\varepsilon = 0.01$ explores too little to
# find the best arm fast). UCB's regret flattens out: it stops exploring arms it is sure about.
#
# **Question.** Why does the greedy agent sometimes never find the best arm, even though every arm
# starts with the same estimate $Q(a) = 0$?
#
# <!-- SOLUTION -->
# *Answer.* After one pull, an arm whose reward happened to be positive has $Q > 0$ and is pulled
# again and again; arms never pulled keep $Q = 0$ and, if the chosen arm's estimate stays above 0,
# they are never tried, however good they are. Nothing ever forces it to check them. (Optimistic
# initial values, e.g. $Q(a) = 5$, are another cure: Sutton & Barto, section 2.6.)
# <!-- END SOLUTION -->

# %% [markdown]
# ## 3. A small MDP and the Bellman equations
#
# A **Markov decision process** (MDP) adds states back: states $S$, actions $A$, the dynamics
# $P(s' \mid s, a)$, the expected reward $R(s, a)$ of taking $a$ in $s$, and the discount $\gamma$.
# Our gridworld is small enough to write down as two tensors: `P` of shape `(S, A, S)` and `R` of
# shape `(S, A)`. The goal and the pit loop on themselves with reward 0: the episode has ended.

# %%
P, R = world.tensors()
print(f"P: {tuple(P.shape)} (state, action, next state); R: {tuple(R.shape)}")
s = world.state((2, 3))  # just above the goal, just right of the pit
print(f"from (2, 3), action 'down': {[(world.cell(s2), round(p, 3)) for s2, p in enumerate(P[s, 2].tolist()) if p > 0]}")
print(f"expected reward of 'down' there: R = {R[s, 2]:.3f}  (0.8 x (+1) into the goal + 0.067 x (-1) into the pit)")
print("each row of P sums to 1:", bool(torch.allclose(P.sum(dim=2), torch.ones(16, 4, dtype=P.dtype))))


# %% [markdown]
# The **value** of a state under a policy is its expected return, $V^\pi(s) = \mathbb{E}_\pi[G_t \mid s_t = s]$,
# and the **action value** $Q^\pi(s, a)$ is the expected return after taking $a$ in $s$ and following $\pi$
# afterwards. Splitting the return into the first reward and the rest ($G_t = r_t + \gamma G_{t+1}$)
# gives the **Bellman equations** (Sutton & Barto, Eq. 3.14 and 4.5):
#
# $$Q^\pi(s, a) = R(s, a) + \gamma \sum_{s'} P(s' \mid s, a)\, V^\pi(s'), \qquad
# V^\pi(s) = \sum_a \pi(a \mid s)\, Q^\pi(s, a).$$
#
# The value of a state is the reward now plus the discounted value of where you land. For the best
# possible policy, the agent takes the best action instead of averaging over its policy: the
# **Bellman optimality equation** (Eq. 4.1)
#
# $$V^*(s) = \max_a \Big[ R(s, a) + \gamma \sum_{s'} P(s' \mid s, a)\, V^*(s') \Big].$$
#
# ### Exercise 1.4 — The Bellman backup
# *Difficulty ●●○ · importance: high (value functions return as PPO's critic and GAE) · about 10 minutes ·
# checked against `rlhf_course.rl_basics.bellman_backup` on a random 6-state, 3-action MDP.*
#
# Compute $Q(s, a) = R(s, a) + \gamma \sum_{s'} P(s' \mid s, a) V(s')$ for every state and action at once.
# One line of tensor code does it.
#
# **Mistakes the check names**: gamma missing; $R(s, a)$ missing; only $R(s, a)$; $V(s)$ of the current
# state instead of $V(s')$; the sum over the wrong axis of `P`; the max over actions taken already;
# `V`, `P` or `R` changed in place, or `.view` on a non-contiguous `P`. It tries three values of gamma.
#
# <details><summary>Hint 2 (the product)</summary>
#
# `P @ V` multiplies the last axis of `P` (S, A, S) with `V` (S,): the expected next value, shape (S, A).
# Then $Q$ = `R + gamma * (P @ V)`.
#
# </details>

# %%
def bellman_backup(V: torch.Tensor, P: torch.Tensor, R: torch.Tensor, gamma: float) -> torch.Tensor:
    """Q(s, a) = R(s, a) + gamma * sum_s' P(s' | s, a) V(s'). V (S,), P (S, A, S), R (S, A) -> Q (S, A)."""
    assert P.shape[0] == P.shape[2] == V.shape[0] and R.shape == P.shape[:2]
    # SOLUTION
    # STUB return R.clone()
    # HINT the sum over s' is an expectation of V under P[s, a, :]: which tensor operation sums over an axis?
    return R + gamma * (P @ V)
    # END SOLUTION


# %%
bellman_backup = check_bellman_backup(bellman_backup)

# %% [markdown]
# **Policy evaluation** applies the Bellman expectation equation as an update until nothing changes:
# start from $V = 0$, compute $Q$ with your backup, average it over the policy's actions, repeat. Each
# sweep shrinks the error by a factor $\gamma$ (the backup is a contraction), so it converges. For
# the random policy the answer should match the Monte Carlo estimate of section 1:

# %%
uniform = torch.full((world.n_states, len(ACTIONS)), 1 / len(ACTIONS), dtype=torch.float64)  # pi(a | s) = 1/4
V_random = policy_evaluation(P, R, uniform, gamma=0.9)
start = world.state(world.start)
print(f"V_random(start) by policy evaluation: {V_random[start]:.2f}; by Monte Carlo over 2000 episodes: {mc_random:.2f}")
print("they agree within 0.03:", abs(V_random[start].item() - mc_random) < 0.03)


# %% [markdown]
# ### Exercise 1.5 — Value iteration
# *Difficulty ●●○ · importance: medium (the idea - back up values until they are consistent - is in every
# critic) · about 10 minutes · checked against `rlhf_course.rl_basics.value_iteration` on the gridworld
# and on a random MDP; the policy must be greedy with respect to $V^*$.*
#
# Turn the Bellman optimality equation into an update: start from $V = 0$, then repeat
# $V(s) \leftarrow \max_a Q(s, a)$ with `Q = bellman_backup(V, P, R, gamma)` until no value moves by
# more than `tol`. Return $V^*$ and the greedy policy $\pi^*(s) = \arg\max_a Q(s, a)$ (one action index
# per state, a `long` tensor of shape `(S,)`). Take it with `greedy_policy(Q)`, the course's argmax
# with ties broken toward the first action: this gridworld is symmetric about its diagonal, so some
# actions are worth *exactly* the same, and a plain `Q.argmax(dim=1)` would let the last bits of the
# CPU's arithmetic choose between them (an Intel and an AMD CPU draw different arrows).
#
# **Mistakes the check names**: one sweep only; $V$ left at zero; the average over actions (that
# evaluates the random policy); only the best immediate reward; a policy that is not greedy (argmin);
# `P` or `R` changed in place.
#
# <details><summary>Hint 2 (one sweep, and when to stop)</summary>
#
# One sweep: `V_new = bellman_backup(V, P, R, gamma).max(dim=1).values`. Stop when
# `(V_new - V).abs().max() < tol`. The policy: `greedy_policy(bellman_backup(V, P, R, gamma))`.
#
# </details>

# %%
def value_iteration(P: torch.Tensor, R: torch.Tensor, gamma: float, tol: float = 1e-10,
                    max_iters: int = 10_000) -> tuple[torch.Tensor, torch.Tensor]:
    """V* by iterating V(s) <- max_a Q(s, a); returns (V (S,), greedy policy (S,) long)."""
    V = torch.zeros(P.shape[0], dtype=P.dtype)  # (S,)
    # SOLUTION
    # STUB return V, torch.zeros(P.shape[0], dtype=torch.long)
    # HINT your bellman_backup gives Q from V; the optimality equation turns Q back into V. Repeat until V stops moving
    for _ in range(max_iters):
        V_new = bellman_backup(V, P, R, gamma).max(dim=1).values
        converged = (V_new - V).abs().max() < tol
        V = V_new
        if converged:
            break
    return V, greedy_policy(bellman_backup(V, P, R, gamma))
    # END SOLUTION


# %%
value_iteration = check_value_iteration(value_iteration)

# %%
V_star, pi_star = value_iteration(P, R, gamma=0.9)
for row in range(world.size):
    print("  ".join({world.goal: "G", world.pit: "X"}.get((row, col), ARROWS[int(pi_star[world.state((row, col))])])
                    for col in range(world.size)))
print(f"V*(start) = {V_star[start]:.2f} versus {V_random[start]:.2f} for the random policy")
print(f"three moves from the goal: V*(1, 2) = {V_star[world.state((1, 2))]:.2f} next to the pit, "
      f"V*(0, 3) = {V_star[world.state((0, 3))]:.2f} along the wall")
rng = random.Random(2)
greedy = lambda state, rng: int(pi_star[state])  # noqa: E731
mc_star = sum(discounted_return([r for *_, r in world.episode(greedy, rng)], 0.9) for _ in range(2000)) / 2000
print(f"Monte Carlo return of the optimal policy: {mc_star:.2f} (V* says {V_star[start]:.2f})")

# %%
plot_gridworld(world, {'random policy: V^π': V_random, 'optimal: V* and π*': V_star}, pi_star)

# %% [markdown]
# A cell next to the pit is worth less than a cell just as far from the goal along a wall: 0.50 at
# (1, 2) against 0.61 at (0, 3). From (1, 2) the best move is *away* from the pit (right), and even then
# a slip can throw the agent in. The Bellman equations price that risk for us, from $P$ alone.
#
# **Question.** What changes with a floor that never slips (`GridWorld(slip=0.0)`)? And with
# $\gamma = 1$ (time costs nothing)? Predict, then try: `value_iteration(*GridWorld(slip=0.0).tensors(), gamma=0.9)`.
#
# <!-- SOLUTION -->
# *Answer.* Without slipping nothing can push the agent into the pit: every shortest path (6 moves) is
# optimal, and $V^*(\text{start}) = 0.9^5 \approx 0.59$. With $\gamma = 1$ a detour is free, so the
# agent trades speed for safety: from (1, 1) it now steps left, away from the pit, and goes round by
# the walls. $V^*(\text{start})$ rises to 0.82 but not to 1: the last move into the goal, from (2, 3)
# or (3, 2), always risks a slip into the pit.
# <!-- END SOLUTION -->
#
# These are the classical, *tabular* tools: they need the dynamics $P$ and a table with one entry per state.
# A language model has neither, as the next section shows: it learns from sampled episodes (notebook 2)
# and a neural network stands in for the table (the critic of PPO, notebook 6).

# %% [markdown]
# ## 4. The bridge: a language model is a policy
#
# Put the tiny model of notebook 0 in the agent's seat:
#
# | RL | a language model answering a prompt |
# |---|---|
# | state $s_t$ | the prompt and the answer's tokens so far |
# | action $a_t$ | the next token: one of the vocabulary's 833 tokens (32,000 for a Mistral-7B) |
# | policy $\pi_\theta(a_t \mid s_t)$ | the model's softmax over its logits |
# | transition | deterministic: append the token to the state |
# | episode | one answer, ending at the end-of-sequence token `<|end|>` or at `max_new_tokens` |
# | reward | **0 for every token, and one score at the end** for the whole answer: the toy world's ground truth here, a reward model trained on human preferences in notebook 5 |
# | discount | $\gamma = 1$: episodes are short, and only the end is scored |
#
# Because the reward comes only at the end, with $\gamma = 1$ every token's return-to-go is the same
# final score. Seen from far away, the whole answer is one action and one reward: RLHF is a
# *contextual bandit* (the prompt is the context), which is how REINFORCE, GRPO and DPO look at it.
# PPO (notebook 6) keeps the per-token view: it adds a small penalty at every token (the KL to the
# starting model), so the rewards are no longer all at the end, and a value function per token pays off
# (Ziegler et al. 2019, arXiv:1909.08593; InstructGPT, arXiv:2203.02155).
#
# We use the tiny model here on both profiles: the toy world's reward only makes sense for its answers.

# %%
# NBVAL_IGNORE_OUTPUT
tiny = pick_profile("tiny")  # this lesson needs the toy world's own model, on either profile
tokenizer = load_tokenizer(tiny)
policy = load_policy(tiny, lora=False)  # the base model: no adapter, nothing to train here

# %%
prompt = "how do i cook rice ?"
state = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
ids = tokenizer(state, return_tensors="pt", add_special_tokens=False)["input_ids"].to(policy.device)  # (1, T)
print(f"the first state s_0 = {state!r}: {ids.shape[1]} tokens")
with torch.no_grad():
    logits = policy(ids).logits[0, -1]                         # (V,): one score per token of the vocabulary
probs = torch.softmax(logits / tiny.temperature, dim=-1)       # pi(a | s_0), at the sampling temperature
print(f"pi(. | s_0) is a distribution over {probs.numel()} actions; the five most likely first tokens:")
for p, i in zip(*probs.topk(5)):
    print(f"  {tokenizer.convert_ids_to_tokens(int(i)):>10}  {p:.3f}")

# %% [markdown]
# Now one episode: sample an answer (one token per step), score it at the end, and give every token its
# return-to-go with your `returns_to_go`. The `log pi` column is the log-probability of each action
# under the policy, the quantity a policy gradient pushes up or down (notebook 2). The sampling
# temperature (0.7 on the tiny profile) is part of the policy: $\pi(a \mid s) = \mathrm{softmax}(\text{logits} / 0.7)$.

# %%
torch.manual_seed(3)
query, response, ended = sample_ids(policy, tokenizer, [prompt], tiny.max_new_tokens, temperature=tiny.temperature)
n = int((response[0] != tokenizer.pad_token_id).sum())   # tokens in the answer, <|end|> included
actions = response[:, :n]                                # (1, n)
answer = tokenizer.decode(actions[0], skip_special_tokens=True).strip()
final = toyworld.reward(prompt, answer, bool(ended[0]))

rewards = torch.zeros(1, n)                              # (1, n): nothing until the end ...
rewards[0, -1] = final                                   # ... then the whole answer's score
G = returns_to_go(rewards, gamma=1.0)                    # (1, n)
with torch.no_grad():
    seq = torch.cat([query, actions], dim=1)
    logits = policy(seq).logits[:, query.shape[1] - 1 : -1]  # logits at t predict token t + 1
    logp = token_logprobs(logits, actions, tiny.temperature)  # (1, n): log pi(a_t | s_t)

print(f"answer: {answer!r}\nground-truth reward {final:+.2f}, ended: {bool(ended[0])}\n")
print(f"{'t':>3} {'action a_t':>12} {'log pi':>7} {'r_t':>6} {'G_t':>6}")
for t in range(n):
    token = tokenizer.convert_ids_to_tokens(int(actions[0, t]))
    print(f"{t:>3} {token:>12} {logp[0, t]:7.2f} {rewards[0, t]:6.2f} {G[0, t]:6.2f}")

# %% [markdown]
# Every token of this answer gets the same return, good tokens and bad ones alike: the **credit
# assignment** problem. With one score per answer, an algorithm only learns which tokens mattered by
# comparing many answers. That is the job of the next notebook: turn returns like these into a
# gradient for the policy (REINFORCE), reduce its variance with a baseline, and then see it raise the
# tiny model's reward.
#
# ## Summary
#
# - The agent-environment loop: states, actions, a policy, rewards; the agent maximises the return
#   $G_t = r_t + \gamma G_{t+1}$, computed for every step in one backward pass.
# - Bandits: exploring costs reward now and pays later; regret measures the balance; UCB explores where it
#   is unsure.
# - MDPs: the Bellman equations define values; policy evaluation and value iteration solve small MDPs
#   exactly when $P$ and $R$ are known.
# - A language model is a policy over tokens; an answer is an episode; in RLHF the reward comes at the end,
#   and $\gamma = 1$.
#
# **Next**: notebook 2, policy gradients.
