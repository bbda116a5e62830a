"""The planning half of download_models.sh: which models are missing, which files to fetch.

Only what awm reads is fetched: config, tokenizer files, and the weights in one format
(safetensors when the repo has them, else PyTorch .bin) with their shard index.
"""
import os

from awm.errors import AwmError, CheckpointError
from awm.readers.weight_files import choose_weight_files
from awm.suites import configs

CONFIG_FILES = ("config.json",)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                   "ice_text.model", "qwen.tiktoken", "vocab.json", "merges.txt")


def select_files(repo_files):
    """The files of a repo that awm needs: config, tokenizer and one weight format with its index
    (readers.weight_files decides, as for a local folder); top-level files only."""
    top = [f for f in repo_files if "/" not in f]
    choice = choose_weight_files(top)
    if choice is None or choice.format == "gguf":        # the suites' repos hold Hugging Face weights
        return []
    return sorted([f for f in top if f in CONFIG_FILES + TOKENIZER_FILES] + list(choice.files) + ([choice.index] if choice.index else []))


def is_complete(folder):
    """True when the folder holds a config and readable weight files (every indexed shard)."""
    from awm.readers.model_reader import find_weight_files

    if not os.path.isfile(os.path.join(folder, "config.json")):
        return False
    try:
        find_weight_files(folder)
    except CheckpointError:
        return False
    return True


def suite_names(suite):
    if suite == "all":
        return list(configs.MODELS)
    if suite not in configs.SUITES:
        raise AwmError(f"unknown suite '{suite}'\n{configs.describe_suites()}")
    return configs.suite_models(suite)


def missing(suite, checkpoint_override=None):
    return [(name, configs.MODELS[name], configs.model_dir(name, checkpoint_override))
            for name in suite_names(suite) if not is_complete(configs.model_dir(name, checkpoint_override))]


def list_repo_files(repo):
    from huggingface_hub import HfApi

    return HfApi().list_repo_files(repo)
