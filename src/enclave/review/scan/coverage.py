"""Where every byte of an export went: read by a check, handed on, left to a person, or unread.

A container keeps bytes that no viewer shows: a zip's comment, a member's extra field, data after
the archive's end, gzip header fields, PNG text chunks, a PDF's attached files and the revision an
update replaced, a notebook's metadata. Each format's reader (`ziplayout`, `archives`, `png`,
`pdf`, `notebook`) accounts for every byte it was given as `Region`s, and hands whatever is not its
own structure on as a `Part`: the pipeline scans a part like any file, so text in it is read by
the same checks as a text file, a known format is opened, and bytes of no known format are a
finding ("unexamined bytes in ...") unless the policy leaves that container type to human eyes.

`FileCoverage` adds it up per exported file, over everything found inside it, for the report.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

CHECKED = "checked"  # read by a check, or structure a reader parsed and validated
INSIDE = "inside"  # handed on as a member or part, which accounts for itself
HUMAN = "human"  # for human eyes: pixels, a PDF's rendered pages, bytes the policy leaves to a reviewer
UNEXAMINED = "unexamined"  # nothing read them: a block finding says so
HOWS = (CHECKED, INSIDE, HUMAN, UNEXAMINED)


@dataclass(frozen=True)
class Region:
    label: str  # where, for a person: "zip comment", "IDAT chunks", "" for the whole item
    size: int
    how: str


@dataclass(frozen=True)
class Part:
    """Bytes a container holds besides its members, scanned as an item of their own."""

    label: str  # "zip comment", "data after IEND", "PNG tEXt chunk 'Comment'"
    data: bytes  # decompressed or decoded where the format says how
    offset: int  # where in the container they are
    size: int  # how many bytes of the container they take (compressed, with their own headers)


def is_padding(data: bytes) -> bool:
    """Zero bytes carry nothing; tools pad with them."""
    return not data.strip(b"\x00")


def part_or_padding(label: str, data: bytes, offset: int, parts: list[Part], regions: list[Region]) -> None:
    """Account for bytes a format does not explain: zeros are padding, anything else a part (without
    the zeros around it, so that text in padding reads as text)."""
    if not data:
        return
    if is_padding(data):
        regions.append(Region(f"{label} (zero padding)", len(data), CHECKED))
    else:
        parts.append(Part(label, data.strip(b"\x00"), offset, len(data)))
        regions.append(Region(label, len(data), INSIDE))


@dataclass
class FileCoverage:
    """One exported file and everything found inside it, at any depth: how many bytes the checks
    read, how many were left to a reviewer's eyes, how many nothing read (with where they are)."""

    name: str
    checked: int = 0
    human: int = 0
    unexamined: int = 0
    human_regions: list[Region] = field(default_factory=list)
    unexamined_regions: list[Region] = field(default_factory=list)

    def add(self, item_name: str, region: Region) -> None:
        label = f"{item_name}: {region.label}" if region.label else item_name
        if region.how == CHECKED:
            self.checked += region.size
        elif region.how == HUMAN:
            self.human += region.size
            self.human_regions.append(Region(label, region.size, HUMAN))
        elif region.how == UNEXAMINED:
            self.unexamined += region.size
            self.unexamined_regions.append(Region(label, region.size, UNEXAMINED))

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "checked": self.checked, "human": self.human, "unexamined": self.unexamined,
                "human_regions": [{"where": r.label, "bytes": r.size} for r in self.human_regions],
                "unexamined_regions": [{"where": r.label, "bytes": r.size} for r in self.unexamined_regions]}

