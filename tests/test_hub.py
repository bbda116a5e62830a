"""Models read straight from a Hub by byte ranges, against a real HTTP server on 127.0.0.1.

The server (hub_server.FakeHub) answers the endpoints huggingface_hub calls, with Range
support, and counts what it sends. A remote pair must score exactly as the same files read
locally, fetch only the tensors the score needs, fetch nothing twice, and fail cleanly.
"""
import glob
import json
import os
import subprocess
import sys

import factory
import pytest
import torch
import transformers as tf

import awm
from awm import cli
from awm.errors import CheckpointError
from awm.readers import hub, range_cache

TOKENS = factory.byte_level_tokens(300)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def comparable(report):
    """A report without what legitimately differs between a local and a remote read."""
    record = dict(report.to_dict())
    for side in ("model_a", "model_b"):
        record[side] = {k: v for k, v in record[side].items() if k not in ("path", "source")}
    record.pop("timings")
    return record


def full_llama_tensors(hidden=128, layers=4, heads=4, kv_heads=2, vocab=300, intermediate=448, seed=0):
    """Every tensor of a Llama checkpoint in Llama-3-8B's proportions (MLP 3.5x wide, GQA,
    untied LM head), so what a remote read skips is what a real repo would let it skip."""
    tensors = factory.random_llama_tensors(hidden, layers, heads, kv_heads, vocab, seed)
    generator = torch.Generator().manual_seed(seed + 1)
    rand = lambda *shape: torch.randn(*shape, generator=generator)
    head_dim = hidden // heads
    for i in range(layers):
        prefix = f"model.layers.{i}."
        tensors[prefix + "self_attn.v_proj.weight"] = rand(kv_heads * head_dim, hidden)
        tensors[prefix + "self_attn.o_proj.weight"] = rand(hidden, heads * head_dim)
        tensors[prefix + "mlp.gate_proj.weight"] = rand(intermediate, hidden)
        tensors[prefix + "mlp.up_proj.weight"] = rand(intermediate, hidden)
        tensors[prefix + "mlp.down_proj.weight"] = rand(hidden, intermediate)
        tensors[prefix + "post_attention_layernorm.weight"] = 1 + 0.1 * rand(hidden)
    tensors["model.norm.weight"] = 1 + 0.1 * rand(hidden)
    tensors["lm_head.weight"] = rand(vocab, hidden)
    return tensors


def derived(tensors, noise=0.02, seed=5):
    generator = torch.Generator().manual_seed(seed)
    return {n: t + noise * t.std() * torch.randn(t.shape, generator=generator) for n, t in tensors.items()}


@pytest.fixture(scope="module")
def repos(tmp_path_factory):
    """Local folders, each served as one Hub repo: a base, a fine-tune (sharded), a GGUF repo."""
    root = tmp_path_factory.mktemp("repos")
    base = full_llama_tensors()
    config = factory.llama_config(128, 4, 4, 2, 300, intermediate_size=448)
    folders = {
        "base": factory.write_safetensors_model(str(root / "base"), base, config, TOKENS),
        "tuned": factory.write_safetensors_model(str(root / "tuned"), derived(base), config, TOKENS, shards=3),
    }
    os.makedirs(root / "gguf")
    factory.write_gguf(str(root / "gguf" / "tuned.Q8_0.gguf"), derived(base), 4, 2, TOKENS)
    folders["gguf"] = str(root / "gguf")
    os.makedirs(root / "split")
    factory.write_gguf(str(root / "split" / "tuned.gguf"), derived(base), 4, 2, TOKENS, split_max_tensors=5)
    folders["split"] = str(root / "split")
    return folders


def serve(server, repos, *names):
    for name in names:
        server.add(f"org/{name}", repos[name])


