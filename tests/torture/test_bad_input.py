"""Bad-input torture: hostile NBD requests, handshakes, control messages, names.

(a) a hypothesis fuzzer through libnbd (offsets, lengths, flags, block
    status on odd ranges) against a byte-exact model, hostile export names
    through libnbd and a raw handshake (badinput_nbd.py), garbage frames;
(b) byte flips in a closed disk's files (badinput_flips.py);
(c) malformed control-socket messages;
(d) hostile snapshot names through the CLI and the API.

The server must answer everything with data or an errno, never crash, never
log an exception other than the plugin's own one-line ClientError, and the
disk must end exactly as the model says.
"""

from __future__ import annotations

import errno
import os
import socket
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from badinput_nbd import (CMD_DISC, CMD_READ, CMD_WRITE, OPT_ABORT, OPT_EXPORT_NAME, OPT_GO, OPT_INFO,
                          RawClient, outcome, unexpected_exceptions)
from load_model import pattern
from load_serve import REFUSED, Server, close_handle, import_nbd, missing_tools, read_all, run_vdisk

pytestmark = pytest.mark.skipif(bool(missing_tools()), reason=f"needs {', '.join(missing_tools())}")

BS = 4096


def _served_sentinel_disk(where):
    """A served 2 MiB disk holding a pattern, with a snapshot 'sentinel' of it."""
    from badinput_fuzz import SIZE
    from vdisk import Disk
    path = str(where / "f.vdisk")
    initial = bytearray(pattern(1, 0, SIZE))
    initial[SIZE // 4:SIZE // 4 + 64 * BS] = bytes(64 * BS)     # a hole to report
    with Disk.create(path, SIZE) as d:
        d.write(0, bytes(initial))
        d.trim(SIZE // 4, 64 * BS)
        d.create_snapshot("sentinel")
    srv = Server(path, log_dir=str(where / "logs"))
    try:
        yield srv, initial
    finally:
        srv.stop()


@pytest.fixture
def fuzz_disk(tmp_path):
    """The request fuzzer's own served disk: it writes, and stops the server."""
    yield from _served_sentinel_disk(tmp_path)


@pytest.fixture(scope="module")
def sentinel_disk(tmp_path_factory):
    """One served disk for the tests below, which must leave it as it was:
    they send what the server must refuse (or only read), the ones whose
    input could change it check its data (and snapshots and space) did not
    change, and each checks the server lives. Sharing it costs no check; a
    server for each took ~1 s apiece of ./dev test. If one of them breaks
    the server, the ones after it fail too: the first failure names the cause."""
    yield from _served_sentinel_disk(tmp_path_factory.mktemp("sentinel"))


def _settings(budget, examples):
    # A long run repeats batches of this size with new seeds until its time is up.
    return settings(max_examples=examples, deadline=None,
                    derandomize=False, database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


def _server_is_sane(srv):
    assert srv.running(), f"the server died:\n{srv.log()[-3000:]}"
    bad = unexpected_exceptions(srv.log())
    assert not bad, "exceptions escaped the plugin's error mapping:\n" + "\n".join(bad[:10])


def test_nbd_request_fuzzer(fuzz_disk, torture_budget, torture_figures):
    from badinput_fuzz import SENTINEL, SIZE, Fuzz, requests
    srv, initial = fuzz_disk
    budget = torture_budget(15, 10**6, weight=0.5, suite_share=0.25)
    examples = max(1, round(600 * budget.share))    # a batch: 600, 150 in the suite version
    fz = Fuzz(srv, bytearray(initial))
    problems: list[str] = []
    batches = 0
    try:
        while True:
            @_settings(budget, examples)
            @hypothesis_seed(budget.seed + batches)
            @given(st.lists(requests, min_size=1, max_size=12))
            def fuzz(reqs):
                # The model follows the disk across examples (and shrinking):
                # every request updates both or neither.
                found = [p for p in map(lambda req: fz.run(*req), reqs) if p]
                problems.extend(found)
                assert not found, "\n".join(found[:10])
                assert srv.running(), "the server died"
            fuzz()
            batches += 1
            if budget.left() <= 0 or not budget.long_run:
                break
        assert fz.check_region(0, SIZE) is None, "the disk differs from the model"
        assert fz.check_region(SENTINEL[0], SENTINEL[1] - SENTINEL[0]) is None
        h = srv.connect("sentinel")
        try:
            assert read_all(h, SIZE) == bytes(initial), "snapshot 'sentinel' changed"
        finally:
            close_handle(h)
        _server_is_sane(srv)
    finally:
        torture_figures.update(fz.figures, seed=budget.seed, example_batches=batches,
                               errors=dict(fz.figures["errors"]), losses=len(problems))
        fz.close()
    assert srv.stop() == 0
    r = run_vdisk("verify", srv.disk, "--data", check=False)
    assert r.returncode == 0, r.stdout + r.stderr


# ---------------------------------------------------------------- export names and handshakes

HOSTILE_NAMES = ["", "sentinel", "nope", ".", "..", "../sentinel", "/sentinel", "sentinel/", "sentinel\0",
                 "-", "--", "-h", "~sentinel", " ", "\n", "a" * 64, "a" * 65, "x" * 4096, "é", "名前",
                 "%2e%2e", "sentinel?socket=/etc/passwd", "\x7f"]


def test_hostile_export_names(sentinel_disk, torture_budget, torture_figures):
    """libnbd names and raw ones (non-UTF-8, over 4096 bytes, lying lengths):
    the existing exports connect, everything else is refused by name."""
    srv, initial = sentinel_disk
    budget = torture_budget(6, 10**6, weight=0.25)
    nbd = import_nbd()
    tried = 0
    for name in HOSTILE_NAMES:
        tried += 1
        try:
            h = srv.connect(name)
        except (ValueError, UnicodeError):
            continue              # refused by libnbd itself; the raw client sends such names below
        except nbd.Error as e:
            assert name not in ("", "sentinel"), f"export {name!r} refused: {e}"
            assert e.errnum in (errno.ENOENT, errno.EINVAL, errno.ENAMETOOLONG, errno.EPERM), (name, e)
            continue
        try:
            assert name in ("", "sentinel"), f"export name {name!r} connected to something"
            assert bytes(h.pread(BS, 0)) == bytes(initial[:BS]) or name == ""
        finally:
            close_handle(h)
    sock = srv.socket
    raw = [b"\xff\xfe", b"sentinel\xff", b"\x00", b"\x00sentinel", b"\xc0\xae\xc0\xae", b"x" * 4097,
           b"x" * 70000, "é".encode("latin-1"), b"\xed\xa0\x80"]
    for name in raw:
        tried += 1
        with RawClient(sock) as c:
            got = outcome(c.go, name)
        assert got == "closed" or got.startswith("error"), f"raw export name {name!r}: {got}"
        assert srv.running()

    names = st.one_of(st.binary(max_size=300), st.text(max_size=80).map(lambda t: t.encode("utf-8", "surrogatepass")))

    def raw_names(name, opt, lie):
        nonlocal tried
        tried += 1
        data = name if opt == OPT_EXPORT_NAME else struct.pack(">I", len(name)) + name + struct.pack(">H", 0)
        with RawClient(sock) as c:
            length = max(0, len(data) + lie) if lie else None
            try:
                c.s.sendall(struct.pack(">QII", 0x49484156454F5054, opt, len(data) if length is None else length)
                            + data)
                c.s.shutdown(socket.SHUT_WR)   # a lie about the length must not leave the server waiting
                while c.s.recv(65536):
                    pass
            except (ConnectionError, OSError):
                pass
        assert srv.running(), f"server died after option {opt} name {name!r} length lie {lie}"

    batch = 0
    while True:
        run = given(names, st.sampled_from([OPT_GO, OPT_INFO, OPT_EXPORT_NAME]), st.integers(-64, 64))(raw_names)
        _settings(budget, 40)(hypothesis_seed(budget.seed + batch)(run))()
        batch += 1
        if not budget.long_run or budget.left() <= 0:
            break
    h = srv.connect("sentinel")
    try:
        assert read_all(h, len(initial)) == bytes(initial)
    finally:
        close_handle(h)
    _server_is_sane(srv)
    torture_figures.update(bad_inputs_tried=tried, operations=tried, losses=0, seed=budget.seed)


def test_garbage_frames(sentinel_disk, torture_figures):
    """Broken transmission-phase requests: wrong magic, unknown commands,
    lengths that lie, a write whose payload never comes, DISC mid-stream."""
    srv, initial = sentinel_disk
    cases = [
        ("bad magic", dict(cmd=CMD_READ, offset=0, length=BS, magic=0xDEADBEEF)),
        ("unknown command", dict(cmd=77, offset=0, length=BS)),
        ("read past end", dict(cmd=CMD_READ, offset=len(initial), length=BS)),
        ("read 4 GiB-1", dict(cmd=CMD_READ, offset=0, length=(1 << 32) - 1)),
        ("write, no payload", dict(cmd=CMD_WRITE, offset=0, length=BS)),
        ("write 1 GiB, short payload", dict(cmd=CMD_WRITE, offset=0, length=1 << 30, payload=b"z" * BS)),
        ("unknown flag bits", dict(cmd=CMD_READ, offset=0, length=BS, flags=0xFFFF)),
        ("disc with junk", dict(cmd=CMD_DISC, offset=123, length=456, flags=0xFFFF)),
    ]
    for what, req in cases:
        with RawClient(srv.socket) as c:
            assert outcome(c.go, b"") == "ack", what
            try:
                c.request(**req)
                c.s.shutdown(socket.SHUT_WR)
                while c.s.recv(65536):
                    pass
            except (ConnectionError, OSError):
                pass
        assert srv.running(), f"server died after: {what}"
    with RawClient(srv.socket) as c:
        assert outcome(c.option, 0x7FFF, b"junk").startswith("error"), "an unknown option must be refused"
        assert outcome(c.option, OPT_ABORT, b"") in ("ack", "closed")
    h = srv.connect()
    try:
        assert read_all(h, len(initial)) == bytes(initial), "garbage frames changed the disk"
    finally:
        close_handle(h)
    _server_is_sane(srv)
    torture_figures.update(bad_inputs_tried=len(cases) + 2, operations=len(cases) + 3, losses=0)


def test_non_utf8_export_name_is_refused_in_one_line(sentinel_disk):
    """Found by the raw-name fuzzer: nbdkit.export_name() raised UnicodeDecodeError
    past the plugin's error mapping (fixed in 5cad94d)."""
    srv, _ = sentinel_disk
    with RawClient(srv.socket) as c:
        got = outcome(c.go, b"\xffsnap")
    assert got.startswith("error") and srv.running(), got
    with RawClient(srv.socket) as c:
        assert outcome(c.go, b"") == "ack"
    _server_is_sane(srv)


# ---------------------------------------------------------------- (c) the control socket

def _control_fingerprint(srv) -> dict:
    import json as _json
    r = run_vdisk("info", srv.disk, "--json")
    info = _json.loads(r.stdout)
    return {k: info[k] for k in ("size", "allocated_bytes", "physical_bytes")} | {
        "snapshots": [(s["name"], s["created"]) for s in info["snapshots"]]}


def test_malformed_control_messages(sentinel_disk, torture_figures):
    from badinput_control import CLOSING, MESSAGES, converse, reply_problem
    from vdisk.control.protocol import SOCKET_NAME
    srv, initial = sentinel_disk
    h = srv.connect()            # a client on the running point: a revert must be refused
    control = os.path.join(srv.disk, SOCKET_NAME)
    before = _control_fingerprint(srv)
    problems = []
    try:
        for what, msg in MESSAGES:
            replies, _ = converse(control, msg, 1)
            if not replies:
                continue        # closing the connection is an acceptable answer
            p = reply_problem(what, replies[0])
            if p:
                problems.append(p)
        for what, msg in CLOSING:
            replies, closed = converse(control, msg, 1)
            if replies and reply_problem(what, replies[0]):
                problems.append(reply_problem(what, replies[0]))
            if not closed:
                problems.append(f"{what}: the server kept the connection open")
        # All of them on one connection: one answer per line, in order, and
        # the connection still works afterwards.
        pipelined = b"".join(m for _, m in MESSAGES) + b'{"v":1,"id":99,"op":"hello"}\n'
        replies, _ = converse(control, pipelined, len(MESSAGES) + 1, timeout=30)
        if len(replies) != len(MESSAGES) + 1 or not (isinstance(replies[-1], dict) and replies[-1].get("id") == 99
                                                     and replies[-1].get("ok")):
            problems.append(f"pipelined: {len(replies)} replies to {len(MESSAGES) + 1} lines, "
                            f"last {str(replies[-1:])[:200]}")
        assert not problems, "\n".join(problems)
        assert srv.running(), "the server died"
        assert _control_fingerprint(srv) == before, "malformed control messages changed the disk"
        assert read_all(h, len(initial)) == bytes(initial), "malformed control messages changed the data"
        _server_is_sane(srv)
    finally:
        close_handle(h)
        torture_figures.update(bad_inputs_tried=2 * len(MESSAGES) + len(CLOSING), operations=2 * len(MESSAGES) + 4,
                               losses=0, problems=len(problems))


def _one_control_reply(srv, what):
    from badinput_control import MESSAGES, converse, reply_problem
    from vdisk.control.protocol import SOCKET_NAME
    for name, msg in MESSAGES:
        if name == what:
            replies, _ = converse(os.path.join(srv.disk, SOCKET_NAME), msg, 1)
            return reply_problem(what, replies[0]) if replies else None
    raise KeyError(what)


@pytest.mark.parametrize("what", ["version true", "version 1.0"])
def test_control_version_must_be_the_integer_1(sentinel_disk, what):
    """Found by the control messages: true and 1.0 passed as version 1 (fixed in 5cad94d)."""
    assert _one_control_reply(sentinel_disk[0], what) is None


@pytest.mark.parametrize("what", ["deep nesting", "deep object nesting"])
def test_control_deep_nesting_is_a_protocol_error(sentinel_disk, what):
    """Found by the control messages: json's RecursionError was an 'internal
    error' with a logged traceback (fixed in 5cad94d)."""
    srv = sentinel_disk[0]
    before = len(srv.log())           # the shared server's log holds the tests' before
    assert _one_control_reply(srv, what) is None
    assert "Traceback" not in srv.log()[before:]


# ---------------------------------------------------------------- (d) hostile snapshot names

def test_hostile_snapshot_names(tmp_path, torture_figures):
    """Refused in one line, or accepted and usable everywhere: the API, the
    CLI (locally and through a server), NBD export and URI, FUSE file,
    revert and delete."""
    from badinput_names import NAMES, check_exports, check_fuse, cli_form, fuse_missing, revert_and_delete
    from vdisk import Disk
    from vdisk.errors import InvalidArgument
    size = 1 << 20
    problems: list[str] = []
    content = {name: pattern(i + 1, 0, BS) for i, name in enumerate(NAMES)}
    api_ok: list[str] = []
    a = str(tmp_path / "a.vdisk")
    with Disk.create(a, size) as d:
        for name in NAMES:
            d.write(0, content[name])
            try:
                d.create_snapshot(name)
            except InvalidArgument as e:
                if "\n" in str(e) or "\r" in str(e):
                    problems.append(f"API: error for {name[:40]!r} is not one line: {str(e)[:200]!r}")
                continue
            except Exception as e:
                problems.append(f"API: {name[:40]!r}: {type(e).__name__}: {e}"[:300])
                continue
            api_ok.append(name)
        listed = [s.name for s in d.snapshots(exclusive=False)]
        if listed != api_ok:
            problems.append(f"API: listed {listed}, created {api_ok}")
        for name in api_ok:
            if d.open_snapshot(name).read(0, BS) != content[name]:
                problems.append(f"API: snapshot {name!r} reads wrong data")

    # The same names through the CLI and the control socket of a running server.
    b = str(tmp_path / "b.vdisk")
    with Disk.create(b, size):
        pass
    srv = Server(b, log_dir=str(tmp_path / "logs"))
    cli_ok: list[str] = []
    try:
        h = srv.connect()
        try:
            for name in NAMES:
                if "\0" in name:
                    continue          # no argv can carry a NUL
                h.pwrite(content[name], 0)
                r = run_vdisk("snapshot", "create", b, *cli_form(name), check=False)
                if r.returncode == 0:
                    cli_ok.append(name)
                elif r.returncode != 2 or "Traceback" in r.stderr or len(r.stderr.strip().splitlines()) != 1:
                    problems.append(f"CLI create {name[:40]!r}: exit {r.returncode}: {r.stderr[:300]!r}")
        finally:
            close_handle(h)
    finally:
        srv.stop()
    if cli_ok != [n for n in api_ok if "\0" not in n]:
        problems.append(f"CLI accepted {cli_ok}, API {api_ok}")
    assert not problems, "\n".join(problems)

    srv = Server(b, log_dir=str(tmp_path / "logs"))
    try:
        problems += check_exports(srv, cli_ok, content)
    finally:
        srv.stop()
    problems += revert_and_delete(b, cli_ok, content)
    if not fuse_missing():
        problems += check_fuse(a, str(tmp_path / "mnt"), api_ok, content)
    torture_figures.update(bad_inputs_tried=2 * len(NAMES), operations=4 * len(NAMES), accepted=len(cli_ok),
                           losses=0, fuse_checked=not fuse_missing())
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------- (b) byte flips in a closed disk

def test_byte_flips_in_a_closed_disk(tmp_path, torture_budget, torture_figures):
    import random
    import shutil
    from badinput_flips import build, copy, flip, judge_probe, probe, serve_damaged
    budget = torture_budget(20, 12, weight=0.75, suite_share=0.25)    # 3 rounds: one lap of the targets
    pristine, exp = str(tmp_path / "pristine.vdisk"), str(tmp_path / "expected")
    expected = build(pristine, exp, budget.seed)
    figures = dict(rounds=0, bad_inputs_tried=0, bytes_flipped=0, damage_detected=0, refused_open=0,
                   served=0, operations=0, bytes_checked=0, losses=0, seed=budget.seed)
    findings: list[str] = []
    try:
        for rnd in budget.rounds():
            rng = random.Random(f"{budget.seed}/{rnd}")
            work = str(tmp_path / f"r{rnd}.vdisk")
            copy(pristine, work)
            target = ("meta/data.mdb", "data", "meta/data.mdb")[rnd % 3]
            flips = flip(os.path.join(work, target), rng, aim=rnd % 3 == 2)
            where = f"round {rnd} (seed {budget.seed}), {target}, flips {flips}"
            figures["bad_inputs_tried"] += 1
            figures["bytes_flipped"] += len(flips)
            r = run_vdisk("verify", work, "--data", check=False)
            if (r.returncode not in (0, 1, *REFUSED) or "Traceback" in r.stdout + r.stderr
                    or "internal error" in r.stdout + r.stderr):
                findings.append(f"{where}: vdisk verify --data exit {r.returncode}:\n{(r.stdout + r.stderr)[-1500:]}")
            seen = False
            for mode in ("readonly", "writable"):
                # the writable open may commit: check the read-only way first
                report, trouble = probe(work, exp, mode)
                if trouble:
                    findings.append(f"{where}: {trouble}")
                    continue
                problems, damaged = judge_probe(report, mode)
                findings += [f"{where}: {p}" for p in problems]
                figures["losses"] += sum("WRONG BYTES" in p for p in problems)
                figures["refused_open"] += report["open"] is not None
                figures["bytes_checked"] += sum(e.get("ok", 0) for e in report["exports"].values()) * BS
                seen |= damaged
                if mode == "readonly" and damaged and r.returncode == 0:
                    findings.append(f"{where}: reads meet damage but vdisk verify --data says clean")
                if mode == "readonly" and rnd % 4 == 0:
                    problems, damaged = serve_damaged(work, expected, str(tmp_path / "logs"))
                    findings += [f"{where}: {p}" for p in problems]
                    figures["served"] += 1
            figures["damage_detected"] += seen or r.returncode != 0
            figures["operations"] += 3 + (rnd % 4 == 0)
            figures["rounds"] += 1
            shutil.rmtree(work)
    finally:
        torture_figures.update(figures, findings=len(findings))
    assert not findings, "\n".join(findings[:15])


@pytest.fixture
def damaged_copy(tmp_path):
    """Factory: damaged_copy(kind) -> (disk, expected dir), one pristine build per test."""
    from badinput_flips import build, copy, damage
    pristine, exp = str(tmp_path / "pristine.vdisk"), str(tmp_path / "expected")
    build(pristine, exp, 1)

    def make(kind):
        disk = str(tmp_path / "damaged.vdisk")
        copy(pristine, disk)
        damage(disk, kind)
        return disk, exp
    return make


@pytest.mark.parametrize("kind", ["store header key renamed", "node counter halved", "vba_next halved",
                                  "watermark halved"])
def test_damaged_counters_refuse_writable_open(damaged_copy, kind):
    """Found by the byte flips: one flipped byte in a record without a checksum
    let a writable open reuse node ids or VBAs, so later writes changed what
    snapshots read (fixed in 236316b). Each damage is applied exactly."""
    from badinput_flips import probe
    disk, exp = damaged_copy(kind)
    assert run_vdisk("verify", disk, check=False).returncode in (1, *REFUSED), "verify should see this damage"
    report, trouble = probe(disk, exp, "writable")
    assert not trouble, trouble
    assert report["open"] is not None and report["open"]["vdisk"], (
        f"opened for writing despite {kind}; after writing: "
        + str({n: r.get("wrong") for n, r in report["exports"].items() if r.get("wrong")}))


@pytest.mark.parametrize("kind", ["tree key not UTF-8", "snapshot key not UTF-8"])
def test_undecodable_record_keys_are_damage(damaged_copy, kind):
    """Found by the byte flips: a non-UTF-8 record key escaped as a raw
    UnicodeDecodeError from verify, info, snapshots() and open (fixed in 236316b)."""
    from badinput_flips import judge_probe, probe
    disk, exp = damaged_copy(kind)
    problems = []
    for args, codes in ((("verify", disk), (1, *REFUSED)), (("info", disk), REFUSED)):
        r = run_vdisk(*args, check=False)
        out = r.stdout + r.stderr
        if "Traceback" in out or "internal error" in out or r.returncode not in codes:
            problems.append(f"vdisk {args[0]}: exit {r.returncode}: {r.stderr.strip().splitlines()[-1:]}")
    for mode in ("readonly", "writable"):
        report, trouble = probe(disk, exp, mode)
        problems += [trouble] if trouble else judge_probe(report, mode)[0]
    assert not problems, "\n".join(problems)
