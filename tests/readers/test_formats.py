"""Checkpoint formats: PyTorch .bin (safely), GGUF (quantized, fused, split), vocab files."""
import base64
import glob
import json
import os

import factory
import pytest
import torch

from awm.comparison import pair
from awm.comparison.digest import digest_path
from awm.errors import CheckpointError
from awm.readers import vocabulary
from awm.readers.model_reader import ModelCheckpoint
from awm.witnesses import verdict

CPU = torch.device("cpu")
TOKENS = factory.byte_level_tokens(300)


def score(a, b):
    digests = [digest_path(p, CPU) for p in (a, b)]
    return pair.compare_digests(*digests, CPU, verdict.PAPER_NULL, progress=False)


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    root = tmp_path_factory.mktemp("formats")
    tensors = factory.random_llama_tensors(hidden=64, layers=4, heads=4, kv_heads=2, vocab=300)
    path = factory.write_safetensors_model(str(root / "safetensors"), tensors, factory.llama_config(64, 4, 4, 2, 300), TOKENS)
    return root, tensors, path


def write_bin_model(directory, tensors, shards=1):
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as out:
        json.dump(factory.llama_config(64, 4, 4, 2, 300), out)
    factory.write_tokenizer_json(directory, TOKENS)
    names = list(tensors)
    if shards == 1:
        torch.save(tensors, os.path.join(directory, "pytorch_model.bin"))
        return directory
    weight_map = {}
    for s in range(shards):
        shard = f"pytorch_model-{s + 1:05d}-of-{shards:05d}.bin"
        torch.save({n: tensors[n] for n in names[s::shards]}, os.path.join(directory, shard))
        weight_map.update({n: shard for n in names[s::shards]})
    with open(os.path.join(directory, "pytorch_model.bin.index.json"), "w") as out:
        json.dump({"weight_map": weight_map}, out)
    return directory


@pytest.mark.parametrize("shards", [1, 2])
def test_bin_checkpoints_read_like_safetensors(original, shards):
    root, tensors, path = original
    binary = write_bin_model(str(root / f"bin{shards}"), tensors, shards)
    result = score(path, binary)
    assert result["model_b"]["format"] == "pytorch-bin"
    assert result["scores"]["final"] == pytest.approx(100.0, abs=1e-3)


def test_safetensors_preferred_over_bin(original):
    root, tensors, _ = original
    both = write_bin_model(str(root / "both"), tensors)
    from safetensors.torch import save_file

    save_file(tensors, os.path.join(both, "model.safetensors"))
    assert ModelCheckpoint(both).describe()["format"] == "safetensors"


class Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    directory = tmp_path / "evil"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(factory.llama_config(64, 4, 4, 2, 300)))
    torch.save({"model.embed_tokens.weight": torch.zeros(3, 64), "payload": Exploit(marker)}, directory / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"pytorch_model.bin: refused.*nothing from it was executed"):
        ModelCheckpoint(directory)
    assert not marker.exists()


@pytest.mark.parametrize("attn_type,embed_type,minimum", [("F16", "F16", 99.99), ("Q8_0", "Q8_0", 99.5), ("Q4_0", "Q8_0", 95.0)])
def test_quantized_gguf_copy_scores_derived(original, attn_type, embed_type, minimum):
    root, tensors, path = original
    gguf_path = factory.write_gguf(str(root / f"m-{attn_type}.gguf"), tensors, 4, 2, TOKENS, attn_type, embed_type)
    result = score(gguf_path, path)
    assert result["model_a"]["format"] == "gguf" and result["model_a"]["dtype"] == attn_type
    assert result["scores"]["final"] >= minimum
    assert result["evidence"]["shared_tokens"] == 300


def test_fused_qkv_gguf_is_split_into_q_and_k(original):
    root, tensors, path = original
    gguf_path = factory.write_gguf(str(root / "fused.gguf"), tensors, 4, 2, TOKENS, "F32", "F32", fused=True)
    checkpoint = ModelCheckpoint(gguf_path)
    assert checkpoint.family.family.name == "gguf-fused"
    assert score(gguf_path, path)["scores"]["final"] == pytest.approx(100.0, abs=1e-3)


def test_split_gguf_set_and_directory_with_one_gguf(original):
    root, tensors, path = original
    split_dir = root / "split"
    split_dir.mkdir()
    factory.write_gguf(str(split_dir / "model.gguf"), tensors, 4, 2, TOKENS, "F16", "F16", split_max_tensors=5)
    shards = sorted(glob.glob(str(split_dir / "*.gguf")))
    assert len(shards) > 1
    assert score(shards[0], path)["scores"]["final"] == pytest.approx(100.0, abs=1e-2)
    assert score(str(split_dir), path)["scores"]["final"] == pytest.approx(100.0, abs=1e-2)


