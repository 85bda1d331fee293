"""A simulated student: Bradley-Terry choices between two toy-world answers.

The toy world knows each answer's true utility, so a labeller can be simulated: it prefers the better
answer with probability sigmoid(gap / T) (Bradley & Terry 1952), says "tie" on equal answers and
"much better" on a large gap. The iterative loop, the tests and notebook 4 label with it.

    session = label_pairs(pairs, "sim.jsonl", labeller=simulated_labeller(seed=0))
"""

from __future__ import annotations

import math
import random
from typing import Callable

from rlhf_course import toyworld
from rlhf_course.feedback.pairs import Pair


def bradley_terry(u_a: float, u_b: float, temperature: float = 1.0) -> float:
    """P(a is preferred to b) = sigmoid((u_a - u_b) / T) (Bradley & Terry 1952), computed without overflow
    for any gap. T is the labeller's noise: T -> 0 always picks the better answer, T -> inf flips a coin."""
    z = (u_a - u_b) / temperature
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


def simulated_labeller(labeller: toyworld.Labeller = toyworld.Labeller(), *, seed: int = 0,
                       much_better_gap: float = 0.5, tie_gap: float = 0.05) -> Callable[[Pair], tuple[str, bool]]:
    """A simulated student for toy-world pairs: the Bradley-Terry `labeller` draws the decision; equal
    utilities (gap < `tie_gap`) are a tie; a gap of at least `much_better_gap` makes the winner
    "much better" (when the labeller picked the better answer)."""
    rng = random.Random(seed)

    def label(pair: Pair) -> tuple[str, bool]:
        prompt = toyworld.parse_prompt(toyworld.prompt_text(pair.prompt))
        gap = labeller.utility(prompt, pair.answer_a) - labeller.utility(prompt, pair.answer_b)
        if abs(gap) < tie_gap:
            return "tie", False
        a_wins = rng.random() < bradley_terry(gap, 0.0, labeller.temperature)
        return ("a" if a_wins else "b"), (gap if a_wins else -gap) >= much_better_gap
    return label
