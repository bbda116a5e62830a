"""The published provenance benchmark as the provenance_kit suite: its table against the
benchmark's facts, the pairs awm leaves out and why, and its facts in a run's outputs."""
import dataclasses
import json
import os
import subprocess
import sys
from collections import Counter

import factory

from awm import cli
from awm.readers import architectures
from awm.suites import configs, downloads, evaluation, provenance_kit
from awm.suites import files as suite_files

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SUITE = provenance_kit.SUITE
# The benchmark's pairs that hold an encoder or encoder-decoder model (its "type" field).
ENCODER_PAIRS = {f"similar-{i:02d}" for i in (5, 6, 18, 25, 26, 44, 51, 52)} | {
    f"dissimilar-{i:02d}" for i in (1, 3, 10, 12, 14, 21, 24, 27, 32, 33, 36, 37, 38, 39, 40, 41, 42, 46, 49)}


def test_the_table_holds_the_benchmarks_111_pairs_in_its_two_lists():
    ids = [p.pair_id for p in provenance_kit.PAIRS]
    assert ids == [f"similar-{i:02d}" for i in range(1, 56)] + [f"dissimilar-{i:02d}" for i in range(1, 57)]
    assert all(p.label == ("derived" if p.pair_id.startswith("similar") else "independent") for p in provenance_kit.PAIRS)
    assert {p.difficulty for p in provenance_kit.PAIRS} == set(provenance_kit.DIFFICULTIES)
    assert all(p.provenance == "none" for p in provenance_kit.PAIRS if p.label == "independent")
    by_label = lambda label: Counter(p.difficulty for p in provenance_kit.PAIRS if p.label == label)
    assert by_label("derived") == {"easy": 23, "medium": 21, "hard": 9, "extreme": 2}
    assert by_label("independent") == {"easy": 29, "medium": 17, "hard": 9, "extreme": 1}


def test_every_model_is_a_decoder_with_an_architecture_or_a_named_encoder():
    repos = {r for p in provenance_kit.PAIRS for r in (p.repo_a, p.repo_b)}
    assert repos == set(provenance_kit.NOT_DECODERS) | set(provenance_kit.ARCHITECTURES)
    assert not set(provenance_kit.NOT_DECODERS) & set(provenance_kit.ARCHITECTURES)
    assert set(provenance_kit.NOT_DECODERS.values()) == {"encoder", "encoder-decoder"}
    assert all(r.count("/") == 1 for r in repos)


def test_decoder_pairs_are_kept_and_encoder_pairs_refused_by_name():
    kept, left = provenance_kit.kept(), provenance_kit.left_out()
    assert len(kept) + len(left) == 111
    assert Counter(p.label for p in kept) == {"derived": 42, "independent": 36}
    assert Counter(p.label for p, _, _ in left) == {"derived": 13, "independent": 20}
    encoder_refused = {p.pair_id for p, causes, _ in left if provenance_kit.ENCODERS_LEFT_OUT in causes}
    assert encoder_refused == ENCODER_PAIRS
    for pair, causes, reason in left:
        assert causes and all(cause in reason for cause in causes)
        assert any(repo in reason for repo in (pair.repo_a, pair.repo_b))
    for pair in kept:                              # each kept model has a row awm scores
        for repo in (pair.repo_a, pair.repo_b):
            families = [f for f in architectures.FAMILIES if provenance_kit.ARCHITECTURES[repo] in f.model_types]
            assert any(not f.unsupported for f in families), repo


def test_refusals_follow_the_architecture_table(monkeypatch):
    wedlm = [p for p in provenance_kit.PAIRS if "wedlm" in (provenance_kit.ARCHITECTURES.get(p.repo_a), provenance_kit.ARCHITECTURES.get(p.repo_b))]
    assert [p.pair_id for p in wedlm] == ["similar-13", "similar-49", "similar-50"]
    assert all("'wedlm'" in provenance_kit.refusal(p) for p in wedlm)
    row = architectures.Family("wedlm", ("wedlm",), "embed_tokens.weight", "layers.{i}.self_attn.q_proj.weight",
                               "layers.{i}.self_attn.k_proj.weight")
    monkeypatch.setattr(provenance_kit, "FAMILIES", architectures.FAMILIES + (row,))
    assert all(provenance_kit.refusal(p) is None and p in provenance_kit.kept() for p in wedlm)
    mla = next(p for p in provenance_kit.PAIRS if p.repo_b == "deepseek-ai/DeepSeek-Coder-V2-Lite-Instruct")
    assert "multi-head latent attention" in provenance_kit.refusal(mla)


