"""Checking a model card and a risk checklist before a model is onboarded. Pure: text in, findings
out (with line numbers), nothing looked up.

**The card** is a Hugging Face model card: Markdown with YAML front matter. The front matter must
give `license`, `language`, `datasets`, `base_model` ("none" for a model trained from scratch) and
evaluation results in Hugging Face's `model-index` schema (each entry a `name` and `results`, each
result a `task.type`, a `dataset.name` and `dataset.type`, and `metrics` of `type` and `value`).
The body must have the sections of Mitchell et al. 2019, "Model Cards for Model Reporting"
(intended use, factors, metrics, evaluation data, training data, ethical considerations, caveats
and recommendations), each with something in it, and no "[More Information Needed]" left from
Hugging Face's template.

**The checklist** answers, for each stage of the AI lifecycle in Madaio et al. 2020, "Co-Designing
Checklists to Understand Organizational Challenges and Opportunities around Fairness in AI"
(envision, define, prototype, build, launch, evolve), a few questions adapted from their checklist
to releasing a language model. It is a TOML file: one table per stage, one answer per item
(`enclave model checklist-template` prints a blank one). A missing or empty answer is an error.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from typing import Any

import yaml

PLACEHOLDER = "[More Information Needed]"

# Mitchell et al.'s sections: each required one, and the heading words that count as it.
REQUIRED_SECTIONS: dict[str, tuple[str, ...]] = {
    "intended use": ("intended use", "uses"),
    "factors": ("factors",),
    "metrics": ("metrics",),
    "evaluation data": ("evaluation data",),
    "training data": ("training data",),
    "ethical considerations": ("ethical considerations",),
    "caveats and recommendations": ("caveats", "recommendations"),
}
REQUIRED_FIELDS = ("license", "language", "datasets", "base_model", "model-index")
SUMMARY_CHARS = 400

# Madaio et al. 2020's lifecycle stages, each with the items a model's onboarding must answer.
CHECKLIST: dict[str, dict[str, str]] = {
    "envision": {
        "harms": "Which harms could this model's release cause (to whom, through which uses or misuses)?",
        "stakeholders": "Who is affected by the model's outputs, beyond the scholars who call it?",
    },
    "define": {
        "criteria": "Which evaluations and thresholds decide that the model is fit for its next stage?",
        "assumptions": "What do we assume about the projects and the uses that will reach it?",
    },
    "prototype": {
        "data": "What was examined in the training data (personal data, memorised text, representation)?",
        "review": "Who outside the team that built it examined the model, and what did they find?",
    },
    "build": {
        "evaluation": "Which disaggregated evaluations were run (which groups, which failures)?",
        "mitigations": "Which mitigations are in place (tiers, caps, output review)?",
    },
    "launch": {
        "monitoring": "How are incidents reported and recorded once projects use it?",
        "rollback": "Who may demote or withdraw it, and how fast does that bite?",
    },
    "evolve": {
        "reassessment": "When is the model reassessed (before each promotion, after incidents)?",
        "feedback": "How does feedback from projects and reviewers reach the people who decide?",
    },
}


@dataclasses.dataclass(frozen=True)
class Finding:
    severity: str  # "error" refuses onboarding; "warning" does not
    line: int  # 1-based; 0 when about the file as a whole
    message: str

    def render(self, source: str = "") -> str:
        where = f"{source}:{self.line}" if source else f"line {self.line}"
        return f"{where}: {self.severity}: {self.message}"

    def as_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Card:
    """A parsed card: its front matter, its sections (heading -> body) and a one-paragraph summary."""

    meta: dict
    sections: dict[str, str]
    summary: str


def errors(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity == "error"]


# --- the card ----------------------------------------------------------------------------------

def _split_front_matter(text: str) -> tuple[str | None, int, list[str]]:
    """(front matter text or None, the line the body starts on, the body's lines)."""
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        return None, 1, lines
    for i in range(1, len(lines)):
        if lines[i].strip() == "---":
            return "\n".join(lines[1:i]), i + 2, lines[i + 1:]
    return None, 1, lines


def _headings(body: list[str], first_line: int) -> list[tuple[int, str, int]]:
    """(line, normalised heading, index into body) for each Markdown heading outside code fences."""
    found, fenced = [], False
    for index, line in enumerate(body):
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
            continue
        match = re.match(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if match and not fenced:
            found.append((first_line + index, _normalise(match.group(2)), index))
    return found


def _normalise(heading: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^a-z0-9 ]", " ", heading.lower())).strip()


def _key_line(front: str, key: str) -> int:
    """The front matter line (1-based within the file: line 1 is the opening ---) of a top-level key."""
    for i, line in enumerate(front.splitlines()):
        if re.match(rf"^{re.escape(key)}\s*:", line):
            return i + 2
    return 1


def parse_card(text: str) -> Card:
    """The card's metadata, sections and summary (whatever is there; `lint_card` says what is missing)."""
    front, first_line, body = _split_front_matter(text)
    meta: Any = {}
    if front is not None:
        try:
            meta = yaml.safe_load(front) or {}
        except yaml.YAMLError:
            meta = {}
    if not isinstance(meta, dict):
        meta = {}
    heads = _headings(body, first_line)
    sections = {}
    for n, (_, name, index) in enumerate(heads):
        end = heads[n + 1][2] if n + 1 < len(heads) else len(body)
        sections[name] = "\n".join(body[index + 1:end]).strip()
    return Card(meta=meta, sections=sections, summary=_summary(body))


def _summary(body: list[str]) -> str:
    """The first paragraph of prose: what `GET /v1/models` shows next to the model's name."""
    paragraph: list[str] = []
    fenced = False
    for line in body:
        stripped = line.strip()
        if stripped.startswith(("```", "~~~")):
            fenced = not fenced
            continue
        if fenced or stripped.startswith(("#", "|", "<", "!")):
            if paragraph:
                break
            continue
        if not stripped:
            if paragraph:
                break
            continue
        paragraph.append(stripped)
    text = " ".join(paragraph)
    return text if len(text) <= SUMMARY_CHARS else text[:SUMMARY_CHARS - 1].rstrip() + "…"


def lint_card(text: str) -> list[Finding]:
    """Everything wrong with a model card, each with its line."""
    findings: list[Finding] = []
    for i, line in enumerate(text.splitlines(), start=1):
        if PLACEHOLDER.lower() in line.lower():
            findings.append(Finding("error", i, f"{PLACEHOLDER!r} left from the template: say what is known, "
                                                f"or that it is not known and why"))
    front, first_line, body = _split_front_matter(text)
    if front is None:
        findings.append(Finding("error", 1, "no YAML front matter: the card must start with a '---' line, the "
                                            "metadata, and another '---' line"))
        meta: Any = {}
    else:
        try:
            meta = yaml.safe_load(front) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = mark.line + 2 if mark is not None else 1
            findings.append(Finding("error", line, f"the front matter is not valid YAML: {getattr(exc, 'problem', exc)}"))
            meta = {}
        if not isinstance(meta, dict):
            findings.append(Finding("error", 2, "the front matter must be a mapping of fields"))
            meta = {}
        findings += _lint_meta(meta, front)
    findings += _lint_sections(body, first_line)
    return sorted(findings, key=lambda f: (f.line, f.message))


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, (str, list, dict)) and not value)


