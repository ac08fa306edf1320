"""A Forest driven by hypothesis against a plain dict model.

Each rule does the same thing to the forest and to the model; the invariants
compare them after every step. Writable trees (``main`` and clones) have a
model that changes with them; a snapshot's model is frozen when it is taken,
and every snapshot must keep returning exactly that, whatever happens to the
trees it shares nodes with. ``commit`` remembers the models, ``rollback`` and
``reopen`` go back to them.

The machine runs for each store (memory, LMDB in a temporary directory) and
for layouts chosen so that a few hundred keys make trees deep enough to split
and merge leaves and (``deep``) inner nodes; two more runs use a node cache
of a few nodes, so that eviction happens in the middle of every operation.

Tree handles are kept across commits and rollbacks, as a caller would keep
them (a rollback must reload them); only a reopen makes new ones.
"""

from __future__ import annotations

import shutil

import pytest
from hypothesis import event, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from btree_util import LAYOUTS, KeyCodec, assert_forest_ok, scratch_dir
from vdisk.btree import Forest, LmdbNodeStore, MemoryNodeStore
from vdisk.btree import format as fmt
from vdisk.btree.packed import PackedBytes
from vdisk.errors import InvalidArgument, ReadOnly

KEY_SPACE = 700
MAX_TREES = 8          # writable trees + snapshots, to bound the per-step checks
CHECK_EVERY = 4        # steps between full structural checks
# Longer than leaf_capacity * inner_capacity of the deep layout (165): a run into
# a one-leaf tree splits the root into more parts than one inner node holds.
MAX_RUN = 250

keys = st.integers(0, KEY_SPACE)
values = st.integers(0, 10_000)


