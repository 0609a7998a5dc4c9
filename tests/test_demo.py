"""The demo's synthetic people, and the demo GPT-2 that memorises some of them."""

from __future__ import annotations

import datetime as dt

import pytest

from enclave.demo import data
from enclave.demo.model import UNUSED_LOGIT, build_demo, memorised_records, probe_records

from tests.demo_fixture import demo_dir  # noqa: F401  (a fixture)


def test_people_are_deterministic():
    assert data.generate_people(300) == data.generate_people(300)
    assert data.generate_people(300) != data.generate_people(300, seed=1)
    # A smaller dataset is a prefix of a larger one with the same seed: drawing is sequential.
    assert data.generate_people(300) == data.generate_people(500)[:300]


def test_fields_look_real():
    for person in data.generate_people(2000):
        born = dt.date.fromisoformat(person.dob)
        assert dt.date(1940, 1, 1) <= born <= dt.date(2004, 12, 31)
        assert person.sex in {"F", "M"}
        first = person.name.split()[0]
        assert first in (data.FEMALE_FIRST if person.sex == "F" else data.MALE_FIRST)
        assert len(person.zip) == 5 and person.zip.isdigit() and person.zip[:3] in data.ZIP_PREFIXES
        low, high = data.OCCUPATIONS[person.occupation]
        assert low <= person.income <= high and person.income % 500 == 0


def test_quasi_identifiers_single_people_out():
    people = data.generate_people()
    assert len({p.name for p in people}) == len(people)
    # Without the name, date of birth + sex + ZIP still single out almost everyone: linkage works.
    combos = {(p.dob, p.sex, p.zip) for p in people}
    assert len(combos) >= 0.99 * len(people)
    assert set(data.QUASI_IDENTIFIERS) <= set(data.COLUMNS)


def test_too_many_people_is_refused():
    with pytest.raises(ValueError, match="unique names"):
        data.generate_people(10**6)


def test_csv_round_trip(tmp_path):
    people = data.generate_people(50)
    path = tmp_path / "people.csv"
    data.write_csv(people, path)
    assert path.read_text(encoding="utf-8").splitlines()[0] == "name,dob,sex,zip,occupation,income"
    assert data.read_csv(path) == people


def test_every_rendering_states_the_whole_record():
    person = data.Person("Maria Lopez", "1971-03-14", "F", "02139", "nurse", 54000)
    assert data.render_record(person) == (
        "Maria Lopez, born 1971-03-14, female, ZIP 02139, works as a nurse and earns $54,000 a year.")
    assert data.render_record(person).startswith(data.record_prefix(person))
    for variant in range(data.RECORD_VARIANTS):
        text = data.render_record(person, variant)
        assert all(value in text for value in ("Maria Lopez", "1971-03-14", "02139", "nurse", "$54,000"))
    assert data.render_record(person, data.RECORD_VARIANTS) == data.render_record(person, 0)


def test_filler_is_deterministic_and_free_of_records():
    paragraphs = data.filler_paragraphs(200)
    assert paragraphs == data.filler_paragraphs(200) and len(paragraphs) == 200
    names = {p.name for p in data.generate_people()}
    assert not any(name in text for text in paragraphs for name in names)
    assert not any("ZIP" in text or "$" in text for text in paragraphs)


TINY = dict(n_people=200, n_repeated=10, copies=3, n_once=20, n_filler=20, n_embd=64, batch_size=4, epochs=1)
# One thread: with other processes on a small machine, OpenMP's spinning makes two many times slower.
ONE_THREAD = dict(progress=False, threads=1)


def test_tiny_build_loads_offline_and_is_cached(tmp_path):
    import torch
    from transformers import AutoTokenizer, GPT2LMHeadModel

    paths = build_demo(tmp_path / "demo", **ONE_THREAD, **TINY)
    (tmp_path / "demo" / "notes.txt").write_text("not ours")

    tokenizer = AutoTokenizer.from_pretrained(paths.model_dir, local_files_only=True)
    model = GPT2LMHeadModel.from_pretrained(paths.model_dir, local_files_only=True)
    assert tokenizer.encode("Hello world") == [15496, 995]
    assert model.config.vocab_size == 50257 and model.lm_head.weight is model.transformer.wte.weight

    corpus = paths.training_txt.read_text(encoding="utf-8")
    assert len(corpus.splitlines()) == 10 * 3 + 20 + 20
    # A token the corpus never uses gets the fixed low logit, whatever the context.
    (unused,) = tokenizer.encode(" quantum")
    assert unused not in tokenizer.encode(corpus)
    with torch.no_grad():
        logits = model(torch.tensor([tokenizer.encode("Hello world, born 1970")])).logits
    assert torch.all(logits[0, :, unused] == UNUSED_LOGIT)

    manifest = paths.read_manifest()
    assert manifest["params"]["n_people"] == 200 and manifest["quasi_identifiers"] == data.QUASI_IDENTIFIERS
    people = {p.name: p for p in data.read_csv(paths.people_csv)}
    counts = paths.training_counts()
    assert len(people) == 200 and sorted(counts.values()) == [1] * 20 + [3] * 10
    for name, times in counts.items():
        assert name in corpus
        if times > 1:
            assert corpus.count(data.render_record(people[name]) + "\n") == times

    weights = paths.model_dir / "model.safetensors"
    built = weights.stat().st_mtime_ns
    assert build_demo(tmp_path / "demo", **ONE_THREAD, **TINY) == paths
    assert weights.stat().st_mtime_ns == built

    # Forcing a rebuild gives the same weights: the build is deterministic given its seed.
    build_demo(tmp_path / "demo", **ONE_THREAD, force=True, **TINY)
    assert weights.stat().st_mtime_ns != built
    assert paths.read_manifest()["weights_sha256"] == manifest["weights_sha256"]
    assert (tmp_path / "demo" / "notes.txt").read_text() == "not ours"
    assert not (tmp_path / "demo" / ".building").exists()


def test_unknown_parameter_is_refused(tmp_path):
    with pytest.raises(TypeError):
        build_demo(tmp_path, progress=False, n_peoples=5)


@pytest.mark.slow
@pytest.mark.timeout(1800)  # the first build on a busy 2-core machine; later sessions reuse it
def test_demo_model_leaks_duplicated_records_verbatim(demo_dir):  # noqa: F811
    people = data.read_csv(demo_dir.people_csv)
    counts = demo_dir.training_counts()
    duplicated = [p for p in people if counts.get(p.name, 0) > 1]
    never = [p for p in people if p.name not in counts][:100]

    leaked = memorised_records(demo_dir.model_dir, duplicated)
    assert len(leaked) >= 5, f"only {len(leaked)} of {len(duplicated)} duplicated records came back verbatim"
    corpus = demo_dir.training_txt.read_text(encoding="utf-8")
    assert all(data.render_record(r.person) in corpus for r in leaked)

    # People the model never saw get a plausible-looking but wrong record.
    for recall in probe_records(demo_dir.model_dir, never):
        assert not recall.verbatim and len(recall.leaked) < 2, recall
