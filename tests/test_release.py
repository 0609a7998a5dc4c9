"""Signed releases: the key is made once (0600), manifests verify, and any tampering — a changed
file byte, a changed manifest field, a swapped key, an extra or missing file — is caught by
`enclave release verify` (exit 0 ok, 1 bad, 2 cannot check). Also the reviewer CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from enclave.registry.credentials import set_password
from enclave.registry.db import session_scope
from enclave.review import service
from enclave.review.quarantine import Quarantine, StagedFile
from enclave.review.release import (
    ReleaseError, ReleasedFile, key_id, load_or_create_key, public_pem, sign, verify, write_release,
)
from enclave.review.worker import run_checks

from tests.conftest import OPERATOR
from tests.review_stack import AUTHOR, LAB, REVIEWERS, fake_scanner, seed, settings_for, warn

ENCLAVE = str(Path(sys.executable).with_name("enclave"))
RITA, RAVI = REVIEWERS


def _reviewer_passwords(engine, tmp_path: Path) -> dict[str, str]:
    """Each reviewer's own password (as their hub login takes it), in a file only they may read:
    what `enclave review approve|reject|request-changes --password-file` reads."""
    files = {}
    with session_scope(engine) as s:
        for reviewer in REVIEWERS:
            password = set_password(s, OPERATOR, reviewer, f"{reviewer} own password 1")
            path = tmp_path / f"{reviewer}.password"
            path.write_text(password + "\n")
            path.chmod(0o600)
            files[reviewer] = str(path)
    return files


def _release(tmp_path: Path, files: dict[str, bytes]) -> tuple[Path, Ed25519PrivateKey]:
    quarantine = Quarantine(tmp_path / "q").ensure()
    key = load_or_create_key(tmp_path / "key.pem")
    listed = [ReleasedFile(name, *quarantine.put_bytes(data)) for name, data in files.items()]
    manifest = {"format": "enclave-release/1", "request": "exp-abcdefghijkl", "project": "lab",
                "files": [{"name": f.name, "sha256": f.sha256, "size": f.size} for f in listed],
                "approved_by": ["rita", "ravi"], "policy": {"version": "1", "sha256": "0" * 64}}
    path = write_release(tmp_path / "store", "lab", "exp-abcdefghijkl", listed, quarantine, sign(manifest, key), key)
    return path, key


def _rewrite(path: Path, change) -> None:
    manifest = path / "manifest.json"
    envelope = json.loads(manifest.read_text())
    change(envelope)
    os.chmod(manifest, 0o644)
    manifest.write_text(json.dumps(envelope))


def test_the_signing_key_is_made_once_and_kept_private(tmp_path):
    path = tmp_path / "review" / "signing-key.pem"
    first = load_or_create_key(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert key_id(load_or_create_key(path).public_key()) == key_id(first.public_key())
    os.chmod(path, 0o644)
    with pytest.raises(ReleaseError, match="readable by others"):
        load_or_create_key(path)
    os.chmod(path, 0o600)
    path.write_text("not a key")
    with pytest.raises(ReleaseError, match="not a PEM private key"):
        load_or_create_key(path)


def test_a_release_verifies_and_every_kind_of_tampering_is_caught(tmp_path):
    path, key = _release(tmp_path, {"table.csv": b"group,count\na,12\n", "notes.md": b"# ok\n"})
    assert sorted(p.name for p in path.iterdir()) == ["files", "manifest.json", "review-service.pub"]
    assert verify(path / "manifest.json").ok
    (tmp_path / "published.pub").write_bytes(public_pem(key.public_key()))
    assert verify(path, tmp_path / "published.pub").ok  # a directory works too

    def fresh():
        target = tmp_path / f"copy{len(list(tmp_path.iterdir()))}"
        shutil.copytree(path, target)
        for p in target.rglob("*"):
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        return target

    changed_byte = fresh()
    data = bytearray((changed_byte / "files" / "table.csv").read_bytes())
    data[-2] ^= 1  # 12 -> 13
    (changed_byte / "files" / "table.csv").write_bytes(bytes(data))
    result = verify(changed_byte / "manifest.json")
    assert not result.ok and result.problems == [result.problems[0]] and "table.csv: SHA-256" in result.problems[0]

    changed_field = fresh()
    _rewrite(changed_field, lambda e: e["manifest"].__setitem__("approved_by", ["rita"]))
    assert any("signature does not match" in p for p in verify(changed_field / "manifest.json").problems)

    # Rewriting a file *and* its hash in the manifest breaks the signature instead.
    rehashed = fresh()
    (rehashed / "files" / "notes.md").write_bytes(b"# leaked\n")
    import hashlib
    _rewrite(rehashed, lambda e: e["manifest"]["files"][1].__setitem__("sha256", hashlib.sha256(b"# leaked\n").hexdigest()))
    assert any("signature does not match" in p for p in verify(rehashed / "manifest.json").problems)

    # A forger who re-signs with their own key and ships it alongside is caught by the published key.
    forged = fresh()
    mallory = Ed25519PrivateKey.generate()
    _rewrite(forged, lambda e: e.update(sign(dict(e["manifest"], approved_by=["mallory"]), mallory)))
    (forged / "review-service.pub").write_bytes(public_pem(mallory.public_key()))
    assert verify(forged / "manifest.json").ok  # self-consistent ...
    problems = verify(forged / "manifest.json", tmp_path / "published.pub").problems
    assert any("signed by key" in p for p in problems) and any("signature does not match" in p for p in problems)

    extra = fresh()
    (extra / "files" / "weights.npy").write_bytes(b"\x93NUMPY")
    assert verify(extra).problems == ["weights.npy: in the release but not in the manifest"]
    missing = fresh()
    (missing / "files" / "notes.md").unlink()
    assert verify(missing).problems == ["notes.md: missing"]


def test_release_verify_command_exit_codes(tmp_path):
    path, key = _release(tmp_path, {"a.txt": b"alpha\n"})
    (tmp_path / "published.pub").write_bytes(public_pem(key.public_key()))

    def run(*args):
        proc = subprocess.run([ENCLAVE, "release", "verify", *map(str, args)], capture_output=True, text=True, timeout=60)
        assert "Traceback" not in proc.stderr
        return proc

    ok = run(path / "manifest.json", "--key", tmp_path / "published.pub")
    assert ok.returncode == 0 and "release verified: 1 file(s)" in ok.stdout and key_id(key.public_key()) in ok.stdout
    as_json = json.loads(run(path / "manifest.json", "--json").stdout)
    assert as_json["ok"] and as_json["problems"] == []
    os.chmod(path / "files" / "a.txt", 0o644)
    (path / "files" / "a.txt").write_bytes(b"alphA\n")
    bad = run(path / "manifest.json")
    assert bad.returncode == 1 and "NOT verified" in bad.stderr and "a.txt: SHA-256" in bad.stderr
    (tmp_path / "junk.json").write_text("{not json")
    for args, message in (((tmp_path / "nothing.json",), "no manifest"), ((tmp_path / "junk.json",), "as JSON"),
                          ((path / "manifest.json", "--key", tmp_path / "junk.json"), "cannot read the public key")):
        error = run(*args)
        assert error.returncode == 2 and message in error.stderr and len(error.stderr.strip().splitlines()) == 1


def test_reviewer_cli_list_show_approve_reject(engine, tmp_path, monkeypatch):
    from enclave.cli import run

    seed(engine)
    settings = settings_for(tmp_path, engine)
    quarantine = Quarantine(settings.quarantine_dir).ensure()
    files = [StagedFile("out.txt", *quarantine.put_bytes(b"call 555-0100"))]
    with session_scope(engine) as s:
        warned = service.submit(s, AUTHOR, LAB, files, "why").id
        clean = service.submit(s, AUTHOR, LAB, [StagedFile("b.txt", *quarantine.put_bytes(b"fine"))], "why").id
    run_checks(engine, settings, quarantine, warned, fake_scanner({"out.txt": [warn("out.txt")]}))
    run_checks(engine, settings, quarantine, clean, fake_scanner())
    passwords = _reviewer_passwords(engine, tmp_path)
    for name in [n for n in os.environ if n.startswith(("ENCLAVE_", "JUPYTERHUB_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("ENCLAVE_DB_URL", settings.db_url)
    monkeypatch.setenv("ENCLAVE_HOME", str(settings.home))

    def cli(*args, code=0):
        assert run(list(args)) == code, args

    with session_scope(engine) as s:  # what `enclave review show` prints for each
        seen = {r: ",".join(f.sha256 for f in service.current_files(s, service.get_request(s, r))) for r in (warned, clean)}
    rita = ("--password-file", passwords[RITA])
    cli("review", "list", "--as", RITA)
    cli("review", "list", "--as", AUTHOR, code=2)
    cli("review", "approve", warned, "--as", AUTHOR, "--seen", seen[warned], "--password-file", passwords[RITA],
        code=2)  # never your own (nor with somebody else's password)
    cli("review", "reject", clean, "--as", RITA, "--seen", seen[clean], *rita, code=2)  # needs a reason
    cli("review", "approve", "exp-nonexistent", "--as", RITA, "--seen", seen[warned], *rita, code=2)
    cli("review", "approve", warned, "--seen", seen[warned], *rita, code=2)  # who?
    cli("review", "approve", warned, "--as", RITA, "--seen", seen[warned], code=2)  # no password
    cli("review", "approve", warned, "--as", RITA, "--seen", seen[warned], *rita)
    cli("review", "approve", warned, "--as", RITA, "--seen", seen[warned], *rita, code=2)  # not twice by the same reviewer
    monkeypatch.setenv("ENCLAVE_REVIEWER", RAVI)
    monkeypatch.setenv("ENCLAVE_REVIEWER_PASSWORD", Path(passwords[RAVI]).read_text().strip())
    cli("review", "approve", warned, "--seen", seen[warned])
    cli("review", "comment", clean, "looks like a duplicate", "--private")
    cli("review", "reject", clean, "--reason", "duplicate of an earlier export", "--seen", seen[clean])
    with session_scope(engine) as s:
        assert service.get_request(s, warned).state == "released"
        assert service.get_request(s, clean).state == "rejected"
    assert verify(settings.release_dir / LAB / warned / "manifest.json").ok
    cli("release", "verify", str(settings.release_dir / LAB / warned / "manifest.json"))
    cli("review", "show", warned, "--json")


def test_reviewer_cli_decides_only_on_the_files_it_was_shown(engine, tmp_path, monkeypatch, capsys):
    """Issue 11, item 4, from the CLI: `review show` prints each file's sha256 and the decision
    must name them (--seen); a missing or stale --seen is one line on stderr and exit 2."""
    from enclave.cli import run

    seed(engine)
    settings = settings_for(tmp_path, engine)
    quarantine = Quarantine(settings.quarantine_dir).ensure()
    v1 = [StagedFile("a.txt", *quarantine.put_bytes(b"alpha")), StagedFile("b.txt", *quarantine.put_bytes(b"beta"))]
    with session_scope(engine) as s:
        request_id = service.submit(s, AUTHOR, LAB, v1, "why").id
    run_checks(engine, settings, quarantine, request_id, fake_scanner())
    passwords = _reviewer_passwords(engine, tmp_path)
    rita, ravi = ("--password-file", passwords[RITA]), ("--password-file", passwords[RAVI])
    for name in [n for n in os.environ if n.startswith(("ENCLAVE_", "JUPYTERHUB_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("ENCLAVE_DB_URL", settings.db_url)
    monkeypatch.setenv("ENCLAVE_HOME", str(settings.home))

    def cli(*args, code=0):
        capsys.readouterr()
        assert run(list(args)) == code, args
        return capsys.readouterr()

    shown = cli("review", "show", request_id, "--as", RITA).out
    seen_v1 = [f.sha256 for f in v1]
    assert all(sha in shown for sha in seen_v1) and f"--seen {','.join(sorted(seen_v1))}" in shown
    missing = cli("review", "approve", request_id, "--as", RITA, *rita, code=2).err
    assert len(missing.strip().splitlines()) == 1 and "--seen" in missing
    partial = cli("review", "approve", request_id, "--as", RITA, "--seen", seen_v1[0], *rita, code=2).err
    assert len(partial.strip().splitlines()) == 1 and "not those of version 1" in partial
    cli("review", "request-changes", request_id, "--as", RAVI, "--reason", "fix b", "--seen", seen_v1[1], "--seen",
        seen_v1[0], *ravi)
    with session_scope(engine) as s:
        service.resubmit(s, AUTHOR, request_id, [v1[0], StagedFile("b.txt", *quarantine.put_bytes(b"beta, fixed"))])
    run_checks(engine, settings, quarantine, request_id, fake_scanner())
    for action, extra in (("approve", []), ("reject", ["--reason", "no"]), ("request-changes", ["--reason", "no"])):
        stale = cli("review", action, request_id, "--as", RITA, "--seen", ",".join(seen_v1), *extra, *rita, code=2).err
        assert len(stale.strip().splitlines()) == 1 and "reload and review the new files" in stale, stale
    with session_scope(engine) as s:
        assert service.get_request(s, request_id).state == "awaiting_review"
        assert [d["decision"] for d in service.review_history(s, service.get_request(s, request_id))] == ["request_changes"]
        seen_v2 = ",".join(f.sha256 for f in service.current_files(s, service.get_request(s, request_id)))
    assert "released to" in cli("review", "approve", request_id, "--as", RITA, "--seen", seen_v2, *rita).out
