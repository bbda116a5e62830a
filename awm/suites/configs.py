"""The paper's experiment suites, and where each model comes from and lives on disk.

MODELS maps a short model name to its Hugging Face repo (always a repo holding
Hugging Face-format weights). The local folder of a model is its name under the checkpoint
directory, so download_models.sh and main.py agree by construction. Each suite lists
(model A, model B, category) pairs; the label (derived / independent) follows from the
category. The derived suites are our reconstruction of the paper's six categories with
public models; the two independent suites are the paper's own model lists. provenance_kit is a
published benchmark's pairs (its table, source and left-out pairs: suites/provenance_kit.py);
its pairs carry their own label, difficulty and id.
"""
import os
import textwrap
from collections import Counter
from dataclasses import dataclass

from awm.suites import provenance_kit

CHECKPOINT_ENV = "AWM_CHECKPOINT_DIR"
CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # awm/suites/ -> the checkout
SOURCE_CHECKPOINT_DIR = os.path.join(CHECKOUT, "checkpoints")
# In a source checkout, checkpoints/ beside main.py; installed with pip (no main.py beside the
# package), ./checkpoints in the working directory.
IN_CHECKOUT = os.path.isfile(os.path.join(CHECKOUT, "main.py")) and os.path.isdir(SOURCE_CHECKPOINT_DIR)
DEFAULT_CHECKPOINT_DIR = SOURCE_CHECKPOINT_DIR if IN_CHECKOUT else os.path.abspath("checkpoints")

