"""Text checks: verbatim overlap with protected text, identifiers (Presidio), record linkage,
provenance, model-based memorisation signals and encoded blobs, with the evasions a scholar
would try: case, spacing, punctuation, look-alike letters, zero-width characters, base64, zips."""
from __future__ import annotations

import base64
import math
import socket
from collections import Counter

import pytest

from enclave.demo import data
from enclave.review.scan import pii
from enclave.review.scan.context import ModelCallText, ProtectedSource
from enclave.review.scan.scoring import TokenScores
from enclave.review.scan.textfold import fold
from tests.review_corpus import fake_ssns, of, people, people_csv, review_home, scan, zip_bytes  # noqa: F401 (fixture)

SECRET = ("The patient Maria Lopez was admitted on a rainy Tuesday with a fracture of the left wrist, "
          "and told the nurse she had fallen from a ladder while painting the kitchen.")


@pytest.fixture
def protected_text(tmp_path):
    path = tmp_path / "finetune.txt"
    filler = "\n".join(data.filler_paragraphs(200))
    path.write_text(filler + "\n" + SECRET + "\n" + filler, encoding="utf-8")
    return [ProtectedSource.from_path(path)]


# ----- folding -----------------------------------------------------------------------------------

def test_fold_undoes_case_spacing_lookalikes_and_invisible_characters():
    plain = fold("Maria Lopez, born 1961", separators=False).text
    assert plain == "marialopezborn1961"
    disguised = "МАRIA  lоpez\u200b—bоrn １９６１"  # Cyrillic М/А/о, zero-width space, em dash, full-width digits
    assert fold(disguised, separators=False).text == plain
    assert fold("Ｍａｒíａ", separators=False).text == "maria"


def test_fold_maps_back_to_original_offsets():
    text = "xx Ｍａｒｉａ\u200b Lopez yy"
    folded = fold(text, separators=False)
    start = folded.text.index("maria")
    a, b = folded.span(start, start + len("marialopez"), len(text))
    assert text[a:b] == "Ｍａｒｉａ\u200b Lopez"


# ----- memorisation (n-gram overlap) ----------------------------------------------------------

@pytest.mark.parametrize("disguise", [
    lambda s: s,
    str.upper,
    lambda s: "  ".join(s.split(" ")),  # spacing
    lambda s: s.replace(",", " ;").replace(" ", "\n", 3),  # punctuation and line breaks
    lambda s: s.replace("a", "а").replace("o", "ο"),  # Cyrillic а, Greek ο
    lambda s: "\u200b".join(s),  # a zero-width space between every character
])
def test_verbatim_protected_text_is_found_through_disguises(protected_text, disguise):
    exported = "Our summary of the ward notes follows.\n" + disguise(SECRET[20:140]) + "\nEnd of notes."
    report = scan({"notes.md": exported}, protected=protected_text)
    [f] = of(report, "memorisation", "block")
    assert "finetune.txt" in f.message and "Lopez" not in f.message
    assert f.evidence["folded_chars"] >= 80


def test_memorised_text_inside_base64_and_zip_is_found(protected_text):
    blob = base64.b64encode(SECRET.encode()).decode()
    report = scan({"bundle.zip": zip_bytes({"x/notes.txt": f"see attachment {blob}\n"})}, protected=protected_text)
    [f] = of(report, "memorisation", "block")
    assert f.file.startswith("bundle.zip!x/notes.txt!base64@")


def test_short_common_phrases_and_new_text_do_not_match(protected_text):
    exported = ("The forecast calls for rain. We fitted a regression of wrist fractures on age and sex, "
                "and the patient was admitted.")
    assert not of(scan({"notes.md": exported}, protected=protected_text), "memorisation")


def test_unreadable_protected_source_is_reported(tmp_path):
    report = scan({"a.txt": "hello"}, protected=[ProtectedSource.from_path(tmp_path / "missing.txt")])
    [f] = of(report, "context", "warn")
    assert "unreadable" in f.message


# ----- identifiers (Presidio) ----------------------------------------------------------------

def test_fake_ssns_block():
    report = scan({"ids.txt": "\n".join(f"record {i}: {s}" for i, s in enumerate(fake_ssns(40)))})
    found = of(report, "identifiers", "block")
    assert len(found) == 40 and {f.evidence["entity"] for f in found} == {"US_SSN"}


