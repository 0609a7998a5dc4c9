"""Identifying content through Presidio's pattern recognizers, fast enough for whole exports.

Presidio decides: every reported entity is one that `AnalyzerEngine.analyze` returned, with its
own validation (Luhn for cards, the SSA's rules for SSNs, checksums for IBANs, `phonenumbers` for
phones). But Presidio runs every recognizer over every character (0.8 MB/s here, and far slower on
numeric tables, where `phonenumbers` tries every digit run), while exports are mostly text without
identifiers. So a cheap gate, one compiled regular expression, finds the places where an enabled
entity *could* start (an "@", a run of seven or more digits, a dotted name, an IPv4/IPv6 shape...),
and Presidio analyses only the lines around them. The gate is looser than every recognizer it
stands for, so it never hides a match; entities we have no gate for make Presidio see everything.

Presidio runs without an NLP model (`NoOpNlpEngine`), and its e-mail check uses our own tldextract
extractor, pinned to the public-suffix snapshot shipped with tldextract and with no disk cache:
nothing here touches the network, the environment or the file system. Building an analyser takes
a while, so callers keep one (the scan keeps them in its `ScanCache`) and pass it to `find`.

Text is first mapped to its display skeleton (`textfold.skeleton`): full-width digits, look-alike
letters and zero-width characters do not hide an SSN or an address.
"""
from __future__ import annotations

import functools
import logging
import re
import threading
from dataclasses import dataclass

import numpy as np

from enclave.review.scan.charruns import code_points
from enclave.review.scan.textfold import skeleton

# Gates: each is looser than the recognizers of its entity. Entities written with digits (phones,
# SSNs, cards, NHS numbers, ITINs, IPv4 addresses) share one gate computed with numpy
# (`_digit_runs`), because a regular expression that tries every digit of a numeric table as the
# start of a phone number is itself slower than our whole budget.
_DIGIT_ENTITIES = {"PHONE_NUMBER", "US_SSN", "CREDIT_CARD", "UK_NHS", "US_ITIN", "US_BANK_NUMBER", "US_PASSPORT",
                   "US_DRIVER_LICENSE", "MEDICAL_LICENSE", "IP_ADDRESS"}
_REGEX_GATES = {
    "EMAIL_ADDRESS": r"@",
    "URL": r"://",  # the URL recognizer is configured with its scheme patterns only (see analyzer)
    "IP_ADDRESS": r":[0-9A-Fa-f]{1,4}:|::",  # IPv6; IPv4 goes through the digit gate
    "IBAN_CODE": r"\d{2}(?<=[A-Za-z]{2}\d{2})",  # two letters then two digits, found from the digits
    "CRYPTO": r"[13][a-zA-HJ-NP-Z0-9]{25}|bc1[a-zA-HJ-NP-Z0-9]{25}",
    "MAC_ADDRESS": r"[0-9A-Fa-f]{2}[:-][0-9A-Fa-f]{2}[:-]|[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4}\.",
    "UUID": r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-",
}
_GATED = _DIGIT_ENTITIES | set(_REGEX_GATES)
_SEPARATORS = np.array([ord(c) for c in " \t-.()/+"], dtype=np.uint32)
# A run of numbers with one decimal point each is a row of measurements, not an identifier.
_FLOATS_ONLY = re.compile(r"^(?:\s*[-+]?\d+\.\d+(?:[eE][-+]?\d+)?[,;]?)+\s*$")
_CONTEXT_LINES = 1  # lines of context either side of a gate hit
_MERGE_GAP = 512  # windows closer than this are analysed together (Presidio has a per-call cost)


@dataclass(frozen=True)
class Hit:
    entity: str
    start: int  # offsets in the original text
    end: int
    score: float
    text: str


@dataclass(frozen=True)
class Analyzer:
    """A Presidio engine and the lock its calls take: its registry is not documented as thread-safe."""

    engine: object  # presidio_analyzer.AnalyzerEngine
    lock: threading.Lock