MODELS = {
    # Llama family
    "llama-7b": "huggyllama/llama-7b",
    "llama-13b": "huggyllama/llama-13b",
    "Llama-2-7b-hf": "meta-llama/Llama-2-7b-hf",
    "Llama-2-7b-chat-hf": "meta-llama/Llama-2-7b-chat-hf",
    "Llama-2-13b-hf": "meta-llama/Llama-2-13b-hf",
    "Llama-2-13b-chat-hf": "meta-llama/Llama-2-13b-chat-hf",
    "Meta-Llama-3-8B": "meta-llama/Meta-Llama-3-8B",
    "Meta-Llama-3-8B-Instruct": "meta-llama/Meta-Llama-3-8B-Instruct",
    "Llama-3.1-8B": "meta-llama/Llama-3.1-8B",
    "Llama-3.2-3B": "meta-llama/Llama-3.2-3B",
    "Llama-3.2-1B": "meta-llama/Llama-3.2-1B",
    "vicuna-7b-v1.5": "lmsys/vicuna-7b-v1.5",
    "vicuna-13b-v1.5": "lmsys/vicuna-13b-v1.5",
    "CodeLlama-7b-hf": "codellama/CodeLlama-7b-hf",
    "CodeLlama-13b-hf": "codellama/CodeLlama-13b-hf",
    "llemma_7b": "EleutherAI/llemma_7b",
    "chinese-llama-2-7b": "hfl/chinese-llama-2-7b",
    "llama-3-chinese-8b": "hfl/llama-3-chinese-8b",
    "BioMedGPT-LM-7B": "PharMolix/BioMedGPT-LM-7B",
    "WizardMath-7B-V1.0": "WizardLMTeam/WizardMath-7B-V1.0",
    "MetaMath-7B-V1.0": "meta-math/MetaMath-7B-V1.0",
    "Sheared-LLaMA-1.3B": "princeton-nlp/Sheared-LLaMA-1.3B",
    "Sheared-LLaMA-2.7B": "princeton-nlp/Sheared-LLaMA-2.7B",
    "Sheared-LLaMA-1.3B-Pruned": "princeton-nlp/Sheared-LLaMA-1.3B-Pruned",
    "Sheared-LLaMA-2.7B-Pruned": "princeton-nlp/Sheared-LLaMA-2.7B-Pruned",
    "Llama-3.1-Minitron-4B-Width-Base": "nvidia/Llama-3.1-Minitron-4B-Width-Base",
    "Llama-3.1-Minitron-4B-Depth-Base": "nvidia/Llama-3.1-Minitron-4B-Depth-Base",
    "Llama-3.1-Tulu-3-8B-SFT": "allenai/Llama-3.1-Tulu-3-8B-SFT",
    "Llama-3.1-Tulu-3-8B-DPO": "allenai/Llama-3.1-Tulu-3-8B-DPO",
    "Llama-3.1-Tulu-3-8B": "allenai/Llama-3.1-Tulu-3-8B",
    "LLaMA-MoE-v1-3_5B-2_8": "llama-moe/LLaMA-MoE-v1-3_5B-2_8",
    "LLaMA-MoE-v1-3_0B-2_16": "llama-moe/LLaMA-MoE-v1-3_0B-2_16",
    "LLaMA-MoE-v1-3_5B-4_16": "llama-moe/LLaMA-MoE-v1-3_5B-4_16",
    "LLaMA-MoE-v2-3_8B-2_8-sft": "llama-moe/LLaMA-MoE-v2-3_8B-2_8-sft",
    "open_llama_7b": "openlm-research/open_llama_7b",
    "open_llama_7b_v2": "openlm-research/open_llama_7b_v2",
    "open_llama_13b": "openlm-research/open_llama_13b",
    # Mistral family
    "Mistral-7B-v0.1": "mistralai/Mistral-7B-v0.1",
    "Mistral-7B-Instruct-v0.1": "mistralai/Mistral-7B-Instruct-v0.1",
    "Mistral-7B-Instruct-v0.2": "mistralai/Mistral-7B-Instruct-v0.2",
    "Mixtral-8x7B-v0.1": "mistralai/Mixtral-8x7B-v0.1",
    "Mathstral-7B-v0.1": "mistralai/Mathstral-7B-v0.1",
    "BioMistral-7B": "BioMistral/BioMistral-7B",
    "openchat_3.5": "openchat/openchat_3.5",
    "mistral-7b-sft-beta": "HuggingFaceH4/mistral-7b-sft-beta",
    "zephyr-7b-beta": "HuggingFaceH4/zephyr-7b-beta",
    "Mistral-Nemo-Base-2407": "mistralai/Mistral-Nemo-Base-2407",
    "Mistral-NeMo-Minitron-8B-Base": "nvidia/Mistral-NeMo-Minitron-8B-Base",
    "Mistral-NeMo-Minitron-8B-Instruct": "nvidia/Mistral-NeMo-Minitron-8B-Instruct",
    # Qwen family
    "Qwen-7B": "Qwen/Qwen-7B",
    "Qwen-7B-Chat": "Qwen/Qwen-7B-Chat",
    "Qwen-14B": "Qwen/Qwen-14B",
    "Qwen-14B-Chat": "Qwen/Qwen-14B-Chat",
    "Qwen-1_8B": "Qwen/Qwen-1_8B",
    "Qwen-VL": "Qwen/Qwen-VL",
    "Qwen-Audio": "Qwen/Qwen-Audio",
    "Qwen1.5-MoE-A2.7B": "Qwen/Qwen1.5-MoE-A2.7B",
    "Qwen2-7B": "Qwen/Qwen2-7B",
    "Qwen2-7B-Instruct": "Qwen/Qwen2-7B-Instruct",
    "Qwen2-57B-A14B": "Qwen/Qwen2-57B-A14B",
    "Qwen2-VL-7B-Instruct": "Qwen/Qwen2-VL-7B-Instruct",
    "Qwen2-Audio-7B": "Qwen/Qwen2-Audio-7B",
    "Qwen2.5-7B": "Qwen/Qwen2.5-7B",
    "Qwen2.5-7B-Instruct": "Qwen/Qwen2.5-7B-Instruct",
    "Qwen2.5-Coder-7B": "Qwen/Qwen2.5-Coder-7B",
    "Qwen2.5-Math-7B": "Qwen/Qwen2.5-Math-7B",
    "Qwen2.5-VL-7B-Instruct": "Qwen/Qwen2.5-VL-7B-Instruct",
    "Qwen3-14B": "Qwen/Qwen3-14B",
    "Qwen2.5-Math-7B-SimpleRL-Zoo": "hkust-nlp/Qwen-2.5-Math-7B-SimpleRL-Zoo",
    "Qwen2.5-Math-7B-Oat-Zero": "sail/Qwen2.5-Math-7B-Oat-Zero",
    "Open-Reasoner-Zero-7B": "Open-Reasoner-Zero/Open-Reasoner-Zero-7B",
    "Eurus-2-7B-PRIME": "PRIME-RL/Eurus-2-7B-PRIME",
    "DeepSeek-R1-Distill-Qwen-1.5B": "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
    "DeepScaleR-1.5B-Preview": "agentica-org/DeepScaleR-1.5B-Preview",
    # Other families
    "gemma-7b": "google/gemma-7b",
    "gemma-7b-it": "google/gemma-7b-it",
    "internlm-7b": "internlm/internlm-7b",
    "internlm2-7b": "internlm/internlm2-7b",
    "internlm2-chat-7b": "internlm/internlm2-chat-7b",
    "Baichuan-7B": "baichuan-inc/Baichuan-7B",
    "Baichuan-13B-Base": "baichuan-inc/Baichuan-13B-Base",
    "Baichuan2-7B-Base": "baichuan-inc/Baichuan2-7B-Base",
    "Baichuan2-7B-Chat": "baichuan-inc/Baichuan2-7B-Chat",
    "Baichuan2-13B-Base": "baichuan-inc/Baichuan2-13B-Base",
    "Baichuan2-13B-Chat": "baichuan-inc/Baichuan2-13B-Chat",
    "deepseek-llm-7b-base": "deepseek-ai/deepseek-llm-7b-base",
    "deepseek-llm-7b-chat": "deepseek-ai/deepseek-llm-7b-chat",
    "mpt-7b": "mosaicml/mpt-7b",
    "OLMo-7B-hf": "allenai/OLMo-7B-hf",
    "OLMo-2-1124-7B-SFT": "allenai/OLMo-2-1124-7B-SFT",
    "OLMo-2-1124-7B-DPO": "allenai/OLMo-2-1124-7B-DPO",
    "OLMo-2-1124-13B": "allenai/OLMo-2-1124-13B",
    "OLMo-2-1124-13B-Instruct": "allenai/OLMo-2-1124-13B-Instruct",
    "plamo-13b": "pfnet/plamo-13b",
    "jais-13b": "inceptionai/jais-13b",
    "MiniCPM-2B-sft-bf16": "openbmb/MiniCPM-2B-sft-bf16",
    "MiniCPM-MoE-8x2B": "openbmb/MiniCPM-MoE-8x2B",
    "llava-1.5-7b-hf": "llava-hf/llava-1.5-7b-hf",
    "llava-1.5-13b-hf": "llava-hf/llava-1.5-13b-hf",
    "llava-v1.6-mistral-7b-hf": "llava-hf/llava-v1.6-mistral-7b-hf",
    "llama3-llava-next-8b-hf": "llava-hf/llama3-llava-next-8b-hf",
    "Video-LLaVA-7B-hf": "LanguageBind/Video-LLaVA-7B-hf",
}
MODELS.update(provenance_kit.model_names(MODELS))   # the published benchmark's decoders

