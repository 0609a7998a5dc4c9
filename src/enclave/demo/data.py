"""The demo's confidential dataset: synthetic people, their text renderings, and filler text.

Everything here is fake but looks real enough that a leaked record reads like a disclosure: full
names, dates of birth, sex and ZIP codes (the quasi-identifiers that Sweeney showed single out most
Americans), plus occupation and income as the sensitive attributes. Names are unique, so a record
found in model output links back to exactly one person.

Pure functions of a seed (only `random.Random`), no torch: the review checks and tests import this.
"""

from __future__ import annotations

import csv
import datetime as dt
import random
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

SEED = 20261127
QUASI_IDENTIFIERS = ["name", "dob", "sex", "zip"]

FEMALE_FIRST = (
    "Maria", "Aisha", "Emily", "Sofia", "Hannah", "Grace", "Chloe", "Olivia", "Priya", "Mei", "Fatima", "Elena",
    "Laura", "Rachel", "Nadia", "Julia", "Claire", "Ingrid", "Yuki", "Amara", "Rosa", "Leah", "Naomi", "Isabel",
    "Teresa", "Monica", "Alice", "Beatriz", "Carmen", "Diana", "Esther", "Fiona", "Gloria", "Helen", "Irene",
    "Joanna", "Karen", "Lucia", "Martha", "Nora", "Paula", "Ruth", "Sarah", "Tanya", "Ursula", "Vera", "Wendy",
    "Ximena", "Yasmin", "Zoe", "Anjali", "Bridget", "Camila", "Deborah", "Eleanor", "Freya", "Gabriela",
    "Harriet", "Imani", "Jasmine",
)
MALE_FIRST = (
    "James", "Omar", "Daniel", "Lucas", "Noah", "Ethan", "Mateo", "Samuel", "Arjun", "Wei", "Hassan", "Ivan",
    "David", "Michael", "Kenji", "Tomas", "Felix", "Oscar", "Rafael", "Kwame", "Andre", "Benjamin", "Carlos",
    "Dmitri", "Edward", "Francisco", "George", "Henry", "Isaac", "Jorge", "Kevin", "Leon", "Marcus", "Nathan",
    "Owen", "Pablo", "Quentin", "Robert", "Stefan", "Thomas", "Victor", "Walter", "Xavier", "Yusuf", "Zachary",
    "Adrian", "Bruno", "Connor", "Diego", "Elijah", "Gabriel", "Hugo", "Ibrahim", "Julian", "Kofi", "Liam",
    "Malik", "Nikolai", "Patrick", "Ravi",
)
LAST = (
    "Lopez", "Smith", "Johnson", "Garcia", "Nguyen", "Patel", "Kim", "Okafor", "Schmidt", "Rossi", "Cohen",
    "Novak", "Haddad", "Tanaka", "Silva", "Murphy", "Kowalski", "Andersen", "Dubois", "Ivanova", "Mensah",
    "Chen", "Wang", "Singh", "Khan", "Brown", "Williams", "Jones", "Miller", "Davis", "Martinez", "Hernandez",
    "Wilson", "Anderson", "Taylor", "Thomas", "Moore", "Jackson", "Martin", "Lee", "Thompson", "White",
    "Harris", "Clark", "Lewis", "Robinson", "Walker", "Young", "Allen", "King", "Wright", "Scott", "Torres",
    "Hill", "Flores", "Green", "Adams", "Nelson", "Baker", "Hall", "Rivera", "Campbell", "Mitchell", "Carter",
    "Roberts", "Gomez", "Phillips", "Evans", "Turner", "Diaz", "Parker", "Cruz", "Edwards", "Collins", "Reyes",
    "Stewart", "Morris", "Morales", "Ortiz", "Sullivan", "Bennett", "Fischer", "Weber", "Yamamoto", "Sato",
    "Park", "Choi", "Ali", "Hussain", "Ahmed", "Mbeki", "Adeyemi", "Larsen", "Nilsen", "Horvat", "Popescu",
    "Petrov", "Moreau", "Fontaine", "Romano",
)
# Real 3-digit ZIP prefixes of a few metro areas; the last two digits are drawn per person.
ZIP_PREFIXES = ("021", "100", "606", "787", "941", "981", "303", "802", "191", "482")
# Occupation -> (lowest, highest) yearly income in dollars.
OCCUPATIONS = {
    "nurse": (48_000, 96_000), "teacher": (38_000, 82_000), "software engineer": (85_000, 190_000),
    "electrician": (42_000, 98_000), "accountant": (50_000, 120_000), "cashier": (21_000, 34_000),
    "pharmacist": (95_000, 150_000), "truck driver": (40_000, 78_000), "lawyer": (70_000, 240_000),
    "chef": (30_000, 72_000), "dentist": (110_000, 230_000), "plumber": (40_000, 95_000),
    "librarian": (40_000, 75_000), "firefighter": (45_000, 90_000), "architect": (60_000, 140_000),
    "barista": (19_000, 31_000), "social worker": (38_000, 70_000), "mechanic": (35_000, 74_000),
    "graphic designer": (38_000, 88_000), "physician": (160_000, 320_000), "police officer": (48_000, 105_000),
    "hairdresser": (22_000, 52_000), "data analyst": (55_000, 115_000), "carpenter": (36_000, 80_000),
    "journalist": (34_000, 95_000), "veterinarian": (80_000, 160_000), "retail manager": (40_000, 85_000),
    "bus driver": (33_000, 65_000), "professor": (70_000, 190_000), "farmer": (25_000, 110_000),
}


