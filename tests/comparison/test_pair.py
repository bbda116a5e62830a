"""End-to-end comparisons of synthetic checkpoints written as real model directories."""
import json
import os

import factory
import pytest
import sentencepiece
import torch

from awm.comparison import pair
from awm.comparison.digest import digest_path
from awm.readers.model_reader import ModelCheckpoint
from awm.witnesses import verdict

CPU = torch.device("cpu")


def compare_paths(a, b):
    digests = [digest_path(p, CPU) for p in (a, b)]
    return pair.compare_digests(*digests, CPU, verdict.PAPER_NULL, progress=False)


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    directory = tmp_path_factory.mktemp("models") / "base"
    tensors = factory.make_llama(str(directory), hidden=64, layers=4, heads=4, kv_heads=2, vocab=400)
    return str(directory), tensors


def write_variant(tmp_path, name, tensors, hidden=64, layers=4, heads=4, kv_heads=2, vocab=400, shards=1):
    directory = str(tmp_path / name)
    factory.write_safetensors_model(directory, tensors, factory.llama_config(hidden, layers, heads, kv_heads, vocab),
                                    factory.byte_level_tokens(vocab), shards)
    return directory


def test_permuted_sign_flipped_scaled_sharded_copy_scores_derived(base_model, tmp_path):
    path, tensors = base_model
    copy = write_variant(tmp_path, "disguised", factory.permute_sign_scale(tensors), shards=3)
    assert os.path.isfile(os.path.join(copy, "model.safetensors.index.json"))
    result = compare_paths(path, copy)
    assert result["scores"]["final"] >= 99.9
    assert result["scores"]["qk_circuit"] >= 99.9
    assert result["evidence"]["sign_flips"] > 0
    assert result["verdict"] == "derived"


def test_orthogonal_output_transform_scores_derived(base_model, tmp_path):
    path, tensors = base_model
    copy = write_variant(tmp_path, "rotated", factory.rotate_outputs(tensors))
    scores = compare_paths(path, copy)["scores"]
    assert scores["wq"] >= 99.9 and scores["wk"] >= 99.9


def test_pruned_width_and_depth_scores_high_with_correct_layer_map(base_model, tmp_path):
    path, tensors = base_model
    keep_dims = torch.randperm(64, generator=torch.Generator().manual_seed(9))[:48].sort().values
    kept_layers = [0, 2, 3]
    copy = write_variant(tmp_path, "pruned", factory.prune(tensors, keep_dims, kept_layers), hidden=48, layers=3)
    result = compare_paths(copy, path)          # the smaller model first: the base is still the wider one
    assert result["evidence"]["base_model"] == "b"
    assert result["evidence"]["matched_hidden_dims"] == 48
    assert result["evidence"]["layer_map"] == [[0, 0], [1, 2], [2, 3]]
    assert result["scores"]["final"] >= 99.0


def test_independent_models_score_near_zero(base_model, tmp_path):
    path, _ = base_model
    scores = []
    for seed in (11, 12, 13):
        other = str(tmp_path / f"independent{seed}")
        factory.make_llama(other, hidden=64, layers=4, heads=4, kv_heads=2, vocab=400, seed=seed)
        result = compare_paths(path, other)
        scores.append(result["scores"]["final"])
        assert result["verdict"] == "independent"
    assert all(abs(s) < 2.0 for s in scores), scores


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 1), (8, 2)])
def test_gqa_and_mqa_shapes(tmp_path, heads, kv_heads):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    tensors = factory.make_llama(a, hidden=64, layers=2, heads=heads, kv_heads=kv_heads, vocab=300)
    write_variant(tmp_path, "b", factory.permute_sign_scale(tensors), layers=2, heads=heads, kv_heads=kv_heads, vocab=300)
    result = compare_paths(a, b)
    assert result["model_a"]["num_kv_heads"] == kv_heads
    assert result["scores"]["final"] >= 99.9 and result["scores"]["qk_circuit"] >= 99.9


