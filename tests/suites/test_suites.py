"""Suite runs on a user's suite file of small synthetic models: outputs, skips, caching, ROC."""
import json
import os

import factory
import pytest
import torch

from awm import cli
from awm.comparison import pair
from awm.comparison.digest import ModelDigest
from awm.library import tasks as library_tasks
from awm.suites import configs, evaluation
from awm.suites import files as suite_files
from awm.suites import run as suite_run
from awm.witnesses.verdict import load_reference


@pytest.fixture(scope="module")
def suite_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("suite")
    tensors = factory.make_llama(str(root / "base"), vocab=300)
    tokens = factory.byte_level_tokens(300)
    factory.write_safetensors_model(str(root / "finetune"), factory.permute_sign_scale(tensors),
                                    factory.llama_config(64, 4, 4, 2, 300), tokens)
    keep = torch.arange(0, 64, 4 / 3).long()[:48]
    factory.write_safetensors_model(str(root / "pruned"), factory.prune(tensors, keep, [0, 1, 3]),
                                    factory.llama_config(48, 3, 4, 2, 300, head_dim=16), tokens)
    factory.make_llama(str(root / "other1"), vocab=300, seed=21)
    factory.make_llama(str(root / "other2"), vocab=300, seed=22)
    spec = {
        "name": "mine",
        "models": {"base": "base", "ft": "finetune", "pruned": "pruned", "x": "other1", "y": "other2"},
        "pairs": [
            {"a": "base", "b": "ft", "label": "derived", "category": "sft"},
            {"a": "base", "b": "pruned", "label": "derived", "category": "pruning"},
            {"a": "base", "b": "x", "label": "independent"},
            {"a": "base", "b": "y", "label": "independent"},
            {"a": "x", "b": "y", "label": "independent"},
            {"a": "ft", "b": "missing_model", "label": "derived"},
        ],
    }
    path = root / "my_pairs.json"
    path.write_text(json.dumps(spec))
    return root, path


def test_suite_run_writes_every_output_and_skips_the_broken_pair(suite_file, tmp_path, capsys):
    _, spec = suite_file
    results = tmp_path / "results"
    code = cli.main(["--config", str(spec), "--results_dir", str(results), "--quiet"])
    out = capsys.readouterr().out
    assert code == 0
    assert "5 of 6 pairs scored, 1 skipped" in out and "missing_model: does not exist" in out
    data = json.loads((results / "scores.json").read_text())
    assert data["complete"] is True and len(data["pairs"]) == 5 and len(data["skipped"]) == 1
    by_pair = {r["pair"]: r for r in data["pairs"]}
    assert by_pair["base vs ft"]["scores"]["final"] >= 99.9
    assert by_pair["base vs pruned"]["evidence"]["layer_map"] == [[0, 0], [1, 1], [3, 2]]
    assert abs(by_pair["x vs y"]["scores"]["final"]) < 2
    assert len(by_pair["base vs ft"]["layers"]) == 4                # per-layer scores kept
    assert data["metrics"]["final"]["auc"] == 1.0 and data["metrics"]["final"]["tpr_at_fpr"] == 1.0
    assert data["model_reads"] == {"base": 1, "finetune": 1, "pruned": 1, "other1": 1, "other2": 1}
    csv_lines = (results / "scores.csv").read_text().splitlines()
    assert csv_lines[0].startswith("pair,suite,category,label,wq,wk,final") and len(csv_lines) == 6
    table = (results / "table.md").read_text()
    assert "| base vs ft | sft |" in table and "Skipped:" in table and "AUC 1.000" in table
    confusion = data["verdict_confusion"]
    assert confusion["counts"]["derived"]["derived"] == 2 and confusion["counts"]["independent"]["independent"] == 3
    assert confusion["false_positive_rate"] == 0.0 and confusion["true_positive_rate"] == 1.0
    assert "| independent | 0 | 0 | 0 | 0 | 3 |" in table and "independent pairs called derived 0.000" in table
    assert "| true label | derived | derived (disguised) | inconclusive | no evidence of derivation | independent |" in table
    assert "verdicts: derived pairs -> 2 derived; independent pairs -> 3 independent" in out
    for name in ("roc.png", "roc.pdf", "heatmap.png", "null_stats.json", "layers/base_vs_ft.png"):
        assert (results / name).is_file(), name
    null = json.loads((results / "null_stats.json").read_text())
    assert null["n"] == 3 and null["std"] > 0


def test_each_model_is_read_once_and_layers_computed_once(suite_file, monkeypatch):
    _, spec = suite_file
    name, pairs = suite_files.resolve([str(spec)])
    calls = []
    original = ModelDigest.layer

    def counting(self, index):
        calls.append((self.checkpoint.path, index))
        return original(self, index)

    monkeypatch.setattr(ModelDigest, "layer", counting)
    run = suite_run.SuiteRun(name, pairs, torch.device("cpu"), load_reference(None), str(spec.parent / "r2"), 10 ** 9,
                          library_tasks.options(), progress=False)
    run.run()
    reads = {path: n for path, n in run.cache.loads.items()}
    assert set(reads.values()) == {1}
    kernel_reads = sum(d.layer_reads for d in run.cache.entries.values())
    assert kernel_reads == 4 + 4 + 3 + 4 + 4                    # every layer of every model exactly once


