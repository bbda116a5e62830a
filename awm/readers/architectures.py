"""Where each model family keeps its token embedding and its attention W_q / W_k.

One row per family. A row names tensors relative to a prefix (``model.``, ``transformer.``,
a multimodal wrapper's ``language_model.model.`` ...); the first prefix under which the
embedding and layer 0's query tensor both exist is used. Fused QKV tensors are split by
``layout`` into true per-head Q and K rows using the config's head counts.
"""
from dataclasses import dataclass

from awm.errors import CheckpointError


# ----------------------------------------------------------------------------- QKV layouts
# Each takes the stored tensor and the head geometry and returns (W_q, W_k) as
# (out_features, hidden) matrices with whole heads in rows.
def _split_separate(w, heads):
    return w, None


def _split_qkv_rows(w, heads):
    """Rows [Q: n_head*hd][K: n_kv*hd][V: n_kv*hd] (Phi-3, Qwen-1, Baichuan, MPT, ChatGLM2+, GGUF)."""
    q_rows, k_rows = heads.n_head * heads.head_dim, heads.n_kv * heads.head_dim
    return w[:q_rows], w[q_rows:q_rows + k_rows]


def _split_head_interleaved(w, heads):
    """Rows viewed as (n_head, 3, hd): each head stores its q, k, v rows together (NeoX, Bloom, ChatGLM-6B)."""
    per_head = w.reshape(heads.n_head, 3, heads.head_dim, w.shape[-1])
    return per_head[:, 0].reshape(-1, w.shape[-1]), per_head[:, 1].reshape(-1, w.shape[-1])


def _split_kv_grouped(w, heads):
    """Rows viewed as (n_kv, q_per_kv + 2, hd) = [q heads..., k, v] per group (Falcon-40B+, InternLM2)."""
    group = heads.n_head // heads.n_kv
    grouped = w.reshape(heads.n_kv, group + 2, heads.head_dim, w.shape[-1])
    return grouped[:, :group].reshape(-1, w.shape[-1]), grouped[:, group].reshape(-1, w.shape[-1])


