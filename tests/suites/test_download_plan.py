"""The download script's planning step, without network: file selection and folder naming."""
import os
import subprocess

import factory

from awm.suites import configs, downloads

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

LLAMA3_REPO = ["config.json", "generation_config.json", "model-00001-of-00004.safetensors", "model-00002-of-00004.safetensors",
               "model.safetensors.index.json", "original/consolidated.00.pth", "original/tokenizer.model",
               "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json", "LICENSE", "README.md"]
BOTH_FORMATS = ["config.json", "tokenizer.model", "model.safetensors", "pytorch_model.bin", "training_args.bin"]
BIN_ONLY = ["config.json", "qwen.tiktoken", "pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin",
            "pytorch_model.bin.index.json", "modeling_qwen.py"]


def test_selects_only_what_awm_reads():
    assert downloads.select_files(LLAMA3_REPO) == [
        "config.json", "model-00001-of-00004.safetensors", "model-00002-of-00004.safetensors",
        "model.safetensors.index.json", "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]


def test_no_duplicate_bin_when_safetensors_exist_and_bin_when_alone():
    assert downloads.select_files(BOTH_FORMATS) == ["config.json", "model.safetensors", "tokenizer.model"]
    assert downloads.select_files(BIN_ONLY) == ["config.json", "pytorch_model-00001-of-00002.bin",
                                                    "pytorch_model-00002-of-00002.bin", "pytorch_model.bin.index.json",
                                                    "qwen.tiktoken"]
    assert downloads.select_files(["config.json", "README.md"]) == []


def test_missing_models_land_in_the_folder_main_reads(tmp_path):
    rows = downloads.missing("pruning_pairs", str(tmp_path))
    assert {r[0] for r in rows} == set(configs.suite_models("pruning_pairs"))
    for name, repo, folder in rows:
        assert repo == configs.MODELS[name] and folder == configs.model_dir(name, str(tmp_path))
    factory.make_llama(configs.model_dir("Llama-3.2-1B", str(tmp_path)), vocab=50)
    assert "Llama-3.2-1B" not in {r[0] for r in downloads.missing("pruning_pairs", str(tmp_path))}


def test_script_lists_suites_and_skips_complete_ones(tmp_path):
    listing = subprocess.run([os.path.join(ROOT, "download_models.sh")], capture_output=True, text=True)
    assert listing.returncode == 0 and "cpt_pairs" in listing.stdout and "independent_pairs_13b" in listing.stdout
    for name in configs.suite_models("pruning_pairs"):
        factory.make_llama(os.path.join(tmp_path, name), layers=1, vocab=50)
    env = {**os.environ, configs.CHECKPOINT_ENV: str(tmp_path)}
    done = subprocess.run([os.path.join(ROOT, "download_models.sh"), "pruning_pairs"], capture_output=True, text=True, env=env)
    assert done.returncode == 0 and "already in place" in done.stdout
