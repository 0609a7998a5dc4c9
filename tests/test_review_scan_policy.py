"""The risk-appetite file: every key required, typed and in range; errors name the key."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from enclave.review.scan.policy import DEFAULT_POLICY, PolicyError, load_policy

DEFAULT = DEFAULT_POLICY


def edited(tmp_path: Path, old: str, new: str) -> Path:
    text = DEFAULT.read_text()
    assert old in text, old
    path = tmp_path / "policy.toml"
    path.write_text(text.replace(old, new, 1))
    return path


def test_the_shipped_policy_loads_with_its_version_and_hash():
    assert DEFAULT == Path(__file__).resolve().parents[1] / "output_review" / "policy.toml"
    policy = load_policy(DEFAULT)
    assert policy.version and policy.tables.min_count == 10
    assert policy.sha256 == hashlib.sha256(DEFAULT.read_bytes()).hexdigest()
    assert policy.path == str(DEFAULT)
    assert policy.identifiers.entities["US_SSN"] == "block"
    assert policy.workflow.always_two_reviewers is False
    # Linkage decides by uniqueness: k = 5, and the demo's name column is a direct identifier.
    assert policy.linkage.k_anonymity == 5 and policy.linkage.min_values == 2
    assert "name" in policy.linkage.direct_identifier_columns


def test_environment_names_another_policy(tmp_path, monkeypatch):
    """$ENCLAVE_REVIEW_POLICY is read by the service's settings, which hand the path to load_policy;
    the library itself never reads the environment."""
    from enclave.review.settings import ReviewSettings

    path = edited(tmp_path, 'version = "', 'version = "site-')
    monkeypatch.setenv("ENCLAVE_REVIEW_POLICY", str(path))
    monkeypatch.delenv("JUPYTERHUB_API_URL", raising=False)
    assert not load_policy(DEFAULT).version.startswith("site-")
    settings = ReviewSettings.from_env(home=tmp_path / "home")
    assert load_policy(settings.policy_file).version.startswith("site-")


@pytest.mark.parametrize("old, new, message", [
    ("min_count = 10", "", "tables: missing key 'min_count'"),
    ("min_count = 10", "min_count = 10\nmin_cuont = 5", "unknown key 'min_cuont'"),
    ("min_count = 10", 'min_count = "ten"', "min_count must be an integer"),
    ('small_count_severity = "block"', 'small_count_severity = "loud"', "small_count_severity must be one of"),
    ("min_count = 10", "min_count = 0", "tables.min_count must be positive"),
    ("min_cosine = 0.99", "min_cosine = 1.5", "weights.min_cosine must be in (0, 1]"),
    ('US_SSN = "block"', 'us_ssn = "block"', "must be a Presidio entity name"),
    ("min_overlap_chars = 40", "min_overlap_chars = 10", "min_overlap_chars must be at least"),
    ('not_count_columns = "(', 'not_count_columns = "((', "not a valid regular expression"),
    ("unlabelled_integers_are_counts = true", "unlabelled_integers_are_counts = 1", "must be true or false"),
    ("k_anonymity = 5", "k_anonymity = 0", "linkage.k_anonymity must be positive"),
    ('direct_identifier_columns = ["name",', 'direct_identifier_columns = [" ", "name",',
     "linkage.direct_identifier_columns must not contain an empty column name"),
    ("direct_identifier_columns = ", "direct_identifier_colums = ", "unknown key 'direct_identifier_colums'"),
    ("human_review_types = []", 'human_review_types = ["docx"]', "files.human_review_types entry 'docx' must be one of"),
    ('unexamined_severity = "block"', "", "files: missing key 'unexamined_severity'"),
])
def test_bad_policies_are_refused_naming_the_key(tmp_path, old, new, message):
    with pytest.raises(PolicyError) as raised:
        load_policy(edited(tmp_path, old, new))
    assert message in str(raised.value)


def test_not_toml_and_missing_files(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("this is = = not toml")
    with pytest.raises(PolicyError, match="not valid TOML"):
        load_policy(bad)
    with pytest.raises(PolicyError, match="cannot read policy file"):
        load_policy(tmp_path / "absent.toml")


def test_a_severity_may_be_turned_off(tmp_path):
    policy = load_policy(edited(tmp_path, 'URL = "info"', 'URL = "off"'))
    from enclave.review.scan import ExportFile, ScanContext, scan_files

    report = scan_files([ExportFile("a.md", b"see https://example.org/docs")], policy, ScanContext())
    assert report.findings == []