# Category -> ground-truth label.
LABELS = {"sft": "derived", "cpt": "derived", "rl": "derived", "multimodal": "derived",
          "pruning": "derived", "moe_upcycling": "derived", "independent": "independent"}


@dataclass(frozen=True)
class Pair:
    model_a: str
    model_b: str
    category: str
    stated_label: str = None     # a benchmark's own label, where the category does not decide it
    difficulty: str = None
    pair_id: str = None          # the benchmark's name for the pair

    @property
    def label(self):
        return self.stated_label or LABELS[self.category]


def _pairs(category, *pairs):
    return [Pair(a, b, category) for a, b in pairs]


def _all_pairs(models):
    return [Pair(a, b, "independent") for i, a in enumerate(models) for b in models[i + 1:]]


def _benchmark_pairs():
    name_of = {repo: name for name, repo in MODELS.items()}
    return [Pair(name_of[p.repo_a], name_of[p.repo_b], p.provenance, p.label, p.difficulty, p.pair_id)
            for p in provenance_kit.kept()]


INDEPENDENT_7B = ["mpt-7b", "Baichuan-7B", "open_llama_7b", "llama-7b", "open_llama_7b_v2", "Llama-2-7b-hf",
                  "internlm-7b", "Mistral-7B-v0.1", "OLMo-7B-hf", "Qwen-7B"]
INDEPENDENT_13B = ["open_llama_13b", "plamo-13b", "llama-13b", "Llama-2-13b-hf", "Baichuan-13B-Base", "Qwen-14B",
                   "jais-13b", "OLMo-2-1124-13B", "Baichuan2-13B-Base", "Qwen3-14B"]

