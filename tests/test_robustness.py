"""Bad, hostile and degenerate inputs: one clear line naming the file, non-zero exit, no score."""
import json
import shutil
import struct

import factory
import pytest
import torch

from awm import cli

TOKENS = factory.byte_level_tokens(300)


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    root = tmp_path_factory.mktemp("robust")
    tensors = factory.make_llama(str(root / "good"), vocab=300)
    factory.write_safetensors_model(str(root / "sharded"), tensors, factory.llama_config(64, 4, 4, 2, 300), TOKENS, shards=2)
    factory.write_gguf(str(root / "good.gguf"), tensors, 4, 2, TOKENS, "Q8_0", "Q8_0")
    return root, tensors


def clone(good, name, source="good"):
    root, _ = good
    target = root / name
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(root / source, target)
    return target


def run_cli(capsys, *paths):
    code = cli.main(["--model_paths", *map(str, paths), "--quiet", "--device", "cpu"])
    out, err = capsys.readouterr()
    return code, out, err


def assert_clean_failure(capsys, good, bad, *fragments):
    code, out, err = run_cli(capsys, good[0] / "good", bad)
    assert code != 0
    assert "AWM score" not in out and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def write_raw_safetensors(path, header, data=b""):
    raw = json.dumps(header).encode()
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(raw)) + raw + data)


def rewrite_single_file(model_dir, header, data=b""):
    write_raw_safetensors(model_dir / "model.safetensors", header, data)


