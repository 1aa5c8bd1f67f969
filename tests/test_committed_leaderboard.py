"""The committed synthetic leaderboard is exactly what its committed records render to."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmrobust.leaderboard import build_table, load_records, render

BOARD = Path(__file__).resolve().parent.parent / "leaderboards" / "synthetic"


@pytest.mark.skipif(not (BOARD / "records").is_dir(), reason="no committed synthetic records")
@pytest.mark.parametrize("fmt", ["md", "csv", "html"])
def test_committed_leaderboard_regenerates_identically(fmt, monkeypatch):
    monkeypatch.chdir(BOARD.parent.parent)  # record paths are stored relative to the repository
    table = build_table(load_records([Path("leaderboards/synthetic/records")]), "synthetic")
    assert render(table, fmt) == (BOARD / f"standard-v1.{fmt}").read_text()
    assert {"none", "at-r", "at-s", "at-rs", "minsim", "exfmem", "minsim+exfmem", "amr"} <= set(table["defense"])