# ----------------------------------------------------------------------------- references
def test_hub_references_and_local_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert hub.parse_reference("meta-llama/Llama-3.1-8B") == hub.HubReference("meta-llama/Llama-3.1-8B")
    assert hub.parse_reference("org/model@v1.0") == hub.HubReference("org/model", "v1.0")
    assert hub.parse_reference("hf://org/m-GGUF@main/q/m.Q8_0.gguf") == hub.HubReference("org/m-GGUF", "main", "q/m.Q8_0.gguf")
    os.makedirs(tmp_path / "org" / "model")
    assert hub.parse_reference("org/model") is None                       # a local folder of that name wins
    assert hub.parse_reference("hf://org/model") == hub.HubReference("org/model")
    assert hub.parse_reference("checkpoints/x/y") is None                 # a path, not a repo id
    assert hub.parse_reference("model.gguf") is None
    with pytest.raises(CheckpointError, match="not a Hub reference"):
        hub.parse_reference("hf://just-a-name")


# ----------------------------------------------------------------------------- exact scores
@pytest.mark.parametrize("pair", [("base", "tuned"), ("tuned", "gguf"), ("base", "split")])
def test_remote_pair_scores_exactly_as_the_local_pair(fake_hub, repos, pair):
    serve(fake_hub, repos, *pair)
    local_a = repos[pair[0]]
    local_b = sorted(glob.glob(os.path.join(repos[pair[1]], "*.gguf")))[0] if pair[1] in ("gguf", "split") else repos[pair[1]]
    if pair[1] == "split":
        assert len(glob.glob(os.path.join(repos["split"], "*.gguf"))) > 1
    remote = awm.compare(f"org/{pair[0]}", f"hf://org/{pair[1]}", device="cpu")
    local = awm.compare(local_a, local_b, device="cpu")
    assert comparable(remote) == comparable(local)
    assert remote.verdict == "derived"
    source = remote.model_a["source"]
    assert source["hub_repo"] == f"org/{pair[0]}" and len(source["commit"]) == 40
    assert remote.model_a["path"] == f"hf://org/{pair[0]}@{source['commit']}"


def test_multimodal_wrapper_from_the_hub_skips_the_vision_tower(fake_hub, tmp_path):
    torch.manual_seed(0)
    text = tf.LlamaConfig(hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2,
                          num_hidden_layers=2, vocab_size=96, max_position_embeddings=64)
    vision = tf.CLIPVisionConfig(hidden_size=32, intermediate_size=48, num_attention_heads=2, num_hidden_layers=1, image_size=32, patch_size=16)
    tf.LlavaForConditionalGeneration(tf.LlavaConfig(text_config=text, vision_config=vision, image_token_index=95)).save_pretrained(tmp_path / "llava")
    tf.LlamaForCausalLM(text).save_pretrained(tmp_path / "llama")
    for folder in ("llava", "llama"):
        factory.write_tokenizer_json(str(tmp_path / folder), factory.byte_level_tokens(96))
        fake_hub.add(f"org/{folder}", str(tmp_path / folder))
    remote = awm.compare("org/llava", "org/llama", device="cpu")
    local = awm.compare(tmp_path / "llava", tmp_path / "llama", device="cpu")
    assert comparable(remote) == comparable(local)
    from awm.readers.checkpoint_files import read_safetensors_header

    header = read_safetensors_header(str(tmp_path / "llava" / "model.safetensors"))
    vision_bytes = sum(t.end - t.begin for n, t in header.items() if "vision" in n)
    assert vision_bytes > 0
    assert fake_hub.weight_bytes_sent("org/llava") <= os.path.getsize(tmp_path / "llava" / "model.safetensors") - vision_bytes


# ----------------------------------------------------------------------------- bytes
def needed_bytes(folder):
    """Bytes of the tensors the score reads, from the local copy's headers, and their count."""
    from awm.readers.model_reader import ModelCheckpoint

    checkpoint = ModelCheckpoint(folder)
    tensors = [checkpoint.store.tensors[n] for n in checkpoint.tensors_for_score()]
    return sum(t.end - t.begin for t in tensors), len(tensors)