def test_tiktoken_keys_keep_distinct_bytes_distinct(tmp_path):
    invalid_utf8 = [b"\xff", b"\xfe", b"\xe2\x82", b" the", b"\xe2\x82\xac"]
    lines = [f"{base64.b64encode(t).decode()} {i}" for i, t in enumerate(invalid_utf8)]
    (tmp_path / "qwen.tiktoken").write_text("\n".join(lines))
    vocab = vocabulary.from_tiktoken(str(tmp_path / "qwen.tiktoken"))
    assert len(vocab) == len(invalid_utf8)                 # \xff and \xfe would both decode to U+FFFD
    assert vocab[b" the"] == 3 and vocab[b"\xe2\x82\xac"] == 4
    assert vocabulary.byte_level_key("\u0120the") in vocab  # meets a byte-level BPE spelling


def test_gguf_vocab_uses_token_types_for_control_tokens():
    vocab = vocabulary.from_gguf_metadata(["<s>", "\u2581the", "<0x0A>"], [3, 1, 6], "llama")
    assert vocab == {"<s>": 0, b" the": 1, b"\n": 2}


# ----------------------------------------------------------------------------- quantized checkpoints
def fp8_block_copy(tensors):
    """A DeepSeek-V3 / Qwen3-FP8-style copy: float8 weights with 128 x 128 block scales beside them."""
    copy = {}
    for name, weight in tensors.items():
        if name.endswith(("q_proj.weight", "k_proj.weight")):
            scale = weight.abs().max().clamp_min(1e-12) / 448.0
            copy[name] = (weight / scale).to(torch.float8_e4m3fn)
            copy[name.replace(".weight", ".weight_scale_inv")] = scale.reshape(1, 1).float()
        else:
            copy[name] = weight
    return copy


def test_float8_weights_are_refused_not_read_as_plain_floats(tmp_path):
    tensors = factory.random_llama_tensors()
    path = factory.write_safetensors_model(str(tmp_path / "fp8"), fp8_block_copy(tensors), factory.llama_config(64, 4, 4, 2, 300),
                                           factory.byte_level_tokens(300))
    with pytest.raises(CheckpointError, match=r"q_proj.weight' is stored as F8_E4M3: float8 weights need their scales") as err:
        ModelCheckpoint(path).query_key(0)
    assert "\n" not in str(err.value) and "model.safetensors" in str(err.value)


@pytest.mark.parametrize("method, config_file", [("gptq", "config.json"), ("awq", "config.json"), ("fp8", "config.json"),
                                                 ("gptq", "quantize_config.json")])
def test_a_declared_quantization_without_packed_tensors_is_refused(tmp_path, method, config_file):
    tensors = factory.random_llama_tensors()
    config = factory.llama_config(64, 4, 4, 2, 300)
    quantization = {"quant_method": method, "bits": 4, "group_size": 128}
    if config_file == "config.json":
        config["quantization_config"] = quantization
    path = factory.write_safetensors_model(str(tmp_path / method), tensors, config, factory.byte_level_tokens(300))
    if config_file != "config.json":
        with open(os.path.join(path, config_file), "w") as out:
            json.dump({k: v for k, v in quantization.items() if k != "quant_method"}, out)
    with pytest.raises(CheckpointError, match=r"the config declares (GPTQ|AWQ|FP8) .*, but no tensor is packed that way") as err:
        ModelCheckpoint(path)
    assert config_file in str(err.value)


@pytest.mark.parametrize("types", [("Q8_0", "F16"), ("Q4_0", "Q8_0"), ("F32", "F32")])
def test_gguf_header_parser_agrees_with_the_gguf_package(tmp_path, types):
    """awm parses GGUF headers itself (the package's reader builds a view per vocabulary entry):
    every metadata value and every tensor's type, offset, shape and bytes as the package reads them."""
    import gguf
    import numpy as np

    from awm.readers.checkpoint_files import open_gguf

    path = factory.write_gguf(str(tmp_path / "m.gguf"), factory.random_llama_tensors(), 4, 2, factory.byte_level_tokens(300), *types)
    mine, reference = open_gguf(path), gguf.GGUFReader(path)
    assert [t.name for t in mine.tensors] == [t.name for t in reference.tensors]
    for a, b in zip(mine.tensors, reference.tensors):
        assert (a.tensor_type, a.data_offset, a.n_bytes, a.data.shape, list(a.shape)) == \
               (b.tensor_type, b.data_offset, b.n_bytes, b.data.shape, list(b.shape))
        assert np.array_equal(np.asarray(a.data), np.asarray(b.data))
    fields = {k: f.contents() for k, f in reference.fields.items() if not k.startswith("GGUF.")}
    assert fields and all(mine.field(k) == v for k, v in fields.items())