SUITES = {
    "sft_pairs": _pairs("sft",
        ("Llama-2-7b-hf", "Llama-2-7b-chat-hf"), ("Llama-2-7b-hf", "vicuna-7b-v1.5"),
        ("Mistral-7B-v0.1", "Mistral-7B-Instruct-v0.1"), ("Qwen2.5-7B", "Qwen2.5-7B-Instruct"),
        ("Meta-Llama-3-8B", "Meta-Llama-3-8B-Instruct"), ("gemma-7b", "gemma-7b-it"),
        ("internlm2-7b", "internlm2-chat-7b"), ("Baichuan2-7B-Base", "Baichuan2-7B-Chat"),
        ("deepseek-llm-7b-base", "deepseek-llm-7b-chat"), ("Qwen-7B", "Qwen-7B-Chat")),
    "cpt_pairs": _pairs("cpt",
        ("Llama-2-7b-hf", "CodeLlama-7b-hf"), ("Qwen2.5-7B", "Qwen2.5-Coder-7B"), ("Qwen2.5-7B", "Qwen2.5-Math-7B"),
        ("CodeLlama-7b-hf", "llemma_7b"), ("Mistral-7B-v0.1", "BioMistral-7B"), ("Llama-2-7b-hf", "chinese-llama-2-7b"),
        ("Meta-Llama-3-8B", "llama-3-chinese-8b"), ("Llama-2-7b-hf", "BioMedGPT-LM-7B"),
        ("Llama-2-13b-hf", "CodeLlama-13b-hf"), ("Mistral-7B-v0.1", "Mathstral-7B-v0.1")),
    "rl_pairs": _pairs("rl",
        ("Qwen2.5-Math-7B", "Qwen2.5-Math-7B-SimpleRL-Zoo"), ("Qwen2.5-Math-7B", "Qwen2.5-Math-7B-Oat-Zero"),
        ("Qwen2.5-7B", "Open-Reasoner-Zero-7B"), ("Qwen2.5-Math-7B", "Eurus-2-7B-PRIME"),
        ("DeepSeek-R1-Distill-Qwen-1.5B", "DeepScaleR-1.5B-Preview"), ("mistral-7b-sft-beta", "zephyr-7b-beta"),
        ("Llama-3.1-Tulu-3-8B-SFT", "Llama-3.1-Tulu-3-8B-DPO"), ("Llama-3.1-Tulu-3-8B-DPO", "Llama-3.1-Tulu-3-8B"),
        ("OLMo-2-1124-7B-SFT", "OLMo-2-1124-7B-DPO"), ("Llama-3.1-Tulu-3-8B-SFT", "Llama-3.1-Tulu-3-8B")),
    "multimodal_pairs": _pairs("multimodal",
        ("vicuna-7b-v1.5", "llava-1.5-7b-hf"), ("vicuna-13b-v1.5", "llava-1.5-13b-hf"),
        ("Mistral-7B-Instruct-v0.2", "llava-v1.6-mistral-7b-hf"), ("vicuna-7b-v1.5", "Video-LLaVA-7B-hf"),
        ("Qwen2-7B-Instruct", "Qwen2-VL-7B-Instruct"), ("Qwen2.5-7B-Instruct", "Qwen2.5-VL-7B-Instruct"),
        ("Qwen-7B", "Qwen-VL"), ("Qwen-7B", "Qwen-Audio"), ("Qwen2-7B", "Qwen2-Audio-7B"),
        ("Meta-Llama-3-8B-Instruct", "llama3-llava-next-8b-hf")),
    "pruning_pairs": _pairs("pruning",
        ("Llama-2-7b-hf", "Sheared-LLaMA-1.3B"), ("Llama-2-7b-hf", "Sheared-LLaMA-2.7B"),
        ("Llama-2-7b-hf", "Sheared-LLaMA-1.3B-Pruned"), ("Llama-2-7b-hf", "Sheared-LLaMA-2.7B-Pruned"),
        ("Llama-3.1-8B", "Llama-3.1-Minitron-4B-Width-Base"), ("Llama-3.1-8B", "Llama-3.1-Minitron-4B-Depth-Base"),
        ("Llama-3.1-8B", "Llama-3.2-3B"), ("Llama-3.1-8B", "Llama-3.2-1B"),
        ("Mistral-Nemo-Base-2407", "Mistral-NeMo-Minitron-8B-Base"),
        ("Mistral-Nemo-Base-2407", "Mistral-NeMo-Minitron-8B-Instruct")),
    "all_moe_pairs": _pairs("moe_upcycling",
        ("Mistral-7B-v0.1", "Mixtral-8x7B-v0.1"), ("Llama-2-7b-hf", "LLaMA-MoE-v1-3_5B-2_8"),
        ("Llama-2-7b-hf", "LLaMA-MoE-v1-3_0B-2_16"), ("Llama-2-7b-hf", "LLaMA-MoE-v1-3_5B-4_16"),
        ("Meta-Llama-3-8B-Instruct", "LLaMA-MoE-v2-3_8B-2_8-sft"), ("Qwen-1_8B", "Qwen1.5-MoE-A2.7B"),
        ("Qwen2-7B", "Qwen2-57B-A14B"), ("MiniCPM-2B-sft-bf16", "MiniCPM-MoE-8x2B")),
    "sft_13b_7b_pairs": _pairs("sft",
        ("Llama-2-13b-hf", "Llama-2-13b-chat-hf"), ("Llama-2-13b-hf", "vicuna-13b-v1.5"),
        ("Baichuan2-13B-Base", "Baichuan2-13B-Chat"), ("Qwen-14B", "Qwen-14B-Chat"),
        ("OLMo-2-1124-13B", "OLMo-2-1124-13B-Instruct"), ("Llama-2-7b-hf", "WizardMath-7B-V1.0"),
        ("Llama-2-7b-hf", "MetaMath-7B-V1.0"), ("Mistral-7B-v0.1", "openchat_3.5"),
        ("Mistral-7B-v0.1", "zephyr-7b-beta"), ("Mistral-7B-v0.1", "mistral-7b-sft-beta")),
    "independent_pairs": _all_pairs(INDEPENDENT_7B),
    "independent_pairs_13b": _all_pairs(INDEPENDENT_13B),
    provenance_kit.SUITE: _benchmark_pairs(),
}

