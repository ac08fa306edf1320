"""ExtentMap against a dict of blocks: source block -> target block.

Extents never overlap; ``map`` joins a new extent with its neighbours when
source and target are both contiguous (up to MAX_LEN blocks), so the tree
holds the fewest entries that describe the mapping: checked after every step
by comparing with the minimal extent list derived from the model.
"""

from __future__ import annotations

from hypothesis import note, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from vdisk.btree import Forest, Layout, MemoryNodeStore
from vdisk.btree.check import check_forest
from vdisk.extents import MAX_LEN, ExtentMap, pack, unpack

SPACE = 1500


def new_map():
    forest = Forest(MemoryNodeStore())
    return forest, ExtentMap(forest.create_tree("m", Layout("u64", "u64")))


def minimal_extents(model: dict, limit: int = MAX_LEN):
    """The coalesced extent list of a block dict (runs cut at ``limit`` blocks)."""
    out = []
    for s in sorted(model):
        t = model[s]
        if out and out[-1][0] + out[-1][2] == s and out[-1][1] + out[-1][2] == t and out[-1][2] < limit:
            out[-1][2] += 1
        else:
            out.append([s, t, 1])
    return [tuple(e) for e in out]


def pieces_of(model: dict, start: int, count: int):
    """What ``pieces`` must return: the model's runs inside the range, cut by extents."""
    out = []
    for s, t, n in minimal_extents(model):
        a, b = max(s, start), min(s + n, start + count)
        if a < b:
            out.append((a, t + a - s, b - a))
    return out


class ExtentMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.forest, self.map = new_map()
        self.model: dict[int, int] = {}
        self.next_target = 10_000

    @rule(start=st.integers(0, SPACE), count=st.integers(1, 120), contiguous=st.booleans(),
          gap=st.integers(0, 3))
    def map_range(self, start, count, contiguous, gap):
        # The range must be unmapped: punch it first, as the engine does.
        self.map.punch(start, count)
        for b in range(start, start + count):
            self.model.pop(b, None)
        if contiguous and start > 0 and (start - 1) in self.model:
            target = self.model[start - 1] + 1 + gap    # gap 0: joins the previous extent
        else:
            target = self.next_target
            self.next_target += count + 5
        if any(target <= t < target + count for t in self.model.values()):
            target = self.next_target
            self.next_target += count + 5
        note(f"map {start}+{count} -> {target}")
        self.map.map(start, target, count)
        for i in range(count):
            self.model[start + i] = target + i

    @rule(srcs=st.lists(st.integers(0, SPACE), min_size=1, max_size=40, unique=True),
          follow=st.lists(st.booleans(), min_size=40, max_size=40))
    def assign_blocks(self, srcs, follow):
        # The batch of one-block writes after a snapshot (vdisk/recent.py):
        # each block gets a new target; ``follow`` makes one continue the
        # block before it (sequential writes, or a neighbour's extent), so
        # the joins inside the batch and with untouched entries are tried.
        srcs.sort()
        used = set(self.model.values())
        items = []
        for i, src in enumerate(srcs):
            prev = self.model.get(src - 1) if src > 0 else None
            if items and items[-1][0] == src - 1:
                prev = items[-1][1]
            if follow[i] and prev is not None and prev + 1 not in used:
                target = prev + 1
            else:
                target = self.next_target
                self.next_target += 3
            used.discard(self.model.get(src))
            used.add(target)
            items.append((src, target))
        note(f"assign {items}")
        self.map.assign_blocks(items)
        for src, target in items:
            self.model[src] = target

    @rule(start=st.integers(0, SPACE), count=st.integers(1, 200))
    def punch(self, start, count):
        note(f"punch {start}+{count}")
        removed = self.map.punch(start, count)
        assert removed == pieces_of(self.model, start, count)
        for b in range(start, start + count):
            self.model.pop(b, None)

    @rule(start=st.integers(0, SPACE + 50), count=st.integers(1, 300))
    def pieces(self, start, count):
        assert self.map.pieces(start, count) == pieces_of(self.model, start, count)

    @rule(start=st.integers(0, SPACE))
    def extents_from(self, start):
        got = list(self.map.extents(start))
        # extents(start) lists whole extents whose first block is >= start.
        assert got == [e for e in minimal_extents(self.model) if e[0] >= start]

    @rule()
    def commit(self):
        self.forest.commit()

    @invariant()
    def coalesced(self):
        assert list(self.map.extents()) == minimal_extents(self.model)
        assert len(self.map.tree) == len(minimal_extents(self.model))

    @invariant()
    def tree_ok(self):
        probs = [str(p) for r in check_forest(self.forest, unreferenced=False) for p in r.problems]
        assert not probs, probs


TestExtentMap = ExtentMachine.TestCase
# Half the profile's examples in the default and ci profiles (50: the disk
# model machines drive the map too), all of a larger one (nightly: 1000).
_base = settings()
TestExtentMap.settings = settings(_base, max_examples=_base.max_examples // 2 if _base.max_examples <= 100
                                  else _base.max_examples)


def test_pack_unpack():
    for t, n in ((0, 1), (1, MAX_LEN), (2**39, 12345)):
        assert unpack(pack(t, n)) == (t, n)


def test_sequential_small_maps_join():
    _, m = new_map()
    for i in range(300):
        m.map(i, 5000 + i, 1)
    assert list(m.extents()) == [(0, 5000, 300)]
    # Filling a hole joins both sides.
    m.punch(100, 10)
    assert list(m.extents()) == [(0, 5000, 100), (110, 5110, 190)]
    m.map(100, 5100, 10)
    assert list(m.extents()) == [(0, 5000, 300)]
    # A different target does not join.
    m.punch(100, 10)
    m.map(100, 9000, 10)
    assert list(m.extents()) == [(0, 5000, 100), (100, 9000, 10), (110, 5110, 190)]


def test_long_runs_split_at_max_len():
    _, m = new_map()
    n = 2 * MAX_LEN + 10
    m.map(7, 100, n)
    assert list(m.extents()) == [(7, 100, MAX_LEN), (7 + MAX_LEN, 100 + MAX_LEN, MAX_LEN),
                                 (7 + 2 * MAX_LEN, 100 + 2 * MAX_LEN, 10)]
    assert m.pieces(MAX_LEN, 20) == [(MAX_LEN, 100 + MAX_LEN - 7, 7), (MAX_LEN + 7, 100 + MAX_LEN, 13)]
    removed = m.punch(5, MAX_LEN + 10)
    assert removed == [(7, 100, MAX_LEN), (7 + MAX_LEN, 100 + MAX_LEN, 8)]
    assert list(m.extents()) == [(15 + MAX_LEN, 108 + MAX_LEN, MAX_LEN - 8),
                                 (7 + 2 * MAX_LEN, 100 + 2 * MAX_LEN, 10)]
    # An extent at MAX_LEN does not grow by joining.
    _, m = new_map()
    m.map(0, 0, MAX_LEN)
    m.map(MAX_LEN, MAX_LEN, 1)
    assert list(m.extents()) == [(0, 0, MAX_LEN), (MAX_LEN, MAX_LEN, 1)]
