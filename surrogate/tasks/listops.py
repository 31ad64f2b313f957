"""LRA ListOps: nested list operations on digits, one of 10 results, sequences of 500-2000 tokens.

The task of Nangia & Bowman (2018) with the settings of the Long Range Arena (Tay et al.
2021): an expression is a tree whose inner nodes are operators (MAX, MIN, MED = the median
rounded down, SM = the sum modulo 10) over 2..max_args arguments and whose leaves are digits.
A node at depth < max_depth (the root has depth 1) is an operator with probability 1/4, else
a digit; nodes at max_depth are digits. An expression is written in prefix form,
`[MAX 2 9 [MIN 4 7 ] 0 ]`, and kept when its token count lies strictly between min_length
and max_length; the label is its value. As in LRA, every expression appears once over all
three splits.

Tokens (as LRA reads them: the operators, the closing bracket, the digits; no parentheses):
id 0 is padding, 1..10 the digits 0..9, 11..14 the operators, 15 the closing bracket.

Sample i of a split comes from its own random stream, seeded by (seed, split, i), and is
redrawn from that stream while it is rejected (length) or repeats an earlier sample, so a
sample never depends on how the work was cut into chunks or shared out among processes
(DuplicateCheck says how the check for repeats stays exact when chunks are drawn in parallel).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .settings import ListOpsSettings

OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
CLOSE = "]"
VOCABULARY = ("<pad>", *(str(d) for d in range(10)), *OPERATORS, CLOSE)  # token id = index
VOCAB_SIZE = len(VOCABULARY)  # 16, padding included
DIGIT_ID0 = 1
OPERATOR_ID0 = 11
CLOSE_ID = 15
NUM_CLASSES = 10
OPERATOR_PROBABILITY = 0.25


class _TooLong(Exception):
    pass


def _apply(op: int, values: list[int]) -> int:
    if op == 0:
        return min(values)
    if op == 1:
        return max(values)
    if op == 2:  # the median of the arguments, rounded down (LRA: int(np.median))
        ordered = sorted(values)
        mid = len(ordered) // 2
        return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) // 2
    return sum(values) % 10


def draw_expression(uniform: Callable[[], float], s: ListOpsSettings) -> tuple[list[int], int] | None:
    """One random expression as (token ids, value), or None when it reaches max_length tokens (rejected early)."""
    tokens: list[int] = []
    limit = s.max_length

    def node(depth: int) -> int:
        if depth < s.max_depth and uniform() <= OPERATOR_PROBABILITY:
            n_args = 2 + int(uniform() * (s.max_args - 1))
            op = int(uniform() * len(OPERATORS))
            tokens.append(OPERATOR_ID0 + op)
            values = [node(depth + 1) for _ in range(n_args)]
            tokens.append(CLOSE_ID)
            if len(tokens) >= limit:
                raise _TooLong
            return _apply(op, values)
        digit = int(uniform() * 10)
        tokens.append(DIGIT_ID0 + digit)
        if len(tokens) >= limit:
            raise _TooLong
        return digit

    try:
        value = node(1)
    except _TooLong:
        return None
    return tokens, value


def evaluate(tokens) -> int:
    """The value of a token-id sequence (an independent check of the labels: a stack machine)."""
    stack: list[list[int]] = [[]]
    ops: list[int] = []
    for t in tokens:
        t = int(t)
        if t == 0:
            break
        if OPERATOR_ID0 <= t < CLOSE_ID:
            ops.append(t - OPERATOR_ID0)
            stack.append([])
        elif t == CLOSE_ID:
            values = stack.pop()
            stack[-1].append(_apply(ops.pop(), values))
        else:
            stack[-1].append(t - DIGIT_ID0)
    return stack[0][0]


def to_text(tokens) -> str:
    """Token ids as LRA-style text, padding dropped."""
    return " ".join(VOCABULARY[int(t)] for t in tokens if int(t) != 0)


def sample_stream(seed: int, split_code: int, index: int) -> Callable[[], float]:
    """Uniform numbers in [0, 1) of sample `index`'s own stream (Python's Mersenne Twister: fast per draw)."""
    state = np.random.SeedSequence([seed, split_code, index]).generate_state(4, dtype=np.uint32)
    return random.Random(int.from_bytes(state.tobytes(), "little")).random


def digest(row: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(row).tobytes(), digest_size=16).digest()


def draw_sample(s: ListOpsSettings, split_code: int, index: int, excluded: set[bytes]):
    """Sample `index` as (padded row, length, label): the first expression of its own stream whose
    length lies strictly between min_length and max_length and whose row is not in `excluded`."""
    uniform = sample_stream(s.seed, split_code, index)
    row = np.zeros(s.max_length, dtype=np.uint8)
    while True:
        drawn = draw_expression(uniform, s)
        if drawn is None or not (s.min_length < len(drawn[0]) < s.max_length):
            continue
        tokens, value = drawn
        row[:] = 0
        row[:len(tokens)] = tokens
        if digest(row) not in excluded:
            return row, len(tokens), value


@dataclass(frozen=True)
class Generator:
    """Draws chunks of one split, in any process: samples start..stop-1, each unlike the rows before
    it in the chunk. DuplicateCheck then makes them unlike every earlier sample."""

    s: ListOpsSettings
    split_code: int

    def make(self, start: int, stop: int):
        inputs = np.zeros((stop - start, self.s.max_length), dtype=np.uint8)
        lengths = np.zeros(stop - start, dtype=np.int32)
        labels = np.zeros(stop - start, dtype=np.int16)
        chunk_seen: set[bytes] = set()
        for row, index in enumerate(range(start, stop)):
            inputs[row], lengths[row], labels[row] = draw_sample(self.s, self.split_code, index, chunk_seen)
            chunk_seen.add(digest(inputs[row]))
        return inputs, lengths, labels


@dataclass
class DuplicateCheck:
    """Every expression once over all three splits (as in LRA), whichever process drew the chunk.

    `settle` sees the chunks of all splits in order, in one process, and draws the rare row that
    repeats a sample of an earlier chunk again, against all samples made before it. The rows are
    then those of one pass in order: a drawn row that repeats nothing earlier is the one that pass
    would draw, since every candidate Generator.make skipped for it repeated a row before it, which
    that pass skips too.
    """

    s: ListOpsSettings
    seen: set[bytes] = field(default_factory=set)  # digests of every sample made so far

    def settle(self, split_code: int, start: int, rows):
        """The chunk's rows, a repeat of an earlier chunk's sample drawn again (in place); all remembered."""
        inputs, lengths, labels = rows
        for row, index in enumerate(range(start, start + len(inputs))):
            key = digest(inputs[row])
            if key in self.seen:
                inputs[row], lengths[row], labels[row] = draw_sample(self.s, split_code, index, self.seen)
                key = digest(inputs[row])
            self.seen.add(key)
        return rows

    def remember(self, inputs: np.ndarray) -> None:
        """Add samples made before (a finished split read back on resume) to the check."""
        self.seen.update(digest(r) for r in inputs)
