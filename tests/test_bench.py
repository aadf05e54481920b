"""`lovasz bench` end to end on small shapes: table, ratios, JSON, peers reported, never dropped."""

import json

from conftest import require

require("torch")
bench = require("lovasz.bench")


def test_quick_bench_writes_table_and_json(tmp_path, capsys):
    table = tmp_path / "table.md"
    argv = ["--quick", "--repeats", "1", "--no-memory", "--out", str(tmp_path), "--markdown", str(table)]
    assert bench.main([*argv, "--commit", "abc1234"]) == 0
    out = capsys.readouterr().out
    result = json.loads((tmp_path / "results.json").read_text())
    assert {"cpu", "torch", "torch_threads"} <= set(result["machine"])
    impls = {(r["case"], r["impl"]) for r in result["rows"]}
    # every peer has a row; the dense twin only in the point-cloud cases
    points = sum(case.kind.startswith("points") for case in bench.QUICK_CASES)
    assert len(impls) == len(bench.QUICK_CASES) * (len(bench.IMPLEMENTATIONS) - 1) + points
    dense = [r for r in result["rows"] if r["impl"] == "lovasz" and "lovasz dense" in r["ratios"]]
    assert len(dense) == points > 0
    ours = [r for r in result["rows"] if r["impl"] == "lovasz"]
    assert all(r["seconds"] > 0 and "sort floor" in r["ratios"] for r in ours)
    assert "the sort floor" in out and "computes another quantity" in out
    assert result["commit"] == "abc1234"
    lines = table.read_text().splitlines()
    assert "commit abc1234" in lines[0]
    assert lines[2].startswith("| case | shape | lovasz ms | original ms |")
    assert len(lines) == 4 + len(bench.QUICK_CASES)
    assert all(line.count("|") == lines[2].count("|") for line in lines[2:])


def test_peak_memory_probe_measures_a_step():
    peak = bench.peak_memory_here(bench.QUICK_CASES[0], "lovasz")
    assert peak is None or peak >= 0