def test_interrupted_run_keeps_finished_pairs(suite_file, tmp_path, monkeypatch):
    _, spec = suite_file
    real = pair.compare_digests
    calls = []

    def stop_on_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(suite_run, "compare_digests", stop_on_second)
    results = tmp_path / "interrupted"
    assert cli.main(["--config", str(spec), "--results_dir", str(results), "--quiet"]) == 130
    data = json.loads((results / "scores.json").read_text())
    assert len(data["pairs"]) == 1 and data["complete"] is False
    assert not [f for f in os.listdir(results) if f.startswith(".tmp-")]


def test_custom_null_stats_change_the_z_score(suite_file, tmp_path, capsys):
    root, _ = suite_file
    null = tmp_path / "null.json"
    null.write_text(json.dumps({"mean": 1.0, "std": 0.5}))
    output = tmp_path / "pair.json"
    cli.main(["--model_paths", str(root / "base"), str(root / "finetune"), "--null_stats", str(null), "--output", str(output), "--quiet"])
    data = json.loads(output.read_text())
    assert data["reference"]["mean"] == 1.0 and "null.json" in data["reference"]["name"]
    assert data["scores"]["z_score"] == pytest.approx(abs(data["scores"]["final"] - 1.0) / 0.5, abs=1e-3)


def test_yaml_suite_with_paths_and_list_pairs(suite_file, tmp_path):
    root, _ = suite_file
    spec = tmp_path / "pairs.yaml"
    spec.write_text(f"pairs:\n  - [{root / 'base'}, {root / 'finetune'}]\n")
    name, pairs = suite_files.resolve([str(spec)])
    assert name == "pairs" and pairs[0].name == "base vs finetune" and pairs[0].label is None


def test_unknown_suite_is_a_clear_error(capsys):
    assert cli.main(["--config", "no_such_suite", "--quiet"]) == 2
    assert "neither a built-in suite" in capsys.readouterr().err


# ----------------------------------------------------------------------------- ROC numbers by hand
def test_roc_metrics_on_a_hand_computed_example():
    # derived: 0.9, 0.7; independent: 0.8, 0.6 -> 3 of 4 (derived, independent) orderings right.
    metrics = evaluation.detection_metrics([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0])
    assert metrics["auc"] == pytest.approx(0.75)
    assert metrics["tpr_at_fpr"] == pytest.approx(0.5)      # at FPR 0 only 0.9 is above every negative
    assert metrics["pauc"] == pytest.approx(0.5)            # TPR 0.5 flat over FPR [0, 0.05]


def test_roc_ties_count_half_and_perfect_separation_is_one():
    assert evaluation.detection_metrics([1.0, 1.0], [1, 0])["auc"] == pytest.approx(0.5)
    perfect = evaluation.detection_metrics([5, 4, 1, 0], [1, 1, 0, 0])
    assert perfect["auc"] == perfect["pauc"] == perfect["tpr_at_fpr"] == 1.0


def test_null_statistics_use_sample_std():
    stats = evaluation.null_statistics([0.1, 0.3, 0.5])
    assert stats["mean"] == pytest.approx(0.3) and stats["std"] == pytest.approx(0.2)


# ----------------------------------------------------------------------------- suite integrity
def test_builtin_suites_are_complete_and_labelled():
    assert len(configs.SUITES) == 10
    for name, pairs in configs.SUITES.items():
        assert pairs, name
        for pair in pairs:
            assert pair.model_a in configs.MODELS and pair.model_b in configs.MODELS, (name, pair)
            assert pair.label in ("derived", "independent") and pair.model_a != pair.model_b
    assert len(configs.SUITES["independent_pairs"]) == 45 == len(configs.SUITES["independent_pairs_13b"])
    assert all(p.label == "independent" for p in configs.SUITES["independent_pairs"])
    assert len({os.path.basename(configs.model_dir(m)) for m in configs.MODELS}) == len(configs.MODELS)


def test_checkpoint_dir_override_order(monkeypatch, tmp_path):
    monkeypatch.setenv(configs.CHECKPOINT_ENV, str(tmp_path / "env"))
    assert configs.model_dir("x") == str(tmp_path / "env" / "x")
    assert configs.model_dir("x", str(tmp_path / "flag")) == str(tmp_path / "flag" / "x")
    monkeypatch.delenv(configs.CHECKPOINT_ENV)
    assert configs.model_dir("x") == os.path.join(configs.DEFAULT_CHECKPOINT_DIR, "x")


def test_a_checkout_keeps_its_checkpoints_beside_main_py():
    checkout = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert configs.IN_CHECKOUT and configs.DEFAULT_CHECKPOINT_DIR == os.path.join(checkout, "checkpoints")
