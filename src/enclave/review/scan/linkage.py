"""Record linkage: do values of an export single out one record of a protected dataset?

Sweeney showed that ZIP code, date of birth and sex single out most Americans; a name with a date
of birth does so outright. So the question is not whether a value of a protected dataset appears
(the value "F" appears everywhere) but whether values *of one record* appear close together that
fewer than k records of the dataset share (k-anonymity's equivalence class): a direct identifier
(a name, by the policy's column names) with any other value of the record, or at least
`min_values` quasi-identifiers. A name alone, one quasi-identifier, or values that k records share
do not single anyone out.

Values are compared in the folded view (`textfold`), so case, spacing, punctuation and look-alike
characters do not matter; dates are compared as calendar dates, whatever their format
(1961-03-02, 03/02/1961, 2 March 1961, 19610302); a name spelt out letter by letter still matches.
Values shared by many records (sex, a common ZIP code) never start a match, they only confirm one
found through a rarer value, so the work stays proportional to the rare values found.

"Close together" means within `window` characters for the policy's combinations (name + date of
birth stays a disclosure when a line break is put between them) and for a direct identifier with
a value few records share; every other combination must be on one line, because weak values (sex,
occupation, income) would otherwise add up across the rows of a table to a person who is in none
of them.
"""
from __future__ import annotations

import bisect
import csv
import datetime as dt
import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from enclave.review.scan.charruns import code_points
from enclave.review.scan.textfold import SEP, Folded, fold

_MONTHS = {m: i for i, m in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), start=1)}
_SEX = {"f": "f", "female": "f", "woman": "f", "w": "f", "m": "m", "male": "m", "man": "m"}
_MONTH_WORD = r"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*"
# Over folded text (lower case; every run of punctuation or space is one or more spaces). One
# pattern with alternatives, because each scan of the text costs the same whatever it looks for.
_DATES = re.compile(
    r"(?<![0-9a-z])(?:"
    r"(?P<ymd_y>\d{4}) +(?P<ymd_m>\d{1,2}) +(?P<ymd_d>\d{1,2})"
    r"|(?P<xyz_a>\d{1,2}) +(?P<xyz_b>\d{1,2}) +(?P<xyz_y>\d{4})"
    r"|(?P<dmy_d>\d{1,2})(?:st|nd|rd|th)? +(?:of +)?(?P<dmy_m>" + _MONTH_WORD + r") +(?P<dmy_y>\d{4})"
    r"|(?P<mdy_m>" + _MONTH_WORD + r") +(?P<mdy_d>\d{1,2}) +(?P<mdy_y>\d{4})"
    r"|(?P<c_y>(?:19|20)\d{2})(?P<c_m>\d{2})(?P<c_d>\d{2})"
    r")(?![0-9a-z])")


def _date_key(y: int, m: int, d: int) -> str | None:
    try:
        return "d:" + dt.date(y, m, d).strftime("%Y%m%d")
    except ValueError:
        return None


def parse_date(value: str) -> str | None:
    """The date key of a protected value, if it is a date in a format we read."""
    found = dates_in(fold(value).text)
    keys = {k for _, _, k in found}
    return keys.pop() if len(keys) == 1 else None


def dates_in(folded_text: str) -> list[tuple[int, int, str]]:
    """(start, end, date key) for every date written in the folded text (ambiguous ones both ways)."""
    out = []
    seen: set[tuple[int, int]] = set()
    for m in _date_matches(folded_text):
        if m.span() in seen:
            continue
        seen.add(m.span())
        g = m.groupdict()
        if g["ymd_y"]:
            candidates = [(int(g["ymd_y"]), int(g["ymd_m"]), int(g["ymd_d"]))]
        elif g["xyz_y"]:  # 03/02/1961: March 2 (US) or 3 February (elsewhere)
            y, a, b = int(g["xyz_y"]), int(g["xyz_a"]), int(g["xyz_b"])
            candidates = [(y, a, b), (y, b, a)]
        elif g["dmy_y"]:
            candidates = [(int(g["dmy_y"]), _MONTHS[g["dmy_m"][:3]], int(g["dmy_d"]))]
        elif g["mdy_y"]:
            candidates = [(int(g["mdy_y"]), _MONTHS[g["mdy_m"][:3]], int(g["mdy_d"]))]
        else:
            candidates = [(int(g["c_y"]), int(g["c_m"]), int(g["c_d"]))]
        for y, mo, d in candidates:
            key = _date_key(y, mo, d)
            if key:
                out.append((m.start(), m.end(), key))
    return out


# Every date we read has a four-digit year in it (or is an eight-digit yyyymmdd).
_YEAR = re.compile(r"(?<![0-9])(?:1[89]|20)\d\d(?:\d{4})?(?![0-9])")
_DATE_REACH = 40  # characters a date can extend either side of its year ("2nd of September 1961")


