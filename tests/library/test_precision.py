"""--precision fast: bfloat16 layer products, close to the exact scores and said so in every
output; library entries of one precision are never scored against the other."""
import json

import pytest
import torch
from test_library import models  # noqa: F401  (the module-scoped fixture)

from awm import cli
from awm.comparison import pair
from awm.comparison.digest import digest_path
from awm.errors import ComparisonError
from awm.library import identification
from awm.library import tasks as library_tasks
from awm.method import cka
from awm.witnesses import verdict
from awm.witnesses.verdict import load_reference

CPU = torch.device("cpu")


def test_fast_products_are_bfloat16_and_close_to_exact(models):
    exact, fast = (digest_path(models["base"], CPU, precision=p) for p in ("exact", "fast"))
    layer_exact, layer_fast = exact.layer(1), fast.layer(1)
    stored = exact.checkpoint.query_key(1)[0]
    assert torch.equal(layer_fast.query, cka.gram(stored.bfloat16()).float())   # the bf16 product, nothing else
    assert not torch.equal(layer_fast.query, layer_exact.query)
    # float32 test weights lose mantissa bits in bfloat16 too: close as a whole, not entry by entry
    assert torch.linalg.norm(layer_fast.query - layer_exact.query) < 1e-2 * torch.linalg.norm(layer_exact.query)
    assert layer_fast.query.dtype == layer_fast.circuit.dtype == torch.float32


def test_fast_scores_stay_near_exact_and_the_report_says_which_ran(models, tmp_path, capsys):
    records = {}
    for precision in ("exact", "fast"):
        out = tmp_path / f"{precision}.json"
        assert cli.main(["--model_paths", models["base"], models["tuned"], "--device", "cpu", "--quiet",
                          "--precision", precision, "--output", str(out)]) == 0
        assert f"computed           {precision} (" in capsys.readouterr().out
        records[precision] = json.loads(out.read_text())
    assert records["fast"]["timings"]["precision"] == "fast" and records["exact"]["timings"]["precision"] == "exact"
    for layer_exact, layer_fast in zip(records["exact"]["layers"], records["fast"]["layers"]):
        for metric in ("wq", "wk", "qk_circuit"):
            assert layer_fast[metric] == pytest.approx(layer_exact[metric], abs=0.05)    # percent
    assert records["fast"]["verdict"] == records["exact"]["verdict"] == "derived"


def test_digests_of_different_precision_are_not_compared(models):
    exact, fast = (digest_path(models["base"], CPU, precision=p) for p in ("exact", "fast"))
    with pytest.raises(ComparisonError, match="different precision"):
        pair.compare_digests(exact, fast, CPU, verdict.PAPER_NULL, progress=False)


def test_library_entries_keep_their_precision(models, tmp_path):
    directory = str(tmp_path / "lib")
    fast = library_tasks.options(precision="fast")
    assert all("error" not in o for o in library_tasks.add_models([models["base"], models["other"]], directory, fast, CPU))
    found = identification.identify(models["suspect"], directory, fast, CPU, load_reference(None))
    assert [m["timings"]["precision"] for m in found["matches"]] == ["fast", "fast"]
    refused = identification.identify(models["suspect"], directory, library_tasks.options(), CPU, load_reference(None))
    assert not refused["matches"] and all("other options" in r["reason"] for r in refused["not_compared"])