def test_direct_identifiers_block_and_others_warn_or_inform():
    text = ("Write to jane.roe@example.org or call (212) 555-0199. Card 4111 1111 1111 1111. "
            "Account GB82 WEST 1234 5698 7654 32 from 192.168.12.7; docs at https://example.org/guide.")
    report = scan({"contacts.txt": text})
    by_entity = {f.evidence["entity"]: f.severity.value for f in of(report, "identifiers")}
    assert by_entity == {"EMAIL_ADDRESS": "block", "PHONE_NUMBER": "block", "CREDIT_CARD": "block",
                         "IBAN_CODE": "warn", "IP_ADDRESS": "warn", "URL": "info"}


def test_policy_may_lower_a_direct_identifier_to_warn():
    import dataclasses

    from tests.review_corpus import POLICY

    lowered = dataclasses.replace(POLICY, identifiers=dataclasses.replace(
        POLICY.identifiers, entities={**POLICY.identifiers.entities, "EMAIL_ADDRESS": "warn"}))
    report = scan({"a.txt": "mail jane.roe@example.org"}, policy=lowered)
    assert [f.severity.value for f in of(report, "identifiers")] == ["warn"]


@pytest.mark.parametrize("disguised", [
    "SSN ５３６-２２-８４７１",  # full-width digits
    "SSN 536-22-84\u200b71",  # zero-width space inside
    "mail jаne.rоe@exаmple.org",  # Cyrillic look-alikes in an address
])
def test_identifier_evasions_are_found(disguised):
    assert of(scan({"a.txt": disguised}), "identifiers", "block")


def test_identifiers_in_base64_inside_a_zip_are_found():
    blob = base64.b64encode(("patients:\n" + "\n".join(fake_ssns(3))).encode()).decode()
    report = scan({"x.zip": zip_bytes({"notes.txt": f"encoded: {blob}"})})
    assert len(of(report, "identifiers", "block")) == 3


def test_no_identifiers_in_numbers_prose_or_code():
    import random

    rng = random.Random(3)
    numeric = "\n".join(" ".join(f"{rng.gauss(0, 1):.4f}" for _ in range(12)) for _ in range(200))
    csv = "\n".join(",".join(f"{rng.gauss(0, 1):.6f}" for _ in range(12)) for _ in range(200))
    code = "import pandas as pd\ndf = pd.read_csv('data.csv')\nprint(df.groupby('region').mean())\n"
    prose = "\n".join(data.filler_paragraphs(50))
    report = scan({"num.txt": numeric, "num.csv": "x\n" + csv, "a.py": code, "prose.txt": prose})
    assert not of(report, "identifiers")


def test_the_gate_changes_nothing_presidio_would_find():
    """Presidio over whole texts and Presidio over the gated windows find exactly the same."""
    entities = ["EMAIL_ADDRESS", "PHONE_NUMBER", "US_SSN", "CREDIT_CARD", "IBAN_CODE", "IP_ADDRESS", "UK_NHS",
                "US_ITIN", "CRYPTO", "URL"]
    texts = [
        "Write to jane.roe@example.org or call (212) 555-0199 or +44 20 7946 0958.",
        "\n".join(fake_ssns(10, seed=9)),
        "Card 4111-1111-1111-1111 and 5500 0000 0000 0004; NHS 943 476 5919; ITIN 912-70-1234",
        "Hosts 10.0.0.1 and 2001:db8::ff00:42:8329 and https://www.example.com/path?q=1",
        "IBAN DE89 3704 0044 0532 0130 00 wallet 1BoatSLRHtKNngkdXEeobR76b53LETtpyT",
        "\n".join(data.filler_paragraphs(30)) + "\nlast line: 0.5 1.25 3.125 and 212.555.0199",
    ]
    total = 0
    analyzer = pii.build_analyzer(["US", "GB"])
    for text in texts:
        whole = pii.find(text, entities, min_score=0.4, phone_regions=["US", "GB"], gate=False, analyzer=analyzer)
        gated = pii.find(text, entities, min_score=0.4, phone_regions=["US", "GB"], analyzer=analyzer)
        assert gated == whole
        total += len(gated)
    assert total >= 20


def test_presidio_never_touches_the_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    hits = pii.find("mail a.person@university.ac.uk", ["EMAIL_ADDRESS"], min_score=0.4, phone_regions=["US"],
                    analyzer=pii.build_analyzer(["US"]))  # built here, while the network is refused
    assert [h.entity for h in hits] == ["EMAIL_ADDRESS"]