def _lint_meta(meta: dict, front: str) -> list[Finding]:
    findings = []
    for key in REQUIRED_FIELDS:
        if _blank(meta.get(key)):
            findings.append(Finding("error", _key_line(front, key), f"metadata field {key!r} is missing or empty"))
    for key in ("license", "base_model"):
        value = meta.get(key)
        if value is not None and not isinstance(value, (str, list)):
            findings.append(Finding("error", _key_line(front, key), f"{key!r} must be a string or a list of strings"))
    for key in ("language", "datasets"):
        value = meta.get(key)
        if value is not None and not (isinstance(value, str) or (isinstance(value, list)
                                                                 and all(isinstance(v, str) for v in value))):
            findings.append(Finding("error", _key_line(front, key), f"{key!r} must be a string or a list of strings"))
    index = meta.get("model-index")
    if not _blank(index):
        findings += _lint_model_index(index, _key_line(front, "model-index"))
    return findings


def _lint_model_index(index: Any, line: int) -> list[Finding]:
    """Hugging Face's model-index schema: [{name, results: [{task: {type}, dataset: {name, type},
    metrics: [{type, value}]}]}]."""
    problems = []
    if not isinstance(index, list):
        return [Finding("error", line, "'model-index' must be a list of models, each with a name and results")]
    for m, model in enumerate(index):
        where = f"model-index[{m}]"
        if not isinstance(model, dict):
            problems.append(f"{where} must be a mapping with name and results")
            continue
        if _blank(model.get("name")):
            problems.append(f"{where} has no name")
        results = model.get("results")
        if not isinstance(results, list) or not results:
            problems.append(f"{where} has no results (eval results: task, dataset, metrics)")
            continue
        for r, result in enumerate(results):
            rw = f"{where}.results[{r}]"
            if not isinstance(result, dict):
                problems.append(f"{rw} must be a mapping")
                continue
            task, dataset, metrics = result.get("task"), result.get("dataset"), result.get("metrics")
            if not isinstance(task, dict) or _blank(task.get("type")):
                problems.append(f"{rw}.task.type is missing")
            if not isinstance(dataset, dict) or _blank(dataset.get("name")):
                problems.append(f"{rw}.dataset.name is missing")
            if not isinstance(dataset, dict) or _blank(dataset.get("type")):
                problems.append(f"{rw}.dataset.type is missing")
            if not isinstance(metrics, list) or not metrics:
                problems.append(f"{rw}.metrics is missing (a list of type and value)")
                continue
            for k, metric in enumerate(metrics):
                mw = f"{rw}.metrics[{k}]"
                if not isinstance(metric, dict) or _blank(metric.get("type")):
                    problems.append(f"{mw}.type is missing")
                if not isinstance(metric, dict) or metric.get("value") is None or metric.get("value") == "":
                    problems.append(f"{mw}.value is missing")
    return [Finding("error", line, p) for p in problems]


