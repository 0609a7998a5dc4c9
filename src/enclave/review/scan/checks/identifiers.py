"""Identifying content: Presidio's pattern recognizers (e-mail addresses, phone numbers, SSNs,
card numbers, IBANs, IP addresses, URLs ...) at the policy's severity per entity; direct
identifiers block by default. See `scan.pii` for how Presidio is run offline and fast."""
from __future__ import annotations

import re

from enclave.review.scan import pii
from enclave.review.scan.checks.base import Result
from enclave.review.scan.context import Env
from enclave.review.scan.items import Item

NAME = "identifiers"
# Namespace names of document formats (every XLSX, SVG and XMP packet carries them): they name a
# standard, never a person, and would bury a workbook's real findings under dozens of URLs.
_FORMAT_NAMESPACE = re.compile(
    r"""^["']?(?:https?://)?(?:schemas\.openxmlformats\.org|schemas\.microsoft\.com|purl\.org|purl\.oclc\.org|"""
    r"""www\.w3\.org|ns\.adobe\.com|(?:www\.)?openoffice\.org|docs\.oasis-open\.org)(?:/|["']?$)""", re.I)
_NAMES = {
    "EMAIL_ADDRESS": "an e-mail address", "PHONE_NUMBER": "a phone number", "US_SSN": "a US social security number",
    "CREDIT_CARD": "a payment card number", "IBAN_CODE": "a bank account number (IBAN)", "IP_ADDRESS": "an IP address",
    "URL": "a URL", "UK_NHS": "a UK NHS number", "US_ITIN": "a US taxpayer number (ITIN)",
    "CRYPTO": "a cryptocurrency wallet address",
}


def check(item: Item, env: Env) -> Result:
    result = Result()
    if not item.segments:
        return result
    policy = env.policy.identifiers
    entities = [e for e, level in policy.entities.items() if level != "off"]
    if not entities:
        return result
    analyzer = env.pii_analyzer(policy.phone_regions)
    count = 0
    for segment in item.segments:
        for hit in pii.find(segment.text, entities, min_score=policy.min_score, phone_regions=policy.phone_regions,
                            analyzer=analyzer):
            if hit.entity == "URL" and _FORMAT_NAMESPACE.match(hit.text):
                continue
            count += 1
            if count > policy.max_findings_per_file:
                continue
            what = _NAMES.get(hit.entity, hit.entity)
            result.add(NAME, policy.entities[hit.entity], item.name, segment.where(hit.start, hit.end),
                       f"{what} ({hit.entity}, Presidio score {hit.score:.2f})",
                       **segment.evidence(hit.start, hit.end, entity=hit.entity, score=hit.score, text=hit.text))
    if count > policy.max_findings_per_file:
        worst = max((policy.entities[e] for e in entities), key=["off", "info", "warn", "block"].index)
        result.add(NAME, worst, item.name, "whole file",
                   f"{count - policy.max_findings_per_file} more identifiers not listed one by one", count=count)
    return result
