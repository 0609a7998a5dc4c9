"""Statistical disclosure control: small counts, zeros, dominance, ACRO evidence, differencing
against earlier releases, and the egress budget."""
from __future__ import annotations

import io
import json
import os

import numpy as np
import pandas as pd
import pytest

from enclave.review.scan import ExportFile
from enclave.review.scan.context import ProtectedSource
from tests.review_corpus import (code_cell, notebook, of, people, people_csv, result, review_home,  # noqa: F401 (fixture)
                                 scan, zip_bytes)


def test_a_cell_of_3_blocks_and_a_clean_table_passes():
    report = scan({"t.csv": "region,n\nnorth,120\nsouth,3\neast,45\n"})
    [f] = of(report, "tables", "block")
    assert f.location == "cell (row 2, col n)" and f.evidence["value"] == 3
    assert scan({"t.csv": "region,n,mean_income\nnorth,120,51234.5\nsouth,33,48800.0\n"}).verdict.value == "pass"


def test_zeros_warn():
    report = scan({"t.csv": "region,cases\nnorth,0\nsouth,40\n"})
    [f] = of(report, "tables")
    assert f.severity.value == "warn" and "zero" in f.message


def test_crosstab_cells_are_counts_but_years_ages_and_suppressed_cells_are_not():
    crosstab = "year,G,N,R\n2010,104,2,51\n2011,88,14,55\n"
    report = scan({"x.csv": crosstab})
    assert [(f.evidence["row"], f.evidence["col"]) for f in of(report, "tables", "block")] == [(1, "N")]
    other = "age,n,rank\n3,40,1\n7,55,2\n"  # an age of 3 and a rank of 1 are not counts
    suppressed = "group,n\na,<10\nb,*\nc,[REDACTED]\nd,30\n"
    assert not of(scan({"a.csv": other, "s.csv": suppressed}), "tables")


def test_non_integers_are_statistics_not_counts():
    assert not of(scan({"m.csv": "group,mean,sd\na,3.5,1.2\nb,7.25,0.4\n"}), "tables")


def test_dominance_nk_and_p_ratio():
    table = "firm_size,total,largest,second\nsmall,1000,500,200\ntiny,1000,950,30\nmid,1000,600,350\n"
    report = scan({"d.csv": table})
    rows = {f.evidence["row"]: f.message for f in of(report, "tables", "block")}
    assert set(rows) == {2, 3}
    assert "N-K" in rows[2] and "p-ratio" in rows[3]


def test_tsv_and_xlsx_tables_are_checked():
    buffer = io.BytesIO()
    pd.DataFrame({"group": ["a", "b"], "count": [4, 50]}).to_excel(buffer, index=False, sheet_name="Results")
    report = scan({"t.tsv": "group\tcount\na\t5\nb\t50\n", "t.xlsx": buffer.getvalue()})
    found = {(f.file, f.location) for f in of(report, "tables", "block")}
    assert found == {("t.tsv", "cell (row 1, col count)"), ("t.xlsx", "sheet Results, cell (row 1, col count)")}


def test_dataframes_printed_in_notebook_outputs_are_tables():
    frame = pd.DataFrame({"occupation": ["nurse", "chef", "pilot"], "n": [120, 4, 37]})
    crosstab = pd.crosstab(pd.Series([2010] * 20 + [2011] * 3, name="year"),
                           pd.Series(["G"] * 18 + ["N"] * 2 + ["G"] * 3, name="grant"))
    nb = notebook(code_cell("df", result({"text/plain": frame.to_string()})),
                  code_cell("ct", result({"text/plain": str(crosstab)})))
    report = scan({"analysis.ipynb": nb})
    found = sorted((f.location, f.evidence["value"]) for f in of(report, "tables"))
    assert ("cell 1 output 1, cell (row 2, col n)", 4.0) in found
    assert ("cell 2 output 1, cell (row 1, col N)", 2.0) in found
    assert ("cell 2 output 1, cell (row 2, col N)", 0.0) in found


@pytest.fixture(scope="module")
def acro_results(tmp_path_factory):
    """A real ACRO session: one crosstab with small cells, one safe one, finalised to JSON."""
    from acro import ACRO

    folder = tmp_path_factory.mktemp("acro")
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"year": rng.choice([2010, 2011], 400), "grant": rng.choice(["G", "R", "N"], 400, p=[.6, .39, .01]),
                       "region": rng.choice(["north", "south"], 400)})
    cwd = os.getcwd()
    os.chdir(folder)  # ACRO writes its logs and outputs relative to the working directory
    try:
        acro = ACRO(suppress=False)
        acro.crosstab(df.year, df.grant)
        acro.crosstab(df.year, df.region)
        acro.finalise(str(folder / "out"), "json")
    finally:
        os.chdir(cwd)
    return folder / "out"