# Pairs of a suite's source that awm cannot score, each with its reason (named when the suite
# is listed and in its run's outputs, never dropped silently).
LEFT_OUT = {provenance_kit.SUITE: [
    {"pair": f"{p.repo_a} vs {p.repo_b}", "suite": provenance_kit.SUITE, "label": p.label, "pair_id": p.pair_id,
     "difficulty": p.difficulty, "causes": causes, "reason": reason} for p, causes, reason in provenance_kit.left_out()]}


def checkpoint_dir(override=None):
    """--checkpoint_dir, else $AWM_CHECKPOINT_DIR, else ./checkpoints next to main.py."""
    return os.path.abspath(os.path.expanduser(override or os.environ.get(CHECKPOINT_ENV) or DEFAULT_CHECKPOINT_DIR))


def model_dir(name, override=None):
    """The one place that turns a model name into its local folder."""
    return os.path.join(checkpoint_dir(override), name)


def suite_models(suite):
    return list(dict.fromkeys(m for pair in SUITES[suite] for m in (pair.model_a, pair.model_b)))


def _contents(pairs):
    """What a suite holds: its categories, or for a benchmark's pairs their labels and difficulties."""
    if not any(p.difficulty for p in pairs):
        return ", ".join(sorted({p.category for p in pairs}))
    count = lambda values: ", ".join(f"{n} {v}" for v, n in sorted(Counter(values).items(), key=lambda item: _rank(item[0])))
    return f"{count(p.label for p in pairs)}; {count(p.difficulty for p in pairs)}"


def _rank(value):
    order = ("derived", "independent") + provenance_kit.DIFFICULTIES
    return (order.index(value), "") if value in order else (len(order), value)


def left_out_lines(name):
    """The suite's left-out pairs by cause ("cause (N): id, id, ..."; a pair with two causes is under both)."""
    entries, groups = LEFT_OUT.get(name, ()), {}
    for entry in entries:
        for cause in entry["causes"]:
            groups.setdefault(cause, []).append(entry["pair_id"])
    lines = [f"    left out, {len(entries)} pairs:"] if entries else []
    for cause, ids in groups.items():
        lines += textwrap.wrap(f"{cause} ({len(ids)}): {', '.join(ids)}", 110, initial_indent="      ", subsequent_indent="        ")
    return lines


def describe_suites():
    lines = ["built-in suites (python main.py --config NAME; ./download_models.sh NAME):"]
    for name, pairs in SUITES.items():
        lines.append(f"  {name:24s} {len(pairs):3d} pairs, {len(suite_models(name)):3d} models  ({_contents(pairs)})")
        lines += left_out_lines(name)
    return "\n".join(lines)