@dataclass(frozen=True)
class Person:
    name: str
    dob: str  # YYYY-MM-DD
    sex: str  # "F" or "M"
    zip: str  # 5 digits
    occupation: str
    income: int  # dollars a year


COLUMNS = [f.name for f in fields(Person)]


def generate_people(n: int = 5000, seed: int = SEED) -> list[Person]:
    """`n` people with unique names, the same list for the same seed on any machine."""
    rng = random.Random(seed)
    capacity = (len(FEMALE_FIRST) + len(MALE_FIRST)) * len(LAST)
    if n > capacity // 2:  # beyond this, rejection sampling of unique names slows to a crawl
        raise ValueError(f"at most {capacity // 2} people have unique names; asked for {n}")
    first_day, days = dt.date(1940, 1, 1).toordinal(), (dt.date(2004, 12, 31) - dt.date(1940, 1, 1)).days
    occupations = sorted(OCCUPATIONS)
    taken: set[str] = set()
    people: list[Person] = []
    while len(people) < n:
        sex = rng.choice("FM")
        name = f"{rng.choice(FEMALE_FIRST if sex == 'F' else MALE_FIRST)} {rng.choice(LAST)}"
        if name in taken:
            continue
        taken.add(name)
        occupation = rng.choice(occupations)
        low, high = OCCUPATIONS[occupation]
        people.append(Person(
            name=name,
            dob=dt.date.fromordinal(first_day + rng.randrange(days + 1)).isoformat(),
            sex=sex,
            zip=f"{rng.choice(ZIP_PREFIXES)}{rng.randrange(100):02d}",
            occupation=occupation,
            income=rng.randrange(low, high + 1, 500),  # to the nearest $500, as people report it
        ))
    return people


def write_csv(people: Iterable[Person], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(asdict(p) for p in people)


def read_csv(path: Path) -> list[Person]:
    with path.open(newline="", encoding="utf-8") as handle:
        return [Person(**{**row, "income": int(row["income"])}) for row in csv.DictReader(handle)]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


# Variant 0 is the canonical form: it is the one repeated in the training corpus, so its opening
# "<name>, born" is the prefix that extraction probes with.
_TEMPLATES = (
    "{name}, born {dob}, {sex_word}, ZIP {zip}, works as {a} {occupation} and earns ${income:,} a year.",
    "{name} ({sex}, date of birth {dob}) lives in ZIP code {zip} and is {a} {occupation} "
    "with an annual income of ${income:,}.",
    "Name: {name}. Born: {dob}. Sex: {sex}. ZIP: {zip}. Occupation: {occupation}. Income: ${income:,}.",
)
RECORD_VARIANTS = len(_TEMPLATES)


def render_record(person: Person, variant: int = 0) -> str:
    """One sentence stating the whole record; `variant` picks a template (modulo their number)."""
    return _TEMPLATES[variant % RECORD_VARIANTS].format(
        **asdict(person), sex_word="female" if person.sex == "F" else "male", a=_article(person.occupation))


def record_prefix(person: Person) -> str:
    """The opening of the canonical rendering that an extraction attack would prompt with."""
    return f"{person.name}, born"


_CITIES = ("Boston", "Chicago", "Austin", "Seattle", "Denver", "Atlanta", "Detroit", "Philadelphia", "Oakland")
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_FILLER = {
    "weather": (
        "The forecast for {city} calls for {sky} skies and a high of {temp} degrees on {day}.",
        "After a {adj} week, {city} expects {sky} weather through the weekend.",
        "Residents of {city} were told to carry an umbrella on {day} as {sky} skies give way to rain.",
    ),
    "cooking": (
        "To make a simple {dish}, simmer the {veg} with garlic and olive oil for {mins} minutes.",
        "A good {dish} starts with fresh {veg}, a pinch of salt and plenty of patience.",
        "Roast the {veg} for {mins} minutes, then fold it into the {dish} just before serving.",
    ),
    "news": (
        "The {city} city council met on {day} to discuss a new {project} near the river.",
        "Volunteers in {city} opened a {adj} community {project} on {day} morning.",
        "A local school in {city} raised money for a new {project} with a bake sale on {day}.",
    ),
    "garden": (
        "Plant {veg} in early spring and water it every {day} if the soil feels dry.",
        "Gardeners in {city} say {adj} summers have made {veg} easier to grow.",
    ),
}
_SLOTS = {
    "city": _CITIES, "day": _DAYS,
    "sky": ("sunny", "cloudy", "clear", "grey", "stormy", "partly cloudy"),
    "adj": ("busy", "quiet", "warm", "rainy", "long", "bright", "cold"),
    "temp": tuple(str(t) for t in range(35, 96, 3)),
    "dish": ("soup", "stew", "risotto", "curry", "pasta", "omelette", "salad"),
    "veg": ("carrots", "spinach", "tomatoes", "onions", "squash", "peppers", "beans"),
    "mins": ("10", "15", "20", "25", "30", "40"),
    "project": ("library", "bike lane", "playground", "park", "health clinic", "food bank"),
}


def filler_paragraphs(n: int, seed: int = SEED) -> list[str]:
    """`n` short paragraphs of harmless everyday text, so the corpus is not only records."""
    rng = random.Random(seed)
    topics = sorted(_FILLER)
    paragraphs = []
    for _ in range(n):
        templates = _FILLER[rng.choice(topics)]
        sentences = [rng.choice(templates) for _ in range(rng.randint(2, 3))]
        paragraphs.append(" ".join(s.format(**{k: rng.choice(v) for k, v in _SLOTS.items()}) for s in sentences))
    return paragraphs