def test_acro_results_become_per_cell_findings(acro_results):
    files = {f"acro/{p.name}": p.read_bytes() for p in acro_results.iterdir() if p.is_file()}
    report = scan(files)
    cells = [f for f in of(report, "acro", "block") if f.location.startswith("cell")]
    assert cells and all(f.file == "acro/output_0_0.csv" and "MinimumThresholdCheck" in f.message for f in cells)
    assert {f.evidence["col"] for f in cells} == {"N"}
    outputs = {f.evidence["output"]: f.severity.value for f in of(report, "acro") if f.location.startswith("output")}
    assert outputs == {"output_0": "block", "output_1": "info", "2ndary_risk_summary_json-DONT_RELEASE": "warn",
                       "2ndary_risk_summary_csv-DONT_RELEASE": "warn"}
    # The same small cells are found in the bare CSV ACRO wrote.
    assert {f.file for f in of(report, "tables", "block")} == {"acro/output_0_0.csv"}


def test_json_that_is_not_acro_is_ignored():
    assert not of(scan({"r.json": json.dumps({"results": [1, 2], "version": "x"})}), "acro")


def test_differencing_against_a_released_table():
    released = [ExportFile("release-1/by_region.csv", b"region,n\nnorth,100\nsouth,250\n")]
    report = scan({"by_region_v2.csv": "region,n\nnorth,103\nsouth,250\n"}, prior_releases=released)
    [f] = of(report, "differencing", "block")
    assert f.evidence["difference"] == 3 and f.location == "cell (row 1, col n)"
    # A large change is not a disclosure; unrelated tables are not compared.
    assert not of(scan({"v3.csv": "region,n\nnorth,180\nsouth,250\n"}, prior_releases=released), "differencing")
    assert not of(scan({"o.csv": "occupation,n\nnurse,12\n"}, prior_releases=released), "differencing")


def test_differencing_of_a_subgroup_removed():
    released = [ExportFile("all.csv", b"site,n\na,40\nb,55\nc,61\n")]
    report = scan({"most.csv": "site,n\na,40\nb,55\nc,61\nd,4\n"}, prior_releases=released)
    assert of(report, "tables", "block")  # the new row is itself small
    report = scan({"fewer.csv": "site,n\na,40\nb,55\nd,66\nc2,3\n"}, prior_releases=[ExportFile("all.csv", b"site,n\na,40\nb,55\nd,69\n")])
    assert any(f.evidence["difference"] == 3 for f in of(report, "differencing", "block"))


def test_egress_budget():
    files = {"a.txt": "x" * 900}
    assert of(scan(files, egress_used_bytes=0, egress_allowed_bytes=10_000), "egress", "info")
    assert of(scan(files, egress_used_bytes=7_500, egress_allowed_bytes=10_000), "egress", "warn")
    [f] = of(scan(files, egress_used_bytes=9_500, egress_allowed_bytes=10_000), "egress", "block")
    assert f.evidence == {"export_bytes": 900, "used_bytes": 9_500, "allowed_bytes": 10_000}
    assert not of(scan(files), "egress")


def test_tables_inside_zip_are_checked():
    report = scan({"r.zip": zip_bytes({"out/t.csv": "g,n\na,2\n"})})
    assert [f.file for f in of(report, "tables", "block")] == ["r.zip!out/t.csv"]


# ----- record linkage in tables (issue 11, item 7) -----------------------------------------------

@pytest.mark.parametrize("header", [["name", "dob", "sex", "zip"], ["full_name", "date_of_birth", "gender", "postcode"]])
def test_rows_of_a_table_that_single_out_protected_people_block(tmp_path, header):
    """A CSV whose rows carry a name and a date of birth (or a date of birth and a ZIP code) of
    protected people: each row is a disclosure, whatever the dataset calls its columns."""
    protected = [ProtectedSource.from_path(people_csv(tmp_path, n=2000, columns=["name", "dob", "sex", "zip"],
                                                      header=header), name="people", quasi_identifiers=header)]
    chosen = people(2000)[100:103]
    by_name = "patient,born,score\n" + "".join(f"{p.name},{p.dob},{i + 1}.5\n" for i, p in enumerate(chosen))
    found = of(scan({"names.csv": by_name}, protected=protected), "record_linkage", "block")
    assert sorted(f.evidence["record_number"] for f in found) == [101, 102, 103]
    assert all(f.evidence["matched"] == header[:2] and f.evidence["group_size"] == 1 for f in found)
    by_dob = "born,zip,score\n" + "".join(f"{p.dob},{p.zip},{i + 1}.5\n" for i, p in enumerate(chosen))
    found = of(scan({"dobs.csv": by_dob}, protected=protected), "record_linkage", "block")
    assert sorted(f.evidence["record_number"] for f in found) == [101, 102, 103]


def test_a_table_of_large_groups_does_not_link(tmp_path):
    protected = [ProtectedSource.from_path(people_csv(tmp_path, n=2000, columns=["name", "dob", "sex", "occupation"]),
                                           name="people", quasi_identifiers=["name", "dob", "sex", "occupation"])]
    table = "sex,occupation,n\nF,nurse,31\nM,nurse,35\nF,teacher,30\nM,chef,33\n"
    report = scan({"groups.csv": table}, protected=protected)
    assert not of(report, "record_linkage")