def test_the_suite_resolves_every_model_to_its_repo_and_keeps_the_facts():
    pairs = configs.SUITES[SUITE]
    assert len(pairs) == len(provenance_kit.kept())
    for pair, source in zip(pairs, provenance_kit.kept()):
        assert (configs.MODELS[pair.model_a], configs.MODELS[pair.model_b]) == (source.repo_a, source.repo_b)
        assert (pair.label, pair.category, pair.difficulty, pair.pair_id) == (
            source.label, source.provenance, source.difficulty, source.pair_id)
        assert pair.label in ("derived", "independent")
    # Repos other suites already name keep their folder; a name taken by another repo gets its owner.
    assert configs.MODELS["Llama-2-7b-hf"] == "meta-llama/Llama-2-7b-hf"
    assert configs.MODELS["NousResearch--Llama-2-7b-hf"] == "NousResearch/Llama-2-7b-hf"
    assert len({os.path.basename(configs.model_dir(m)) for m in configs.MODELS}) == len(configs.MODELS)
    assert not set(configs.suite_models(SUITE)) & {n for n, r in configs.MODELS.items() if r in provenance_kit.NOT_DECODERS}


def test_a_builtin_suite_pair_carries_the_benchmarks_facts(tmp_path):
    _, pairs = suite_files.resolve([SUITE], str(tmp_path))
    first = next(p for p in pairs if p.pair_id == "similar-02")
    assert first.facts == {"pair_id": "similar-02", "difficulty": "easy"}
    assert (first.label, first.category) == ("derived", "fine-tuning (RLHF)")
    assert suite_files.left_out([SUITE, "sft_pairs"]) == configs.LEFT_OUT[SUITE]
    assert not suite_files.left_out(["sft_pairs"]) and all(not p.facts for p in suite_files.builtin_suite("sft_pairs"))


def test_describing_the_suites_names_every_left_out_pair():
    text = configs.describe_suites()
    line = next(line for line in text.splitlines() if line.strip().startswith(SUITE))
    kept, left = provenance_kit.kept(), provenance_kit.left_out()
    labels = Counter(p.label for p in kept)
    assert f"{len(kept)} pairs" in line and f"{labels['derived']} derived, {labels['independent']} independent" in line and "1 extreme" in line
    assert f"left out, {len(left)} pairs:" in text and f"encoder models are not supported ({len(ENCODER_PAIRS)})" in text
    for entry in configs.LEFT_OUT[SUITE]:
        assert entry["pair_id"] in text


def test_the_download_plan_knows_the_suite(tmp_path):
    listing = subprocess.run([sys.executable, "-m", "awm.suites.download_command", "list"], capture_output=True, text=True, cwd=ROOT)
    assert listing.returncode == 0 and SUITE in listing.stdout and "similar-26" in listing.stdout
    planned = subprocess.run([sys.executable, "-m", "awm.suites.download_command", "missing", SUITE, "--checkpoint_dir", str(tmp_path)],
                             capture_output=True, text=True, cwd=ROOT)
    rows = [line.split("\t") for line in planned.stdout.splitlines()]
    assert planned.returncode == 0 and {r[0] for r in rows} == set(configs.suite_models(SUITE))
    assert all(repo == configs.MODELS[name] and folder == configs.model_dir(name, str(tmp_path)) for name, repo, folder in rows)
    assert not {r[1] for r in rows} & set(provenance_kit.NOT_DECODERS)
    factory.make_llama(configs.model_dir("pythia-410m", str(tmp_path)), layers=1, vocab=50)
    assert "pythia-410m" not in {r[0] for r in downloads.missing(SUITE, str(tmp_path))}


