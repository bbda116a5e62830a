"""PEFT LoRA adapters: an adapter folder is compared as the model it makes, its low-rank updates
merged into the base it names (or one the user gives) as W + scale * B @ A.

Only the tensors a score reads are merged, one at a time, in float32: the base is read as any
other model (local, Hub, quantized). The scale is lora_alpha / r, or lora_alpha / sqrt(r) for
rsLoRA, with per-module ranks and alphas where the config's patterns give them. Tensors the
adapter saves whole (`modules_to_save`, such as a retrained embedding) replace the base's.
"""
import json
import math
import os
import re

from awm.errors import CheckpointError
from awm.readers import checkpoint_files as files

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
PEFT_PREFIX = "base_model.model."


def is_adapter(path):
    """A folder holding a PEFT adapter and no model of its own."""
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, ADAPTER_CONFIG)) and not os.path.isfile(os.path.join(path, "config.json"))


def read_config(path):
    config_path = os.path.join(path, ADAPTER_CONFIG)
    try:
        with open(config_path, encoding="utf-8") as handle:
            config = json.load(handle)
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise CheckpointError(config_path, f"cannot read the adapter config ({err.__class__.__name__})") from None
    if not isinstance(config, dict):
        raise CheckpointError(config_path, "adapter config is not a JSON object")
    kind = str(config.get("peft_type", "LORA")).upper()
    if kind != "LORA":
        raise CheckpointError(config_path, f"PEFT adapter type {kind!r} is not one awm merges; it merges LORA adapters")
    if config.get("use_dora"):
        raise CheckpointError(config_path, "DoRA adapters (use_dora) rescale each merged row by a learnt magnitude; awm merges plain LoRA only")
    if not isinstance(config.get("lora_alpha", 8), (int, float)):
        raise CheckpointError(config_path, f"lora_alpha {config.get('lora_alpha')!r} is not a number")
    return config


def base_reference(path, config, override=None):
    """The base to merge into: the user's, else the config's base_model_name_or_path (a local
    folder, relative to the adapter's when it is there, or a Hub repo)."""
    base = override or config.get("base_model_name_or_path")
    if not base or not isinstance(base, str):
        raise CheckpointError(os.path.join(path, ADAPTER_CONFIG), "names no base model (base_model_name_or_path); give one with --adapter_base")
    beside = os.path.join(path, base)
    return beside if not override and not os.path.isabs(base) and os.path.exists(beside) else base


def _weight_store(path):
    for name in ADAPTER_WEIGHTS:
        weights = os.path.join(path, name)
        if os.path.isfile(weights):
            return (files.SafetensorsStore if name.endswith(".safetensors") else files.TorchBinStore)([weights])
    raise CheckpointError(path, f"adapter folder has no {' or '.join(ADAPTER_WEIGHTS)}")


def _pattern_value(patterns, module, default):
    """PEFT's rank_pattern / alpha_pattern: the value of the first key that names this module."""
    for key, value in (patterns or {}).items():
        if module == key or re.match(rf"(.*\.)?{key}$", module):
            return value
    return default


class LoraUpdate:
    """One module's update: its A and B tensors and the scale they are merged with."""

    def __init__(self, a_name, b_name, scale, embedding, transposed):
        self.a_name, self.b_name, self.scale = a_name, b_name, scale
        self.embedding, self.transposed = embedding, transposed

    def delta(self, store, rows=None):
        """scale * B @ A as the base weight is laid out (an embedding's update is (B A)^T)."""
        a, b = store.read(self.a_name).float(), store.read(self.b_name).float()
        if self.embedding:
            a = a if rows is None else a[:, rows[0]:rows[1]]
            return self.scale * (b @ a).t()
        update = self.scale * (b @ a)
        update = update.t() if self.transposed else update
        return update if rows is None else update[rows[0]:rows[1]]


