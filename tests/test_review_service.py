"""The export workflow on SQLite and PostgreSQL: the state machine, who may move a request, the
two-person rule, reviews reset by a changed file, comments, checks in the background, audit."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlmodel import select

from enclave.registry import audit
from enclave.registry.db import session_scope
from enclave.errors import UserError, NotFound, Forbidden, AccessDenied, Conflict, InvalidTransition
from enclave.registry.models import AuditEvent
from enclave.review import service
from enclave.registry.models import ExportState
from enclave.review.quarantine import Quarantine, StagedFile
from enclave.review.release import load_or_create_key, verify
from enclave.review.worker import run_checks
from enclave.review.workflow import TERMINAL, TRANSITIONS, Actor, check_transition

from tests.review_stack import (
    AUTHOR, LAB, MEMBER_REVIEWER, OTHER_SCHOLAR, REVIEWERS, block, fake_scanner, seed, settings_for, warn,
)

RITA, RAVI = REVIEWERS


@pytest.fixture
def stack(engine, tmp_path):
    seed(engine)
    settings = settings_for(tmp_path, engine)
    return engine, settings, Quarantine(settings.quarantine_dir).ensure()


def _stage(quarantine: Quarantine, files: dict[str, bytes]) -> list[StagedFile]:
    return [StagedFile(name, *quarantine.put_bytes(data)) for name, data in files.items()]


def _submit(stack, files: dict[str, bytes], findings=None, author=AUTHOR) -> str:
    engine, settings, quarantine = stack
    with session_scope(engine) as s:
        request_id = service.submit(s, author, LAB, _stage(quarantine, files), "Table 2 of the paper.").id
    assert run_checks(engine, settings, quarantine, request_id, fake_scanner(findings)) == "awaiting_review"
    return request_id


def _state(engine, request_id) -> str:
    with session_scope(engine) as s:
        return service.get_request(s, request_id).state


def _shown(engine, request_id) -> list[str]:
    """The file hashes a reviewer is shown now (what the page and `enclave review show` print)."""
    with session_scope(engine) as s:
        return [f.sha256 for f in service.current_files(s, service.get_request(s, request_id))]


def _login(who: str) -> service.ReviewerLogin:
    """`who`, authenticated as the review UI's session would have it (the entry points' own checks,
    passwords and sessions, are tested in tests/test_review_insider.py)."""
    return service.ReviewerLogin(who, service.AuthMethod.hub_session)


def _decide(engine, who, request_id, decision, reason=""):
    seen = _shown(engine, request_id)  # the reviewer looked first, then decides
    with session_scope(engine) as s:
        return service.decide(s, who, request_id, decision, reason, seen=seen, login=_login(who))


def test_state_machine_table_is_closed_and_terminal_states_have_no_exit():
    states = set(ExportState)
    for t in TRANSITIONS.values():
        assert t.target in states and t.sources <= states and t.by
    for state in TERMINAL:
        assert not [a for a, t in TRANSITIONS.items() if state in t.sources]
    with pytest.raises(InvalidTransition, match="final"):
        check_transition("exp-x", ExportState.released, "withdraw", Actor.author)
    with pytest.raises(InvalidTransition, match="unknown"):
        check_transition("exp-x", ExportState.submitted, "teleport", Actor.author)
    with pytest.raises(Forbidden, match="never reviews their own"):
        check_transition("exp-x", ExportState.awaiting_review, "approve", Actor.author)
    with pytest.raises(Forbidden, match="only the system"):
        check_transition("exp-x", ExportState.submitted, "check", Actor.reviewer)


def test_submission_checks_and_one_approval_for_a_clean_export(stack):
    engine, settings, quarantine = stack
    request_id = _submit(stack, {"table.csv": b"group,count\na,12\nb,30\n"})
    with session_scope(engine) as s:
        request = service.get_request(s, request_id)
        assert (request.verdict, request.approvals_needed, request.policy_version) == ("pass", 1, "test-1")
    result = _decide(engine, RITA, request_id, "approve")
    assert result.approved and result.approvals == [RITA]
    key = load_or_create_key(settings.signing_key_file)
    released = service.release_request(engine, quarantine, key, settings.release_dir, request_id)
    assert released.state == "released"
    release_dir = settings.release_dir / LAB / request_id
    assert verify(release_dir / "manifest.json").ok
    with session_scope(engine) as s:
        actions = [e.action for e in s.exec(select(AuditEvent).where(AuditEvent.subject == f"export:{request_id}")
                                            .order_by(AuditEvent.seq)).all()]
        assert actions == ["export.submit", "export.check", "export.checked", "export.approve", "export.release"]
        assert audit.verify_database(s).ok


def test_a_reviewer_never_reviews_their_own_or_their_projects_export(stack):
    engine, _, _ = stack
    request_id = _submit(stack, {"notes.txt": b"hello"})
    with pytest.raises(Forbidden, match="never reviews their own"):
        _decide(engine, AUTHOR, request_id, "approve")
    with pytest.raises(Forbidden, match="member of this export's project"):
        _decide(engine, MEMBER_REVIEWER, request_id, "approve")
    with pytest.raises(NotFound):  # another scholar: the request might as well not exist
        _decide(engine, OTHER_SCHOLAR, request_id, "approve")
    with pytest.raises(Forbidden, match="unknown user"):
        _decide(engine, "mallory", request_id, "approve")
    # Nor may they see it: to them it does not exist.
    for outsider in (OTHER_SCHOLAR, MEMBER_REVIEWER, "mallory"):
        with session_scope(engine) as s, pytest.raises(NotFound):
            service.view(s, outsider, request_id)
    with session_scope(engine) as s:
        assert [r.id for r in service.review_queue(s, RITA)] == [request_id]
        assert service.review_queue(s, MEMBER_REVIEWER) == []
        with pytest.raises(Forbidden):
            service.review_queue(s, AUTHOR)
    assert _state(engine, request_id) == "awaiting_review"


def test_two_person_rule_when_a_finding_warns_or_blocks(stack):
    engine, _, _ = stack
    request_id = _submit(stack, {"out.txt": b"call 555-0100", "ok.txt": b"fine"}, {"out.txt": [warn("out.txt")]})
    first = _decide(engine, RITA, request_id, "approve")
    assert (first.approved, first.approvals, first.needed) == (False, [RITA], 2)
    with pytest.raises(Conflict, match="another reviewer"):
        _decide(engine, RITA, request_id, "approve")
    second = _decide(engine, RAVI, request_id, "approve")
    assert second.approved and second.approvals == [RITA, RAVI]

    blocked = _submit(stack, {"ssn.txt": b"123-45-6789"}, {"ssn.txt": [block("ssn.txt")]})
    with pytest.raises(UserError, match="blocking findings"):
        _decide(engine, RITA, blocked, "approve")
    _decide(engine, RITA, blocked, "approve", "synthetic test number, not a person")
    assert _state(engine, blocked) == "awaiting_review"


def test_policy_can_ask_for_two_approvals_always(stack, tmp_path):
    engine, _, quarantine = stack
    two = settings_for(tmp_path, engine, always_two_reviewers=True)
    with session_scope(engine) as s:
        request_id = service.submit(s, AUTHOR, LAB, _stage(quarantine, {"a.txt": b"clean"}), "why").id
    run_checks(engine, two, quarantine, request_id, fake_scanner())
    assert not _decide(engine, RITA, request_id, "approve").approved


def test_a_changed_file_resets_its_reviews_and_unchanged_files_keep_them(stack):
    engine, _, quarantine = stack
    files = {"a.txt": b"alpha", "b.txt": b"beta 555-0100"}
    request_id = _submit(stack, files, {"b.txt": [warn("b.txt")]})
    _decide(engine, RITA, request_id, "approve")
    with pytest.raises(UserError, match="needs a reason"):
        _decide(engine, RAVI, request_id, "request_changes")
    _decide(engine, RAVI, request_id, "request_changes", "drop the phone number from b.txt")
    assert _state(engine, request_id) == "changes_requested"

    # Version 2 changes b.txt: Rita's approval covered the old bytes, so it no longer counts.
    with session_scope(engine) as s:
        service.resubmit(s, AUTHOR, request_id, _stage(quarantine, {"a.txt": b"alpha", "b.txt": b"beta"}), "removed it")
    run_checks(engine, stack[1], quarantine, request_id, fake_scanner())
    with session_scope(engine) as s:
        request = service.get_request(s, request_id)
        assert (request.version, request.state, request.approvals_needed) == (2, "awaiting_review", 1)
        assert service.approvers(s, request) == []
        shown = service.view(s, AUTHOR, request_id)
        assert [c.body for c, _ in shown.comments] == ["removed it"]
        assert [f.name for f in shown.previous_files] == ["a.txt", "b.txt"]
    assert _decide(engine, RITA, request_id, "approve").approved


def test_an_unchanged_resubmission_keeps_approvals_but_not_of_a_reviewer_who_then_objected(stack):
    engine, settings, quarantine = stack
    files = {"a.txt": b"alpha"}
    request_id = _submit(stack, files, {"a.txt": [warn("a.txt")]})
    _decide(engine, RITA, request_id, "approve")
    _decide(engine, RAVI, request_id, "request_changes", "explain the context")
    with session_scope(engine) as s:
        service.resubmit(s, AUTHOR, request_id, _stage(quarantine, files), "context: synthetic")
    run_checks(engine, settings, quarantine, request_id, fake_scanner({"a.txt": [warn("a.txt")]}))
    with session_scope(engine) as s:
        assert service.approvers(s, service.get_request(s, request_id)) == [RITA]
    # Rita may confirm her carried-over approval on version 2, but she still counts once.
    confirmed = _decide(engine, RITA, request_id, "approve")
    assert (confirmed.approved, confirmed.approvals) == (False, [RITA])
    assert _decide(engine, RAVI, request_id, "approve").approved


def test_illegal_transitions_are_refused_with_the_reason(stack):
    engine, settings, quarantine = stack
    with session_scope(engine) as s:
        request_id = service.submit(s, AUTHOR, LAB, _stage(quarantine, {"a.txt": b"a"}), "why").id
    with pytest.raises(InvalidTransition, match="it is submitted"):
        _decide(engine, RITA, request_id, "approve")
    with session_scope(engine) as s, pytest.raises(InvalidTransition, match="it is submitted"):
        service.resubmit(s, AUTHOR, request_id, _stage(quarantine, {"a.txt": b"b"}))
    run_checks(engine, settings, quarantine, request_id, fake_scanner())
    with pytest.raises(UserError, match="decision must be"):
        _decide(engine, RITA, request_id, "maybe")
    _decide(engine, RITA, request_id, "reject", "not a research output")
    assert _state(engine, request_id) == "rejected"
    for who, action in ((RAVI, "approve"), (RAVI, "request_changes")):
        with pytest.raises(InvalidTransition, match="rejected, which is final"):
            _decide(engine, who, request_id, action, "x")
    with session_scope(engine) as s, pytest.raises(InvalidTransition, match="final"):
        service.withdraw(s, AUTHOR, request_id)
    with session_scope(engine) as s, pytest.raises(Forbidden, match="only the author"):
        service.withdraw(s, RITA, service.submit(s, AUTHOR, LAB, _stage(quarantine, {"c.txt": b"c"}), "why").id)


def test_withdrawal_while_checking_leaves_the_late_findings_unrecorded(stack):
    engine, settings, quarantine = stack
    with session_scope(engine) as s:
        request_id = service.submit(s, AUTHOR, LAB, _stage(quarantine, {"a.txt": b"a"}), "why").id

    def scanner(db, *_args):
        with session_scope(db) as s:
            service.withdraw(s, AUTHOR, request_id)  # the author changes their mind mid-check
        return fake_scanner()(db, *_args)

    assert run_checks(engine, settings, quarantine, request_id, scanner) is None
    assert _state(engine, request_id) == "withdrawn"
    assert run_checks(engine, settings, quarantine, request_id, fake_scanner()) is None


def test_a_failing_pipeline_sends_the_request_to_reviewers_with_a_blocking_finding(stack):
    engine, settings, quarantine = stack
    with session_scope(engine) as s:
        request_id = service.submit(s, AUTHOR, LAB, _stage(quarantine, {"a.txt": b"a"}), "why").id

    def broken(*_args):
        raise ValueError("the checks have a bug")

    assert run_checks(engine, settings, quarantine, request_id, broken) == "awaiting_review"
    with session_scope(engine) as s:
        request = service.get_request(s, request_id)
        assert (request.verdict, request.approvals_needed) == ("block", 2)
        assert [f.check for f in service.current_findings(s, request)] == ["scan"]


def test_comments_public_and_private(stack):
    engine, _, _ = stack
    request_id = _submit(stack, {"a.txt": b"a"})
    with session_scope(engine) as s:
        service.comment(s, RITA, request_id, "Looks fine to me.", "public")
        service.comment(s, RITA, request_id, "Double-check the cohort size.", "private")
        service.comment(s, AUTHOR, request_id, "Thanks!")
        with pytest.raises(Forbidden, match="only reviewers"):
            service.comment(s, AUTHOR, request_id, "psst", "private")
        with pytest.raises(UserError, match="visibility"):
            service.comment(s, RITA, request_id, "x", "secret")
        with pytest.raises(UserError, match="required"):
            service.comment(s, RITA, request_id, "   ")
        with pytest.raises(NotFound):
            service.comment(s, OTHER_SCHOLAR, request_id, "hi")
    with session_scope(engine) as s:
        author_view = service.view(s, AUTHOR, request_id)
        reviewer_view = service.view(s, RITA, request_id)
        assert [c.body for c, _ in author_view.comments] == ["Looks fine to me.", "Thanks!"]
        assert len(reviewer_view.comments) == 3
        assert "evidence" not in author_view.to_json()["findings"] if author_view.findings else True
        assert service.list_own(s, OTHER_SCHOLAR) == []
        assert [r.id for r in service.list_own(s, AUTHOR)] == [request_id]


def test_author_sees_where_findings_are_but_not_their_messages_or_evidence(stack):
    engine, _, _ = stack
    request_id = _submit(stack, {"p.txt": b"Jane Doe 1970-01-01"}, {"p.txt": [warn("p.txt", "matches record 17: Jane Doe")]})
    with session_scope(engine) as s:
        mine = service.view(s, AUTHOR, request_id).to_json()
        theirs = service.view(s, RITA, request_id).to_json()
    assert mine["findings"] == [{"check": "identifiers", "severity": "warn", "file": "p.txt", "location": "line 1, chars 0-5"}]
    assert "Jane" not in str(mine["findings"])
    assert theirs["findings"][0]["message"] == "matches record 17: Jane Doe" and theirs["findings"][0]["evidence"]


def test_bad_submissions_are_refused_and_leave_nothing(stack):
    engine, _, quarantine = stack
    good = _stage(quarantine, {"a.txt": b"a"})
    cases = [
        (dict(files=[]), "at least one file"),
        (dict(justification="  "), "justification"),
        (dict(files=[StagedFile("../etc/passwd", good[0].sha256, 1)]), "bare file names"),
        (dict(files=[StagedFile("..", good[0].sha256, 1)]), "not a file"),
        (dict(files=[StagedFile("evil\u202etxt.exe", good[0].sha256, 1)]), "control or invisible"),
        (dict(files=[StagedFile("A.txt", good[0].sha256, 1), StagedFile("a.txt", good[0].sha256, 1)]), "differ in more than case"),
        (dict(files=good * 3, max_files=2), "at most 2 files"),
    ]
    for overrides, message in cases:
        args = dict(files=good, justification="why", max_files=None) | overrides
        with session_scope(engine) as s, pytest.raises(UserError, match=message):
            service.submit(s, AUTHOR, LAB, args["files"], args["justification"], max_files=args["max_files"])
    with session_scope(engine) as s, pytest.raises(AccessDenied, match="not a member"):
        service.submit(s, OTHER_SCHOLAR, LAB, good, "why")
    with session_scope(engine) as s, pytest.raises(AccessDenied, match="reviewer|scholar"):
        service.submit(s, RITA, None, good, "why")
    with session_scope(engine) as s:
        assert s.exec(text("SELECT count(*) FROM export_request")).one()[0] == 0


def test_reviews_and_files_are_append_only(stack):
    engine, _, _ = stack
    request_id = _submit(stack, {"a.txt": b"a"}, {"a.txt": [warn("a.txt")]})
    _decide(engine, RITA, request_id, "approve")
    with session_scope(engine) as s:
        service.comment(s, RITA, request_id, "noted")
    for statement in ("UPDATE export_review SET decision = 'reject'", "DELETE FROM export_file",
                      "UPDATE export_finding SET severity = 'info'", "DELETE FROM export_comment"):
        with pytest.raises(Exception, match="append-only"):
            with engine.begin() as conn:
                conn.execute(text(statement))


def test_concurrent_decisions_and_a_withdrawal_racing_the_checks_never_both_win(stack):
    import threading

    engine, settings, quarantine = stack
    for _ in range(3):
        request_id = _submit(stack, {"a.txt": b"a"})  # needs one approval
        outcomes: list[str] = []
        barrier = threading.Barrier(2)

        def approve(who):
            barrier.wait()
            try:
                _decide(engine, who, request_id, "approve")
                outcomes.append("approved")
            except InvalidTransition:
                outcomes.append("too late")

        threads = [threading.Thread(target=approve, args=(who,)) for who in (RITA, RAVI)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(outcomes) == ["approved", "too late"]
        with session_scope(engine) as s:
            events = s.exec(select(AuditEvent).where(AuditEvent.subject == f"export:{request_id}",
                                                     AuditEvent.action == "export.approve")).all()
            assert len(events) == 1

        with session_scope(engine) as s:
            racing = service.submit(s, AUTHOR, LAB, _stage(quarantine, {"b.txt": b"b"}), "why").id
        barrier = threading.Barrier(2)

        def check():
            barrier.wait()
            run_checks(engine, settings, quarantine, racing, fake_scanner())

        def withdraw():
            barrier.wait()
            try:
                with session_scope(engine) as s:
                    service.withdraw(s, AUTHOR, racing)
            except InvalidTransition:
                pass  # the checks finished first: awaiting_review can still be withdrawn below

        threads = [threading.Thread(target=check), threading.Thread(target=withdraw)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        with session_scope(engine) as s:
            state = service.get_request(s, racing).state
            withdrawals = s.exec(select(AuditEvent).where(AuditEvent.subject == f"export:{racing}",
                                                          AuditEvent.action == "export.withdraw")).all()
        # Whatever the order, a recorded withdrawal is never overwritten by the worker.
        assert (state == "withdrawn") == (len(withdrawals) == 1)
        with session_scope(engine) as s:
            assert audit.verify_database(s).ok


def test_a_decision_names_the_files_it_saw_and_a_stale_one_is_refused(stack):
    """Issue 11, item 4: approvals bind to what was seen. A reviewer who saw version 1 cannot
    approve (or reject) version 2 with it; nothing of the refused decision is recorded."""
    engine, settings, quarantine = stack
    request_id = _submit(stack, {"a.txt": b"alpha", "b.txt": b"beta"})
    seen_v1 = _shown(engine, request_id)
    with session_scope(engine) as s, pytest.raises(UserError, match="sha256"):
        service.decide(s, RITA, request_id, "approve", seen=[], login=_login(RITA))
    with session_scope(engine) as s, pytest.raises(Conflict, match="not those of version 1"):
        service.decide(s, RITA, request_id, "approve", seen=seen_v1[:1], login=_login(RITA))
    _decide(engine, RAVI, request_id, "request_changes", "fix b")
    with session_scope(engine) as s:
        service.resubmit(s, AUTHOR, request_id, _stage(quarantine, {"a.txt": b"alpha", "b.txt": b"beta, fixed"}))
    run_checks(engine, settings, quarantine, request_id, fake_scanner())
    with session_scope(engine) as s:
        before = (len(s.exec(select(AuditEvent)).all()), len(service.review_history(s, service.get_request(s, request_id))))
    for decision, version in (("approve", 1), ("approve", None), ("reject", None)):
        with session_scope(engine) as s, pytest.raises(Conflict, match="reload and review the new files"):
            service.decide(s, RITA, request_id, decision, "because", seen=seen_v1, seen_version=version,
                           login=_login(RITA))
    with session_scope(engine) as s:
        assert (len(s.exec(select(AuditEvent)).all()),
                len(service.review_history(s, service.get_request(s, request_id)))) == before
    with session_scope(engine) as s, pytest.raises(Conflict, match=r"version 1 -> 2"):
        service.decide(s, RITA, request_id, "approve", seen=_shown(engine, request_id), seen_version=1,
                       login=_login(RITA))
    assert _decide(engine, RITA, request_id, "approve").approved


def test_comments_are_capped_per_person_and_closed_requests_take_none(stack):
    engine, _, quarantine = stack
    request_id = _submit(stack, {"a.txt": b"a"})
    with session_scope(engine) as s:
        with pytest.raises(UserError, match="longer than 10 characters"):
            service.comment(s, AUTHOR, request_id, "x" * 11, max_chars=10)
        for i in range(3):
            service.comment(s, AUTHOR, request_id, f"c{i}", max_comments=3, max_chars=10)
        with pytest.raises(Conflict, match="3 comments"):
            service.comment(s, AUTHOR, request_id, "c3", max_comments=3, max_chars=10)
        service.comment(s, RITA, request_id, "mine", max_comments=3, max_chars=10)
    _decide(engine, RITA, request_id, "request_changes", "say more")
    with session_scope(engine) as s, pytest.raises(Conflict, match="3 comments"):
        service.resubmit(s, AUTHOR, request_id, _stage(quarantine, {"a.txt": b"b"}), "a note", max_comments=3)
    with session_scope(engine) as s, pytest.raises(UserError, match="longer than 10 characters"):
        service.resubmit(s, AUTHOR, request_id, _stage(quarantine, {"a.txt": b"b"}), "a long note", max_chars=10)
    with session_scope(engine) as s:
        service.withdraw(s, AUTHOR, request_id)
    for who in (AUTHOR, RITA):
        with session_scope(engine) as s, pytest.raises(InvalidTransition, match="withdrawn, which is final"):
            service.comment(s, who, request_id, "hello")