class ForestMachine(RuleBasedStateMachine):
    LAYOUT = None
    STORE = None
    CACHE_NODES = 250_000

    def __init__(self):
        super().__init__()
        self.codec = KeyCodec(self.LAYOUT)
        self.path = scratch_dir("vdisk-btree-stateful-") if self.STORE == "lmdb" else None
        self.store = self._new_store()
        self.forest = Forest(self.store, cache_nodes=self.CACHE_NODES)
        self.handles = {"main": self.forest.create_tree("main", self.LAYOUT)}
        self.forest.commit()
        self.models: dict[str, dict] = {"main": {}}   # writable trees
        self.frozen: dict[str, dict] = {}             # snapshots, never changed
        self.committed = self._copy_models()
        self.steps = 0
        self.names = 0

    # ------------------------------------------------------------ plumbing

    def _new_store(self):
        if self.STORE == "lmdb":
            return LmdbNodeStore(self.path)
        return MemoryNodeStore()

    def _copy_models(self):
        return ({k: dict(v) for k, v in self.models.items()}, dict(self.frozen))

    def _all_models(self) -> dict[str, dict]:
        return {**self.models, **self.frozen}

    def _tree(self, name):
        return self.handles[name]

    def _new_name(self, prefix):
        self.names += 1
        return f"{prefix}{self.names}"

    def k(self, n):
        return self.codec.key(n)

    def v(self, n):
        return self.codec.value(n)

    def teardown(self):
        self.store.close()
        if self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)

    # ------------------------------------------------------------ writes

    @initialize(density=st.integers(0, 4), commit=st.booleans())
    def fill(self, density, commit):
        """Start from 0-100% of the key space, inserted one by one in scrambled order."""
        tree = self._tree("main")
        for n in sorted(range(KEY_SPACE), key=lambda n: (n * 2654435761) % 1009):
            if (n * 40503) % 4 < density:
                tree.insert(self.k(n), self.v(n))
                self.models["main"][self.k(n)] = self.v(n)
        if commit:
            self.forest.commit()
            self.committed = self._copy_models()

    @rule(data=st.data(), key=keys, value=values)
    def insert(self, data, key, value):
        name = data.draw(st.sampled_from(sorted(self.models)), label="tree")
        k, v = self.k(key), self.v(value)
        note(f"{name}.insert({key}, {value})")
        self._tree(name).insert(k, v)
        self.models[name][k] = v

    @precondition(lambda self: any(self.models.values()))
    @rule(data=st.data(), value=values)
    def update(self, data, value):
        name = data.draw(st.sampled_from(sorted(n for n, m in self.models.items() if m)), label="tree")
        k = data.draw(st.sampled_from(sorted(self.models[name])), label="key")
        v = self.v(value)
        note(f"{name}.insert({k!r:.20}, {value}) (update)")
        self._tree(name).insert(k, v)
        self.models[name][k] = v

    @precondition(lambda self: any(self.models.values()))
    @rule(data=st.data())
    def delete_present(self, data):
        name = data.draw(st.sampled_from(sorted(n for n, m in self.models.items() if m)), label="tree")
        k = data.draw(st.sampled_from(sorted(self.models[name])), label="key")
        note(f"{name}.delete({k!r:.20})")
        assert self._tree(name).delete(k) is True
        del self.models[name][k]

    @rule(data=st.data(), key=keys)
    def delete_maybe_absent(self, data, key):
        name = data.draw(st.sampled_from(sorted(self.models)), label="tree")
        k = self.k(key)
        note(f"{name}.delete({key})")
        assert self._tree(name).delete(k) is (k in self.models[name])
        self.models[name].pop(k, None)

    @precondition(lambda self: any(self.models.values()))
    @rule(data=st.data(), start=keys, count=st.integers(1, 60))
    def delete_run(self, data, start, count):
        """Delete up to ``count`` consecutive present keys from ``start`` on: drives merges."""
        name = data.draw(st.sampled_from(sorted(n for n, m in self.models.items() if m)), label="tree")
        model = self.models[name]
        doomed = [k for k in sorted(model) if k >= self.k(start)][:count]
        note(f"{name}: delete {len(doomed)} keys from {start}")
        tree = self._tree(name)
        for k in doomed:
            assert tree.delete(k) is True
            del model[k]

    @rule(data=st.data(), start=keys, count=st.integers(1, MAX_RUN), step=st.integers(1, 3),
          present_only=st.booleans())
    def delete_sorted(self, data, start, count, step, present_only):
        """One delete_sorted of up to ``count`` keys from ``start``: empties leaves, absent keys mixed in."""
        name = data.draw(st.sampled_from(sorted(self.models)), label="tree")
        model = self.models[name]
        run = [self.k(n) for n in range(start, start + count * step, step)]
        if present_only:
            run = [k for k in run if k in model]
        note(f"{name}.delete_sorted({len(run)} keys from {start} step {step})")
        expected = sum(k in model for k in run)
        assert self._tree(name).delete_sorted(run) == expected
        for k in run:
            model.pop(k, None)

    @rule(data=st.data(), start=keys, count=st.integers(1, MAX_RUN), step=st.integers(1, 3), value=values)
    def insert_sorted(self, data, start, count, step, value):
        name = data.draw(st.sampled_from(sorted(self.models)), label="tree")
        run = [(self.k(n), self.v(value + i)) for i, n in enumerate(range(start, start + count * step, step))]
        note(f"{name}.insert_sorted({count} keys from {start} step {step})")
        self._tree(name).insert_sorted(run)
        self.models[name].update(run)

    @rule(data=st.data(), key=keys, value=values, where=st.sampled_from(["key", "value"]),
          sorted_run=st.booleans())
    def bad_entry_refused(self, data, key, value, where, sorted_run):
        """An entry the layout cannot hold is refused and leaves the tree as it was.

        The invariants then compare every tree with its model: a key stored
        without its value (or one of the wrong width, which would shift the
        entries after it on disk) would show there or in the checker.
        """
        name = data.draw(st.sampled_from(sorted(self.models)), label="tree")
        spec = self.LAYOUT.key if where == "key" else self.LAYOUT.value
        if spec == "u64":
            bad = data.draw(st.sampled_from([-1, 2**64] + ([] if where == "key" else ["x", 1.5])))
        else:
            width = int(spec[6:])
            bad = data.draw(st.sampled_from([b"", b"x" * (width + 1), b"y" * (width - 1), 7]))
        k, v = (bad, self.v(value)) if where == "key" else (self.k(key), bad)
        note(f"{name}: bad {where} {bad!r:.20} ({'insert_sorted' if sorted_run else 'insert'})")
        tree = self._tree(name)
        with pytest.raises(InvalidArgument, match="B\\+tree"):
            if sorted_run:
                # A good entry first: nothing of the run may land either.
                run = [(self.k(key), self.v(value)), (self.k(key + 1), bad)] if where == "value" else [(k, v)]
                tree.insert_sorted(run)
            else:
                tree.insert(k, v)

    @precondition(lambda self: self.frozen)
    @rule(data=st.data(), key=keys)
    def snapshot_refuses_writes(self, data, key):
        name = data.draw(st.sampled_from(sorted(self.frozen)), label="snapshot")
        tree = self._tree(name)
        with pytest.raises(ReadOnly):
            tree.insert(self.k(key), self.v(0))
        with pytest.raises(ReadOnly):
            tree.delete(self.k(key))
        with pytest.raises(ReadOnly):
            tree.insert_sorted([(self.k(key), self.v(0))])
        with pytest.raises(ReadOnly):
            tree.delete_sorted([self.k(key)])

    # ------------------------------------------------------------ trees

    @precondition(lambda self: len(self.models) + len(self.frozen) < MAX_TREES)
    @rule(data=st.data())
    def snapshot(self, data):
        src = data.draw(st.sampled_from(sorted(self._all_models())), label="source")
        name = self._new_name("snap")
        note(f"snapshot({src!r}, {name!r})")
        snap = self.forest.snapshot(src, name)
        assert snap.frozen
        self.handles[name] = snap
        self.frozen[name] = dict(self._all_models()[src])

    @precondition(lambda self: self.frozen and len(self.models) + len(self.frozen) < MAX_TREES)
    @rule(data=st.data())
    def clone_snapshot(self, data):
        src = data.draw(st.sampled_from(sorted(self.frozen)), label="source")
        self._clone(src)

    @rule(data=st.data())
    def clone_writable_refused(self, data):
        """Two writable trees sharing nodes would orphan them: only snapshots are cloned."""
        src = data.draw(st.sampled_from(sorted(self.models)), label="source")
        snap_seq = self._tree(src).snap_seq
        with pytest.raises(InvalidArgument, match="clone needs a snapshot"):
            self.forest.clone(src, "never")
        assert not self.forest.has_tree("never")
        assert self._tree(src).snap_seq == snap_seq

    def _clone(self, src):
        name = self._new_name("clone")
        note(f"clone({src!r}, {name!r})")
        clone = self.forest.clone(src, name)
        assert not clone.frozen
        self.handles[name] = clone
        self.models[name] = dict(self._all_models()[src])

    # ------------------------------------------------------------ durability

    @rule()
    def commit(self):
        note("commit()")
        self.forest.commit()
        self.committed = self._copy_models()

    @rule()
    def rollback(self):
        note("rollback()")
        self.forest.rollback()
        models, frozen = self.committed
        self.models = {k: dict(v) for k, v in models.items()}
        self.frozen = dict(frozen)
        self.handles = {name: h for name, h in self.handles.items() if name in self._all_models()}
        for name, handle in self.handles.items():
            assert self.forest.tree(name) is handle, "rollback replaced an open handle"

    @rule()
    def reopen(self):
        """Drop everything uncommitted by opening the store afresh."""
        note("reopen()")
        if self.STORE == "lmdb":
            self.store.close()
            self.store = LmdbNodeStore(self.path)
        self.forest = Forest(self.store, cache_nodes=self.CACHE_NODES)
        models, frozen = self.committed
        self.models = {k: dict(v) for k, v in models.items()}
        self.frozen = dict(frozen)
        self.handles = {name: self.forest.tree(name) for name in self._all_models()}

    # ------------------------------------------------------------ reads

    @rule(data=st.data(), key=keys)
    def get(self, data, key):
        name = data.draw(st.sampled_from(sorted(self._all_models())), label="tree")
        k = self.k(key)
        tree = self._tree(name)
        assert tree.get(k) == self._all_models()[name].get(k)
        assert (k in tree) == (k in self._all_models()[name])

    @rule(data=st.data(), start=st.none() | keys, stop=st.none() | keys)
    def items_range(self, data, start, stop):
        name = data.draw(st.sampled_from(sorted(self._all_models())), label="tree")
        lo = None if start is None else self.k(start)
        hi = None if stop is None else self.k(stop)
        want = [(k, v) for k, v in sorted(self._all_models()[name].items())
                if (lo is None or k >= lo) and (hi is None or k < hi)]
        assert list(self._tree(name).items(lo, hi)) == want

    @rule(data=st.data(), start=st.none() | keys)
    def items_reverse(self, data, start):
        name = data.draw(st.sampled_from(sorted(self._all_models())), label="tree")
        hi = None if start is None else self.k(start)
        want = [(k, v) for k, v in sorted(self._all_models()[name].items(), reverse=True)
                if hi is None or k <= hi]
        assert list(self._tree(name).items_reverse(hi)) == want

    @rule(data=st.data(), key=keys)
    def floor(self, data, key):
        name = data.draw(st.sampled_from(sorted(self._all_models())), label="tree")
        k = self.k(key)
        below = [kk for kk in self._all_models()[name] if kk <= k]
        want = (max(below), self._all_models()[name][max(below)]) if below else None
        assert self._tree(name).floor(k) == want

    @rule(data=st.data(), picks=st.lists(keys, max_size=60))
    def floors(self, data, picks):
        # Ascending keys, repeats allowed: the batch form must answer each as floor() does.
        name = data.draw(st.sampled_from(sorted(self._all_models())), label="tree")
        model = self._all_models()[name]
        want = []
        for key in sorted(picks):
            below = [kk for kk in model if kk <= self.k(key)]
            want.append((max(below), model[max(below)]) if below else None)
        assert self._tree(name).floors([self.k(key) for key in sorted(picks)]) == want

    @rule(data=st.data(), key=keys, span=st.integers(-2, 80))
    def items_from_floor(self, data, key, span):
        name = data.draw(st.sampled_from(sorted(self._all_models())), label="tree")
        k, stop = self.k(key), self.k(max(0, key + span))
        model = self._all_models()[name]
        below = [kk for kk in model if kk <= k]
        lo = max(below) if below else None
        want = [(kk, v) for kk, v in sorted(model.items()) if (lo is None or kk >= lo) and kk < stop]
        assert self._tree(name).items_from_floor(k, stop) == want

    # ------------------------------------------------------------ invariants

    @invariant()
    def every_tree_equals_its_model(self):
        self.steps += 1
        everything = self._all_models()
        assert self.forest.tree_names() == sorted(everything)
        for name, model in everything.items():
            tree = self._tree(name)
            assert self.forest.tree(name) is tree
            assert len(tree) == len(model), name
            assert list(tree.items()) == sorted(model.items()), name
        event(f"{self.LAYOUT.key} main height {self._tree('main').height}")

    @invariant()
    def packed_values_are_the_values(self):
        """A leaf's bytes values stay packed (what a commit writes), one per key."""
        for node in self.forest._cache.values():
            if node.leaf and node.layout.value_type[0] == fmt.T_BYTES:
                assert type(node.vals) is PackedBytes, f"node {node.id}"
                assert len(node.vals.buf) == len(node.keys) * node.vals.width, f"node {node.id}"

    @invariant()
    def checker_finds_nothing(self):
        if self.steps % CHECK_EVERY == 0:
            assert_forest_ok(self.forest)