BAD_SAFETENSORS = {
    "header length beyond the file": (lambda d: (d / "model.safetensors").write_bytes(struct.pack("<Q", 10 ** 12) + b"{}"), "exceeds the file size"),
    "header not JSON": (lambda d: (d / "model.safetensors").write_bytes(struct.pack("<Q", 5) + b"{nope"), "not valid JSON"),
    "offsets out of range": (lambda d: rewrite_single_file(d, {"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8), "beyond the data"),
    "unknown dtype": (lambda d: rewrite_single_file(d, {"x": {"dtype": "F42", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8), "unknown dtype 'F42'"),
    "shape and bytes disagree": (lambda d: rewrite_single_file(d, {"x": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8), "needs 12"),
    "shorter than a header": (lambda d: (d / "model.safetensors").write_bytes(b"\x01\x02"), "not a safetensors file"),
}


@pytest.mark.parametrize("case", sorted(BAD_SAFETENSORS))
def test_malformed_safetensors(good, capsys, case):
    breaker, message = BAD_SAFETENSORS[case]
    bad = clone(good, "bad_" + case.replace(" ", "_"))
    breaker(bad)
    line = assert_clean_failure(capsys, good, bad, message)
    assert "model.safetensors" in line


def test_truncated_shard(good, capsys):
    bad = clone(good, "truncated", "sharded")
    shard = sorted(bad.glob("*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[:-1000])
    assert_clean_failure(capsys, good, bad, shard.name, "truncated")


def test_missing_shard_named_by_index(good, capsys):
    bad = clone(good, "missing_shard", "sharded")
    shard = sorted(bad.glob("*.safetensors"))[1]
    shard.unlink()
    assert_clean_failure(capsys, good, bad, shard.name, "missing")


def test_truncated_gguf(good, capsys, tmp_path):
    data = (good[0] / "good.gguf").read_bytes()
    for cut in (10, 200, len(data) // 2, len(data) - 50):
        bad = tmp_path / f"cut{cut}.gguf"
        bad.write_bytes(data[:cut])
        assert_clean_failure(capsys, good, bad, bad.name, "GGUF")


def test_not_a_gguf_and_unknown_quant_type(good, capsys, tmp_path):
    bad = tmp_path / "fake.gguf"
    bad.write_bytes(b"NOPE" + b"\0" * 100)
    assert_clean_failure(capsys, good, bad, "bad magic")
    data = bytearray((good[0] / "good.gguf").read_bytes())
    name = b"token_embd.weight"
    at = data.index(name) + len(name) + 4 + 2 * 8        # after n_dims and two dims comes the type
    data[at:at + 4] = struct.pack("<I", 250)
    unknown = tmp_path / "unknown_quant.gguf"
    unknown.write_bytes(bytes(data))
    assert_clean_failure(capsys, good, unknown, "unknown GGUF quant type")


def test_gguf_header_claiming_more_entries_than_the_file_holds(good, capsys, tmp_path):
    bad = tmp_path / "huge_counts.gguf"
    bad.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 2 ** 40, 2 ** 40) + b"\0" * 64)
    assert_clean_failure(capsys, good, bad, "more than the")


@pytest.mark.parametrize("content,message", [("{not json", "not valid JSON"), (json.dumps({"model_type": "llama", "hidden_size": 64}), "lacks the layer count, attention heads")])
def test_bad_config(good, capsys, content, message):
    bad = clone(good, "bad_config")
    (bad / "config.json").write_text(content)
    assert_clean_failure(capsys, good, bad, "config.json", message)


def test_missing_config(good, capsys):
    bad = clone(good, "no_config")
    (bad / "config.json").unlink()
    assert_clean_failure(capsys, good, bad, "config.json", "missing")


@pytest.mark.parametrize("name,content", [("tokenizer.json", "[1, 2"), ("tokenizer.model", "garbage bytes")])
def test_tokenizer_that_does_not_parse(good, capsys, name, content):
    bad = clone(good, "bad_tokenizer_" + name)
    (bad / "tokenizer.json").unlink()
    (bad / name).write_text(content)
    assert_clean_failure(capsys, good, bad, name, "does not parse")


def test_embedding_with_fewer_rows_than_the_vocabulary(good, capsys):
    bad = clone(good, "small_embedding")
    factory.write_tokenizer_json(str(bad), factory.byte_level_tokens(600))
    assert_clean_failure(capsys, good, bad, "300 rows", "do not belong together")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_or_inf_weights(good, capsys, value):
    _, tensors = good
    broken = dict(tensors)
    broken["model.layers.2.self_attn.k_proj.weight"] = tensors["model.layers.2.self_attn.k_proj.weight"].clone()
    broken["model.layers.2.self_attn.k_proj.weight"][3, 5] = value
    bad = good[0] / f"nonfinite_{value}"
    factory.write_safetensors_model(str(bad), broken, factory.llama_config(64, 4, 4, 2, 300), TOKENS)
    assert_clean_failure(capsys, good, bad, "model.layers.2.self_attn.k_proj.weight", "NaN or Inf")


def test_path_problems(good, capsys, tmp_path):
    assert_clean_failure(capsys, good, tmp_path / "absent", "does not exist")
    assert_clean_failure(capsys, good, good[0] / "good" / "config.json", "is a file")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "model.safetensors").mkdir()          # a directory where a file belongs
    assert_clean_failure(capsys, good, empty, "no weights found")


def test_debug_shows_the_traceback(good, capsys, tmp_path):
    from awm.errors import CheckpointError

    with pytest.raises(CheckpointError):
        cli.main(["--model_paths", str(good[0] / "good"), str(tmp_path / "absent"), "--quiet", "--debug"])


# ----------------------------------------------------------------------------- degenerate but valid
def test_zero_attention_matrix_is_reported_as_undefined(good, capsys, tmp_path):
    _, tensors = good
    zeroed = dict(tensors)
    zeroed["model.layers.1.self_attn.q_proj.weight"] = torch.zeros_like(tensors["model.layers.1.self_attn.q_proj.weight"])
    path = factory.write_safetensors_model(str(tmp_path / "zero"), zeroed, factory.llama_config(64, 4, 4, 2, 300), TOKENS)
    output = tmp_path / "zero.json"
    assert cli.main(["--model_paths", str(good[0] / "good"), path, "--quiet", "--output", str(output)]) == 0
    out = capsys.readouterr().out
    assert "CKA undefined for 1 layer" in out
    layer = json.loads(output.read_text())["layers"][1]
    assert layer["wq"] is None and layer["wk"] == pytest.approx(100.0, abs=1e-3)


def test_hidden_size_larger_than_the_token_overlap_is_flagged(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    factory.make_llama(str(a), vocab=40)
    factory.make_llama(str(b), vocab=40, seed=3)
    assert cli.main(["--model_paths", str(a), str(b), "--quiet"]) == 0
    assert "underdetermined" in capsys.readouterr().out


def test_single_layer_model(tmp_path, capsys):
    a = tmp_path / "one"
    factory.make_llama(str(a), layers=1, vocab=300)
    assert cli.main(["--model_paths", str(a), str(a), "--quiet"]) == 0
    assert "1 vs 1" in capsys.readouterr().out
