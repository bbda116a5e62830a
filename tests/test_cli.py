"""The command line as a user runs it: exit codes, summary lines, JSON keys, paths, devices."""
import json
import os
import subprocess
import sys

import factory
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN = os.path.join(ROOT, "main.py")
REPORT_KEYS = {"tool", "version", "model_a", "model_b", "scores", "verdict", "verdict_reason",
               "reference", "evidence", "layers", "timings"}
MODEL_KEYS = {"path", "format", "architecture", "family", "hidden_size", "num_layers", "num_heads",
              "num_kv_heads", "head_dim", "vocab_size", "tokenizer", "tokenizer_tokens", "dropped_token_ids", "dtype"}


def run_cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, MAIN, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def model_pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    factory.make_llama_and_disguised_copy(str(root / "a"), str(root / "b"))
    return root


def test_pair_from_another_cwd_with_relative_paths_and_json(model_pair, tmp_path):
    workdir = model_pair / "work"
    workdir.mkdir()
    done = run_cli("--model_paths", "../a", "../b", "--output", "out/report.json", "--quiet", "--device", "cpu", cwd=workdir)
    assert done.returncode == 0, done.stderr
    assert "AWM score (Wq*Wk)" in done.stdout and "Wq similarity" in done.stdout and "|Z| =" in done.stdout
    assert "DERIVED" in done.stdout
    data = json.loads((workdir / "out" / "report.json").read_text())
    assert REPORT_KEYS <= set(data)
    assert MODEL_KEYS <= set(data["model_a"])
    assert data["model_a"]["path"] == str(model_pair / "a")
    assert {"wq", "wk", "final", "z_score", "qk_circuit"} <= set(data["scores"])
    assert len(data["layers"]) == 4 and {"layer_a", "layer_b", "wq", "wk", "qk_circuit"} <= set(data["layers"][0])
    assert data["scores"]["final"] >= 99.9
    assert data["reference"]["mean"] == 0.375 and data["reference"]["std"] == 0.28


def test_missing_model_is_a_one_line_error(model_pair):
    done = run_cli("--model_paths", str(model_pair / "a"), str(model_pair / "nope"), "--quiet")
    assert done.returncode != 0
    assert done.stderr.strip().count("\n") == 0
    assert "nope: does not exist" in done.stderr and "Traceback" not in done.stderr
    assert "AWM score" not in done.stdout


def test_device_cuda_runs_on_cuda_or_says_it_cannot(model_pair):
    done = run_cli("--model_paths", str(model_pair / "a"), str(model_pair / "b"), "--device", "cuda", "--quiet")
    if torch.cuda.is_available():
        assert done.returncode == 0 and "AWM score" in done.stdout
    else:
        assert done.returncode != 0
        assert "CUDA is not available" in done.stderr


def test_help_explains_the_score_and_shows_examples():
    done = run_cli("--help")
    assert done.returncode == 0
    assert "independent" in done.stdout.lower() and "--model_paths" in done.stdout and "examples:" in done.stdout


def test_paper_only_skips_the_circuit_score(model_pair, tmp_path):
    output = tmp_path / "paper.json"
    done = run_cli("--model_paths", str(model_pair / "a"), str(model_pair / "b"), "--paper_only", "--quiet", "--output", str(output))
    assert done.returncode == 0, done.stderr
    data = json.loads(output.read_text())
    assert data["scores"]["qk_circuit"] is None and data["scores"]["final"] >= 99.9
    assert data["verdict"] == "derived" and "QK-circuit score   undefined" in done.stdout