def _date_matches(folded_text: str):
    """`_DATES` matches, looked for only around four-digit years (a digit-led pattern `re` finds
    fast), instead of trying month names at every letter of the text."""
    windows: list[list[int]] = []
    for m in _YEAR.finditer(folded_text):
        a, b = max(0, m.start() - _DATE_REACH), m.end() + _DATE_REACH
        if windows and a <= windows[-1][1]:
            windows[-1][1] = b
        else:
            windows.append([a, b])
    for a, b in windows:
        # With pos/endpos (unlike a slice) the lookbehind still sees the text before the window;
        # windows reach far enough past the year that the lookahead sees real text too.
        # Overlapping matches too: in "1 5 1969 02 11" (a table's cell 1.5, then the next row's
        # date) "1 5 1969" reads as a date and must not hide 1969-02-11.
        end = min(b, len(folded_text))
        m = _DATES.search(folded_text, a, end)
        while m:
            yield m
            m = _DATES.search(folded_text, m.start() + 1, end)


def _value_keys(kind: str, value: str) -> list[str]:
    if kind == "date":
        key = parse_date(value)
        return [key] if key else []
    if kind == "sex":
        sex = _SEX.get(fold(value).text.strip())
        return [f"s:{sex}"] if sex else []
    tokens = fold(value).text.split()
    if not tokens:
        return []
    keys = ["t:" + " ".join(tokens)]
    if len(tokens) > 1:
        keys.append("t:" + "".join(tokens))  # "MariaLopez", "M a r i a  L o p e z"
    if len(tokens) == 1 and tokens[0].isdigit() and len(tokens[0]) >= 4:
        digits = tokens[0]  # 100500 is also written 100,500
        groups = [digits[max(0, i - 3):i] for i in range(len(digits), 0, -3)][::-1]
        keys.append("t:" + " ".join(groups))
    return keys


def _column_kind(values: list[str]) -> str:
    sample = [v for v in values[:500] if v.strip()]
    if not sample:
        return "text"
    if all(fold(v).text.strip() in _SEX for v in sample):
        return "sex"
    if sum(parse_date(v) is not None for v in sample) >= 0.8 * len(sample):
        return "date"
    return "text"


@dataclass
class RecordIndex:
    """Quasi-identifier values of one protected dataset, keyed by their folded form."""

    dataset: str
    columns: list[str]
    rows: list[list[str]]  # the QI values of each record, for reviewers' evidence
    record_keys: list[list[list[str]]]  # record -> column -> value keys
    postings: dict[str, list[int]]  # value key -> record * ncols + column
    max_tokens: int  # longest token phrase among the keys
    first_tokens: set[str] = field(default_factory=set)

    @classmethod
    def from_rows(cls, dataset: str, columns: list[str], rows: list[list[str]]) -> "RecordIndex":
        kinds = [_column_kind([r[c] for r in rows]) for c in range(len(columns))]
        postings: dict[str, list[int]] = {}
        record_keys = []
        max_tokens = 1
        first_tokens: set[str] = set()
        ncols = len(columns)
        for r, row in enumerate(rows):
            per_column = []
            for c, value in enumerate(row):
                keys = _value_keys(kinds[c], value)
                per_column.append(keys)
                for key in keys:
                    postings.setdefault(key, []).append(r * ncols + c)
                    if key.startswith("t:"):
                        words = key[2:].split(" ")
                        max_tokens = max(max_tokens, len(words))
                        first_tokens.add(words[0])
            record_keys.append(per_column)
        return cls(dataset, columns, rows, record_keys, postings, max_tokens, first_tokens)

    @classmethod
    def from_csv(cls, dataset: str, path: Path, quasi_identifiers: Iterable[str],
                 direct_identifiers: Iterable[str] = ()) -> "RecordIndex":
        """The named quasi-identifier columns of a CSV (every column when none are named), and
        also any column whose name matches `direct_identifiers` (a name column that whoever
        registered the dataset did not list is still a name)."""
        patterns = list(direct_identifiers)
        with path.open(newline="", encoding="utf-8", errors="replace") as handle:
            delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
            reader = csv.reader(handle, delimiter=delimiter)
            header = [h.strip() for h in next(reader, [])]
            named = list(quasi_identifiers)
            # No names given: every column is a quasi-identifier (a CSV named with --protect).
            wanted = ([q for q in named if q in header]
                      + [h for h in header if h not in named and is_direct_identifier(h, patterns)]) if named else header
            at = [header.index(q) for q in wanted]
            rows = [[row[i].strip() if i < len(row) else "" for i in at] for row in reader if row]
        return cls.from_rows(dataset, wanted, rows)