# ----- record linkage ----------------------------------------------------------------------------

@pytest.fixture
def protected_people(tmp_path):
    return [ProtectedSource.from_path(people_csv(tmp_path, columns=["name", "dob", "sex", "zip"]))]


@pytest.mark.parametrize("render", [
    lambda p: data.render_record(p, 0),
    lambda p: data.render_record(p, 2),
    lambda p: f"{p.name.upper()} (born {p.dob[8:10]}/{p.dob[5:7]}/{p.dob[:4]}) came to the clinic.",
    lambda p: f"{' '.join(p.name)}  —  DOB {p.dob.replace('-', '')}",
    lambda p: f"{p.name.replace('a', 'а')}\n{p.dob}",  # look-alike, and a line break between values
    lambda p: f"ZIP {p.zip}; sex {p.sex}; date of birth {p.dob}",
])
def test_quasi_identifiers_of_one_record_block(protected_people, render):
    person = people()[17]
    report = scan({"out.txt": "Case notes.\n" + render(person) + "\nEnd."}, protected=protected_people)
    [f] = of(report, "record_linkage", "block")
    assert f.evidence["record"]["name"] == person.name and f.evidence["record_number"] == 18
    assert person.name not in f.message and person.dob not in f.message


def test_values_of_different_records_or_single_values_do_not_link(protected_people):
    a, b = people()[1], people()[2]
    text = (f"{a.name} was interviewed. Separately, a person born {b.dob} took part.\n"
            f"Sex {'F' if b.sex == 'M' else 'M'}, ZIP {b.zip}.\n{a.name} again.")
    assert not of(scan({"out.txt": text}, protected=protected_people), "record_linkage")


def test_linkage_inside_a_zip_in_base64(protected_people):
    person = people()[40]
    blob = base64.b64encode(data.render_record(person).encode()).decode()
    report = scan({"bundle.zip": zip_bytes({"n.txt": blob})}, protected=protected_people)
    assert of(report, "record_linkage", "block")


# ----- linkage decides by uniqueness (issue 11, item 7) -------------------------------------------
# A combination of an export's values that matches fewer than k records of a protected dataset (k from
# the policy) blocks when it holds a direct identifier (a name) or at least two quasi-identifiers,
# whatever the dataset calls its columns.

COLUMNS = ["name", "dob", "sex", "zip", "occupation"]
RENAMED = ["full_name", "date_of_birth", "gender", "postcode", "job"]  # as a registry's dataset may name them
CROWD = 2000  # people in the protected dataset of these tests: enough for groups of every size


def crowd() -> list[data.Person]:
    return people(CROWD)


@pytest.fixture(params=["demo-columns", "renamed-columns"])
def crowd_protected(request, tmp_path):
    header = COLUMNS if request.param == "demo-columns" else RENAMED
    path = people_csv(tmp_path, n=CROWD, columns=COLUMNS, header=header)
    return [ProtectedSource.from_path(path, name="people", quasi_identifiers=header)], header


def linkage_policy(**changes):
    import dataclasses

    from tests.review_corpus import POLICY
    return dataclasses.replace(POLICY, linkage=dataclasses.replace(POLICY.linkage, **changes))


def group_of(size: int, key) -> tuple:
    """A value combination held by exactly `size` people of the crowd."""
    counts = Counter(key(p) for p in crowd())
    return next(k for k, n in sorted(counts.items()) if n == size)


@pytest.mark.parametrize("render", [
    lambda p: f"{p.name} was born on {p.dob}.",
    lambda p: f"{p.name}\n{p.dob[8:10]}/{p.dob[5:7]}/{p.dob[:4]}",  # a line break between the two values
])
def test_a_name_with_a_date_of_birth_blocks(crowd_protected, render):
    protected, header = crowd_protected
    person = crowd()[17]
    report = scan({"out.txt": "Case notes.\n" + render(person) + "\nEnd."}, protected=protected)
    [f] = of(report, "record_linkage", "block")
    assert f.evidence["record"][header[0]] == person.name and f.evidence["matched"] == header[:2]
    assert f.evidence["group_size"] == 1 and f.evidence["k_anonymity"] == 5
    assert f.message == f"{header[0]} + {header[1]} match 1 record of protected dataset 'people' (k = 5)"
    assert person.name not in f.message and person.dob not in f.message


