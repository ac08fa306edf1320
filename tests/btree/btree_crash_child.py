"""The writer that test_crash.py kills: ``python btree_crash_child.py DB SEED``.

It opens the LMDB node store at DB, reads what is there, and then applies
:class:`Plan` (a deterministic stream of operations from SEED and that
starting state) to it until killed, printing each commit's number (1, 2, ...)
on stdout after the commit returns. The parent replays the same plan on
plain dicts to know what every commit must contain.

Imports nothing from pytest: it runs in a bare interpreter.
"""

from __future__ import annotations

import random
import sys

from btree_util import DEEP, KeyCodec
from vdisk.btree import Forest, LmdbNodeStore

KEY_SPACE = 1500
MAX_TREES = 8
MAX_OPS = 200_000        # a child that is never killed still ends

CODEC = KeyCodec(DEEP)


class Plan:
    """Operations from a seed; ``state`` is {tree name: (frozen, {key: value})} after each."""

    def __init__(self, seed: int, state: dict):
        self.rnd = random.Random(seed)
        self.seed = seed
        self.state = {name: (frozen, dict(m)) for name, (frozen, m) in state.items()}
        self.names = 0
        self.commits = 0

    def copy_state(self) -> dict:
        return {name: (frozen, dict(m)) for name, (frozen, m) in self.state.items()}

    def _name(self, prefix):
        self.names += 1
        return f"{prefix}-{self.seed}-{self.names}"

    def next_op(self) -> tuple:
        rnd, state = self.rnd, self.state
        writable = sorted(n for n, (frozen, _) in state.items() if not frozen)
        frozen = sorted(n for n, (fz, _) in state.items() if fz)
        tree = rnd.choice(writable)
        model = state[tree][1]
        r = rnd.random()
        if r < 0.12:
            op = ("commit",)
            self.commits += 1
        elif r < 0.14 and len(state) < MAX_TREES:
            op = ("snapshot", tree, self._name("snap"))
            state[op[2]] = (True, dict(model))
        elif r < 0.15 and frozen and len(state) < MAX_TREES:
            op = ("clone", rnd.choice(frozen), self._name("clone"))
            state[op[2]] = (False, dict(state[op[1]][1]))
        elif r < 0.25:
            start, count, step = rnd.randrange(KEY_SPACE), rnd.randint(1, 200), rnd.randint(1, 3)
            op = ("sorted", tree, start, count, step, rnd.randrange(1 << 30))
            for i, n in enumerate(range(start, start + count * step, step)):
                model[CODEC.key(n)] = CODEC.value(op[5] + i)
        elif r < 0.60 and model and (len(model) > 500 or r < 0.4):
            keys = sorted(model)
            first = rnd.randrange(len(keys))
            op = ("delete", tree, [k for k in keys[first:first + rnd.randint(1, 40)]])
            for k in op[2]:
                del model[k]
        else:
            n, v = rnd.randrange(KEY_SPACE), rnd.randrange(1 << 30)
            op = ("insert", tree, n, v)
            model[CODEC.key(n)] = CODEC.value(v)
        return op


def apply(forest: Forest, op: tuple):
    kind = op[0]
    if kind == "commit":
        forest.commit()
    elif kind == "snapshot":
        forest.snapshot(op[1], op[2])
    elif kind == "clone":
        forest.clone(op[1], op[2])
    elif kind == "sorted":
        _, tree, start, count, step, v = op
        forest.tree(tree).insert_sorted(
            [(CODEC.key(n), CODEC.value(v + i)) for i, n in enumerate(range(start, start + count * step, step))])
    elif kind == "delete":
        t = forest.tree(op[1])
        for k in op[2]:
            if not t.delete(k):
                raise AssertionError(f"delete of a present key returned False: {op}")
    elif kind == "insert":
        forest.tree(op[1]).insert(CODEC.key(op[2]), CODEC.value(op[3]))
    else:
        raise ValueError(op)


def read_state(forest: Forest) -> dict:
    return {name: (forest.tree(name).frozen, dict(forest.tree(name).items()))
            for name in forest.tree_names()}


def main(path: str, seed: int):
    store = LmdbNodeStore(path)
    forest = Forest(store)
    plan = Plan(seed, read_state(forest))
    out = sys.stdout
    out.write("ready\n")
    out.flush()
    for _ in range(MAX_OPS):
        op = plan.next_op()
        apply(forest, op)
        if op[0] == "commit":
            out.write(f"{plan.commits}\n")
            out.flush()
    out.write("done\n")
    out.flush()
    store.close()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