class MergedStore:
    """The base model's store with the adapter merged into the tensors it touches."""

    def __init__(self, base_store, adapter_path, config, shown_as=None):
        self.base, self.config = base_store, config
        self.adapter_path = shown_as or adapter_path           # a Hub adapter: its repo, not the cache folder
        self.adapter = _weight_store(adapter_path)
        self.files, self.fetch, self.format_name = base_store.files, base_store.fetch, base_store.format_name
        self.tensors = base_store.tensors
        self.updates, self.replaced = {}, {}
        self._collect()

    @property
    def metadata_reader(self):
        return self.base.metadata_reader

    def _collect(self):
        halves = {}
        for name in self.adapter.tensors:
            stripped = name.removeprefix(PEFT_PREFIX)
            match = re.match(r"(.+)\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B)(\.[^.]+)?(\.weight)?$", stripped)
            if match:
                halves.setdefault(match.group(1), {})[match.group(2)[-1]] = name
                halves[match.group(1)]["embedding"] = "embedding" in match.group(2)
            else:
                # whole tensors: modules_to_save copies, or the base layer peft saves with an adapted embedding
                self._replacement(re.sub(r"\.(modules_to_save(\.[^.]+)?|base_layer)(?=\.)", "", stripped), name)
        for module, found in halves.items():
            self._update(module, found)
        if not self.updates and not self.replaced:
            raise CheckpointError(self.adapter.files[0], "adapter holds no LoRA update and no saved module")

    def _replacement(self, target, name):
        if target not in self.tensors:
            raise CheckpointError(self.adapter.tensors[name].path, f"adapter saves '{name}', but the base has no tensor '{target}': the adapter does not fit this base")
        if tuple(self.adapter.tensors[name].shape) != tuple(self.tensors[target].shape):
            raise CheckpointError(self.adapter.tensors[name].path, f"adapter tensor '{name}' has shape {tuple(self.adapter.tensors[name].shape)}, "
                                                                  f"the base's '{target}' {tuple(self.tensors[target].shape)}: the adapter does not fit this base")
        self.replaced[target] = name

    def _update(self, module, found):
        where = self.adapter.files[0]
        if "A" not in found or "B" not in found:
            raise CheckpointError(where, f"adapter has only one half of the LoRA pair of '{module}'")
        target = module + ".weight"
        if target not in self.tensors:
            raise CheckpointError(where, f"adapter updates '{module}', which the base lacks (no tensor '{target}'): the adapter does not fit this base")
        a, b = self.adapter.tensors[found["A"]].shape, self.adapter.tensors[found["B"]].shape
        out_in = tuple(self.tensors[target].shape)
        transposed = bool(self.config.get("fan_in_fan_out")) and not found["embedding"]
        rank = a[0]
        expected = (out_in[1], out_in[0]) if found["embedding"] else (out_in[::-1] if transposed else out_in)
        if len(a) != 2 or len(b) != 2 or b[1] != rank or (b[0], a[1]) != expected:
            raise CheckpointError(where, f"LoRA pair of '{module}' has shapes A {tuple(a)}, B {tuple(b)}, which do not make the base's "
                                         f"{out_in} weight: the adapter does not fit this base")
        alpha = _pattern_value(self.config.get("alpha_pattern"), module, self.config.get("lora_alpha", 8))
        scale = alpha / (math.sqrt(rank) if self.config.get("use_rslora") else rank)
        self.updates[target] = LoraUpdate(found["A"], found["B"], scale, found["embedding"], transposed)

    def describe(self, base_name):
        ranks = sorted({self.adapter.tensors[u.a_name].shape[0] for u in self.updates.values()})
        return {"path": self.adapter_path, "base": base_name, "type": "LoRA", "rank": ranks[0] if len(ranks) == 1 else ranks,
                "lora_alpha": self.config.get("lora_alpha", 8), "rslora": bool(self.config.get("use_rslora")),
                "updated_tensors": len(self.updates), "replaced_tensors": sorted(self.replaced)}

    def parts(self, name):
        parts = getattr(self.base, "parts", None)
        return parts(name) if parts else [self.tensors[name]]

    def read(self, name):
        stored = self.adapter.read(self.replaced[name]) if name in self.replaced else self.base.read(name)
        update = self.updates.get(name)
        return stored if update is None else stored.float() + update.delta(self.adapter)

    def read_rows(self, name, start, stop):
        if name in self.replaced:
            stored = self.adapter.read_rows(self.replaced[name], start, stop)
        else:
            stored = self.base.read_rows(name, start, stop)
        update = self.updates.get(name)
        return stored if update is None else stored.float() + update.delta(self.adapter, (start, stop))