def test_two_quasi_identifiers_that_single_out_a_person_block(crowd_protected):
    protected, header = crowd_protected
    person = crowd()[40]
    assert sum(p.dob == person.dob and p.zip == person.zip for p in crowd()) == 1
    report = scan({"out.txt": f"One participant, born {person.dob}, lives in ZIP {person.zip}.\n"},
                  protected=protected)
    [f] = of(report, "record_linkage", "block")
    assert f.evidence["matched"] == [header[1], header[3]] and f.evidence["group_size"] == 1


def test_two_quasi_identifiers_shared_by_fewer_than_k_records_block(crowd_protected):
    protected, header = crowd_protected
    sex, zip_code = group_of(3, lambda p: (p.sex, p.zip))
    text = f"Sex {sex}, ZIP {zip_code}: the smallest group.\n"
    [f] = of(scan({"out.txt": text}, protected=protected), "record_linkage", "block")
    assert f.evidence["matched"] == [header[2], header[3]] and f.evidence["group_size"] == 3
    assert "match 3 records" in f.message and "(k = 5)" in f.message
    # k is the policy's: a group of k records is anonymous enough, one of k - 1 is not.
    assert not of(scan({"out.txt": text}, policy=linkage_policy(k_anonymity=3), protected=protected),
                  "record_linkage")
    assert of(scan({"out.txt": text}, policy=linkage_policy(k_anonymity=4), protected=protected),
              "record_linkage", "block")


def test_a_name_alone_one_value_or_a_common_combination_does_not_block(crowd_protected):
    protected, _ = crowd_protected
    person = crowd()[17]
    sex, occupation = group_of(40, lambda p: (p.sex, p.occupation))  # 40 female nurses, say
    sex5, zip5 = group_of(5, lambda p: (p.sex, p.zip))
    for text in (f"{person.name} was interviewed about the service.",
                 f"Participants were born on {person.dob} and other days.",
                 f"ZIP {person.zip} had the most responses.",
                 f"Sex {sex}, occupation {occupation}: the largest group.",
                 f"Sex {sex5}, ZIP {zip5}: exactly k people."):
        assert not of(scan({"out.txt": text + "\n"}, protected=protected), "record_linkage"), text


def test_each_record_is_reported_once_on_its_own_line(tmp_path):
    """Two rendered records that share an income: each is one finding spanning its own whole line,
    not a match that borrows the neighbour's income, plus a stray one for the rest of the line."""
    path = people_csv(tmp_path, n=CROWD, columns=["name", "dob", "sex", "zip", "occupation", "income"])
    protected = [ProtectedSource.from_path(path, name="people", quasi_identifiers=[])]
    by_income: dict[int, list[data.Person]] = {}
    for p in crowd():
        by_income.setdefault(p.income, []).append(p)
    a, b = next(group for group in by_income.values() if len(group) >= 2)[:2]
    text = f"{data.render_record(a)}\n{data.render_record(b)}\n"
    found = of(scan({"out.txt": text}, protected=protected), "record_linkage", "block")
    assert [(f.evidence["record"]["name"], f.evidence["line"], len(f.evidence["matched"])) for f in found] == [
        (a.name, 1, 6), (b.name, 2, 6)]


def test_a_person_listed_once_per_visit_is_still_one_person(tmp_path):
    """Six rows of one patient (a visit per row) must not make a name with a date of birth look like
    a group of six; headers are matched in any case and spacing ("Full Name" is full_name)."""
    everyone = people(50)
    rows = [f"{p.name},{p.dob},{p.zip}" for p in everyone] + [f"{everyone[3].name},{everyone[3].dob},{everyone[3].zip}"] * 5
    path = tmp_path / "visits.csv"
    path.write_text("Full Name,Date of Birth,ZIP\n" + "\n".join(rows) + "\n", encoding="utf-8")
    protected = [ProtectedSource.from_path(path, name="visits", quasi_identifiers=["Full Name", "Date of Birth", "ZIP"])]
    [f] = of(scan({"out.txt": f"Seen today: {everyone[3].name}, born {everyone[3].dob}.\n"}, protected=protected),
             "record_linkage", "block")
    assert f.evidence["group_size"] == 1 and f.evidence["matched"] == ["Full Name", "Date of Birth"]