def _split_codegen(w, heads):
    """CodeGen: rows in 4 model-parallel chunks, each [q | v | k] of n_head/4 heads."""
    chunks = w.reshape(CODEGEN_CHUNKS, 3, heads.n_head * heads.head_dim // CODEGEN_CHUNKS, w.shape[-1])
    return chunks[:, 0].reshape(-1, w.shape[-1]), chunks[:, 2].reshape(-1, w.shape[-1])


CODEGEN_CHUNKS = 4        # fixed in CodeGen's attention (it was trained on 4-way model parallelism)


def _split_conv1d_qkv(w, heads):
    """GPT-2 style Conv1D stores (hidden, 3*out) with columns [Q|K|V]."""
    return _split_qkv_rows(w.t(), heads)


LAYOUTS = {
    "separate": _split_separate,
    "qkv_rows": _split_qkv_rows,
    "head_interleaved": _split_head_interleaved,
    "kv_grouped": _split_kv_grouped,
    "conv1d_qkv": _split_conv1d_qkv,
    "codegen": _split_codegen,
}


def falcon_layout(config):
    """Falcon changed its fused layout twice; the config says which one a checkpoint uses."""
    if config.get("new_decoder_architecture"):
        return "kv_grouped"
    return "qkv_rows" if config.get("multi_query", True) else "head_interleaved"


# ----------------------------------------------------------------------------- the table
LLAMA_LIKE_PREFIXES = ("model.", "language_model.model.", "model.language_model.", "")


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple
    embedding: str
    query: str                      # layer template with {i}; the fused tensor when key is None
    key: str = None
    layout: object = "separate"     # a LAYOUTS name, or a function of the config returning one
    prefixes: tuple = LLAMA_LIKE_PREFIXES
    attn_norm: tuple = ()           # candidate names of the gain that scales attention's input
    norm_offset: float = 0.0        # Gemma stores gain - 1
    q_norm: str = None              # per-head q/k RMSNorm gains (Qwen3, Gemma3, OLMo-2)
    k_norm: str = None
    unsupported: str = None         # a reason, for families we recognise but cannot score

    def layout_name(self, config):
        return self.layout(config) if callable(self.layout) else self.layout


_LLAMA_TYPES = (
    "llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "olmo", "olmoe",
    "minicpm", "internlm", "llama_moe", "pangu_moe", "yi", "deepseek", "starcoder2", "stablelm",
    "granite", "granitemoe", "phi", "cohere", "qwen2_vl", "qwen2_5_vl", "qwen2_vl_text", "qwen2_5_vl_text",
    "qwen2_audio", "vicuna", "llava", "llava_next", "video_llava", "llava_onevision", "glm", "glm4", "glm4_moe",
)
_SELF_ATTN = "layers.{i}.self_attn."

FAMILIES = (
    Family("llama-like", _LLAMA_TYPES, "embed_tokens.weight", _SELF_ATTN + "q_proj.weight",
           _SELF_ATTN + "k_proj.weight", attn_norm=("layers.{i}.input_layernorm.weight",),
           q_norm=_SELF_ATTN + "q_norm.weight", k_norm=_SELF_ATTN + "k_norm.weight"),
    Family("gemma", ("gemma", "gemma2", "gemma3", "gemma3_text"), "embed_tokens.weight",
           _SELF_ATTN + "q_proj.weight", _SELF_ATTN + "k_proj.weight",
           attn_norm=("layers.{i}.input_layernorm.weight",), norm_offset=1.0,
           q_norm=_SELF_ATTN + "q_norm.weight", k_norm=_SELF_ATTN + "k_norm.weight"),
    Family("olmo2", ("olmo2",), "embed_tokens.weight", _SELF_ATTN + "q_proj.weight",
           _SELF_ATTN + "k_proj.weight", q_norm=_SELF_ATTN + "q_norm.weight",
           k_norm=_SELF_ATTN + "k_norm.weight"),
    Family("phi3", ("phi3", "phimoe"), "embed_tokens.weight", _SELF_ATTN + "qkv_proj.weight",
           layout="qkv_rows", attn_norm=("layers.{i}.input_layernorm.weight",)),
    Family("gpt-neox", ("gpt_neox",), "embed_in.weight", "layers.{i}.attention.query_key_value.weight",
           layout="head_interleaved", prefixes=("gpt_neox.",),
           attn_norm=("layers.{i}.input_layernorm.weight",)),
    Family("bloom", ("bloom",), "word_embeddings.weight", "h.{i}.self_attention.query_key_value.weight",
           layout="head_interleaved", prefixes=("transformer.", ""),
           attn_norm=("h.{i}.input_layernorm.weight",)),
    Family("falcon", ("falcon", "RefinedWeb", "RefinedWebModel"), "word_embeddings.weight",
           "h.{i}.self_attention.query_key_value.weight", layout=falcon_layout,
           prefixes=("transformer.",), attn_norm=("h.{i}.ln_attn.weight", "h.{i}.input_layernorm.weight")),
    Family("hunyuan", ("hunyuan_v1_dense", "hunyuan_v1_moe"), "embed_tokens.weight", _SELF_ATTN + "q_proj.weight",
           _SELF_ATTN + "k_proj.weight", attn_norm=("layers.{i}.input_layernorm.weight",),
           q_norm=_SELF_ATTN + "query_layernorm.weight", k_norm=_SELF_ATTN + "key_layernorm.weight"),
    Family("opt", ("opt",), "decoder.embed_tokens.weight", "decoder.layers.{i}.self_attn.q_proj.weight",
           "decoder.layers.{i}.self_attn.k_proj.weight", prefixes=("model.", ""),
           attn_norm=("decoder.layers.{i}.self_attn_layer_norm.weight",)),
    Family("gpt-j", ("gptj",), "wte.weight", "h.{i}.attn.q_proj.weight", "h.{i}.attn.k_proj.weight",
           prefixes=("transformer.",), attn_norm=("h.{i}.ln_1.weight",)),
    Family("gpt-neo", ("gpt_neo",), "wte.weight", "h.{i}.attn.attention.q_proj.weight",
           "h.{i}.attn.attention.k_proj.weight", prefixes=("transformer.",), attn_norm=("h.{i}.ln_1.weight",)),
    Family("codegen", ("codegen",), "wte.weight", "h.{i}.attn.qkv_proj.weight", layout="codegen",
           prefixes=("transformer.",), attn_norm=("h.{i}.ln_1.weight",)),
    Family("gpt-bigcode", ("gpt_bigcode",), "wte.weight", "h.{i}.attn.c_attn.weight", layout="qkv_rows",
           prefixes=("transformer.",), attn_norm=("h.{i}.ln_1.weight",)),
    Family("gpt2", ("gpt2", "jais"), "wte.weight", "h.{i}.attn.c_attn.weight", layout="conv1d_qkv",
           prefixes=("transformer.", ""), attn_norm=("h.{i}.ln_1.weight",)),
    Family("qwen", ("qwen",), "wte.weight", "h.{i}.attn.c_attn.weight", layout="qkv_rows",
           prefixes=("transformer.",), attn_norm=("h.{i}.ln_1.weight",)),
    Family("baichuan", ("baichuan",), "embed_tokens.weight", _SELF_ATTN + "W_pack.weight",
           layout="qkv_rows", prefixes=("model.",), attn_norm=("layers.{i}.input_layernorm.weight",)),
    Family("chatglm", ("chatglm",), "embedding.word_embeddings.weight",
           "encoder.layers.{i}.self_attention.query_key_value.weight", layout="qkv_rows",
           prefixes=("transformer.",), attn_norm=("encoder.layers.{i}.input_layernorm.weight",)),
    Family("chatglm-6b", ("chatglm",), "word_embeddings.weight",
           "layers.{i}.attention.query_key_value.weight", layout="head_interleaved",
           prefixes=("transformer.",), attn_norm=("layers.{i}.input_layernorm.weight",)),
    Family("internlm2", ("internlm2",), "tok_embeddings.weight", "layers.{i}.attention.wqkv.weight",
           layout="kv_grouped", prefixes=("model.",), attn_norm=("layers.{i}.attention_norm.weight",)),
    Family("mpt", ("mpt",), "wte.weight", "blocks.{i}.attn.Wqkv.weight", layout="qkv_rows",
           prefixes=("transformer.",), attn_norm=("blocks.{i}.norm_1.weight",)),
    Family("olmo-1", ("hf_olmo", "olmo"), "transformer.wte.weight", "transformer.blocks.{i}.att_proj.weight",
           layout="qkv_rows", prefixes=("model.",), attn_norm=("transformer.blocks.{i}.attn_norm.weight",)),
    Family("plamo", ("plamo",), "embed_tokens.weight", "layers.layers.{i}.self_attn.q_proj.weight",
           "layers.layers.{i}.self_attn.k_proj.weight", prefixes=("model.",), attn_norm=("layers.layers.{i}.norm.weight",)),
    Family("deepseek-mla", ("deepseek_v2", "deepseek_v3", "kimi_k2"), "embed_tokens.weight",
           _SELF_ATTN + "kv_a_proj_with_mqa.weight", prefixes=("model.",),
           unsupported="multi-head latent attention (MLA) has no per-head W_k: keys are decompressed "
                       "from a shared latent, so AWM's W_k similarity is not defined"),
    # llama.cpp files: one naming for every architecture; fused attn_qkv is [Q; K; V].
    Family("gguf", ("gguf",), "token_embd.weight", "blk.{i}.attn_q.weight", "blk.{i}.attn_k.weight",
           prefixes=("",), attn_norm=("blk.{i}.attn_norm.weight",),
           q_norm="blk.{i}.attn_q_norm.weight", k_norm="blk.{i}.attn_k_norm.weight"),
    Family("gguf-fused", ("gguf",), "token_embd.weight", "blk.{i}.attn_qkv.weight", layout="qkv_rows",
           prefixes=("",), attn_norm=("blk.{i}.attn_norm.weight",)),
)


@dataclass(frozen=True)
class Resolved:
    """A family bound to the prefix this checkpoint uses."""
    family: Family
    prefix: str

    def name(self, template, layer=None):
        return self.prefix + (template.format(i=layer) if layer is not None else template)

    @property
    def embedding(self):
        return self.name(self.family.embedding)


def resolve_family(model_types, tensor_names, where):
    """Pick the table row (and prefix) that matches this checkpoint's type(s) and tensor names.

    model_types: the language model's type first, then the wrapper's (multimodal configs).
    """
    model_types = [t for t in dict.fromkeys(model_types) if t]
    model_type = model_types[0]
    candidates = [f for t in model_types for f in FAMILIES if t in f.model_types]
    for family in candidates:
        for prefix in family.prefixes:
            if prefix + family.embedding in tensor_names and prefix + family.query.format(i=0) in tensor_names:
                if family.unsupported:
                    raise CheckpointError(where, f"architecture '{model_type}' is not supported: {family.unsupported}")
                return Resolved(family, prefix)
    attention = sorted(n for n in tensor_names if _looks_like_attention(n))[:6]
    found = ", ".join(attention) if attention else "no attention tensors"
    if not candidates:
        raise CheckpointError(where, f"architecture '{model_type}' is not in the architecture table (attention tensors found: {found})")
    raise CheckpointError(where, f"architecture '{model_type}': expected tensors like '{candidates[0].query.format(i=0)}' were not found (attention tensors found: {found})")


def _looks_like_attention(name):
    return any(part in name for part in ("attn", "attention", "q_proj", "qkv", "Wqkv", "W_pack")) and (".0." in name)


# ----------------------------------------------------------------------------- head geometry
@dataclass(frozen=True)
class Heads:
    n_head: int
    n_kv: int
    head_dim: int


_CONFIG_KEYS = {
    "hidden": ("hidden_size", "d_model", "n_embd", "model_dim", "dim"),
    "layers": ("num_hidden_layers", "n_layer", "n_layers", "num_layers"),
    "heads": ("num_attention_heads", "n_head", "n_heads", "num_heads"),
    "kv_heads": ("num_key_value_heads", "num_kv_heads", "n_head_kv", "n_kv_heads"),
    "head_dim": ("head_dim", "kv_channels"),
}
TEXT_CONFIG_KEYS = ("text_config", "llm_config", "language_config")


def text_config(config):
    """Multimodal configs nest the language model's settings; merge them over the top level."""
    merged = dict(config)
    for key in TEXT_CONFIG_KEYS:
        if isinstance(config.get(key), dict):
            merged.update(config[key])
    return merged


def config_value(config, field):
    for key in _CONFIG_KEYS[field]:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def kv_heads_from_config(config, n_head):
    """Key/value head count: each family spells multi-query and grouped attention its own way."""
    if config.get("multi_query_attention") and config.get("multi_query_group_num"):
        return config["multi_query_group_num"]                       # ChatGLM2/3, GLM-4
    attn_config = config.get("attn_config")
    if isinstance(attn_config, dict) and attn_config.get("kv_n_heads"):
        return attn_config["kv_n_heads"]                              # MPT
    if config.get("n_shared_head"):
        return n_head // config["n_shared_head"]                     # PLaMo: query heads per kv head
    if config.get("model_type") in ("falcon", "RefinedWeb", "RefinedWebModel"):
        if config.get("new_decoder_architecture"):
            return config.get("num_kv_heads") or n_head
        return 1 if config.get("multi_query", True) else n_head
    if config.get("model_type") == "gpt_bigcode":
        return 1 if config.get("multi_query", True) else n_head
    return config_value(config, "kv_heads") or n_head


# ----------------------------------------------------------------------------- lineage hints
# What a config says about structure the family tree reads: experts (an upcycled MoE), the
# modalities of a multimodal wrapper, and a base the model declares (a claim, not evidence).
EXPERT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")
MODALITY_KEYS = {"vision": ("vision_config", "visual", "vision_tower", "mm_vision_tower"), "audio": ("audio_config",)}
DECLARED_BASE_KEYS = ("base_model_name_or_path", "_name_or_path")


def lineage_hints(raw, config, card_bases=()):
    """card_bases: the base models the folder's model card declares."""
    experts = next((config[k] for k in EXPERT_KEYS if isinstance(config.get(k), int) and config[k] > 1), None)
    modalities = ["text"] + [m for m, keys in MODALITY_KEYS.items() if any(raw.get(k) for k in keys)]
    declared = [raw[k] for k in DECLARED_BASE_KEYS if isinstance(raw.get(k), str) and raw[k].count("/") == 1
                and not raw[k].startswith((".", "/", "~"))]
    return {"experts": experts, "modalities": modalities, "declared_base": list(dict.fromkeys([*card_bases, *declared])) or None}


def gguf_declared_bases(field):
    """The base models a GGUF's general.base_model.N.* keys name, as Hub repos (org/name)."""
    bases = []
    for index in range(int(field("general.base_model.count", 0) or 0)):
        url = str(field(f"general.base_model.{index}.repo_url", "") or "")
        org, name = field(f"general.base_model.{index}.organization"), field(f"general.base_model.{index}.name")
        if url.startswith("https://huggingface.co/") and url.count("/") == 4:
            bases.append(url.removeprefix("https://huggingface.co/"))
        elif org and name:
            bases.append(f"{org}/{name}")
    return bases or None