def test_only_the_scored_tensors_are_fetched_and_a_second_run_fetches_nothing(fake_hub, repos):
    serve(fake_hub, repos, "base", "tuned")
    awm.compare("org/base", "org/tuned", device="cpu")
    for name, files in (("base", 1), ("tuned", 3)):
        repo_weights = sum(os.path.getsize(p) for p in glob.glob(os.path.join(repos[name], "*.safetensors")))
        sent = fake_hub.weight_bytes_sent(f"org/{name}")
        needed, count = needed_bytes(repos[name])
        # slack: per file, the first guess at its header's size; per tensor, a gap merged away
        slack = files * hub.HEADER_PREFIX_BYTES[".safetensors"] + count * range_cache.MERGE_GAP
        assert sent <= needed + slack
        assert sent < 0.3 * repo_weights, (sent, repo_weights)
    small = {f for (_, f) in fake_hub.sent if not f.endswith(".safetensors")}
    assert small == {"config.json", "tokenizer.json", "model.safetensors.index.json"}
    fake_hub.sent.clear()
    again = awm.compare("org/base", "org/tuned", device="cpu")
    assert fake_hub.weight_bytes_sent() == 0 and sum(fake_hub.sent.values()) == 0
    assert again.model_b["source"]["fetched_bytes"] == 0
    assert again.model_b["source"]["needed_bytes"] >= needed_bytes(repos["tuned"])[0]


def test_gguf_repo_fetches_its_header_and_the_scored_tensors(fake_hub, repos):
    serve(fake_hub, repos, "gguf")
    report = awm.compare("org/gguf", "org/gguf", device="cpu")
    gguf_file = glob.glob(os.path.join(repos["gguf"], "*.gguf"))[0]
    assert report.scores.final == pytest.approx(100.0)
    assert fake_hub.weight_bytes_sent("org/gguf") <= os.path.getsize(gguf_file)
    assert set(f for (_, f) in fake_hub.sent) == {"tuned.Q8_0.gguf"}


def test_unreachable_hub_falls_back_to_the_cached_snapshot(fake_hub, repos, monkeypatch):
    from huggingface_hub import constants

    serve(fake_hub, repos, "base", "tuned")
    first = awm.compare("org/base", "org/tuned", device="cpu")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)     # HF_HUB_OFFLINE=1: not even the listing is asked
    fake_hub.requests.clear()
    assert comparable(awm.compare("org/base", "org/tuned", device="cpu")) == comparable(first)
    assert sum(fake_hub.requests.values()) == 0
    with pytest.raises(CheckpointError, match="org/gguf: cannot reach the Hub"):
        awm.compare("org/gguf", "org/tuned", device="cpu")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    dead = "http://127.0.0.1:9"
    monkeypatch.setattr(constants, "ENDPOINT", dead)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", dead + "/{repo_id}/resolve/{revision}/{filename}")
    again = awm.compare("org/base", "org/tuned", device="cpu")
    assert comparable(again) == comparable(first)
    with pytest.raises(CheckpointError, match="org/other: cannot reach the Hub"):
        awm.compare("org/other", "org/tuned", device="cpu")


# ----------------------------------------------------------------------------- revisions
def test_a_revision_pin_reads_that_commit(fake_hub, repos, tmp_path):
    serve(fake_hub, repos, "base")
    repo = fake_hub.add("org/evolving", repos["base"])
    old = repo.refs["main"]
    updated = factory.write_safetensors_model(str(tmp_path / "new"), full_llama_tensors(seed=9),
                                              factory.llama_config(128, 4, 4, 2, 300, intermediate_size=448), TOKENS)
    new = repo.add_commit(updated, "main")
    latest = awm.compare("org/base", "org/evolving", device="cpu")
    pinned = awm.compare("org/base", f"org/evolving@{old}", device="cpu")
    assert latest.model_b["source"]["commit"] == new and pinned.model_b["source"]["commit"] == old
    assert pinned.scores.final == pytest.approx(100.0) and latest.scores.final < 5
    repo.refs["v1"] = old
    tagged = awm.compare("org/base", "hf://org/evolving@v1", device="cpu")
    assert tagged.model_b["source"] == {**pinned.model_b["source"], "revision": "v1", "fetched_bytes": 0}


