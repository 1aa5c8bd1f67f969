"""Leaderboard: which records are ranked together, how, and what the files contain."""

from __future__ import annotations

import io
import json
import math
import os
import warnings
from pathlib import Path

import pandas as pd
import pytest

from mmrobust.leaderboard import (REPORTED_FIELDS, REPORTED_PGD20, RecordWarning, build_table, load_records,
                                  render, write_leaderboard)
from mmrobust.metrics import relative_improvement
from mmrobust.results import SCHEMA


def make_record(defense: str, clean: float, pgd20: tuple[float, ...], *, dataset: str = "synthetic",
                protocol: str = "standard-v1", preset: str = "tiny", split: str = "subject",
                modalities: tuple[str, ...] = ("rgb", "skeleton"), schema: int = SCHEMA, **extra) -> dict:
    targets = ("R", "S", "RS")[:len(pgd20)]

    def attack(values):
        entry = dict(zip(targets, values, strict=True))
        return {**entry, "avg": sum(values) / len(values), "ri": 999.0,  # stored RI must be ignored
                "ci": {t: [max(v - 5, 0), min(v + 5, 100)] for t, v in entry.items()}}

    return {"schema": schema, "dataset": dataset, "split": split, "defense": defense, "preset": preset,
            "modalities": list(modalities), "protocol": protocol,
            "protocol_settings": {"eps": 8 / 255, "attacks": {"pgd20": {"steps": 20}}},
            "config": {}, "metrics": {"clean": clean, "clean_ci": [clean - 3, min(clean + 3, 100)], "n": 270,
                                      "attacks": {"pgd20": attack(pgd20),
                                                  "worst": attack([v / 2 for v in pgd20])}},
            "flags": {"surrogate_used": False, "sanity": {"pgd_le_fgsm": True, "rs_le_min": True}},
            "provenance": {}, "data": {"fingerprint": "abc"}, **extra}


def save(root: Path, name: str, record: dict) -> Path:
    path = root / "runs" / name / "result.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    return path


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    save(tmp_path, "none", make_record("none", 95.0, (10.0, 20.0, 0.0)))
    save(tmp_path, "at-rs", make_record("at-rs", 80.0, (50.0, 40.0, 30.0)))
    save(tmp_path, "amr", make_record("amr", 85.0, (60.0, 50.0, 40.0)))
    save(tmp_path, "minsim", make_record("minsim", 90.0, (40.0, 50.0, 30.0)))  # Avg ties at-rs, higher clean
    save(tmp_path, "amr-eps16", make_record("amr", 99.0, (99.0, 99.0, 99.0), protocol="standard-v1~1a2b3c4d"))
    save(tmp_path, "ntu-amr", make_record("amr", 70.0, (70.0, 70.0, 70.0), dataset="ntu60", preset="paper",
                                          split="xsub"))
    return tmp_path


def measured(table: pd.DataFrame) -> pd.DataFrame:
    return table[table["source"] == "measured"]


def test_only_one_dataset_and_protocol_are_ranked_together(runs):
    records = load_records([runs])
    assert len(records) == 6
    table = build_table(records, "synthetic")
    assert sorted(table["defense"]) == ["amr", "at-rs", "minsim", "none"]
    assert 99.0 not in table["✓RS"].values  # the standard-v1~… record is never mixed in
    other = build_table(records, "synthetic", protocol="standard-v1~1a2b3c4d")
    assert list(other["defense"]) == ["amr"] and math.isnan(other["RI"][0])  # no `none` under that protocol
    ntu = measured(build_table(records, "ntu60"))
    assert list(ntu["defense"]) == ["amr"] and ntu["run"].iloc[0].endswith("runs/ntu-amr")


def test_rows_sorted_by_avg_then_clean(runs):
    table = build_table(load_records([runs]), "synthetic")
    assert list(table["defense"]) == ["amr", "minsim", "at-rs", "none"]
    assert list(table.columns[:10]) == ["defense", "modalities", "preset", "split", "✓RS", "✗R", "✗S", "✗RS",
                                        "Avg", "RI"]
    assert table["Worst Avg"].tolist() == pytest.approx([25.0, 20.0, 20.0, 5.0])


def test_ri_is_recomputed_against_the_matching_none(runs):
    save(runs, "amr-rgb", make_record("amr", 60.0, (30.0,), modalities=("rgb",)))
    table = build_table(load_records([runs]), "synthetic").set_index(["defense", "modalities"])
    none_score = 95.0 + 10.0
    assert table.loc[("amr", "rgb+skeleton"), "RI"] == pytest.approx(relative_improvement(85.0, 50.0, 95.0, 10.0))
    assert table.loc[("at-rs", "rgb+skeleton"), "RI"] == pytest.approx(80.0 + 40.0 - none_score)
    assert table.loc[("none", "rgb+skeleton"), "RI"] == 0.0
    assert math.isnan(table.loc[("amr", "rgb"), "RI"])  # no unimodal `none` to compare with
    assert math.isnan(table.loc[("amr", "rgb"), "✗S"])


