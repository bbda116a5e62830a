"""--vocab_match: shared tokens by the bytes they stand for (default) or by spelling (the
published implementation's rule, reproduced here against transformers' own get_vocab())."""
import json

import factory
import pytest
import torch
import transformers

from awm import cli
from awm.comparison import alignment
from awm.readers import vocabulary
from awm.readers.model_reader import ModelCheckpoint

CPU = torch.device("cpu")
BPE_FIELDS = dict(dropout=None, unk_token=None, continuing_subword_prefix=None, end_of_word_suffix=None,
                  fuse_unk=False, byte_fallback=False, ignore_merges=False, merges=[])
ADDED_FIELDS = dict(single_word=False, lstrip=False, rstrip=False, normalized=False, special=True)


def write_metaspace_model(directory, words, hidden=64, vocab=None):
    """A SentencePiece-style vocabulary ('▁word') in a tokenizer.json, with Llama tensors."""
    tokens = ["\u2581" + w for w in words] + ["ab", "cd"]
    vocab = vocab or len(tokens) + 1
    tensors = factory.random_llama_tensors(hidden=hidden, vocab=vocab, seed=5)
    factory.write_safetensors_model(directory, tensors, factory.llama_config(hidden, 4, 4, 2, vocab), tokens)
    data = {"version": "1.0", "truncation": None, "padding": None, "normalizer": None, "pre_tokenizer": None,
            "post_processor": None, "decoder": None,
            "added_tokens": [{"id": len(tokens), "content": "<|endoftext|>", **ADDED_FIELDS}],
            "model": {"type": "BPE", "vocab": {t: i for i, t in enumerate(tokens)}, **BPE_FIELDS}}
    with open(f"{directory}/tokenizer.json", "w", encoding="utf-8") as out:
        json.dump(data, out)
    return directory


def write_byte_level_model(directory, words, hidden=64):
    tokens = ["\u0120" + w for w in words] + ["ab", "zz"]
    vocab = len(tokens) + 1
    tensors = factory.random_llama_tensors(hidden=hidden, vocab=vocab, seed=6)
    factory.write_safetensors_model(directory, tensors, factory.llama_config(hidden, 4, 4, 2, vocab), tokens)
    data = {"version": "1.0", "truncation": None, "padding": None, "normalizer": None, "post_processor": None,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
            "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
            "added_tokens": [{"id": len(tokens), "content": "<|endoftext|>", **ADDED_FIELDS}],
            "model": {"type": "BPE", "vocab": {t: i for i, t in enumerate(tokens)}, **BPE_FIELDS}}
    with open(f"{directory}/tokenizer.json", "w", encoding="utf-8") as out:
        json.dump(data, out)
    return directory


@pytest.fixture(scope="module")
def two_kinds(tmp_path_factory):
    root = tmp_path_factory.mktemp("kinds")
    words = factory.byte_level_tokens(200, seed=3)
    words = [w.replace("\u0120", "") or "x" for w in words]
    words = list(dict.fromkeys(words))
    return (write_metaspace_model(str(root / "sentencepiece_like"), words),
            write_byte_level_model(str(root / "byte_level"), words))


def published_shared_pairs(path_a, path_b):
    """What the published implementation matches: identical keys of get_vocab()."""
    vocab_a = transformers.PreTrainedTokenizerFast(tokenizer_file=f"{path_a}/tokenizer.json").get_vocab()
    vocab_b = transformers.PreTrainedTokenizerFast(tokenizer_file=f"{path_b}/tokenizer.json").get_vocab()
    return sorted((vocab_a[t], vocab_b[t]) for t in vocab_a.keys() & vocab_b.keys())


def shared_pairs(path_a, path_b, match):
    vocab_a, vocab_b = (ModelCheckpoint(p, match).vocab for p in (path_a, path_b))
    ids_a, ids_b = alignment.shared_token_ids(vocab_a, vocab_b)
    return sorted(zip(ids_a.tolist(), ids_b.tolist()))


def test_spelling_mode_reproduces_the_published_rule(two_kinds):
    assert shared_pairs(*two_kinds, "spelling") == published_shared_pairs(*two_kinds)
    assert len(published_shared_pairs(*two_kinds)) == 2          # 'ab' and <|endoftext|>


def test_bytes_mode_also_matches_the_same_text_spelled_two_ways(two_kinds):
    by_bytes = shared_pairs(*two_kinds, "bytes")
    by_spelling = shared_pairs(*two_kinds, "spelling")
    assert set(by_spelling) < set(by_bytes)
    words = len(ModelCheckpoint(two_kinds[0]).vocab) - 3          # all but 'ab', 'cd', <|endoftext|>
    assert len(by_bytes) == words + 2                              # every '▁w' = 'Ġw', plus 'ab' and <|endoftext|>


def test_spelling_keys_are_the_vocabulary_strings(tmp_path):
    path = write_metaspace_model(str(tmp_path / "m"), ["hello", "world"])
    spelled, _ = vocabulary.load_directory_vocab(path, "spelling")
    assert {"\u2581hello", "\u2581world", "ab", "cd", "<|endoftext|>"} == set(spelled)


def test_cli_reports_the_match_rule(two_kinds, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert cli.main(["--model_paths", *two_kinds, "--vocab_match", "spelling", "--quiet", "--output", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["model_a"]["vocab_match"] == "spelling" and data["evidence"]["shared_tokens"] == 2


def test_a_parsed_vocabulary_is_reused_only_while_its_file_is_unchanged(tmp_path):
    path = tmp_path / "tokenizer.json"
    tokenizer = {"model": {"type": "WordPiece", "vocab": {"cat": 0, "dog": 1}}}
    path.write_text(json.dumps(tokenizer))
    first, name = vocabulary.load_directory_vocab(str(tmp_path))
    assert name == "tokenizer.json" and first == vocabulary.from_tokenizer_json(str(path)) and len(first) == 2
    first["bird"] = 2                                                    # a caller's copy: the kept one is untouched
    assert len(vocabulary.load_directory_vocab(str(tmp_path))[0]) == 2
    tokenizer["model"]["vocab"] = {"cat": 0, "dog": 1, "fox": 2}
    path.write_text(json.dumps(tokenizer))
    again = vocabulary.load_directory_vocab(str(tmp_path))[0]
    assert again == vocabulary.from_tokenizer_json(str(path)) and len(again) == 3