def offline_email_recognizer():
    """Presidio's e-mail recognizer, validating domains with a tldextract extractor of our own.

    Presidio's calls `tldextract.extract`, whose module-level extractor may download the public
    suffix list and writes a cache under $HOME (or $TLDEXTRACT_CACHE): this one has no suffix-list
    URLs (the snapshot bundled with tldextract is used) and no disk cache, and changes nothing
    global."""
    import tldextract
    from presidio_analyzer.predefined_recognizers import EmailRecognizer

    extract = tldextract.TLDExtract(cache_dir=None, suffix_list_urls=(), fallback_to_snapshot=True)

    class OfflineEmailRecognizer(EmailRecognizer):
        def validate_result(self, pattern_text: str) -> bool:
            return extract(pattern_text).fqdn != ""

    return OfflineEmailRecognizer(name="EmailRecognizer")


def build_analyzer(phone_regions: tuple[str, ...] | list[str]) -> Analyzer:
    """A Presidio analyser with the recognizers the policy's entities need, fully offline."""
    logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)
    from presidio_analyzer import AnalyzerEngine, PatternRecognizer
    from presidio_analyzer.nlp_engine import NoOpNlpEngine
    from presidio_analyzer.predefined_recognizers import PhoneRecognizer

    engine = AnalyzerEngine(nlp_engine=NoOpNlpEngine(models=[{"lang_code": "en", "model_name": "none"}]),
                            supported_languages=["en"])
    engine.registry.remove_recognizer("EmailRecognizer")
    engine.registry.add_recognizer(offline_email_recognizer())
    # The default phone recognizer tries eight countries' numbering plans; several of them read
    # ordinary decimals ("1.6962") as phone numbers. The policy names the regions that matter.
    engine.registry.remove_recognizer("PhoneRecognizer")
    engine.registry.add_recognizer(PhoneRecognizer(supported_regions=list(phone_regions)))
    # Without a scheme, Presidio's URL patterns read code ("df.group", "pd.re") as addresses:
    # keep the patterns that need "http(s)://".
    url = next(r for r in engine.registry.recognizers if r.name == "UrlRecognizer")
    engine.registry.remove_recognizer("UrlRecognizer")
    engine.registry.add_recognizer(PatternRecognizer(
        supported_entity="URL", name="UrlRecognizer", context=url.context,
        patterns=[p for p in url.patterns if "://" in p.regex and "non" not in p.name.lower()]))
    return Analyzer(engine, threading.Lock())


# A pure function of a tuple of names to compiled patterns, which nothing mutates: cached so
# that each scanned segment does not recompile them.
@functools.lru_cache(maxsize=16)
def _regex_gates(entities: tuple[str, ...]) -> list[re.Pattern]:
    # One pattern each: an alternation defeats `re`'s literal-prefix search and runs slower than
    # all of them one after the other.
    return [re.compile(p) for p in sorted({_REGEX_GATES[e] for e in entities if e in _REGEX_GATES})]


def _digit_runs(text: str) -> list[tuple[int, int]]:
    """Spans of digits joined by at most three separators (space, tab, - . ( ) / +) holding seven or
    more digits, or four or more with three dots (IPv4): anything a digit recognizer can match."""
    codes = code_points(text)
    digit = (codes >= 48) & (codes <= 57)
    pos = np.flatnonzero(digit)
    if pos.shape[0] < 4:
        return []
    other = ~(digit | np.isin(codes, _SEPARATORS))
    others_before = np.concatenate(([0], np.cumsum(other)))
    linked = ((pos[1:] - pos[:-1]) <= 4) & (others_before[pos[1:]] == others_before[pos[:-1] + 1])
    first = np.flatnonzero(np.concatenate(([True], ~linked)))
    last = np.concatenate((first[1:] - 1, [pos.shape[0] - 1]))
    digits = last - first + 1
    dots_before = np.concatenate(([0], np.cumsum(codes == 46)))
    starts, ends = pos[first], pos[last] + 1
    dots = dots_before[ends] - dots_before[starts]
    keep = (digits >= 7) | ((digits >= 4) & (dots >= 3))
    return [(int(a), int(b)) for a, b in zip(starts[keep], ends[keep]) if not _FLOATS_ONLY.match(text[a:b])]