def test_bf16_checkpoint_reads_as_float32(tmp_path):
    tensors = {k: v.to(torch.bfloat16) for k, v in factory.random_llama_tensors(vocab=300).items()}
    a = write_variant(tmp_path, "bf16", tensors, vocab=300)
    checkpoint = ModelCheckpoint(a)
    assert checkpoint.describe()["dtype"] == "BF16"
    assert checkpoint.query_key(0)[0].dtype == torch.float32
    assert compare_paths(a, a)["scores"]["final"] == pytest.approx(100.0, abs=1e-3)


def test_no_tokenizer_equal_width_is_compared_unaligned(base_model, tmp_path):
    path, tensors = base_model
    copy = write_variant(tmp_path, "notok", tensors)
    os.remove(os.path.join(copy, "tokenizer.json"))
    result = compare_paths(path, copy)
    assert result["evidence"]["aligned"] is False
    assert any("UNALIGNED" in note for note in result["evidence"]["notes"])
    assert result["scores"]["final"] == pytest.approx(100.0, abs=1e-3)


def test_no_shared_tokens_and_different_width_leave_the_body_to_align_the_dims(base_model, tmp_path):
    path, tensors = base_model
    keep = torch.arange(48)
    copy = write_variant(tmp_path, "other_vocab", factory.prune(tensors, keep, [0, 1, 2, 3]), hidden=48)
    factory.write_tokenizer_json(copy, [f"zz{i}\u00e9" for i in range(400)], specials=())
    result = compare_paths(path, copy)
    assert result["scores"]["final"] is None and any("share no tokens" in note for note in result["evidence"]["notes"])
    assert result["evidence"]["alignment"]["basis"] == "body permutation"
    assert result["aligned_scores"]["final"] > 99.0 and result["verdict"] == "derived"
    assert result["inheritance"] == {"embedding": "unknown", "body": "shared"}


def test_token_ids_beyond_the_embedding_are_dropped(tmp_path):
    directory = str(tmp_path / "m")
    factory.make_llama(directory, vocab=300)
    factory.write_tokenizer_json(directory, factory.byte_level_tokens(300), specials=("<a>", "<b>"))
    checkpoint = ModelCheckpoint(directory)
    assert checkpoint.dropped_token_ids == 2
    assert max(checkpoint.vocab.values()) == 299


def test_unigram_tokenizer_json_and_sentencepiece_model_share_tokens(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"the quick brown fox {i} jumps over the lazy dog number {i * 7}" for i in range(400)))
    sentencepiece.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "sp"), vocab_size=320,
                                             model_type="unigram", byte_fallback=True, minloglevel=2)
    from awm.readers import vocabulary

    sp_vocab = vocabulary.from_sentencepiece(str(tmp_path / "sp.model"))
    processor = sentencepiece.SentencePieceProcessor(model_file=str(tmp_path / "sp.model"))
    pieces = [[processor.IdToPiece(i), 0.0] for i in range(processor.GetPieceSize())]
    unigram = {"model": {"type": "Unigram", "vocab": pieces}, "decoder": {"type": "Metaspace"}, "added_tokens": []}
    (tmp_path / "tokenizer.json").write_text(json.dumps(unigram))
    json_vocab = vocabulary.from_tokenizer_json(str(tmp_path / "tokenizer.json"))
    assert b"\n" in sp_vocab                      # <0x0A> byte piece decoded to its byte
    normal = {k: v for k, v in sp_vocab.items() if isinstance(k, bytes)}
    assert all(json_vocab.get(k) == v for k, v in normal.items())
    assert any(k.startswith(b" ") for k in normal)   # '\u2581the' is keyed as ' the'


def test_byte_level_and_metaspace_spellings_meet_on_bytes():
    from awm.readers import vocabulary

    assert vocabulary.byte_level_key("\u0120the") == vocabulary.metaspace_key("\u2581the") == b" the"
    assert vocabulary.byte_level_key("\u010a") == vocabulary.metaspace_key("<0x0A>") == b"\n"
