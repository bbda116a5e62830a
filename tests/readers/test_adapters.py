"""PEFT LoRA adapters: merged into their base exactly as peft merges them, named in the
output, scored as derived, and refused in one line when they do not fit the base."""
import json

import factory
import pytest
import torch
from test_cli import run_cli

from awm.errors import CheckpointError
from awm.readers import open_model

VOCAB = 300


def tiny_llama(directory, hidden=64, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=VOCAB)
    model = LlamaForCausalLM(config)
    model.save_pretrained(str(directory))
    factory.write_tokenizer_json(str(directory), factory.byte_level_tokens(VOCAB))
    return model


def trained_adapter(base_model, directory, **lora):
    """An adapter as peft saves it, with non-zero updates (as after training), and the model
    peft's own merge makes of it."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(init_lora_weights=False, **{"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "k_proj", "v_proj"], **lora})
    torch.manual_seed(1)
    adapted = get_peft_model(base_model, config)
    adapted.save_pretrained(str(directory))
    return {name: value.detach().clone() for name, value in adapted.merge_and_unload().state_dict().items()}


def retrain_saved_embedding(path):
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    name = next(n for n in tensors if "embed_tokens" in n)
    tensors[name] = tensors[name] + 0.5 * torch.randn_like(tensors[name])
    save_file(tensors, str(path))
    return tensors[name]


@pytest.fixture()
def base(tmp_path):
    return tmp_path / "base", tiny_llama(tmp_path / "base")


@pytest.mark.parametrize("lora", [{}, {"use_rslora": True, "rank_pattern": {"k_proj": 2}, "alpha_pattern": {"k_proj": 3}},
                                  {"target_modules": ["q_proj", "k_proj", "embed_tokens"]}, {"modules_to_save": ["embed_tokens"]}],
                         ids=["plain", "rslora-patterns", "embedding-lora", "saved-embedding"])
def test_adapter_is_merged_as_peft_merges_it(tmp_path, base, lora):
    base_path, base_model = base
    merged = trained_adapter(base_model, tmp_path / "adapter", **lora)
    if "modules_to_save" in lora:           # a retrained embedding: the adapter's copy replaces the base's
        merged["model.embed_tokens.weight"] = retrain_saved_embedding(tmp_path / "adapter" / "adapter_model.safetensors")
    model = open_model(str(tmp_path / "adapter"), adapter_base=str(base_path))
    for layer in range(2):
        w_q, w_k = model.query_key(layer)
        torch.testing.assert_close(w_q, merged[f"model.layers.{layer}.self_attn.q_proj.weight"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(w_k, merged[f"model.layers.{layer}.self_attn.k_proj.weight"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.read_embedding().float(), merged["model.embed_tokens.weight"], rtol=1e-5, atol=1e-6)
    described = model.describe()
    assert described["path"] == str(tmp_path / "adapter") and described["adapter"]["base"] == str(base_path)


def test_adapter_update_is_not_zero(tmp_path, base):
    """The merge test above would pass on a reader that ignored the adapter if peft's update were
    zero: it is not."""
    _, base_model = base
    original = base_model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    merged = trained_adapter(base_model, tmp_path / "adapter")
    assert (merged["model.layers.0.self_attn.q_proj.weight"] - original).abs().max() > 1e-3


def test_adapter_names_its_base_and_is_derived_from_it(tmp_path, base):
    base_path, base_model = base
    trained_adapter(base_model, tmp_path / "adapter")
    config_path = tmp_path / "adapter" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = str(base_path)          # as if trained from this folder
    config_path.write_text(json.dumps(config))
    done = run_cli("--model_paths", str(base_path), str(tmp_path / "adapter"), "--device", "cpu", "--quiet", "--output", str(tmp_path / "r.json"))
    assert done.returncode == 0, done.stderr
    assert f"LoRA adapter (r=4, alpha=8) merged into {base_path}" in done.stdout and "DERIVED" in done.stdout
    assert json.loads((tmp_path / "r.json").read_text())["model_b"]["adapter"]["rank"] == 4


def test_adapter_that_does_not_fit_the_base_is_refused(tmp_path, base):
    _, base_model = base
    trained_adapter(base_model, tmp_path / "adapter")
    tiny_llama(tmp_path / "other", hidden=96)
    with pytest.raises(CheckpointError, match=r"LoRA pair of 'model.layers.\d.self_attn.\w_proj' has shapes .* the adapter does not fit this base") as err:
        open_model(str(tmp_path / "adapter"), adapter_base=str(tmp_path / "other"))
    assert "adapter_model.safetensors" in str(err.value) and "\n" not in str(err.value)


def test_adapter_without_a_reachable_base_says_how_to_give_one(tmp_path, base):
    _, base_model = base
    trained_adapter(base_model, tmp_path / "adapter")
    config_path = tmp_path / "adapter" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = None
    config_path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="names no base model .*--adapter_base"):
        open_model(str(tmp_path / "adapter"))


def test_dora_and_other_peft_types_are_refused_by_name(tmp_path, base):
    base_path, base_model = base
    trained_adapter(base_model, tmp_path / "adapter")
    config_path = tmp_path / "adapter" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(CheckpointError, match="DoRA"):
        open_model(str(tmp_path / "adapter"), adapter_base=str(base_path))
    config_path.write_text(json.dumps({**config, "peft_type": "IA3"}))
    with pytest.raises(CheckpointError, match="'IA3'"):
        open_model(str(tmp_path / "adapter"), adapter_base=str(base_path))


def test_adapter_repo_on_the_hub_merges_into_the_hub_base_it_names(tmp_path, base, fake_hub):
    """An adapter repo (config and safetensors, fetched whole) names its base by repo id; the
    base is read by byte ranges like any repo, and the pair scores as the local pair does."""
    import awm

    base_path, base_model = base
    trained_adapter(base_model, tmp_path / "adapter")
    config_path = tmp_path / "adapter" / "adapter_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "base_model_name_or_path": "org/base"}))
    fake_hub.add("org/base", str(base_path))
    fake_hub.add("org/lora", str(tmp_path / "adapter"))
    remote = awm.compare("org/base", "org/lora", device="cpu")
    local = awm.compare(base_path, tmp_path / "adapter", device="cpu", adapter_base=str(base_path))
    from awm.witnesses.verdict import is_derived

    assert is_derived(remote.verdict) and remote.scores == local.scores
    adapter = remote.model_b["adapter"]
    assert remote.model_b["path"].startswith("hf://org/lora@") and adapter["path"] == remote.model_b["path"]
    assert adapter["base"].startswith("hf://org/base@")
