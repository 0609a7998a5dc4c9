"""The model card linter and the risk checklist: every required field and section is checked, with
the line that is wrong, and the demo's own cards pass."""

from __future__ import annotations

import json
import re

import pytest

from enclave.demo.seed import MODEL_CARDS, demo_model_cards
from enclave.registry import model_card

GOOD = """---
license: mit
language:
- en
datasets:
- wikitext
base_model: gpt2
model-index:
- name: my-model
  results:
  - task:
      type: text-generation
    dataset:
      name: WikiText-103
      type: wikitext
    metrics:
    - type: perplexity
      value: 29.4
---

# my-model

A fine-tune of GPT-2 on Wikipedia text.

## Intended uses & limitations

Research on memorisation.

## Factors

Topic of the article.

## Metrics

Perplexity.

## Evaluation data

WikiText-103 test split.

## Training data

WikiText-103 train split.

## Ethical considerations

Wikipedia names real people.

## Caveats and recommendations

English only.
"""


def _messages(text: str) -> list[str]:
    return [f.message for f in model_card.errors(model_card.lint_card(text))]


def _line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), start=1) if needle in line)


def test_a_complete_card_is_clean_and_parsed():
    assert model_card.lint_card(GOOD) == []
    card = model_card.parse_card(GOOD)
    assert card.meta["base_model"] == "gpt2" and card.meta["model-index"][0]["name"] == "my-model"
    assert card.summary == "A fine-tune of GPT-2 on Wikipedia text."
    assert {"factors", "metrics", "training data"} <= set(card.sections)


@pytest.mark.parametrize("field", ["license", "language", "datasets", "base_model"])
def test_each_missing_metadata_field_is_an_error(field):
    text = re.sub(rf"^{field}:.*\n(- .*\n)*", "", GOOD, flags=re.MULTILINE)
    assert field not in model_card.parse_card(text).meta
    assert _messages(text) == [f"metadata field {field!r} is missing or empty"]


def test_an_empty_field_points_at_its_line():
    text = GOOD.replace("license: mit", "license:")
    [finding] = model_card.lint_card(text)
    assert finding.line == _line_of(text, "license:") and "'license'" in finding.message


def test_base_model_none_is_allowed_for_a_model_trained_from_scratch():
    assert model_card.lint_card(GOOD.replace("base_model: gpt2", "base_model: none")) == []


@pytest.mark.parametrize("remove, expected", [
    ("    - type: perplexity\n      value: 29.4\n", "metrics is missing"),
    ("      value: 29.4\n", "metrics[0].value is missing"),
    ("    - type: perplexity\n      value", "metrics[0].type is missing"),
    ("      name: WikiText-103\n", "dataset.name is missing"),
    ("      type: wikitext\n", "dataset.type is missing"),
    ("      type: text-generation\n", "task.type is missing"),
    ("- name: my-model\n  results:\n", "model-index"),
])
def test_the_model_index_schema_is_checked(remove, expected):
    replacement = {"- name: my-model\n  results:\n": "- results:\n",
                   "    - type: perplexity\n      value": "    - value"}.get(remove, "")
    text = GOOD.replace(remove, replacement)
    assert text != GOOD
    messages = _messages(text)
    assert messages and any(expected in m for m in messages), messages
    assert all(f.line == _line_of(text, "model-index:") for f in model_card.errors(model_card.lint_card(text)))


def test_a_missing_model_index_is_an_error():
    text = GOOD.split("model-index:")[0] + "---" + GOOD.split("---", 2)[2]
    assert _messages(text) == ["metadata field 'model-index' is missing or empty"]


@pytest.mark.parametrize("heading, section", [
    ("## Intended uses & limitations", "intended use"),
    ("## Factors", "factors"),
    ("## Metrics", "metrics"),
    ("## Evaluation data", "evaluation data"),
    ("## Training data", "training data"),
    ("## Ethical considerations", "ethical considerations"),
    ("## Caveats and recommendations", "caveats and recommendations"),
])
def test_each_missing_section_is_an_error(heading, section):
    text = GOOD.replace(heading, "## Something else")
    assert _messages(text) == [f"no {section!r} section (a heading naming it; Mitchell et al.'s model card sections)"]