def _machine(store: str, layout_name: str, cache_nodes: int = ForestMachine.CACHE_NODES):
    suffix = "" if cache_nodes == ForestMachine.CACHE_NODES else f"_cache{cache_nodes}"
    cls = type(f"Forest_{store}_{layout_name}{suffix}", (ForestMachine,),
               {"STORE": store, "LAYOUT": LAYOUTS[layout_name], "CACHE_NODES": cache_nodes})
    case = cls.TestCase
    case.settings = _settings
    return case


# Nine machines: at the profile's full count they were the suite's largest
# hypothesis share (~35 s), so each runs a share of the profile's examples:
# a quarter in the default and ci profiles (25; it was half, 50, until the
# suite's wall time needed the room: the nine took ~24 s of it), half in a
# larger one (HYPOTHESIS_PROFILE=nightly: 500 each, as before).
_base = settings()
_settings = settings(_base, max_examples=max(10, _base.max_examples // (4 if _base.max_examples <= 100 else 2)))


TestMemoryWide = _machine("memory", "wide")
TestMemoryBytes = _machine("memory", "bytes")
TestMemoryDeep = _machine("memory", "deep")
TestLmdbWide = _machine("lmdb", "wide")
TestLmdbBytes = _machine("lmdb", "bytes")
TestLmdbDeep = _machine("lmdb", "deep")
TestMemoryU64 = _machine("memory", "u64")
TestMemoryDeepTinyCache = _machine("memory", "deep", cache_nodes=6)
TestLmdbWideTinyCache = _machine("lmdb", "wide", cache_nodes=6)
