"""The committed synthetic leaderboard is what the code computes today.

``leaderboards/synthetic/canary.json`` was written by ``mmrobust sweep``
together with the records: short exact runs of every registered defense, the
adversarial examples of every attack cell, and the digest of every record
file. Recomputing the canaries here catches any change that moves a number
(training, attacks, models, data) while the committed records still show the
old ones; the record digests catch records regenerated without their canary.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmrobust import canary, claims
from mmrobust.leaderboard import build_table, load_records, render
from mmrobust.protocol import get_protocol
from mmrobust.registry import DEFENSES

BOARD = Path(__file__).resolve().parent.parent / "leaderboards" / "synthetic"
REGENERATE = ("run `mmrobust sweep --dataset synthetic --protocols strong-v1 --runs <fresh folder>` to regenerate "
              "leaderboards/synthetic")
ADD = "python -m mmrobust.canary leaderboards/synthetic"

pytestmark = pytest.mark.skipif(not (BOARD / "records").is_dir(), reason="no committed synthetic records")


@pytest.mark.parametrize("protocol", ["standard-v1", "strong-v1"])
@pytest.mark.parametrize("fmt", ["md", "csv", "html"])
def test_committed_leaderboard_regenerates_identically(fmt, protocol, monkeypatch):
    monkeypatch.chdir(BOARD.parent.parent)  # record paths are stored relative to the repository
    records = load_records([Path("leaderboards/synthetic/records")], strict=True)
    table = build_table(records, "synthetic", protocol=protocol)
    assert render(table, fmt) == (BOARD / f"{protocol}.{fmt}").read_text()
    assert set(DEFENSES.names()) <= set(table["defense"])


def test_committed_claims_regenerate_identically(monkeypatch):
    monkeypatch.chdir(BOARD.parent.parent)
    records = load_records([Path("leaderboards/synthetic/records")], strict=True)
    assert claims.render(claims.report_protocols(records, "synthetic")) == (BOARD / "claims.md").read_text()


def test_committed_records_were_made_under_the_protocols_as_they_are():
    for record in load_records([BOARD / "records"], strict=True):
        assert record.protocol_settings == get_protocol(record.protocol).settings(), \
            f"{record.path}: {record.protocol} has changed since; {REGENERATE}"


def test_records_are_the_ones_the_canary_was_written_with():
    committed = json.loads((BOARD / canary.FILE).read_text())
    assert committed["records"] == canary.record_digests(BOARD / "records"), \
        f"the records changed without their canary; {REGENERATE}"


def test_code_still_computes_the_committed_numbers():
    committed = json.loads((BOARD / canary.FILE).read_text())
    assert committed["format"] == canary.FORMAT, f"canary format {committed['format']}; {REGENERATE}"
    current = canary.compute(committed["defenses"], committed["dataset"], committed["preset"])
    mine = canary.for_environment(committed, current["environment"])
    if mine is None:
        made = "; ".join(f"{e['environment'].get('cpu_model')} ({e['environment'].get('kernels')}, "
                         f"{e['environment'].get('threads')} thread)" for e in committed["environments"])
        pytest.skip(f"no committed canary for this environment ({current['environment'].get('cpu_model')}): the "
                    f"bits depend on the CPU model; the file has {made}. Add one with `{ADD}` at a commit whose "
                    "canaries the records' own environment confirms")
    changed = canary.stale(mine, current)
    assert not changed, ("the code no longer computes the committed numbers (" + "; ".join(changed) + "); "
                         + REGENERATE)
    assert set(committed["defenses"]) == set(DEFENSES.names()), f"a defense without a record; {REGENERATE}"


def test_the_canary_tells_defenses_apart():
    """Every canary must be able to move: distinct weights, and outcomes of clips that were all attacked."""
    committed = json.loads((BOARD / canary.FILE).read_text())
    for entry in committed["environments"]:
        defenses = entry["defenses"].values()
        assert len({d["weights"] for d in defenses}) == len(entry["defenses"])
        assert len({d["outcomes"] for d in defenses}) > 1