@dataclass(frozen=True)
class Linked:
    dataset: str
    record_number: int  # 1-based data row of the protected file
    record: dict[str, str]
    matched: tuple[str, ...]
    start: int  # span of the matched values in the original text
    end: int
    group_size: int = 1  # records of the dataset that share the matched values (people, see _group_size)


def is_direct_identifier(column: str, patterns: Iterable[str]) -> bool:
    """Whether a column name is a direct identifier by the policy's patterns ("Full Name" is full_name)."""
    name = re.sub(r"[\s\-]+", "_", column.strip().lower())
    return any(fnmatch.fnmatchcase(name, re.sub(r"[\s\-]+", "_", p.strip().lower())) for p in patterns)


def _occurrences(index: RecordIndex, folded: Folded, text_tokens: list[str], token_starts: np.ndarray,
                 token_ends: np.ndarray, folded_text: str) -> dict[str, list[tuple[int, int]]]:
    """Value key -> sorted (start, end) folded spans where the export writes it."""
    found: dict[str, list[tuple[int, int]]] = {}
    postings = index.postings

    def add(key: str, start: int, end: int) -> None:
        if key in postings:
            found.setdefault(key, []).append((start, end))

    first = index.first_tokens
    n_tokens = len(text_tokens)
    # Set operations run in C; the loop below then touches only tokens that can start a value.
    wanted = (first | _SEX.keys()) & set(text_tokens)
    if wanted:
        for i, token in enumerate(text_tokens):
            if token not in wanted:
                continue
            if token in first:
                for width in range(1, min(index.max_tokens, n_tokens - i) + 1):
                    add("t:" + " ".join(text_tokens[i:i + width]), int(token_starts[i]), int(token_ends[i + width - 1]))
            sex = _SEX.get(token)
            if sex:
                add(f"s:{sex}", int(token_starts[i]), int(token_ends[i]))
    # Letters spelt out one by one ("m a r i a l o p e z") also make a word.
    lengths = token_ends - token_starts
    singles = np.flatnonzero(lengths == 1)
    if singles.shape[0] >= 3:
        breaks = np.flatnonzero(np.diff(singles) != 1)
        run_starts = np.concatenate(([0], breaks + 1))
        run_ends = np.concatenate((breaks + 1, [singles.shape[0]]))
        for a, b in zip(run_starts.tolist(), run_ends.tolist()):
            if b - a >= 3:
                first_token, last_token = int(singles[a]), int(singles[b - 1])
                joined = "".join(text_tokens[first_token:last_token + 1])
                add("t:" + joined, int(token_starts[first_token]), int(token_ends[last_token]))
    for start, end, key in dates_in(folded_text):
        add(key, start, end)
    for spans in found.values():
        spans.sort()
    return found


