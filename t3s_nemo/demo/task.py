"""A synthetic reasoning task with verifiable answers, in a student style and a teacher style.

Problems chain a few integer operations ("Start with 7. Add 5, then multiply by 3, then subtract 4.").
The *student* writes terse steps; the *teacher* (an R1-like reasoner) wraps the same correct steps in
imitation-prone tokens: thought-leads ("Okay", "Wait", "Hmm"), re-checks, connectives and formatting.
Everything is seeded, so the bundled files can be regenerated bit for bit (tools/make_demo_data.py).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

OPS = ("add", "subtract", "multiply")
_OP_WORD = {"add": "add", "subtract": "subtract", "multiply": "multiply by"}
_OP_SYM = {"add": "+", "subtract": "-", "multiply": "*"}

TEACHER_OPENERS = (
    "Okay, let me work through this step by step.",
    "Alright, let's see.",
    "Okay, so I need to follow the operations in order.",
    "Let me think about this carefully.",
)
TEACHER_LEADS = ("First,", "So,", "Then,", "Next,", "Now,", "Hmm, so")
TEACHER_CHECKS = (
    "Wait, let me double-check that: {a} {op} {b} = {c}. Yes.",
    "Wait, is that right? {a} {op} {b} is {c}. Okay.",
    "Let me verify: {a} {op} {b} = {c}. Correct.",
)
TEACHER_CLOSERS = (
    "So the final result is {x}.",
    "Therefore, the answer is {x}.",
)


@dataclass(frozen=True)
class Problem:
    start: int
    steps: tuple[tuple[str, int], ...]

    @property
    def values(self) -> list[int]:
        out = [self.start]
        for op, k in self.steps:
            out.append(apply(out[-1], op, k))
        return out

    @property
    def answer(self) -> int:
        return self.values[-1]

    @property
    def key(self) -> str:
        return f"{self.start}|" + ",".join(f"{op}{k}" for op, k in self.steps)


def apply(x: int, op: str, k: int) -> int:
    if op == "add":
        return x + k
    if op == "subtract":
        return x - k
    return x * k


def sample_problem(rng: random.Random, num_steps: tuple[int, int] = (2, 4), max_value: int = 99) -> Problem:
    """Values stay within [0, max_value] so every intermediate is a short number."""
    start = x = rng.randint(1, 20)
    steps = []
    for _ in range(rng.randint(*num_steps)):
        choices = []
        for op in OPS:
            k = rng.randint(2, 3) if op == "multiply" else rng.randint(1, 9)
            if 0 <= apply(x, op, k) <= max_value:
                choices.append((op, k))
        op, k = rng.choice(choices)  # add 1..9 from x <= 99 - 9 or subtract from x >= 9 always fits
        x = apply(x, op, k)
        steps.append((op, k))
    return Problem(start=start, steps=tuple(steps))


def prompt_text(p: Problem) -> str:
    parts = [f"{_OP_WORD[op]} {k}" for op, k in p.steps]
    ops = ", then ".join(parts)
    return f"Start with {p.start}. {ops[0].upper()}{ops[1:]}. What is the result?"


def student_response(p: Problem) -> str:
    """Terse steps, one line each, and the boxed answer."""
    vals = p.values
    lines = [f"{vals[i]} {_OP_SYM[op]} {k} = {vals[i + 1]}." for i, (op, k) in enumerate(p.steps)]
    return "<think>\n" + "\n".join(lines) + "\n</think>\n\nThe result is \\boxed{" + f"{p.answer}" + "}."


def teacher_response(p: Problem, rng: random.Random) -> str:
    """The same correct steps, wrapped in thought-leads, re-checks and closers."""
    vals = p.values
    lines = [rng.choice(TEACHER_OPENERS)]
    for i, (op, k) in enumerate(p.steps):
        a, c = vals[i], vals[i + 1]
        lead = TEACHER_LEADS[0] if i == 0 else rng.choice(TEACHER_LEADS[1:])
        lines.append(f"{lead} {a} {_OP_SYM[op]} {k} = {c}.")
        if rng.random() < 0.5:
            lines.append(rng.choice(TEACHER_CHECKS).format(a=a, op=_OP_SYM[op], b=k, c=c))
    lines.append(rng.choice(TEACHER_CLOSERS).format(x=p.answer))
    return "<think>\n" + "\n".join(lines) + "\n</think>\n\nThe result is \\boxed{" + f"{p.answer}" + "}."


def make_split(seed: int, n: int, exclude: set[str] = frozenset()) -> list[Problem]:
    rng = random.Random(seed)
    out: list[Problem] = []
    seen = set(exclude)
    while len(out) < n:
        p = sample_problem(rng)
        if p.key in seen:
            continue
        seen.add(p.key)
        out.append(p)
    return out
