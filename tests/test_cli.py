"""The operator's view: a scripted session through the real `enclave` command, on a fresh
registry of each kind, plus the promise that bad input gets one clear line and exit 2."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

ENCLAVE = str(Path(sys.executable).with_name("enclave"))


class Cli:
    def __init__(self, env: dict[str, str]):
        self.env = env

    def __call__(self, *args: str, ok: bool = True, code: int | None = None) -> subprocess.CompletedProcess:
        proc = subprocess.run([ENCLAVE, *args], env=self.env, capture_output=True, text=True, timeout=120)
        assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
        if code is not None:
            assert proc.returncode == code, (args, proc.stdout, proc.stderr)
        elif ok:
            assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
        return proc

    def fails(self, *args: str, match: str) -> str:
        """A refused command: exit 2, exactly one line on stderr, and it says why."""
        proc = self(*args, code=2)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        assert match in lines[0], lines[0]
        return lines[0]

    def json(self, *args: str):
        return json.loads(self(*args, "--json").stdout)


class InProcessCli(Cli):
    """The same entry point (`enclave.cli.run`) without a new interpreter per command: the many
    bad-input cases stay fast, and the subprocess tests above cover the installed script."""

    def __init__(self, env: dict[str, str], monkeypatch):
        super().__init__(env)
        self.monkeypatch = monkeypatch

    def __call__(self, *args: str, ok: bool = True, code: int | None = None) -> subprocess.CompletedProcess:
        from enclave.cli import run

        with self.monkeypatch.context() as patch:
            for name in [n for n in os.environ if n.startswith("ENCLAVE_")]:
                patch.delenv(name)
            for name, value in self.env.items():
                patch.setenv(name, value)
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                returncode = run(list(args))
        proc = subprocess.CompletedProcess(["enclave", *args], returncode, out.getvalue(), err.getvalue())
        assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
        expected = code if code is not None else (0 if ok else None)
        if expected is not None:
            assert proc.returncode == expected, (args, proc.stdout, proc.stderr)
        return proc


@pytest.fixture
def cli(db_url, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENCLAVE_")}
    env.update(ENCLAVE_HOME=str(tmp_path / "home"), ENCLAVE_DB_URL=db_url, ENCLAVE_OPERATOR="boss")
    return Cli(env)


def _day(offset: int) -> str:
    return (dt.date.today() + dt.timedelta(days=offset)).isoformat()


def test_scripted_operator_session(cli, tmp_path):
    cli.fails("project", "list", match="not initialised")
    cli("init", "--operator", "boss", "--name", "Bea Boss", "--email", "boss@rdc.example")
    assert "already initialised" in cli("init", "--operator", "boss").stdout
    cli("person", "add", "alice", "--name", "Alice Smith", "--email", "alice@uni.example", "--affiliation", "Uni")
    cli("person", "add", "bob", "--name", "Bob Jones", "--email", "bob@uni.example", "--role", "scholar")
    cli("person", "add", "rita", "--name", "Rita Review", "--email", "rita@rdc.example", "--role", "reviewer")
    cli("project", "create", "income-study", "--title", "Income and place", "--pi", "alice",
        "--purpose", "How income varies by ZIP code.")
    cli("project", "approve", "income-study", "--until", _day(180))
    cli("member", "add", "income-study", "bob")
    data = tmp_path / "census.csv"
    data.write_text("name,dob,sex,zip,occupation,income\nAnn,1970-02-03,F,02139,nurse,54000\n")
    cli("dataset", "register", "census", str(data), "--quasi-identifiers", "dob,sex,zip")
    cli("dataset", "allow", "census", "income-study")
    cli("grant", "set", "income-study", "--tokens", "100000", "--tokens-per-day", "20000", "--rpm", "30",
        "--max-tokens-per-request", "256", "--epsilon", "2", "--delta", "1e-6", "--cpu", "2", "--mem", "4G",
        "--session-hours", "6", "--export-bytes", "5000000")
    grant = cli.json("grant", "show", "income-study")
    assert grant["tokens_total"] == 100000 and grant["mem"] == "4G" and grant["epsilon"] == 2.0
    key = cli("key", "issue", "bob", "--project", "income-study", "--expires", _day(30))
    plaintext = key.stdout.strip()
    assert plaintext.startswith("enk_") and "not be shown again" in key.stderr
    key_id = plaintext.split("_")[1]
    assert cli.json("key", "list", "--user", "bob")[0]["state"] == "active"

    shown = cli.json("project", "show", "income-study")
    assert shown["status"] == "approved"
    assert shown["until"] == _day(180)
    assert shown["members"] == ["alice", "bob"]
    assert shown["datasets"] == ["census"]
    assert shown["grant"]["requests_per_minute"] == 30
    assert [p["slug"] for p in cli.json("project", "list")] == ["income-study"]
    assert "allowed: bob in income-study" in cli("check-access", "bob").stdout

    cli("project", "suspend", "income-study", "--reason", "late annual report")
    assert "refused (suspended)" in cli("check-access", "bob", code=3).stdout
    cli("project", "reinstate", "income-study")
    cli("member", "remove", "income-study", "bob")
    assert "refused (no_project)" in cli("check-access", "bob", code=3).stdout
    cli("key", "revoke", key_id)
    assert cli.json("key", "list")[0]["state"] == "revoked"
    cli("project", "revoke", "income-study", "--reason", "data breach")
    assert cli.json("project", "show", "income-study")["status"] == "revoked"
    cli("project", "create", "pilot", "--title", "Pilot", "--pi", "alice", "--purpose", "Try it.")
    cli("project", "reject", "pilot", "--reason", "duplicate of income-study")
    cli("project", "create", "later", "--title", "Later", "--pi", "alice", "--purpose", "Later work.", "--as", "boss")
    cli("project", "approve", "later", "--until", _day(10))
    cli("project", "close", "later")

    assert "audit chain intact" in cli("audit", "verify").stdout
    head = cli("audit", "head").stdout.strip()
    export = tmp_path / "audit.jsonl"
    cli("audit", "export", "--out", str(export))
    events = [json.loads(line) for line in export.read_text().splitlines()]
    assert f"{events[-1]['seq']}:{events[-1]['hash']}" == head
    assert [e["action"] for e in events][-3:] == ["project.create", "project.approve", "project.close"]
    assert "data breach" in next(e["details"] for e in events if e["action"] == "project.revoke")
    assert cli("audit", "verify", "--file", str(export), "--anchor", head).returncode == 0
    tail = cli("audit", "tail", "-n", "2", "--json").stdout.splitlines()
    assert [json.loads(t)["action"] for t in tail] == ["project.approve", "project.close"]


@pytest.fixture
def ready(cli, monkeypatch):
    cli = InProcessCli(cli.env, monkeypatch)
    cli("init", "--operator", "boss")
    cli("person", "add", "alice", "--name", "Alice", "--email", "alice@uni.example")
    cli("person", "add", "vic", "--name", "Vic", "--email", "vic@uni.example", "--role", "reviewer")
    cli("project", "create", "study", "--title", "Study", "--pi", "alice", "--purpose", "Purpose.")
    return cli


BAD_INPUT = [
    (["person", "add", "alice", "--name", "A", "--email", "a@uni.example"], "already exists"),
    (["person", "add", "Bad Name", "--name", "A", "--email", "a@uni.example"], "bad user name"),
    (["person", "add", "carl", "--name", "C", "--email", "not-an-email"], "bad e-mail"),
    (["person", "add", "carl", "--name", "C", "--email", "c@uni.example", "--role", "wizard"], "unknown role"),
    (["project", "create", "study", "--title", "T", "--pi", "alice", "--purpose", "P"], "already exists"),
    (["project", "create", "other", "--title", "T", "--pi", "ghost", "--purpose", "P"], "unknown user 'ghost'"),
    (["project", "create", "other", "--title", "T", "--pi", "vic", "--purpose", "P"], "must hold the scholar role"),
    (["project", "approve", "nope", "--until", _day(10)], "unknown project 'nope'"),
    (["project", "approve", "study", "--until", "2027-02-30"], "bad --until"),
    (["project", "approve", "study", "--until", "tomorrow"], "bad --until"),
    (["project", "approve", "study", "--until", _day(-1)], "not in the future"),
    (["project", "suspend", "study"], "cannot suspend project 'study': it is proposed"),
    (["project", "revoke", "study", "--reason", "x"], "it is proposed"),
    (["project", "reject", "study"], "needs a reason"),
    (["project", "approve", "study", "--until", _day(10), "--as", "alice"], "does not hold the operator role"),
    (["project", "approve", "study", "--until", _day(10), "--as", "ghost"], "unknown acting user"),
    (["grant", "set", "study", "--tokens", "-5"], "tokens_total must be at least 0"),
    (["grant", "set", "study", "--epsilon", "-1"], "epsilon must be at least 0"),
    (["grant", "set", "study", "--delta", "2"], "delta must be below 1"),
    (["grant", "set", "study", "--mem", "lots"], "bad size"),
    (["grant", "set", "ghost", "--tokens", "5"], "unknown project 'ghost'"),
    (["grant", "show", "study"], "no grant yet"),
    (["member", "add", "study", "ghost"], "unknown user 'ghost'"),
    (["member", "add", "study", "alice"], "already a member"),
    (["member", "remove", "study", "vic"], "not a member"),
    (["dataset", "register", "d1", "/no/such/file.csv"], "does not exist"),
    (["dataset", "allow", "ghost", "study"], "unknown dataset"),
    (["key", "issue", "alice", "--project", "study", "--expires", "someday"], "bad --expires"),
    (["key", "issue", "alice", "--project", "study", "--expires", _day(-3)], "not in the future"),
    (["key", "issue", "vic", "--project", "study"], "not a member"),
    (["key", "revoke", "nope"], "unknown key"),
    (["audit", "verify", "--anchor", "12:xyz"], "bad anchor"),
    (["audit", "verify", "--file", "/no/such/export.jsonl"], "cannot read"),
    (["person", "password", "ghost"], "unknown user 'ghost'"),
    (["person", "password", "alice", "--as", "vic"], "does not hold the operator role"),
]


@pytest.mark.parametrize("args, message", BAD_INPUT, ids=[" ".join(a[:2]) + f" #{i}" for i, (a, _) in enumerate(BAD_INPUT)])
def test_bad_input_is_one_clear_line_and_exit_2_and_writes_nothing(ready, args, message):
    before = ready("audit", "head").stdout
    ready.fails(*args, match=message)
    assert ready("audit", "head").stdout == before


def test_operator_sets_a_hub_password(ready, monkeypatch):
    from enclave.registry.credentials import check_password
    from enclave.registry.db import make_engine, session_scope

    generated = ready("person", "password", "alice").stdout.strip().rsplit(": ", 1)[1]
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    ready.fails("person", "password", "alice", "--password-stdin", match="too short")
    monkeypatch.setattr("sys.stdin", io.StringIO("a-chosen-long-password\n"))
    assert "a-chosen" not in ready("person", "password", "vic", "--password-stdin").stdout
    engine = make_engine(ready.env["ENCLAVE_DB_URL"])
    with session_scope(engine) as s:
        assert check_password(s, "alice", generated) and check_password(s, "vic", "a-chosen-long-password")
    engine.dispose()


def test_usage_errors_exit_2_without_traceback(ready):
    proc = ready("grant", "set", "study", "--tokens", "many", code=2)
    assert "Invalid value" in proc.stderr
    ready("project", "approve", "study", code=2)  # missing --until


def test_no_acting_operator_is_refused(ready):
    env = {k: v for k, v in ready.env.items() if k != "ENCLAVE_OPERATOR"}
    InProcessCli(env, ready.monkeypatch).fails("person", "add", "x1", "--name", "X", "--email", "x@uni.example", match="pass --as USER")


def test_unreachable_database_is_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENCLAVE_")}
    cli = Cli({**env, "ENCLAVE_DB_URL": "postgresql://enclave@127.0.0.1:1/enclave"})
    cli.fails("project", "list", match="database unreachable")
    cli.fails("init", "--operator", "x", match="database unreachable")
    Cli({**env, "ENCLAVE_DB_URL": "oracle://x@y/z"}).fails("project", "list", match="unsupported database")
    Cli({**env, "ENCLAVE_HOME": "/proc/enclave"}).fails("project", "list", match="cannot create")


def test_audit_verify_catches_an_event_edited_in_the_database(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENCLAVE_")}
    cli = Cli({**env, "ENCLAVE_HOME": str(tmp_path), "ENCLAVE_OPERATOR": "boss"})
    cli("init", "--operator", "boss")
    for user in ("ann", "ben", "cat", "dee"):
        cli("person", "add", user, "--name", user, "--email", f"{user}@uni.example")
    assert cli("audit", "verify").returncode == 0
    with sqlite3.connect(tmp_path / "enclave.db") as db:
        db.execute("DROP TRIGGER audit_event_no_update")
        db.execute("UPDATE audit_event SET details = replace(details, 'ben@', 'eve@') WHERE seq = 3")
    proc = cli("audit", "verify", code=1)
    assert "broken at seq 3" in proc.stderr and "altered" in proc.stderr


def test_help_on_every_command():
    proc = subprocess.run([ENCLAVE, "--help"], capture_output=True, text=True)
    groups = ["db", "person", "project", "member", "dataset", "grant", "key", "audit"]
    for group in groups:
        sub = subprocess.run([ENCLAVE, group, "--help"], capture_output=True, text=True)
        assert sub.returncode == 0
        commands = [line.split()[0] for line in sub.stdout.split("Commands:")[1].splitlines() if line.strip()]
        assert commands, group
        for command in commands:
            text = subprocess.run([ENCLAVE, group, command, "--help"], capture_output=True, text=True).stdout
            description = text.split("\n\n")[1].strip()
            assert description and not description.startswith("Options"), (group, command)
    assert proc.returncode == 0 and "init" in proc.stdout