def test_an_empty_section_is_an_error_at_its_heading():
    text = GOOD.replace("## Factors\n\nTopic of the article.\n", "## Factors\n\n")
    [finding] = model_card.lint_card(text)
    assert finding.message == "the 'factors' section is empty" and finding.line == _line_of(text, "## Factors")


def test_a_subsection_counts_as_content():
    text = GOOD.replace("## Factors\n\nTopic of the article.\n", "## Factors\n\n### Relevant factors\n\nTopic.\n")
    assert model_card.lint_card(text) == []


def test_template_placeholders_are_errors_on_their_lines():
    text = GOOD.replace("Perplexity.", "[More Information Needed]").replace("English only.", "[more information needed]")
    findings = model_card.lint_card(text)
    assert [f.line for f in findings] == [_line_of(text, "[More Information"), _line_of(text, "[more information")]
    assert all("left from the template" in f.message for f in findings)


def test_no_front_matter_and_bad_yaml():
    assert "no YAML front matter" in _messages(GOOD.split("---", 2)[2])[0]
    bad = GOOD.replace("license: mit", "license: [mit")
    assert any("not valid YAML" in m for m in _messages(bad))


def test_headings_inside_code_blocks_do_not_count():
    text = GOOD.replace("## Factors\n\nTopic of the article.\n", "```\n## Factors\n```\n")
    assert "no 'factors' section" in _messages(text)[0]


def _answered() -> str:
    lines = []
    for stage, items in model_card.CHECKLIST.items():
        lines.append(f"[{stage}]")
        lines += [f'{key} = "answered {key}"' for key in items]
    return "\n".join(lines) + "\n"


def test_the_checklist_covers_madaio_et_al_stages_and_every_item_must_be_answered():
    assert list(model_card.CHECKLIST) == ["envision", "define", "prototype", "build", "launch", "evolve"]
    assert model_card.lint_checklist(_answered()) == []
    parsed = model_card.parse_checklist(_answered())
    assert parsed["launch"]["rollback"]["answer"] == "answered rollback" and parsed["launch"]["rollback"]["question"]
    # The template has every item, unanswered.
    template = model_card.lint_checklist(model_card.checklist_template())
    assert len(template) == sum(len(items) for items in model_card.CHECKLIST.values())
    assert all(f.severity == "error" and "is not answered" in f.message for f in template)


def test_checklist_missing_items_and_stages():
    text = _answered().replace('harms = "answered harms"', 'harms = "  "').replace(
        '[evolve]\nreassessment = "answered reassessment"\nfeedback = "answered feedback"\n', "")
    text += '[evolve]\nreassessment = "yes"\nsurprise = "x"\n'
    findings = model_card.lint_checklist(text)
    errors = {f.message.split(" is ")[0]: f.line for f in model_card.errors(findings)}
    assert set(errors) == {"envision.harms", "evolve.feedback"}
    assert errors["envision.harms"] == _line_of(text, "harms =")
    assert [f.message for f in findings if f.severity == "warning"] == ["evolve.surprise is not an item of the checklist (ignored)"]
    whole_stage = model_card.lint_checklist(_answered().replace("[build]", "[built]"))
    assert any("stage 'build' is not answered" in f.message for f in whole_stage)
    assert model_card.lint_checklist("not = [toml")[0].message.startswith("the checklist is not valid TOML")


def test_the_demo_cards_and_checklist_are_clean():
    demo = {"final_loss": 0.47, "n_parameters": 7259008, "steps": 1168}
    large = {"eval_loss": 10.8, "eval_perplexity": 49000.0, "n_parameters": 124439808}
    for name, text in demo_model_cards(demo, large).items():
        assert model_card.lint_card(text) == [], name
        assert model_card.parse_card(text).summary.startswith(("A small GPT-2", "GPT-2 124M"))
    assert model_card.lint_checklist((MODEL_CARDS / "checklist.toml").read_text(encoding="utf-8")) == []
    assert json.dumps(model_card.parse_card(demo_model_cards(demo, large)["demo-gpt2"]).meta)