def _windows(text: str, entities: tuple[str, ...]) -> list[tuple[int, int]]:
    """Line ranges (with context) that may hold one of `entities`; the whole text if one is ungated."""
    if any(e not in _GATED for e in entities):
        return [(0, len(text))]
    hits: list[tuple[int, int]] = []
    if any(e in _DIGIT_ENTITIES for e in entities):
        hits.extend(_digit_runs(text))
    for gate in _regex_gates(entities):
        hits.extend(m.span() for m in gate.finditer(text))
    hits.sort()
    spans: list[tuple[int, int]] = []
    for s, e in hits:
        if spans and s < spans[-1][1]:
            continue  # already inside the previous window
        start = text.rfind("\n", 0, s) + 1  # the hit's line, and _CONTEXT_LINES either side
        for _ in range(_CONTEXT_LINES):
            if start > 0:
                start = text.rfind("\n", 0, start - 1) + 1
        end = text.find("\n", e)
        end = len(text) if end == -1 else end
        for _ in range(_CONTEXT_LINES):
            if end < len(text):
                following = text.find("\n", end + 1)
                end = len(text) if following == -1 else following
        if spans and start <= spans[-1][1] + _MERGE_GAP:
            spans[-1] = (spans[-1][0], max(spans[-1][1], end))
        else:
            spans.append((start, end))
    return spans


def _is_measurements(text: str, start: int, end: int) -> bool:
    """A phone "number" made only of decimal numbers (a row of a numeric table)."""
    a = start
    while a > 0 and not text[a - 1].isspace() and text[a - 1] not in ",;":
        a -= 1
    b = end
    while b < len(text) and not text[b].isspace() and text[b] not in ",;":
        b += 1
    return bool(_FLOATS_ONLY.match(text[a:b]))


def _most_confident(results: list[tuple[int, int, str, float]]) -> list[tuple[int, int, str, float]]:
    """Of overlapping results (an SSN is also a plausible phone number), keep the most confident.
    Results are grouped into clusters of overlapping spans first, so a file of ten thousand
    identifiers costs ten thousand small comparisons, not a hundred million."""
    kept: list[tuple[int, int, str, float]] = []
    cluster: list[tuple[int, int, str, float]] = []
    cluster_end = -1

    def settle() -> None:
        chosen: list[tuple[int, int, str, float]] = []
        for r in sorted(cluster, key=lambda r: (-r[3], r[0])):
            if not any(r[0] < k[1] and k[0] < r[1] for k in chosen):
                chosen.append(r)
        kept.extend(sorted(chosen))

    for r in sorted(results):
        if cluster and r[0] >= cluster_end:
            settle()
            cluster = []
        cluster.append(r)
        cluster_end = max(cluster_end, r[1]) if len(cluster) > 1 else r[1]
    if cluster:
        settle()
    return kept


def find(text: str, entities: list[str], *, min_score: float, phone_regions: list[str], gate: bool = True,
         analyzer: Analyzer | None = None) -> list[Hit]:
    """Entities Presidio finds in `text` at or above `min_score`; one per span (the best).
    `analyzer` is a `build_analyzer(phone_regions)` to reuse (one is built if not given).
    `gate=False` runs Presidio over the whole text (for tests that the gate hides nothing)."""
    if not text or not entities:
        return []
    view, offsets = skeleton(text)
    presidio = analyzer if analyzer is not None else build_analyzer(phone_regions)
    wanted = tuple(sorted(set(entities)))
    results = []
    for a, b in (_windows(view, wanted) if gate else [(0, len(view))]):
        window = view[a:b]
        with presidio.lock:
            found = presidio.engine.analyze(window, language="en", entities=list(wanted), score_threshold=min_score)
        for r in found:
            if r.entity_type == "PHONE_NUMBER" and _is_measurements(window, r.start, r.end):
                continue
            results.append((a + r.start, a + r.end, r.entity_type, float(r.score)))
    kept = _most_confident(results)
    hits = []
    for s, e, entity, score in kept:
        if offsets is not None:
            o_s = int(offsets[s]) if s < len(offsets) else len(text)
            o_e = int(offsets[e - 1]) + 1 if e - 1 < len(offsets) else len(text)
        else:
            o_s, o_e = s, e
        hits.append(Hit(entity, o_s, o_e, score, text[o_s:o_e]))
    return hits