def link(index: RecordIndex, text: str, *, min_values: int, combinations: list[list[str]], window: int,
         max_postings: int, k_anonymity: int = 2, direct_identifiers: Iterable[str] = ()) -> list[Linked]:
    """Records of `index` that a combination of values close together in `text` singles out.

    A combination counts when fewer than `k_anonymity` records share it and it holds a direct
    identifier (a column matching `direct_identifiers`) with another value of the record, or at
    least `min_values` values. Where the values may be: a policy combination, or a direct identifier
    with a value at most `max_postings` records share, anywhere within `window` folded characters;
    any other combination on one line."""
    folded = fold(text, separators=True)
    codes = folded.codes
    if codes.shape[0] == 0:
        return []
    is_word = codes != SEP
    edges = np.diff(np.concatenate(([False], is_word, [False])).astype(np.int8))
    token_starts = np.flatnonzero(edges == 1)
    token_ends = np.flatnonzero(edges == -1)
    folded_text = folded.text
    tokens = folded_text.split()
    if len(tokens) != token_starts.shape[0]:  # cannot happen: both split on the same separator
        raise AssertionError("token boundaries disagree")
    found = _occurrences(index, folded, tokens, token_starts, token_ends, folded_text)
    if not found:
        return []
    ncols = len(index.columns)
    usable = [combo for combo in combinations if all(c in index.columns for c in combo)]
    direct = {c for c in index.columns if is_direct_identifier(c, direct_identifiers)}
    # The fewest values any rule needs: a direct identifier and one more, min_values, a combination.
    fewest = min([2 if direct else min_values, min_values] + [len(c) for c in usable])
    # Line of a folded position, for the one-line rules: values of different people on
    # neighbouring lines (table rows, listed records) must not add up to one person.
    newlines = np.flatnonzero(code_points(text) == 10).tolist() if "\n" in text else []
    offsets = folded.offsets

    def line(pos: int) -> int:
        return bisect.bisect_right(newlines, int(offsets[min(pos, len(offsets) - 1)]))

    # A record's strongest match over all its anchors: the first anchor found may be a value it shares
    # with a neighbour's line (an income), the better one its own line with every value.
    best_of: dict[int, tuple[tuple[int, int], Linked]] = {}
    anchors = sorted((span, key) for key, spans in found.items() if len(index.postings[key]) <= max_postings
                     for span in spans)
    for (a_start, a_end), key in anchors:
        for posting in index.postings[key]:
            record = posting // ncols
            close_by: dict[str, list[tuple[int, int]]] = {}
            rare: set[str] = set()  # columns whose value here few records share
            for c in range(ncols):
                for value_key in index.record_keys[record][c]:
                    spans = found.get(value_key)
                    if not spans:
                        continue
                    k = bisect.bisect_left(spans, (a_start - window, -1))
                    close = [s for s in spans[k:k + 64] if s[0] <= a_end + window]
                    if close:
                        close_by[index.columns[c]] = close
                        if len(index.postings[value_key]) <= max_postings:
                            rare.add(index.columns[c])
                        break
            # Most anchors (a ZIP code that is also part of some number) stop here, before any
            # line arithmetic.
            if len(close_by) < fewest:
                continue
            anchor_line = line(a_start)
            near: dict[str, tuple[int, int]] = {}
            same_line: set[str] = set()
            for name, close in close_by.items():
                # The occurrence nearest the anchor, on its line if there is one there.
                best = min(close, key=lambda s: (line(s[0]) != anchor_line, abs(s[0] - a_start)))
                near[name] = best
                if line(best[0]) == anchor_line:
                    same_line.add(name)
            candidates = [set(combo) for combo in usable if set(combo) <= set(near)]
            named = direct & set(near)
            if named and rare - direct:
                candidates.append(named | (rare - direct))  # a name with a rare value, lines apart
            if (direct & same_line and same_line - direct) or len(same_line - direct) >= min_values:
                candidates.append(same_line)  # a name with any value, or min_values values, on one line
            best_match: tuple[set[str], int] | None = None
            for columns in candidates:
                size = _group_size(index, record, columns, direct)
                if size < k_anonymity and (best_match is None or (len(columns), -size)
                                           > (len(best_match[0]), -best_match[1])):
                    best_match = (columns, size)
            if best_match is None:
                continue
            matched = [c for c in index.columns if c in best_match[0]]
            lo = min(near[c][0] for c in matched)
            hi = max(near[c][1] for c in matched)
            strength = (len(matched), lo - hi)
            if record in best_of and best_of[record][0] >= strength:
                continue
            start, end = folded.span(lo, hi, len(text))
            best_of[record] = (strength, Linked(index.dataset, record + 1, dict(zip(index.columns, index.rows[record])),
                                                tuple(matched), start, end, best_match[1]))
    return _strongest([linked for _, linked in best_of.values()])


def _group_size(index: RecordIndex, record: int, columns: set[str], direct: set[str] = frozenset()) -> int:
    """How many records share this record's values in `columns` (k-anonymity's equivalence class).

    In a dataset with a direct identifier, records identical in every indexed column are one
    person listed twice (a visit per row), so they count once: repeating a row must not make a
    name with a date of birth anonymous."""
    ncols = len(index.columns)
    at = [c for c, name in enumerate(index.columns) if name in columns]
    mine = {c: set(index.record_keys[record][c]) for c in at}
    if not at or not all(mine.values()):
        return 0
    # Start from the column whose values the fewest records hold; check the others record by record.
    first = min(at, key=lambda c: sum(len(index.postings[k]) for k in mine[c]))
    holders = {p // ncols for k in mine[first] for p in index.postings[k] if p % ncols == first}
    rest = [c for c in at if c != first]
    group = [r for r in holders if all(mine[c].intersection(index.record_keys[r][c]) for c in rest)]
    if direct & set(index.columns):
        return len({tuple(index.rows[r]) for r in group})
    return len(group)


def _strongest(found: list[Linked]) -> list[Linked]:
    """Drop a match that lies inside a stronger one: a line that states one person's whole record
    also matches, in part, other people who share some of its values; that is the same disclosure.
    So is the same span matching each record of a small group: it is reported once, with its size."""
    kept: list[Linked] = []
    for link_ in sorted(found, key=lambda f: (-len(f.matched), f.start, f.record_number)):
        if not any(k.start <= link_.start and link_.end <= k.end
                   and (len(k.matched) > len(link_.matched)
                        or (k.start, k.end, k.matched) == (link_.start, link_.end, link_.matched)) for k in kept):
            kept.append(link_)
    kept.sort(key=lambda f: f.start)
    return kept
