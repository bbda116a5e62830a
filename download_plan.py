"""The planning half of download_models.sh: which models are missing, which files to fetch.

    python download_plan.py list
    python download_plan.py missing SUITE|all [--checkpoint_dir DIR]   -> name<TAB>repo<TAB>folder
    python download_plan.py files REPO                                 -> one file name per line
    python download_plan.py complete FOLDER                            -> exit 0 when usable

Only what awm reads is fetched: config, tokenizer files, and the weights in one format
(safetensors when the repo has them, else PyTorch .bin) with their shard index.
"""
import argparse
import fnmatch
import os
import sys

import configs
from errors import CheckpointError

CONFIG_FILES = ("config.json",)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                   "ice_text.model", "qwen.tiktoken", "vocab.json", "merges.txt")
WEIGHT_FORMATS = (  # first format present wins
    ("*.safetensors", "model.safetensors.index.json"),
    ("pytorch_model*.bin", "pytorch_model.bin.index.json"),
)


def select_files(repo_files):
    """The files of a repo that awm needs; top-level files only (no original/ or consolidated copies)."""
    top = [f for f in repo_files if "/" not in f]
    chosen = [f for f in top if f in CONFIG_FILES + TOKENIZER_FILES]
    for pattern, index in WEIGHT_FORMATS:
        weights = [f for f in top if fnmatch.fnmatch(f, pattern) and not f.startswith(("consolidated", "adapter_", "training_args"))]
        if weights:
            return sorted(chosen + weights + [f for f in top if f == index])
    return []


def is_complete(folder):
    """True when the folder holds a config and readable weight files (every indexed shard)."""
    from readers.model_reader import find_weight_files

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
        raise SystemExit(f"unknown suite '{suite}'\n{configs.describe_suites()}")
    return configs.suite_models(suite)


def missing(suite, checkpoint_override=None):
    return [(name, configs.MODELS[name], configs.model_dir(name, checkpoint_override))
            for name in suite_names(suite) if not is_complete(configs.model_dir(name, checkpoint_override))]


def list_repo_files(repo):
    from huggingface_hub import HfApi

    return HfApi().list_repo_files(repo)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("list", "missing", "files", "complete"))
    parser.add_argument("target", nargs="?")
    parser.add_argument("--checkpoint_dir")
    args = parser.parse_args(argv)
    if args.command == "list":
        print(configs.describe_suites())
        print("  all                      every model of every suite")
        return 0
    if not args.target:
        parser.error(f"{args.command} needs a {'suite' if args.command == 'missing' else 'repo'}")
    if args.command == "complete":
        return 0 if is_complete(args.target) else 1
    if args.command == "missing":
        for row in missing(args.target, args.checkpoint_dir):
            print("\t".join(row))
        return 0
    try:
        files = select_files(list_repo_files(args.target))
    except Exception as err:  # network, auth or a repo that does not exist
        print(f"cannot list {args.target}: {err.__class__.__name__}: {str(err).splitlines()[0] if str(err) else ''}", file=sys.stderr)
        return 3
    if not files:
        print(f"{args.target} has no safetensors or pytorch_model*.bin weights at its top level", file=sys.stderr)
        return 4
    print("\n".join(files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