def _lint_sections(body: list[str], first_line: int) -> list[Finding]:
    findings = []
    heads = _headings(body, first_line)
    last_line = first_line + len(body)
    for section, words in REQUIRED_SECTIONS.items():
        matches = [(n, h) for n, h in enumerate(heads) if any(w in h[1] for w in words)]
        if not matches:
            findings.append(Finding("error", last_line, f"no {section!r} section (a heading naming it; "
                                                        f"Mitchell et al.'s model card sections)"))
            continue
        if all(_section_empty(body, heads, n) for n, _ in matches):
            findings.append(Finding("error", matches[0][1][0], f"the {section!r} section is empty"))
    return findings


def _section_empty(body: list[str], heads: list[tuple[int, str, int]], n: int) -> bool:
    """Empty when nothing but blank lines sits between the heading and the next one of the same or
    a higher level (sub-sections count as its content)."""
    start = heads[n][2]
    level = len(body[start]) - len(body[start].lstrip().lstrip("#"))
    for line in body[start + 1:]:
        stripped = line.strip()
        match = re.match(r"^\s{0,3}(#{1,6})\s", line)
        if match and len(match.group(1)) <= level:
            break
        if stripped and not match:
            return False
    return True


# --- the checklist -------------------------------------------------------------------------------

def checklist_template() -> str:
    """A blank checklist in the TOML form `lint_checklist` reads."""
    out = ["# Risk checklist (Madaio et al. 2020, by lifecycle stage): answer every item.", ""]
    for stage, items in CHECKLIST.items():
        out.append(f"[{stage}]")
        for key, question in items.items():
            out.append(f"# {question}")
            out.append(f'{key} = ""')
        out.append("")
    return "\n".join(out)


def parse_checklist(text: str) -> dict[str, dict[str, dict[str, str]]]:
    """The answered checklist, as recorded: {stage: {item: {question, answer}}} (only known items)."""
    data = tomllib.loads(text)
    return {stage: {key: {"question": question, "answer": str((data.get(stage) or {}).get(key, "")).strip()}
                    for key, question in items.items()} for stage, items in CHECKLIST.items()}


def lint_checklist(text: str) -> list[Finding]:
    """Every unanswered item (error) and every item or stage we do not know (warning)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"line (\d+)", str(exc))
        return [Finding("error", int(match.group(1)) if match else 0, f"the checklist is not valid TOML: {exc}")]
    lines = text.splitlines()
    findings = []
    for stage, items in CHECKLIST.items():
        section = data.get(stage)
        stage_line = _table_line(lines, stage)
        if not isinstance(section, dict):
            findings.append(Finding("error", stage_line, f"stage {stage!r} is not answered ([{stage}] with "
                                                         f"{', '.join(items)})"))
            continue
        for key, question in items.items():
            answer = section.get(key)
            if not isinstance(answer, str) or not answer.strip():
                findings.append(Finding("error", _item_line(lines, stage, key) or stage_line,
                                        f"{stage}.{key} is not answered: {question}"))
        for key in section:
            if key not in items:
                findings.append(Finding("warning", _item_line(lines, stage, key) or stage_line,
                                        f"{stage}.{key} is not an item of the checklist (ignored)"))
    for stage in data:
        if stage not in CHECKLIST:
            findings.append(Finding("warning", _table_line(lines, stage), f"{stage!r} is not a stage of the "
                                                                          f"checklist ({', '.join(CHECKLIST)})"))
    return sorted(findings, key=lambda f: (f.line, f.message))


def _table_line(lines: list[str], table: str) -> int:
    for i, line in enumerate(lines, start=1):
        if re.match(rf"^\s*\[\s*{re.escape(table)}\s*\]", line):
            return i
    return 0


def _item_line(lines: list[str], table: str, key: str) -> int:
    start = _table_line(lines, table)
    if not start:
        return 0
    for i in range(start, len(lines)):
        if re.match(r"^\s*\[", lines[i]):
            break
        if re.match(rf"^\s*\"?{re.escape(key)}\"?\s*=", lines[i]):
            return i + 1
    return 0