def test_duplicates_keep_the_newest_and_say_so(runs):
    older = save(runs, "amr-again", make_record("amr", 10.0, (1.0, 1.0, 1.0)))
    os.utime(older, (1_000_000, 1_000_000))  # by file time, the first amr run is newer
    table = build_table(load_records([runs]), "synthetic")
    assert (table["defense"] == "amr").sum() == 1 and 85.0 in table["✓RS"].values
    (note,) = table.attrs["footnotes"]
    assert "amr-again" in note and "kept the newest" in note

    save(runs, "amr-again", make_record("amr", 10.0, (1.0, 1.0, 1.0),
                                        provenance={"finished_at": "2999-01-01T00:00:00+00:00"}))
    table = build_table(load_records([runs]), "synthetic")
    assert 10.0 in table["✓RS"].values and 85.0 not in table["✓RS"].values  # provenance time wins


def test_defense_parameters_make_another_model_and_a_study_folder_is_not_ranked(runs):
    save(runs, "amr-amrs2", make_record("amr", 60.0, (5.0, 5.0, 5.0), config={"defense_params": {"amrs": 2}}))
    board = runs / "boards" / "synthetic"
    for folder in (board / "records", board / "studies" / "records"):
        folder.mkdir(parents=True)
    (board / "studies" / "records" / "amr-eps4.json").write_text(json.dumps(make_record("amr", 1.0, (1.0,) * 3)))
    table = build_table(load_records([runs]), "synthetic")
    rows = dict(zip(measured(table)["defense"], measured(table)["✓RS"]))
    assert rows["amr"] == 85.0 and rows["amr (amrs=2)"] == 60.0  # two models, neither hides the other
    assert not table.attrs.get("footnotes") and 1.0 not in rows.values()


@pytest.mark.parametrize("dataset", ["ntu60", "imigue"])
def test_paper_rows_are_appended_for_pgd20(runs, dataset):
    records = load_records([runs])
    table = build_table(records, dataset)
    reported = table[table["source"] == "reported"]
    assert list(reported["defense"]) == list(REPORTED_PGD20[dataset])
    assert set(reported["preset"]) == {"paper"}
    measured_count = len(measured(table))
    assert list(table["source"]) == ["measured"] * measured_count + ["reported"] * len(REPORTED_PGD20[dataset])
    amr = reported.set_index("defense").loc["amr"]
    expected = dict(zip(REPORTED_FIELDS, REPORTED_PGD20[dataset]["amr"], strict=True))
    assert (amr["✓RS"], amr["Avg"], amr["RI"]) == (expected["clean"], expected["avg"], expected["ri"])
    assert "reported" not in build_table(records, dataset, attack="fgsm")["source"].values
    assert "reported" not in build_table(records, dataset, protocol="standard-v1~1a2b3c4d")["source"].values
    assert "reported" not in build_table(records, "synthetic")["source"].values


def test_ntu_amr_row_matches_table_2():
    values = dict(zip(REPORTED_FIELDS, REPORTED_PGD20["ntu60"]["amr"], strict=True))
    assert values == {"clean": 81.65, "R": 68.54, "S": 80.40, "RS": 66.52, "avg": 71.82, "ri": 60.69}


@pytest.mark.parametrize("dataset", sorted(REPORTED_PGD20))
def test_reported_rows_are_internally_consistent(dataset):
    rows = {defense: dict(zip(REPORTED_FIELDS, values, strict=True))
            for defense, values in REPORTED_PGD20[dataset].items()}
    assert list(rows) == ["none", "at-r", "at-s", "at-rs", "minsim", "exfmem", "minsim+exfmem", "amr"]
    for defense, row in rows.items():
        ri = relative_improvement(row["clean"], row["avg"], rows["none"]["clean"], rows["none"]["avg"])
        assert ri == pytest.approx(row["ri"], abs=0.006), defense  # the paper prints two decimals
        if (dataset, defense) != ("ntu60", "minsim"):  # printed Avg 28.85, its targets average 28.94
            assert row["avg"] == pytest.approx((row["R"] + row["S"] + row["RS"]) / 3, abs=0.006), defense


def test_flags_show_surrogate_and_failed_sanity_checks(runs):
    record = make_record("exfmem", 70.0, (5.0, 60.0, 5.0))
    record["flags"] = {"surrogate_used": True, "sanity": {"pgd_le_fgsm": False, "rs_le_min": True}}
    save(runs, "exfmem", record)
    table = build_table(load_records([runs]), "synthetic").set_index("defense")
    assert table.loc["exfmem", "flags"] == "surrogate sanity!(pgd_le_fgsm)"
    assert table.loc["amr", "flags"] == ""


def test_regeneration_is_byte_identical(runs, tmp_path):
    out = tmp_path / "leaderboards"
    first = write_leaderboard(build_table(load_records([runs]), "ntu60"), out, "ntu60", "standard-v1")
    contents = [path.read_bytes() for path in first]
    second = write_leaderboard(build_table(load_records([runs]), "ntu60"), out, "ntu60", "standard-v1")
    assert first == second == [out / "ntu60" / f"standard-v1.{ext}" for ext in ("md", "csv", "html")]
    assert [path.read_bytes() for path in second] == contents
    assert sorted(p.name for p in (out / "ntu60").iterdir()) == ["standard-v1.csv", "standard-v1.html",
                                                                 "standard-v1.md"]  # no temporary files left