def test_a_name_column_left_out_of_the_quasi_identifiers_is_still_indexed(tmp_path):
    """Whoever registers a dataset may list only dob, sex and zip; its name column is still a name."""
    from enclave.review.scan.linkage import RecordIndex, link
    from tests.review_corpus import POLICY

    path = people_csv(tmp_path, columns=["name", "dob", "sex", "zip"])
    person = people()[9]
    text = f"{person.name} (born {person.dob}) took part.\n"
    rule = POLICY.linkage
    kwargs = dict(min_values=rule.min_values, combinations=rule.combinations, window=rule.window_chars,
                  max_postings=rule.max_postings, k_anonymity=rule.k_anonymity,
                  direct_identifiers=rule.direct_identifier_columns)
    assert RecordIndex.from_csv("people", path, ["dob", "sex", "zip"]).columns == ["dob", "sex", "zip"]
    index = RecordIndex.from_csv("people", path, ["dob", "sex", "zip"], rule.direct_identifier_columns)
    assert index.columns == ["dob", "sex", "zip", "name"]
    [linked] = link(index, text, **kwargs)
    assert linked.matched == ("dob", "name") and linked.group_size == 1


# ----- provenance ---------------------------------------------------------------------------------

def test_spans_are_traced_to_model_calls():
    calls = [ModelCallText("call-1", "Tell me about Boston", "Boston is a city in Massachusetts with a long "
                                                              "history of universities and harbours."),
             ModelCallText("call-2", "Weather?", "Expect rain over the weekend across the northern counties.")]
    exported = ("Intro written by me.\nBoston is a city in Massachusetts with a long history of universities "
                "and harbours.\nMore of my own words here.")
    report = scan({"essay.md": exported}, model_calls=calls)
    [f] = of(report, "provenance", "info")
    assert f.evidence["call_ids"] == ["call-1"] and f.location.startswith("line 2")
    assert report.verdict.value == "pass"


# ----- model-based signals ------------------------------------------------------------------

def char_ngram_scorer(training: str, order: int = 6):
    """A real (if tiny) language model: characters given the previous `order` - 1, lightly
    smoothed, scored per character. Text it was trained on gets perplexity near 1; text it never
    saw gets far more."""
    grams = Counter(training[i:i + order] for i in range(len(training) - order + 1))
    contexts = Counter(training[i:i + order - 1] for i in range(len(training) - order + 2))
    alpha, vocabulary = 0.01, 256

    def score(text: str) -> TokenScores:
        logprobs = []
        for i, char in enumerate(text):
            context = text[max(0, i - order + 1):i]
            gram = grams.get(context + char, 0) if len(context) == order - 1 else 0
            seen = contexts.get(context, 0) if len(context) == order - 1 else 0
            logprobs.append(math.log((gram + alpha) / (seen + alpha * vocabulary)))
        return TokenScores(list(text), logprobs)

    return score


def test_model_signals_flag_what_the_scorer_finds_easy():
    memorised = "Quentin Rossi, born 1971-04-12, male, ZIP 60633, works as a chef and earns $41,000 a year."
    scorer = char_ngram_scorer((memorised + "\n") * 50)
    report = scan({"out.txt": memorised + "\nEvery zebra quickly jumped over lazy foxes in Kyiv!\n"}, scorer=scorer)
    [f] = of(report, "model_signals", "warn")
    assert f.location.startswith("line 1") and "perplexity" in f.message
    assert f.evidence["perplexity"] < 1.5


def test_model_signals_are_capped_per_export():
    import dataclasses

    from tests.review_corpus import POLICY

    few = dataclasses.replace(POLICY, memorisation=dataclasses.replace(
        POLICY.memorisation, model=dataclasses.replace(POLICY.memorisation.model, max_passages=2)))
    lines = "\n".join(f"This is line number {i} of ordinary prose for the test." for i in range(6))
    report = scan({"a.txt": lines}, policy=few, scorer=char_ngram_scorer("x"))
    assert any("4 passages were not scored" in f.message for f in of(report, "model_signals", "info"))


def test_a_failing_scorer_is_reported_once():
    from enclave.review.scan.scoring import ScorerError

    def down(text: str) -> TokenScores:
        raise ScorerError("gateway unreachable for scoring (ConnectError)")

    report = scan({"a.txt": "Plenty of ordinary prose on this first line here.\nAnd more prose on the second line."},
                  scorer=down)
    [f] = of(report, "context", "warn")
    assert "gateway unreachable" in f.message


