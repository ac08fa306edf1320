"""``vdisk serve`` with TLS (X.509 certificates or pre-shared keys), and the
rule that plaintext stays on loopback unless asked for.

Certificates are made for each test with openssl: a throwaway CA and a
server certificate for localhost and 127.0.0.1. Clients are libnbd (with TLS
required on their side too) and, once, qemu-img - as docs/NBD.md shows.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess

import pytest

from nbd_util import import_nbd, pattern, run_vdisk

from vdisk.cli.serve import TLS, check_exposure, is_loopback
from vdisk.errors import InvalidArgument

nbd = import_nbd()

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None and not os.environ.get("CI"),
                                   reason="needs openssl to make a throwaway certificate")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _make_ca(d, name: str):
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", "ca-key.pem", "-out", "ca-cert.pem", "-days", "2", "-subj", f"/CN={name}",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign",
             cwd=d)


@pytest.fixture
def certs(tmp_path):
    """(server directory, client directory, a client directory of another CA)."""
    work = tmp_path / "ca"
    work.mkdir()
    _make_ca(work, "vdisk test CA")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", "server-key.pem", "-out", "server.csr", "-subj", "/CN=localhost", cwd=work)
    (work / "ext.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
                                  "keyUsage=critical,digitalSignature,keyEncipherment\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca-cert.pem", "-CAkey", "ca-key.pem",
             "-CAcreateserial", "-out", "server-cert.pem", "-days", "2", "-extfile", "ext.cnf", cwd=work)
    server, client, stranger = tmp_path / "server", tmp_path / "client", tmp_path / "stranger"
    for d in (server, client, stranger):
        d.mkdir(mode=0o700)
    for f in ("ca-cert.pem", "server-cert.pem", "server-key.pem"):
        shutil.copy(work / f, server / f)
    os.chmod(server / "server-key.pem", 0o600)
    shutil.copy(work / "ca-cert.pem", client / "ca-cert.pem")
    _make_ca(stranger, "someone else")
    return str(server), str(client), str(stranger)


def _psk_file(path, user="alice") -> str:
    path.write_text(f"{user}:{secrets.token_hex(32)}\n")
    os.chmod(path, 0o600)
    return str(path)


def _client(tls=True):
    h = nbd.NBD()
    if tls:
        h.set_tls(nbd.TLS_REQUIRE)
    return h


@needs_openssl
def test_x509_on_loopback_tcp(disk, serve, certs):
    server, client, stranger = certs
    port = _free_port()
    s = serve(disk, "--port", str(port), "--tls-certificates", server)
    assert f"nbds://127.0.0.1:{port}/" in s.banner[1]
    assert any("TLS required (X.509" in line for line in s.banner)
    h = _client()
    h.set_tls_certificates(client)
    h.connect_tcp("127.0.0.1", str(port))
    assert h.get_tls_negotiated()
    h.pwrite(pattern(1, 4096), 0)
    h.flush()
    assert bytes(h.pread(4096, 0)) == pattern(1, 4096)
    h.shutdown()
    # A client that only trusts another CA does not accept this server.
    h = _client()
    h.set_tls_certificates(stranger)
    with pytest.raises(nbd.Error):
        h.connect_tcp("127.0.0.1", str(port))
    # A plaintext client is refused before it sees any data.
    h = _client(tls=False)
    with pytest.raises(nbd.Error, match="TLS"):
        h.connect_tcp("127.0.0.1", str(port))
    # qemu's client, as docs/NBD.md shows it.
    r = subprocess.run(["qemu-img", "info", "--object", f"tls-creds-x509,id=tls0,dir={client},endpoint=client",
                        "--image-opts", f"driver=nbd,host=127.0.0.1,port={port},tls-creds=tls0,export="],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "64 MiB" in r.stdout, r.stderr


def test_psk_on_the_unix_socket(disk, serve, tmp_path):
    keys = _psk_file(tmp_path / "keys.psk")
    wrong = _psk_file(tmp_path / "wrong.psk")
    run_vdisk("snapshot", "create", disk, "s")
    s = serve(disk, "--tls-psk", keys)
    assert s.banner[1].strip().startswith(f"nbds+unix:///?socket={s.socket}")

    def connect(psk, export=""):
        h = _client()
        h.set_tls_psk_file(psk)
        h.set_tls_username("alice")
        h.set_export_name(export)
        h.connect_unix(s.socket)
        return h

    h = connect(keys)
    assert h.get_tls_negotiated()
    h.pwrite(pattern(2, 8192), 0)
    h.flush()
    # Live control is unchanged: its own owner-only socket, beside TLS.
    run_vdisk("snapshot", "create", disk, "t")
    t = connect(keys, "t")
    assert bytes(t.pread(8192, 0)) == pattern(2, 8192) and t.is_read_only()
    t.shutdown()
    h.shutdown()
    with pytest.raises(nbd.Error):
        connect(wrong)
    plain = _client(tls=False)
    with pytest.raises(nbd.Error, match="TLS"):
        plain.connect_unix(s.socket)
    nbdinfo = subprocess.run(["nbdinfo", "--size", f"nbds+unix://alice@/?socket={s.socket}&tls-psk-file={keys}"],
                             capture_output=True, text=True, timeout=60)
    assert nbdinfo.returncode == 0 and nbdinfo.stdout.strip() == str(64 << 20), nbdinfo.stderr


@pytest.mark.parametrize("args, code, message", [
    (["--tls"], 2, "--tls needs --tls-certificates DIR"),
    (["--tls-certificates", "CERTS", "--tls-psk", "PSK"], 2, "exclude each other"),
    (["--tls-psk", "PSK", "--insecure"], 2, "--insecure (plaintext on a non-loopback address) and --tls"),
    (["--tls-psk", "MISSING"], 3, "pre-shared key file"),
    (["--tls-certificates", "MISSING"], 3, "does not exist"),
    (["--tls-certificates", "EMPTY"], 3, "has no ca-cert.pem, server-cert.pem, server-key.pem"),
    (["--port", "PORT", "--bind", "0.0.0.0"], 2, "--bind 0.0.0.0 is not a loopback address"),
    (["--port", "PORT", "--bind", "::"], 2, "--bind :: is not a loopback address"),
])
def test_refused_before_serving(disk, tmp_path, args, code, message):
    (tmp_path / "empty").mkdir()
    subst = {"CERTS": str(tmp_path), "PSK": _psk_file(tmp_path / "k.psk"), "MISSING": str(tmp_path / "nope"),
             "EMPTY": str(tmp_path / "empty"), "PORT": str(_free_port())}
    r = run_vdisk("serve", disk, *[subst.get(a, a) for a in args], check=False)
    assert r.returncode == code, r.stderr
    assert message in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not os.path.exists(os.path.join(disk, "nbd.sock"))


def test_a_psk_file_others_can_read_is_warned_about(disk, serve, tmp_path):
    keys = _psk_file(tmp_path / "keys.psk")
    os.chmod(keys, 0o644)
    s = serve(disk, "--tls-psk", keys)
    s.stop()
    assert "readable by other users" in s.stderr and f"chmod 600 {keys}" in s.stderr


def test_exposure_rule():
    for addr in ("127.0.0.1", "127.0.0.2", "::1", "localhost", "::ffff:127.0.0.1"):
        assert is_loopback(addr), addr
        check_exposure(10809, addr, None, False)
    for addr in ("0.0.0.0", "::", "192.0.2.1", "2001:db8::1", "", "no-such-host.invalid"):
        assert not is_loopback(addr), addr
        with pytest.raises(InvalidArgument, match="not a loopback address"):
            check_exposure(10809, addr, None, False)
        check_exposure(10809, addr, None, True)                          # --insecure: as asked
        check_exposure(10809, addr, TLS("psk", "/k.psk"), False)        # encrypted and authenticated
    check_exposure(None, None, None, False)                              # the unix socket
    check_exposure(10809, None, None, False)                             # default bind: loopback


def test_nbdkit_listens_on_loopback_unless_told(tmp_path):
    from vdisk.nbdplugin import nbdkit_command
    argv = nbdkit_command(str(tmp_path), port=10809)
    assert argv[argv.index("-i") + 1] == "127.0.0.1"
    argv = nbdkit_command(str(tmp_path), socket=str(tmp_path / "s"), tls_psk=str(tmp_path / "k"))
    assert "--tls=require" in argv and f"--tls-psk={tmp_path / 'k'}" in argv and "-i" not in argv