# ----------------------------------------------------------------------------- errors
def one_line_error(capsys, *models):
    code = cli.main(["--model_paths", *models, "--quiet", "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "Traceback" not in err, err
    return err


def test_missing_gated_and_unsupported_repos_are_one_clear_line(fake_hub, repos, tmp_path, capsys, monkeypatch):
    serve(fake_hub, repos, "base")
    fake_hub.add("org/gated", repos["base"], gated_token="hf_good")
    assert "org/nothing: repo not found" in one_line_error(capsys, "org/nothing", "org/base")
    assert "hf auth login" in one_line_error(capsys, "org/nothing", "org/base")
    assert "org/base: revision not found (revision nope)" in one_line_error(capsys, "org/base@nope", "org/base")
    assert "org/gated: gated repo" in one_line_error(capsys, "org/gated", "org/base")
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    assert "org/gated: gated repo" in one_line_error(capsys, "org/gated", "org/base")
    monkeypatch.setenv("HF_TOKEN", "hf_good")
    assert cli.main(["--model_paths", "org/gated", "org/base", "--quiet", "--device", "cpu"]) == 0
    capsys.readouterr()
    assert "no such file" in one_line_error(capsys, "hf://org/base/missing.gguf", "org/base")
    bin_only = tmp_path / "bin"
    os.makedirs(bin_only)
    torch.save({"w": torch.zeros(2)}, bin_only / "pytorch_model.bin")
    fake_hub.add("org/bin", str(bin_only))
    assert "only PyTorch .bin weights" in one_line_error(capsys, "org/bin", "org/base")
    many = tmp_path / "many"
    os.makedirs(many)
    for quant in ("Q4_K_M", "Q8_0"):
        with open(many / f"m.{quant}.gguf", "wb") as out:
            out.write(b"GGUF")
    fake_hub.add("org/many", str(many))
    assert "name one: hf://org/many/m.Q4_K_M.gguf" in one_line_error(capsys, "org/many", "org/base")


@pytest.mark.parametrize("fault", ["drop", "short"])
def test_a_cut_transfer_is_resumed(fake_hub, repos, fault):
    serve(fake_hub, repos, "base", "tuned")
    fake_hub.faults.append({"kind": fault, "times": 3, "files": ".safetensors"})
    remote = awm.compare("org/base", "org/tuned", device="cpu")
    assert fake_hub.faults[0]["times"] == 0
    assert comparable(remote) == comparable(awm.compare(repos["base"], repos["tuned"], device="cpu"))


def test_a_transfer_that_keeps_failing_leaves_nothing_torn(fake_hub, repos, capsys):
    serve(fake_hub, repos, "base", "tuned")
    fake_hub.faults.append({"kind": "drop", "times": 10 ** 6})
    err = one_line_error(capsys, "org/base", "org/tuned")
    assert "transfer failed after 5 attempts: connection lost" in err and "org/base/" in err
    for sidecar in glob.glob(os.path.join(hub.cache_root(), "*", "snapshots", "*", ".ranges", "*.json")):
        with open(sidecar) as handle:
            assert json.load(handle)["ranges"] == []     # every cut range was left unrecorded
    fake_hub.faults.clear()
    remote = awm.compare("org/base", "org/tuned", device="cpu")
    assert comparable(remote) == comparable(awm.compare(repos["base"], repos["tuned"], device="cpu"))


def test_remote_bytes_get_the_same_validation_as_local_files(fake_hub, tmp_path, capsys):
    broken = tmp_path / "broken"
    factory.make_llama(str(broken))
    with open(broken / "model.safetensors", "r+b") as handle:
        handle.write((10 ** 7).to_bytes(8, "little"))     # header length beyond the file
    fake_hub.add("org/broken", str(broken))
    assert "org/broken/model.safetensors: header claims" in one_line_error(capsys, "org/broken", "org/broken")


# ----------------------------------------------------------------------------- the cache
def test_range_arithmetic_against_a_byte_map():
    import random

    rng = random.Random(0)
    for _ in range(300):
        size = 200
        present = [(a, a + rng.randint(0, 30)) for a in rng.sample(range(size), 5)]
        wanted = [(a, a + rng.randint(0, 40)) for a in rng.sample(range(size), 4)]
        covered = {i for a, b in range_cache.merge(present) for i in range(a, b)}
        missing = {i for a, b in range_cache.subtract(wanted, range_cache.merge(present)) for i in range(a, b)}
        assert missing == {i for a, b in wanted for i in range(a, b)} - covered
        assert all(b - a <= 7 for a, b in range_cache.split([(3, 50)], 7))


def test_a_range_counts_only_once_recorded(tmp_path):
    sparse = range_cache.SparseFile(str(tmp_path / "w.safetensors"), 1000)
    assert os.path.getsize(sparse.path) == 1000 and sparse.missing([(0, 1000)]) == [(0, 1000)]
    sparse.write(100, b"x" * 50)                       # written, then the process died: not recorded
    assert sparse.missing([(100, 150)]) == [(100, 150)]
    sparse.record(100, 150)
    assert sparse.missing([(0, 200)]) == [(0, 100), (150, 200)]
    with open(sparse.sidecar, "w") as handle:
        handle.write("{torn")                          # a damaged record is distrusted, not believed
    assert sparse.missing([(100, 150)]) == [(100, 150)]


def test_the_command_line_reads_hf_endpoint_like_every_hub_tool(fake_hub, repos, tmp_path):
    serve(fake_hub, repos, "base", "tuned")
    env = {**os.environ, "HF_ENDPOINT": fake_hub.endpoint, hub.HUB_CACHE_ENV: str(tmp_path / "cli-cache")}
    done = subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), "--model_paths", "org/base", "org/tuned",
                           "--quiet", "--device", "cpu", "--output", str(tmp_path / "r.json")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "from the Hub: org/base @ main = commit" in done.stdout and "of the repo's" in done.stdout
    with open(tmp_path / "r.json") as handle:
        record = json.load(handle)
    assert record["model_b"]["source"]["hub_repo"] == "org/tuned" and record["verdict"] == "derived"


# ----------------------------------------------------------------------------- suites
def test_a_suite_reads_each_remote_model_once(fake_hub, repos, tmp_path):
    serve(fake_hub, repos, "base", "tuned", "gguf")
    suite = tmp_path / "remote.yaml"
    suite.write_text("pairs:\n  - [org/base, org/tuned]\n  - [org/base, hf://org/gguf]\n  - [org/tuned, hf://org/gguf]\n")
    result = awm.run_suite(str(suite), results_dir=str(tmp_path / "out"), device="cpu")
    assert len(result.reports) == 3 and not result.skipped
    assert fake_hub.requests["api"] == 3                 # each repo resolved and read once
    needed, count = needed_bytes(repos["base"])
    assert fake_hub.weight_bytes_sent("org/base") <= needed + hub.HEADER_PREFIX_BYTES[".safetensors"] + count * range_cache.MERGE_GAP


def test_built_in_suites_take_missing_models_from_their_repos(tmp_path):
    from awm.suites import configs
    from awm.suites import files as suite_files

    assert suite_files.model_location("Llama-2-7b-hf", str(tmp_path), from_hub=True) == "hf://" + configs.MODELS["Llama-2-7b-hf"]
    assert suite_files.model_location("Llama-2-7b-hf", str(tmp_path)) == str(tmp_path / "Llama-2-7b-hf")
    os.makedirs(tmp_path / "Llama-2-7b-hf")
    assert suite_files.model_location("Llama-2-7b-hf", str(tmp_path), from_hub=True) == str(tmp_path / "Llama-2-7b-hf")
