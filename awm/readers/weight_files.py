"""Which files of a checkpoint hold its weights: one rule for a local folder, a Hub repo's
listing and the download script.

The first format present wins: safetensors (with its shard index when there is one), then
PyTorch .bin, then GGUF (one file, or the parts of one split file). Adapters, optimizer states
and Meta's consolidated copies are never weights of the model; a GGUF multimodal projector
(mmproj-*) is the vision tower, not the language model.
"""
import fnmatch
import re
from dataclasses import dataclass

GGUF_SPLIT = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$")
NOT_MODEL_WEIGHTS = ("consolidated", "adapter_", "training_args", "optimizer", "scheduler", "rng_state", "mmproj")
# (format, weight file pattern, shard index), in order of preference.
FORMATS = (
    ("safetensors", "*.safetensors", "model.safetensors.index.json"),
    ("pytorch-bin", "*.bin", "pytorch_model.bin.index.json"),
    ("gguf", "*.gguf", None),
)


@dataclass(frozen=True)
class WeightChoice:
    format: str          # "safetensors", "pytorch-bin" or "gguf"
    files: tuple         # the weight files present (for an indexed set, the index says which are used)
    index: str = None    # the shard index, when the checkpoint has one

    @property
    def ambiguous_gguf(self):
        """Several GGUF files that are not the parts of one split file: the user must name one."""
        return self.format == "gguf" and len(self.files) > 1 and len({gguf_set_name(f) for f in self.files}) > 1


def gguf_set_name(name):
    """A split GGUF part's file name without its -0000k-of-0000N suffix (a whole file: itself)."""
    return GGUF_SPLIT.sub("", name) if GGUF_SPLIT.search(name) else name


def gguf_parts(chosen, names):
    """The files of the split set `chosen` belongs to, in order ([chosen] for a whole file)."""
    if not GGUF_SPLIT.search(chosen):
        return [chosen]
    return sorted(n for n in names if GGUF_SPLIT.search(n) and gguf_set_name(n) == gguf_set_name(chosen))


def choose_weight_files(names):
    """The WeightChoice for the top-level file names of a checkpoint, or None without weights."""
    top = sorted(n for n in names if "/" not in n)
    for format_name, pattern, index in FORMATS:
        found = tuple(n for n in top if fnmatch.fnmatch(n, pattern) and not n.startswith(NOT_MODEL_WEIGHTS))
        if found or index in top:
            return WeightChoice(format_name, found, index if index in top else None)
    return None
