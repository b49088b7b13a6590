"""Result files: appended round by round (never rewritten), valid after every row."""

import csv
import json

from experiments.results import ResultsWriter, load_rows


def row(server_round, **extra):
    return {"round": server_round, "test_accuracy": 0.5, "cum_bytes_up": 0, "cum_bytes_down": 0, **extra}


def test_rows_are_appended_and_earlier_rows_are_never_rewritten(tmp_path):
    writer = ResultsWriter(tmp_path, {}, plot=False)
    writer(row(0))
    writer(row(1, sparsity=0.75))  # a new column: the CSV gets it once
    assert load_rows(tmp_path) == [row(0), row(1, sparsity=0.75)]
    # Mark what is on disk; a writer that rewrote its files would erase the marks.
    for name in ("rounds.json", "rounds.csv"):
        path = tmp_path / name
        path.write_text(path.read_text().replace("0.75", "0.25"))
    for r in range(2, 50):
        writer(row(r, sparsity=0.999))
        assert len(load_rows(tmp_path)) == r + 1  # valid JSON after every row
    rows = load_rows(tmp_path)
    assert rows[1]["sparsity"] == 0.25 and rows[-1] == row(49, sparsity=0.999)
    with open(tmp_path / "rounds.csv") as f:
        table = list(csv.DictReader(f))
    assert [t["round"] for t in table] == [str(r) for r in range(50)]
    assert table[1]["sparsity"] == "0.25" and table[0]["sparsity"] == ""


def test_a_new_writer_starts_an_empty_list(tmp_path):
    ResultsWriter(tmp_path, {"a": 1}, plot=False)
    assert json.loads((tmp_path / "rounds.json").read_text()) == []