# ----- encoded blobs and entropy -------------------------------------------------------------

def test_opaque_blobs_and_random_runs_are_flagged_but_hashes_are_not():
    import os
    import random

    rng = random.Random(2)
    opaque = base64.b64encode(bytes(rng.randrange(256) for _ in range(600))).decode()
    base85 = base64.b85encode(bytes(rng.randrange(256) for _ in range(400))).decode()
    sha = "3a7bd3e2360a3d29eea436fcfb7e44c735d117c42d1c1835420b6b9942dd4f1b"
    report = scan({"a.txt": f"blob {opaque}\nb85 {base85}\nsha256 {sha}\nkey {base64.b64encode(os.urandom(32)).decode()}"})
    messages = [f.message for f in of(report, "encoded_blobs", "warn")]
    assert any("decodes to no known format" in m for m in messages)
    assert any("look encrypted or compressed" in m for m in messages)
    assert len(messages) == 2


def test_base64_nesting_stops_at_the_policy_depth():
    text = "SSN 536-22-8471"
    for _ in range(4):
        text = "payload " + base64.b64encode(text.encode()).decode() + " end of payload"
    report = scan({"a.txt": text})
    assert any("encodings deep" in f.message for f in of(report, "encoded_blobs"))


def test_hex_blobs_plain_and_spaced_are_decoded_and_rescanned():
    secret = "SSN 536-22-8471".encode()
    plain = secret.hex()
    spaced = " ".join(f"{b:02x}" for b in secret)
    report = scan({"a.txt": f"dump: {plain}\n", "b.txt": f"bytes: {spaced}\n"})
    assert {f.file.split("!")[0] for f in of(report, "identifiers", "block")} == {"a.txt", "b.txt"}
    assert all("!hex@line 1" in f.file for f in of(report, "identifiers"))


def test_protected_text_index_is_cached_in_memory_and_on_disk(tmp_path):
    from enclave.review.scan import context
    from enclave.review.scan.cache import ScanCache

    source = tmp_path / "corpus.txt"
    source.write_text(SECRET * 20)
    sources = [ProtectedSource.from_path(source)]
    cache = ScanCache(disk_dir=tmp_path / "cache")
    first = context.build_text_index(sources, 32, 8, cache)
    assert context.build_text_index(sources, 32, 8, cache) is first
    [cached] = (tmp_path / "cache" / "ngram").glob("*.npz")
    again = context.build_text_index(sources, 32, 8, ScanCache(disk_dir=tmp_path / "cache"))  # a new process
    assert again is not first and (again.keys == first.keys).all()
    assert again.query(SECRET, 40)


def test_a_scan_without_a_cache_directory_writes_nothing(tmp_path):
    from enclave.review.scan import context
    from enclave.review.scan.cache import ScanCache

    source = tmp_path / "corpus.txt"
    source.write_text(SECRET * 20)
    before = sorted(tmp_path.rglob("*"))
    index = context.build_text_index([ProtectedSource.from_path(source)], 32, 8, ScanCache())
    assert index.query(SECRET, 40)
    assert sorted(tmp_path.rglob("*")) == before


def test_a_name_column_left_out_of_a_registered_dataset_still_links(tmp_path):
    """The pipeline indexes a dataset's name column even when it was registered with other
    quasi-identifiers only: a name with a date of birth still singles a person out."""
    from enclave.review.scan import DEFAULT_POLICY, ExportFile, ScanContext, load_policy, scan_files

    rows = ["name,dob,zip,sex"] + [f"Person{i} Smith,19{50 + i % 40}-0{1 + i % 9}-1{i % 9},{10000 + i},{'MF'[i % 2]}"
                                   for i in range(200)]
    (tmp_path / "people.csv").write_text("\n".join(rows) + "\n")
    context = ScanContext(protected=[ProtectedSource("people", tmp_path / "people.csv", None, ("dob", "sex"))])
    policy = load_policy(DEFAULT_POLICY)
    leak = scan_files([ExportFile("note.txt", b"We met Person7 Smith, born 1957-08-17, at the clinic.\n")], policy, context)
    assert [f.severity.value for f in leak.findings if f.check == "record_linkage"] == ["block"]
    control = scan_files([ExportFile("note.txt", b"We met Person7 Smith at the clinic.\n")], policy, context)
    assert not [f for f in control.findings if f.check == "record_linkage"]
