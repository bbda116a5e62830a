"""One model checkpoint: what it is, its vocabulary, its embedding and its per-layer W_q / W_k.

Opens a Hugging Face directory (safetensors or .bin, sharded or not) or a GGUF file, finds
the family in the architecture table and reads tensors lazily, one at a time.
"""
import json
import os

import torch
from tqdm import tqdm

from awm.errors import CheckpointError
from awm.readers import architectures as arch
from awm.readers import checkpoint_files as files
from awm.readers import model_card, quantized, vocabulary
from awm.readers.weight_files import choose_weight_files, gguf_parts

# Tokenizers sometimes list a few added tokens past an embedding that was not resized; such
# ids are dropped. When many ids fall outside, the tokenizer belongs to another model.
MAX_OUT_OF_RANGE_FRACTION = 0.01
MAX_OUT_OF_RANGE_TOKENS = 64
EMBEDDING_BLOCK_ROWS = 8192
CPU = torch.device("cpu")


def _read_json(path, what):
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except OSError as err:
        raise CheckpointError(path, f"cannot read {what}: {err.strerror}") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise CheckpointError(path, f"{what} is not valid JSON ({err.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise CheckpointError(path, f"{what} is not a JSON object")
    return data


def _quantization(directory, config_path, raw, config):
    """The Format of a quantized checkpoint (readers.quantized), or None for full precision.
    A quantized tensor is never read as plain floats: an unknown method is refused by name."""
    sidecar_path = os.path.join(directory, "quantize_config.json")
    sidecar = _read_json(sidecar_path, "quantize_config.json") if os.path.isfile(sidecar_path) else None
    declared = quantized.quantization_of(raw, config, sidecar)
    if declared is None:
        return None
    method, settings = declared
    return quantized.format_for(method, settings, sidecar_path if sidecar is not None and "quantization_config" not in raw else config_path)


def _shards_from_index(index_path):
    index = _read_json(index_path, "shard index")
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(index_path, "shard index has no weight_map")
    directory = os.path.dirname(index_path)
    shards = []
    for shard in dict.fromkeys(weight_map.values()):
        if not isinstance(shard, str) or os.path.basename(shard) != shard:
            raise CheckpointError(index_path, f"shard index names an invalid file {shard!r}")
        path = os.path.join(directory, shard)
        if not os.path.isfile(path):
            raise CheckpointError(path, "shard named by the index is missing")
        shards.append(path)
    return shards


STORES = {"safetensors": files.SafetensorsStore, "pytorch-bin": files.TorchBinStore, "gguf": files.GGUFStore}


def find_weight_files(directory):
    """Return (store class, files) for a checkpoint directory (readers.weight_files decides)."""
    names = [n for n in os.listdir(directory) if os.path.isfile(os.path.join(directory, n))]
    choice = choose_weight_files(names)
    if choice is None:
        raise CheckpointError(directory, "no weights found (expected *.safetensors, pytorch_model*.bin or *.gguf)")
    if choice.ambiguous_gguf:
        raise CheckpointError(directory, f"holds {len(choice.files)} GGUF files; name the one to compare")
    if choice.index:
        return STORES[choice.format], _shards_from_index(os.path.join(directory, choice.index))
    return STORES[choice.format], [os.path.join(directory, n) for n in choice.files]


class ModelCheckpoint:
    """Lazy view of one model. Construction reads headers, config and tokenizer only."""

    def __init__(self, path, vocab_match="bytes", fetch=files.no_fetch, weight_files=None):
        """`fetch(path, start, stop)` makes bytes of a weight file present before they are read
        (a Hub model's sparse copy); `weight_files` names them when the folder is not searched."""
        self.vocab_match = vocab_match
        self.path = os.path.abspath(os.path.expanduser(str(path)))
        self.display_path, self.source = self.path, None
        if not os.path.exists(self.path):
            raise CheckpointError(self.path, "does not exist")
        if weight_files:
            store_class = files.GGUFStore if weight_files[0].endswith(".gguf") else files.SafetensorsStore
        elif os.path.isfile(self.path):
            if not self.path.endswith(".gguf"):
                raise CheckpointError(self.path, "is a file; expected a model directory or a .gguf file")
            store_class, weight_files = files.GGUFStore, [self.path]
            folder, name = os.path.split(self.path)
            weight_files = [os.path.join(folder, n) for n in gguf_parts(name, os.listdir(folder))]
        else:
            store_class, weight_files = find_weight_files(self.path)
        self.store = store_class(weight_files, fetch)
        if store_class is files.GGUFStore:
            self._init_from_gguf()
        else:
            self._init_from_hf_directory()
        self._bind_family()

    # ------------------------------------------------------------------ configuration
    def _init_from_hf_directory(self):
        config_path = os.path.join(self.path, "config.json")
        if not os.path.isfile(config_path):
            raise CheckpointError(config_path, "missing: the head counts and architecture come from config.json")
        self.config_path = config_path
        raw = _read_json(config_path, "config.json")
        config = arch.text_config(raw)
        quant_format = _quantization(self.path, config_path, raw, config)
        if quant_format is not None:
            self.store = quantized.QuantizedStore(self.store, quant_format)
        self.model_type = str(config.get("model_type") or raw.get("model_type") or "unknown")
        self.wrapper_type = str(raw.get("model_type") or "")
        self.architecture = self.model_type
        self.config = config
        self.lineage_hints = arch.lineage_hints(raw, config, model_card.card_base_models(self.path))
        self.vocab, self.vocab_source = vocabulary.load_directory_vocab(self.path, self.vocab_match)
        hidden, layers = arch.config_value(config, "hidden"), arch.config_value(config, "layers")
        n_head = arch.config_value(config, "heads")
        if not (hidden and layers and n_head):
            missing = [n for n, v in (("hidden size", hidden), ("layer count", layers), ("attention heads", n_head)) if not v]
            raise CheckpointError(config_path, f"config.json lacks the {', '.join(missing)}")
        self._geometry(hidden, layers, n_head, arch.kv_heads_from_config(config, n_head), arch.config_value(config, "head_dim"))

    def _init_from_gguf(self):
        reader = self.store.metadata_reader
        self.config_path = self.store.files[0]
        gguf_arch = str(files.gguf_field(reader, "general.architecture", "unknown"))
        meta = lambda key, default=None: files.gguf_field(reader, f"{gguf_arch}.{key}", default)
        first = lambda value: value[0] if isinstance(value, list) and value else value
        self.model_type, self.wrapper_type, self.architecture = "gguf", "", gguf_arch
        self.config = {"model_type": gguf_arch}
        self.lineage_hints = {"experts": meta("expert_count") or None, "modalities": ["text"],
                              "declared_base": arch.gguf_declared_bases(lambda key, default=None: files.gguf_field(reader, key, default))}
        hidden, layers = meta("embedding_length"), meta("block_count")
        n_head = first(meta("attention.head_count"))
        if not (isinstance(hidden, int) and isinstance(layers, int) and isinstance(n_head, int) and n_head > 0):
            raise CheckpointError(self.config_path, f"GGUF metadata lacks {gguf_arch}.embedding_length, block_count or attention.head_count")
        n_kv = first(meta("attention.head_count_kv", n_head)) or n_head
        head_dim = meta("attention.key_length")
        tokens = files.gguf_field(reader, "tokenizer.ggml.tokens")
        if tokens is None:
            self.vocab, self.vocab_source = None, None
        else:
            types = files.gguf_field(reader, "tokenizer.ggml.token_type")
            model = files.gguf_field(reader, "tokenizer.ggml.model")
            self.vocab = vocabulary.from_gguf_metadata(tokens, types, model, self.vocab_match)
            self.vocab_source = "GGUF metadata"
        self._geometry(hidden, layers, n_head, n_kv, head_dim)

    def _geometry(self, hidden, layers, n_head, n_kv, head_dim):
        if n_head <= 0 or n_kv <= 0 or n_head % n_kv:
            raise CheckpointError(self.config_path, f"inconsistent head counts: {n_head} query heads, {n_kv} key/value heads")
        self.hidden_size, self.num_layers = hidden, layers
        self.explicit_head_dim = bool(head_dim)
        self.heads = arch.Heads(n_head, n_kv, head_dim or hidden // n_head)

    def _bind_family(self):
        self.family = arch.resolve_family((self.model_type, self.wrapper_type), self.store.tensors, self.path)
        embedding = self.store.tensors[self.family.embedding]
        if len(embedding.shape) != 2:
            raise CheckpointError(embedding.path, f"embedding '{embedding.name}' is not a matrix (shape {embedding.shape})")
        self.vocab_rows, embedding_width = embedding.shape
        if embedding_width != self.hidden_size:
            raise CheckpointError(embedding.path, f"embedding width {embedding_width} does not match the hidden size {self.hidden_size} in the config")
        last = self.family.name(self.family.family.query, self.num_layers - 1)
        if last not in self.store.tensors:
            raise CheckpointError(self.path, f"the config declares {self.num_layers} layers but tensor '{last}' is missing")
        self._infer_head_dim()
        self._restrict_vocab()

    def _infer_head_dim(self):
        """Pruned models (e.g. Minitron) keep heads wider than hidden / n_head; a separate
        W_q's row count tells the true head size when the config does not."""
        family = self.family.family
        if self.explicit_head_dim or family.key is None:
            return
        rows = self.store.tensors[self.family.name(family.query, 0)].shape[0]
        if rows % self.heads.n_head == 0:
            self.heads = arch.Heads(self.heads.n_head, self.heads.n_kv, rows // self.heads.n_head)

    def _restrict_vocab(self):
        self.dropped_token_ids = 0
        if not self.vocab:
            return
        kept = {key: i for key, i in self.vocab.items() if i < self.vocab_rows}
        self.dropped_token_ids = len(self.vocab) - len(kept)
        if self.dropped_token_ids > max(MAX_OUT_OF_RANGE_FRACTION * len(self.vocab), MAX_OUT_OF_RANGE_TOKENS):
            raise CheckpointError(self.path, f"the embedding has {self.vocab_rows} rows but the tokenizer ({self.vocab_source}) uses ids up to {max(self.vocab.values())}: they do not belong together")
        self.vocab = kept

    # ------------------------------------------------------------------ tensors
    def _read(self, name, device=CPU):
        """One tensor as float32 on `device`; the stored precision crosses to the GPU, not float32."""
        self._refuse_scaled(name)
        tensor = self.store.read(name).to(device).to(torch.float32)
        return files.check_finite(tensor, self.store.tensors[name].path, name)

    def _refuse_scaled(self, name):
        """float8 values mean nothing without the scales stored beside them."""
        info = self.store.tensors.get(name)
        if info is not None and str(info.dtype).upper().replace("_", "").startswith(("F8", "FLOAT8")):
            raise CheckpointError(info.path, f"tensor '{name}' is stored as {info.dtype}: float8 weights need their scales, "
                                             "which awm does not apply; compare the full-precision model")

    def read_embedding(self, progress=False):
        """The whole input embedding in its stored precision (bf16/fp16 stay half size), read in blocks."""
        name = self.family.embedding
        path = self.store.tensors[name].path
        self._refuse_scaled(name)
        embedding = None
        starts = range(0, self.vocab_rows, EMBEDDING_BLOCK_ROWS)
        for start in tqdm(starts, desc=f"embedding {os.path.basename(self.display_path)}", leave=False, disable=None if progress else True):
            block = self.store.read_rows(name, start, min(start + EMBEDDING_BLOCK_ROWS, self.vocab_rows))
            if not block.is_floating_point():
                raise CheckpointError(path, f"embedding '{name}' is not floating point ({block.dtype})")
            if embedding is None:
                embedding = torch.empty(self.vocab_rows, self.hidden_size, dtype=block.dtype)
            embedding[start:start + len(block)] = files.check_finite(block, path, name)
        return embedding

    def query_key(self, layer, device=CPU):
        """(W_q, W_k) of one layer as float32 (out_features, hidden) matrices, whole heads in rows."""
        family = self.family.family
        layout = arch.LAYOUTS[family.layout_name(self.config)]
        q_name = self.family.name(family.query, layer)
        if q_name not in self.store.tensors:
            raise CheckpointError(self.path, f"tensor '{q_name}' is missing")
        stored = self._read(q_name, device)
        try:
            w_q, w_k = layout(stored, self.heads)
        except RuntimeError:
            raise CheckpointError(self.store.tensors[q_name].path, f"tensor '{q_name}' of shape {tuple(stored.shape)} does not fit {self.heads.n_head} heads / {self.heads.n_kv} kv heads of size {self.heads.head_dim}") from None
        k_name = q_name                      # fused: K comes out of the same tensor
        if w_k is None:
            k_name = self.family.name(family.key, layer)
            if k_name not in self.store.tensors:
                raise CheckpointError(self.path, f"tensor '{k_name}' is missing")
            w_k = self._read(k_name, device)
        heads = self.heads
        for name, w, n in ((q_name, w_q, heads.n_head), (k_name, w_k, heads.n_kv)):
            if w.dim() != 2 or w.shape != (n * heads.head_dim, self.hidden_size):
                raise CheckpointError(self.store.tensors[name].path, f"attention tensor '{name}' has shape {tuple(w.shape)}, but the config implies "
                                                                     f"({n} heads x {heads.head_dim}, {self.hidden_size})")
        return w_q.contiguous(), w_k.contiguous()

    def optional_vector(self, template, layer, offset=0.0):
        """A norm gain of one layer if the checkpoint has it, else None."""
        if not template:
            return None
        name = self.family.name(template, layer)
        if name not in self.store.tensors:
            return None
        return self._read(name).reshape(-1) + offset

    def attention_input_gain(self, layer):
        family = self.family.family
        for template in family.attn_norm:
            gain = self.optional_vector(template, layer, family.norm_offset)
            if gain is not None:
                return gain
        return None

    def tensors_for_score(self):
        """Every tensor a comparison reads: the embedding, each layer's Q / K and the gains
        folded into the QK circuit (the first attention-norm name present, q/k norms)."""
        family, names = self.family.family, [self.family.embedding]
        for layer in range(self.num_layers):
            names += [self.family.name(t, layer) for t in (family.query, family.key, family.q_norm, family.k_norm) if t]
            names += [self.family.name(t, layer) for t in family.attn_norm if self.family.name(t, layer) in self.store.tensors][:1]
        return [n for n in dict.fromkeys(names) if n in self.store.tensors]

    def stored_parts(self, name):
        """The stored tensors a tensor is read from: itself, or a quantized module's parts."""
        parts = getattr(self.store, "parts", None)
        return parts(name) if parts else [self.store.tensors[name]]

    # ------------------------------------------------------------------ description
    def describe(self):
        q_name = self.family.name(self.family.family.query, 0)
        described = {
            "path": self.display_path,
            "format": self.store.format_name,
            "architecture": self.architecture,
            "family": self.family.family.name,
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "num_heads": self.heads.n_head,
            "num_kv_heads": self.heads.n_kv,
            "head_dim": self.heads.head_dim,
            "vocab_size": self.vocab_rows,
            "tokenizer": self.vocab_source,
            "vocab_match": self.vocab_match,
            "tokenizer_tokens": len(self.vocab) if self.vocab else 0,
            "dropped_token_ids": self.dropped_token_ids,
            "dtype": self.store.tensors[q_name].dtype,
            **self.lineage_hints,
        }
        quantization = getattr(self.store, "label", None) or getattr(getattr(self.store, "base", None), "label", None)
        if quantization:
            described["quantization"] = quantization
        if getattr(self, "adapter", None):
            described["adapter"] = dict(self.adapter)
        if self.source:
            described["source"] = dict(self.source)
        return described