def test_rendered_formats(runs):
    os.utime(save(runs, "amr-again", make_record("amr", 10.0, (1.0, 1.0, 1.0))), (1_000_000, 1_000_000))
    table = build_table(load_records([runs]), "synthetic")

    markdown = render(table, "md")
    lines = markdown.splitlines()
    header = next(line for line in lines if line.startswith("| defense"))
    for column in ("✓RS", "✗R", "✗S", "✗RS", "Avg", "RI", "Worst Avg", "flags", "run"):
        assert column in header
    amr_line = next(line for line in lines if line.startswith("| amr"))
    assert "85.00" in amr_line and "50.00" in amr_line and "pgd20" in lines[0]
    assert "nan" not in markdown and "kept the newest" in lines[-1]

    csv = render(table, "csv")
    assert pd.read_csv(io.StringIO(csv), keep_default_na=False, na_values=[""])["Avg"].tolist() == \
        pytest.approx(table["Avg"].tolist())

    page = render(table, "html")
    assert "<table" in page and "<th>✓RS</th>" in page and "85.00" in page and "kept the newest" in page
    with pytest.raises(ValueError, match="unknown format"):
        render(table, "xlsx")


def test_old_schema_is_skipped_with_the_command_that_fixes_it(runs):
    old = save(runs, "old", make_record("at-r", 70.0, (60.0, 1.0, 1.0), schema=1))
    with pytest.warns(RecordWarning, match="mmrobust eval --run-dir") as caught:
        records = load_records([runs])
    assert len(records) == 6
    assert str(old) in str(caught[0].message)
    with pytest.raises(ValueError, match="schema 1 is older"):  # RecordError is a ValueError
        load_records([runs], strict=True)


def test_unreadable_file_is_named_and_skipped(runs):
    broken = runs / "runs" / "broken" / "result.json"
    broken.parent.mkdir()
    broken.write_text("{not json")
    with pytest.warns(RecordWarning, match="unreadable") as caught:
        records = load_records([runs])
    assert len(records) == 6 and str(broken) in str(caught[0].message)


def test_records_folder_and_single_files(tmp_path):
    records_dir = tmp_path / "leaderboards" / "records"
    records_dir.mkdir(parents=True)
    (records_dir / "amr-ntu60.json").write_text(json.dumps(make_record("amr", 80.0, (1.0, 2.0, 3.0))))
    run = save(tmp_path, "none", make_record("none", 90.0, (1.0, 2.0, 3.0)))
    (run.parent / "config.json").write_text("{}")  # not a record; not picked up
    other_protocol = make_record("none", 90.0, (1.0, 2.0, 3.0), protocol="standard-v1~1a2b3c4d")
    (run.parent / "result-standard-v1~1a2b3c4d.json").write_text(json.dumps(other_protocol))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = load_records([tmp_path])
        assert [(r.defense, r.protocol) for r in loaded] == [
            ("amr", "standard-v1"), ("none", "standard-v1~1a2b3c4d"), ("none", "standard-v1")]
        assert loaded[2].source == run.parent.as_posix()  # a run record names its run folder
        assert len(load_records([records_dir, run, tmp_path])) == 3  # each file once
    with pytest.raises(FileNotFoundError, match="missing"):
        load_records([tmp_path / "missing"])


def test_columns_follow_the_target_codes_whatever_record_comes_first(tmp_path):
    skeleton_only = make_record("none", 70.0, (30.0,), dataset="ntu60", preset="paper", split="xsub",
                                modalities=("skeleton",))
    skeleton_only["metrics"]["attacks"] = {k: {"S": v["R"], "avg": v["avg"]}
                                           for k, v in skeleton_only["metrics"]["attacks"].items()}
    save(tmp_path, "a-none-skeleton", skeleton_only)  # read first
    save(tmp_path, "b-none", make_record("none", 80.0, (10.0, 20.0, 5.0), dataset="ntu60", preset="paper",
                                         split="xsub"))
    table = build_table(load_records([tmp_path]), "ntu60")
    assert list(table.columns[4:9]) == ["✓RS", "✗R", "✗S", "✗RS", "Avg"]
    assert (table["source"] == "reported").sum() == len(REPORTED_PGD20["ntu60"])  # the paper's rows stay


def test_a_third_modality_gets_its_columns(tmp_path):
    record = make_record("none", 80.0, (10.0, 20.0, 5.0))
    record["metrics"]["attacks"] = {k: {"R": 10.0, "S": 20.0, "D": 30.0, "RSD": 5.0, "avg": 16.25}
                                    for k in record["metrics"]["attacks"]}
    save(tmp_path, "none", record)
    table = build_table(load_records([tmp_path]), "synthetic")
    assert list(table.columns[4:10]) == ["✓RSD", "✗R", "✗S", "✗D", "✗RSD", "Avg"]
    assert table.loc[0, "✗D"] == 30.0