def test_verdicts_by_difficulty_count_inconclusive_as_wrong():
    records = [{"label": "derived", "difficulty": "hard", "verdict": "derived (disguised)"},
               {"label": "derived", "difficulty": "hard", "verdict": "inconclusive"},
               {"label": "independent", "difficulty": "easy", "verdict": "independent"},
               {"label": "independent", "difficulty": "easy", "verdict": "derived"},
               {"label": "derived", "verdict": "derived"}]
    found = evaluation.verdicts_by(records, "difficulty", provenance_kit.DIFFICULTIES)
    assert list(found) == ["easy", "hard"]
    assert found["hard"] == {"derived": 2, "derived_recognised": 1, "independent": 0, "independent_called_independent": 0, "accuracy": 0.5}
    assert found["easy"]["independent_called_independent"] == 1 and found["easy"]["accuracy"] == 0.5


def test_a_run_reports_difficulties_and_the_left_out_pairs(tmp_path, capsys):
    """Three of the suite's pairs on tiny stand-ins: similar-02 (a copy), dissimilar-30 and
    dissimilar-56 (other seeds); every other pair is skipped for its missing models."""
    checkpoints, results = tmp_path / "ckpt", tmp_path / "results"
    tensors = factory.make_llama(str(checkpoints / "Llama-2-7b-hf"), vocab=300)
    factory.write_safetensors_model(str(checkpoints / "Llama-2-7b-chat-hf"), factory.permute_sign_scale(tensors),
                                    factory.llama_config(64, 4, 4, 2, 300), factory.byte_level_tokens(300))
    factory.make_llama(str(checkpoints / "Llama-2-13b-hf"), vocab=300, seed=21)
    factory.make_llama(str(checkpoints / "open_llama_7b"), vocab=300, seed=22)
    code = cli.main(["--config", SUITE, "--checkpoint_dir", str(checkpoints), "--results_dir", str(results), "--quiet"])
    out = capsys.readouterr().out
    kept, left = len(provenance_kit.kept()), len(provenance_kit.left_out())
    assert code == 0 and f"3 of {kept} pairs scored, {kept - 3} skipped ({left} more left out" in out
    assert "right by difficulty: easy 1.00 (1 pairs), medium 1.00 (1 pairs), extreme 1.00 (1 pairs)" in out
    data = json.loads((results / "scores.json").read_text())
    by_id = {r["pair_id"]: r for r in data["pairs"]}
    assert set(by_id) == {"similar-02", "dissimilar-30", "dissimilar-56"}
    assert by_id["dissimilar-56"]["difficulty"] == "extreme" and by_id["similar-02"]["category"] == "fine-tuning (RLHF)"
    assert all("pair_id" in s and "difficulty" in s for s in data["skipped"])
    assert data["verdicts_by_difficulty"]["easy"]["derived_recognised"] == 1
    assert [e["pair_id"] for e in data["left_out"]] == [e["pair_id"] for e in configs.LEFT_OUT[SUITE]]
    table = (results / "table.md").read_text()
    assert "| Llama-2-7b-hf vs Llama-2-7b-chat-hf | fine-tuning (RLHF), easy |" in table
    assert "| extreme | - | 1/1 | 1.000 |" in table and f"Left out ({left} pairs awm cannot score):" in table
    assert ("- similar-26 google-bert/bert-base-uncased vs distilbert/distilbert-base-uncased (derived, medium): "
            "encoder models are not supported") in table
    csv_lines = (results / "scores.csv").read_text().splitlines()
    assert csv_lines[0].endswith(",verdict,difficulty,pair_id") and any(line.endswith(",extreme,dissimilar-56") for line in csv_lines)


def test_pairs_of_other_suites_carry_no_benchmark_fields():
    pair = configs.SUITES["sft_pairs"][0]
    assert pair.difficulty is None and pair.pair_id is None and pair.label == "derived"
    assert dataclasses.replace(pair, stated_label="independent").label == "independent"
