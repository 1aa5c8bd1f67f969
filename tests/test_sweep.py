"""``mmrobust sweep``: one run per defense, then the leaderboard with its records.

A re-run reuses finished runs; a finished run of other data is refused, so a
changed generator never slips stale numbers into a leaderboard.
"""

from __future__ import annotations

import json

import pandas as pd
from click.testing import CliRunner

from mmrobust.canary import add_environment, for_environment, record_digests
from mmrobust.cli import cli

def _sweep(tmp_path, dataset):
    args = ["sweep", "--dataset", dataset, "--defenses", "none,minsim", "--device", "cpu", "--quiet",
            "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "boards")]
    return CliRunner().invoke(cli, args)


def test_sweep_writes_records_and_leaderboard_then_reuses_and_guards_runs(tmp_path, one_epoch_dataset):
    first = _sweep(tmp_path, one_epoch_dataset)
    assert first.exit_code == 0, first.output
    board = tmp_path / "boards" / one_epoch_dataset
    assert sorted(p.name for p in (board / "records").iterdir()) == [
        "minsim-tiny-s0.json", "minsim-tiny-s0.outcomes.npz", "minsim-tiny-s0.train_log.jsonl",
        "none-tiny-s0.json", "none-tiny-s0.outcomes.npz", "none-tiny-s0.train_log.jsonl"]
    table = (board / "standard-v1.md").read_text()
    assert "| none" in table and "| minsim" in table
    record = json.loads((board / "records" / "minsim-tiny-s0.json").read_text())
    run = tmp_path / "runs" / one_epoch_dataset / "minsim-tiny-s0"
    in_run = json.loads((run / "result.json").read_text())
    assert record["evaluation"].pop("outcomes") == "minsim-tiny-s0.outcomes.npz"  # names its copied outcomes
    assert in_run["evaluation"].pop("outcomes") == "outcomes.npz"
    assert record["training"].pop("log") == "minsim-tiny-s0.train_log.jsonl"  # and its training curves
    assert record == in_run and record["training"]["epochs"] == 1
    assert (board / "records" / "minsim-tiny-s0.outcomes.npz").read_bytes() == (run / "outcomes.npz").read_bytes()
    assert ((board / "records" / "minsim-tiny-s0.train_log.jsonl").read_bytes()
            == (run / "train_log.jsonl").read_bytes())
    canary = json.loads((board / "canary.json").read_text())
    assert sorted(canary["defenses"]) == ["minsim", "none"] and len(canary["environments"]) == 1
    assert sorted(canary["environments"][0]["defenses"]) == ["minsim", "none"] and canary["environments"][0]["attacks"]
    assert canary["records"] == record_digests(board / "records")

    # Another machine adds its own canaries beside the sweep's; the same machine replaces its own.
    ours = canary["environments"][0]
    other = {**ours, "environment": {**ours["environment"], "cpu_model": "Another CPU"}}
    (board / "canary.json").write_text(json.dumps({**canary, "environments": [ours, other]}))
    add_environment(board)
    again = json.loads((board / "canary.json").read_text())
    assert again["environments"] == [other, ours]  # the same code computes the same canaries here
    assert for_environment(again, ours["environment"]) == ours
    assert for_environment(again, {**ours["environment"], "cpu_model": "A third CPU"}) is None
    record = json.loads((board / "records" / "minsim-tiny-s0.json").read_text())

    second = _sweep(tmp_path, one_epoch_dataset)
    assert second.exit_code == 0, second.output
    assert "none seed 0: finished earlier" in second.output and "minsim seed 0: finished earlier" in second.output
    assert json.loads((board / "records" / "minsim-tiny-s0.json").read_text()) == record

    # A second seed: seed 0 is reused, seed 1 trained; one row per defense over its seeds, and the claims.
    seeded = CliRunner().invoke(cli, ["sweep", "--dataset", one_epoch_dataset, "--defenses", "none", "--device",
                                      "cpu", "--quiet", "--runs", str(tmp_path / "runs"), "--out",
                                      str(tmp_path / "boards"), "--seeds", "0", "1"])
    assert seeded.exit_code == 0, seeded.output
    assert "none seed 0: finished earlier" in seeded.output and "none seed 1: running" in seeded.output
    assert (board / "records" / "none-tiny-s1.json").is_file()
    rows = pd.read_csv(board / "standard-v1.csv", dtype={"seeds": str})
    assert dict(zip(rows["defense"], rows["seeds"], strict=True)) == {"none": "0,1", "minsim": "0"}
    assert "seeds 0 / 0,1" in (board / "claims.md").read_text()

    stale = dict(record, data={**record["data"], "fingerprint": "older-generator"})
    (run / "result.json").write_text(json.dumps(stale))
    refused = _sweep(tmp_path, one_epoch_dataset)
    assert refused.exit_code == 1 and "Traceback" not in refused.output
    assert "holds a finished run of other data (fingerprint older-generator" in refused.output
    assert json.loads((board / "records" / "minsim-tiny-s0.json").read_text()) == record  # left as it was
