"""The pairs of a published provenance benchmark, as one of awm's suites (provenance_kit).

Source: the GitHub repository cisco-ai-defense/model-provenance-kit, file
benchmarks/Benchmark_All.json at commit 9991417767c0bb42d7e0ca376dc9a8843c5569b9. It lists 111
pairs of Hugging Face Hub repos: 55 under "similar" (labelled derived here) and 56 under
"dissimilar" (independent), each with a provenance type, a difficulty (easy, medium, hard,
extreme) and the kind of each model (decoder, encoder, encoder-decoder). The file gives no pair
ids; a pair's id here is its list and its 1-based place in it ("similar-05", "dissimilar-12").
Three "similar" pairs have provenance "none": two pairs of siblings (one parent, no edge between
them) and two Pythia runs from one seed on near-identical data; they keep the benchmark's label.

awm reads causal language models. A pair is left out, with its reason, when either model is an
encoder or encoder-decoder, or when its architecture (the model_type its config.json declares,
recorded in ARCHITECTURES) has no row awm can score in readers.architectures. The reason is
worked out from that table, so a family added there brings its pairs into the suite.
"""
from dataclasses import dataclass

from awm.readers.architectures import FAMILIES

SUITE = "provenance_kit"
SOURCE = ("github.com/cisco-ai-defense/model-provenance-kit", "benchmarks/Benchmark_All.json",
          "9991417767c0bb42d7e0ca376dc9a8843c5569b9")
DIFFICULTIES = ("easy", "medium", "hard", "extreme")


@dataclass(frozen=True)
class BenchmarkPair:
    pair_id: str
    repo_a: str
    repo_b: str
    label: str          # derived ("similar") or independent ("dissimilar")
    provenance: str     # the benchmark's provenance type ("none" for unrelated pairs and siblings)
    difficulty: str


# One row per pair, in the benchmark's order: (pair id, repo A, repo B, label, provenance, difficulty).
PAIRS = [BenchmarkPair(*row) for row in (
    ("similar-01", "NousResearch/Llama-2-7b-hf", "meta-llama/Llama-2-7b-hf", "derived", "identity", "easy"),
    ("similar-02", "meta-llama/Llama-2-7b-hf", "meta-llama/Llama-2-7b-chat-hf", "derived", "fine-tuning (RLHF)", "easy"),
    ("similar-03", "bigscience/bloom-560m", "bigscience/bloomz-560m", "derived", "fine-tuning (instruction-tuning)", "easy"),
    ("similar-04", "mistralai/Mistral-7B-v0.1", "mistralai/Mistral-7B-Instruct-v0.1", "derived", "fine-tuning (instruct)", "easy"),
    ("similar-05", "facebook/bart-large", "facebook/bart-large-cnn", "derived", "fine-tuning (task-specific)", "easy"),
    ("similar-06", "facebook/mbart-large-50", "facebook/mbart-large-50-many-to-many-mmt", "derived", "fine-tuning (multilingual MT)", "easy"),
    ("similar-07", "Qwen/Qwen2.5-7B", "Qwen/Qwen2.5-7B-Instruct", "derived", "fine-tuning (SFT + alignment)", "easy"),
    ("similar-08", "tiiuae/falcon-7b", "tiiuae/falcon-7b-instruct", "derived", "fine-tuning (instruct)", "easy"),
    ("similar-09", "google/gemma-2b", "google/gemma-2b-it", "derived", "fine-tuning (SFT + RLHF)", "easy"),
    ("similar-10", "facebook/opt-1.3b", "facebook/opt-iml-1.3b", "derived", "fine-tuning (instruction-tuning)", "easy"),
    ("similar-11", "bigscience/bloom-1b7", "bigscience/bloomz-1b7", "derived", "fine-tuning (instruction-tuning)", "easy"),
    ("similar-12", "01-ai/Yi-Coder-1.5B-Chat", "01-ai/Yi-Coder-1.5B", "derived", "fine-tuning (instruct)", "easy"),
    ("similar-13", "tencent/WeDLM-7B-Instruct", "tencent/WeDLM-7B-Base", "derived", "fine-tuning (instruct)", "easy"),
    ("similar-14", "tiiuae/falcon-mamba-7b-instruct", "tiiuae/falcon-mamba-7b", "derived", "fine-tuning (instruct)", "easy"),
    ("similar-15", "Qwen/Qwen3-4B-SafeRL", "Qwen/Qwen3-4B", "derived", "fine-tuning (RLHF)", "easy"),
    ("similar-16", "rasyosef/Phi-1_5-Instruct-v0.1", "microsoft/phi-1_5", "derived", "fine-tuning (instruct)", "easy"),
    ("similar-17", "LenguajeNaturalAI/leniachat-qwen2-1.5B-v0", "Qwen/Qwen2-1.5B", "derived", "fine-tuning (instruct)", "easy"),
    ("similar-18", "katanemo/Arch-Guard", "meta-llama/Prompt-Guard-86M", "derived", "fine-tuning (task-specific)", "easy"),
    ("similar-19", "meta-llama/Llama-3.1-8B-Instruct", "meta-llama/Meta-Llama-3.1-8B", "derived", "fine-tuning (SFT + RLHF)", "easy"),
    ("similar-20", "Qwen/Qwen3-0.6B", "Qwen/Qwen3-0.6B-Base", "derived", "fine-tuning (instruct)", "easy"),
    ("similar-21", "google/gemma-3-12b-it", "google/gemma-3-12b-pt", "derived", "fine-tuning (SFT + RLHF)", "easy"),
    ("similar-22", "google/gemma-3-4b-it", "google/gemma-3-4b-pt", "derived", "fine-tuning (SFT + RLHF)", "easy"),
    ("similar-23", "longvideoagent/longvideoagent-qwen2.5-7b", "Qwen/Qwen2.5-7B-Instruct", "derived", "fine-tuning (instruct)", "easy"),
    ("similar-24", "mistralai/Mistral-7B-v0.1", "HuggingFaceH4/zephyr-7b-beta", "derived", "fine-tuning (SFT + DPO)", "medium"),
    ("similar-25", "google-t5/t5-base", "google/flan-t5-base", "derived", "fine-tuning (instruction-tuning)", "medium"),
    ("similar-26", "google-bert/bert-base-uncased", "distilbert/distilbert-base-uncased", "derived", "distillation", "medium"),
    ("similar-27", "TheBloke/deepseek-coder-6.7B-instruct-AWQ", "deepseek-ai/deepseek-coder-6.7b-instruct", "derived", "quantization", "medium"),
    ("similar-28", "huihui-ai/Huihui-HY-MT1.5-1.8B-abliterated", "tencent/HY-MT1.5-1.8B", "derived", "fine-tuning (abliteration)", "medium"),
    ("similar-29", "ethicalabs/Kurtis-E1.1-Qwen3-4B", "Qwen/Qwen3-4B", "derived", "fine-tuning (task-specific)", "medium"),
    ("similar-30", "microsoft/NextCoder-14B", "Qwen/Qwen2.5-Coder-14B-Instruct", "derived", "fine-tuning (SFT + alignment)", "medium"),
    ("similar-31", "microsoft/NextCoder-7B", "Qwen/Qwen2.5-Coder-7B-Instruct", "derived", "fine-tuning (SFT + alignment)", "medium"),
    ("similar-32", "t-tech/T-pro-it-2.0", "Qwen/Qwen3-32B", "derived", "fine-tuning (instruct)", "medium"),
    ("similar-33", "t-tech/T-pro-it-2.1", "Qwen/Qwen3-32B", "derived", "fine-tuning (instruct)", "medium"),
    ("similar-34", "mfirth/agi-ds", "deepseek-ai/DeepSeek-Coder-V2-Lite-Instruct", "derived", "fine-tuning (instruct)", "medium"),
    ("similar-35", "wassemgtk/chuck-norris-llm", "Qwen/Qwen3-32B", "derived", "fine-tuning (task-specific)", "medium"),
    ("similar-36", "CEIA-UFG/Gemma-3-Gaia-PT-BR-4b-it", "google/gemma-3-4b-pt", "derived", "fine-tuning (instruction-tuning)", "medium"),
    ("similar-37", "sartifyllc/Pawa-Gemma-Swahili-2B", "google/gemma-2-2b", "derived", "fine-tuning (SFT + DPO)", "medium"),
    ("similar-38", "teknium/OpenHermes-2.5-Mistral-7B", "mistralai/Mistral-7B-v0.1", "derived", "fine-tuning (SFT + alignment)", "medium"),
    ("similar-39", "ChenShawn/DeepEyes-7B", "Qwen/Qwen2.5-VL-7B-Instruct", "derived", "fine-tuning (RLHF)", "medium"),
    ("similar-40", "zeroentropy/zembed-1", "Qwen/Qwen3-4B", "derived", "fine-tuning (task-specific)", "medium"),
    ("similar-41", "unsloth/mistral-7b-instruct-v0.3-bnb-4bit", "mistralai/Mistral-7B-Instruct-v0.3", "derived", "quantization", "medium"),
    ("similar-42", "meta-llama/Llama-2-7b-hf", "codellama/CodeLlama-7b-hf", "derived", "continued pretraining + vocabulary extension", "hard"),
    ("similar-43", "openai-community/gpt2", "distilbert/distilgpt2", "derived", "distillation", "hard"),
    ("similar-44", "microsoft/MiniLM-L12-H384-uncased", "sentence-transformers/all-MiniLM-L6-v2", "derived", "layer pruning + contrastive fine-tuning", "hard"),
    ("similar-45", "microsoft/phi-1_5", "microsoft/phi-2", "derived", "scaled knowledge transfer", "hard"),
    ("similar-46", "microsoft/MediPhi", "microsoft/Phi-3.5-mini-instruct", "derived", "continued pretraining + vocabulary extension", "hard"),
    ("similar-47", "microsoft/MediPhi-Clinical", "microsoft/Phi-3.5-mini-instruct", "derived", "continued pretraining + vocabulary extension", "hard"),
    ("similar-48", "microsoft/MediPhi-MedCode", "microsoft/Phi-3.5-mini-instruct", "derived", "continued pretraining + vocabulary extension", "hard"),
    ("similar-49", "tencent/WeDLM-7B-Base", "Qwen/Qwen2.5-7B", "derived", "continued pretraining", "hard"),
    ("similar-50", "tencent/WeDLM-8B-Base", "Qwen/Qwen3-8B", "derived", "continued pretraining + vocabulary extension", "hard"),
    ("similar-51", "FacebookAI/roberta-base", "ehsanaghaei/SecureBERT", "derived", "continued pretraining + vocabulary rebuild", "extreme"),
    ("similar-52", "google-bert/bert-base-uncased", "huawei-noah/TinyBERT_General_4L_312D", "derived", "distillation", "extreme"),
    ("similar-53", "google/gemma-3-4b-it", "CEIA-UFG/Gemma-3-Gaia-PT-BR-4b-it", "derived", "none", "medium"),
    ("similar-54", "microsoft/MediPhi-Clinical", "microsoft/MediPhi-MedCode", "derived", "none", "medium"),
    ("similar-55", "EleutherAI/pythia-1.4b", "EleutherAI/pythia-1.4b-deduped", "derived", "none", "medium"),
    ("dissimilar-01", "THUDM/chatglm3-6b", "google/flan-t5-base", "independent", "none", "easy"),
    ("dissimilar-02", "stabilityai/stablelm-2-1_6b", "tencent/HY-MT1.5-1.8B", "independent", "none", "easy"),
    ("dissimilar-03", "wassemgtk/chuck-norris-llm", "FacebookAI/roberta-base", "independent", "none", "easy"),
    ("dissimilar-04", "zai-org/GLM-Z1-9B-0414", "google/gemma-1.1-2b-it", "independent", "none", "easy"),
    ("dissimilar-05", "Qwen/Qwen2.5-7B-Instruct-1M", "deepseek-ai/DeepSeek-V2-Lite", "independent", "none", "easy"),
    ("dissimilar-06", "huihui-ai/Huihui-HY-MT1.5-1.8B-abliterated", "stelterlab/phi-4-AWQ", "independent", "none", "easy"),
    ("dissimilar-07", "microsoft/phi-2", "Gensyn/Qwen2.5-0.5B-Instruct", "independent", "none", "easy"),
    ("dissimilar-08", "Qwen/Qwen3-Coder-30B-A3B-Instruct", "huihui-ai/Huihui-HY-MT1.5-1.8B-abliterated", "independent", "none", "easy"),
    ("dissimilar-09", "meta-llama/Llama-3.1-8B-Instruct", "microsoft/phi-4", "independent", "none", "easy"),
    ("dissimilar-10", "zai-org/GLM-Z1-9B-0414", "katanemo/Arch-Guard", "independent", "none", "easy"),
    ("dissimilar-11", "microsoft/MediPhi-Clinical", "Qwen/Qwen3-0.6B", "independent", "none", "easy"),
    ("dissimilar-12", "bigscience/bloom-560m", "FacebookAI/roberta-base", "independent", "none", "easy"),
    ("dissimilar-13", "zai-org/GLM-Z1-9B-0414", "EleutherAI/pythia-1.4b", "independent", "none", "easy"),
    ("dissimilar-14", "FacebookAI/roberta-base", "THUDM/chatglm3-6b", "independent", "none", "easy"),
    ("dissimilar-15", "stabilityai/stablelm-2-1_6b", "Qwen/Qwen3-0.6B", "independent", "none", "easy"),
    ("dissimilar-16", "zai-org/GLM-4.5-Air", "EleutherAI/pythia-2.8b", "independent", "none", "easy"),
    ("dissimilar-17", "microsoft/NextCoder-14B", "01-ai/Yi-1.5-34B-32K", "independent", "none", "easy"),
    ("dissimilar-18", "microsoft/phi-2", "microsoft/NextCoder-7B", "independent", "none", "easy"),
    ("dissimilar-19", "EleutherAI/pythia-2.8b", "ChenShawn/DeepEyes-7B", "independent", "none", "easy"),
    ("dissimilar-20", "microsoft/Phi-4-reasoning", "ethicalabs/Kurtis-E1.1-Qwen3-4B", "independent", "none", "easy"),
    ("dissimilar-21", "FacebookAI/roberta-base", "EleutherAI/pythia-1.4b", "independent", "none", "easy"),
    ("dissimilar-22", "deepseek-ai/deepseek-coder-7b-instruct-v1.5", "huihui-ai/Huihui-Qwen3-4B-abliterated-v2", "independent", "none", "easy"),
    ("dissimilar-23", "meta-llama/Llama-3.1-8B-Instruct", "unsloth/mistral-7b-instruct-v0.3-bnb-4bit", "independent", "none", "easy"),
    ("dissimilar-24", "Gensyn/Qwen2.5-0.5B-Instruct", "katanemo/Arch-Guard", "independent", "none", "easy"),
    ("dissimilar-25", "zai-org/GLM-Z1-9B-0414", "Qwen/Qwen2.5-7B", "independent", "none", "easy"),
    ("dissimilar-26", "bigscience/bloom-560m", "EleutherAI/pythia-410m", "independent", "none", "easy"),
    ("dissimilar-27", "facebook/nllb-200-distilled-600M", "Helsinki-NLP/opus-mt-en-de", "independent", "none", "easy"),
    ("dissimilar-28", "bigscience/bloomz-560m", "Qwen/Qwen2-Math-1.5B-Instruct", "independent", "none", "easy"),
    ("dissimilar-29", "01-ai/Yi-Coder-1.5B", "microsoft/Phi-3-mini-4k-instruct", "independent", "none", "easy"),
    ("dissimilar-30", "meta-llama/Llama-2-7b-hf", "meta-llama/Llama-2-13b-hf", "independent", "none", "medium"),
    ("dissimilar-31", "Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-7B", "independent", "none", "medium"),
    ("dissimilar-32", "FacebookAI/xlm-roberta-base", "FacebookAI/xlm-roberta-large", "independent", "none", "medium"),
    ("dissimilar-33", "google-bert/bert-base-uncased", "google-bert/bert-large-uncased", "independent", "none", "medium"),
    ("dissimilar-34", "microsoft/NextCoder-7B", "microsoft/NextCoder-14B", "independent", "none", "medium"),
    ("dissimilar-35", "01-ai/Yi-1.5-9B-Chat", "01-ai/Yi-1.5-34B-Chat", "independent", "none", "medium"),
    ("dissimilar-36", "google-t5/t5-small", "google/mt5-small", "independent", "none", "medium"),
    ("dissimilar-37", "facebook/bart-base", "facebook/mbart-large-50", "independent", "none", "medium"),
    ("dissimilar-38", "google-bert/bert-base-uncased", "albert/albert-base-v2", "independent", "none", "medium"),
    ("dissimilar-39", "FacebookAI/roberta-base", "microsoft/deberta-v3-base", "independent", "none", "medium"),
    ("dissimilar-40", "google-t5/t5-base", "facebook/bart-base", "independent", "none", "medium"),
    ("dissimilar-41", "Helsinki-NLP/opus-mt-en-de", "Helsinki-NLP/opus-mt-en-fr", "independent", "none", "medium"),
    ("dissimilar-42", "google-bert/bert-base-uncased", "allenai/scibert_scivocab_uncased", "independent", "none", "medium"),
    ("dissimilar-43", "microsoft/phi-2", "google/gemma-2b", "independent", "none", "medium"),
    ("dissimilar-44", "EleutherAI/gpt-j-6b", "EleutherAI/gpt-neo-2.7B", "independent", "none", "medium"),
    ("dissimilar-45", "Salesforce/codegen-350M-mono", "bigcode/starcoderbase-1b", "independent", "none", "medium"),
    ("dissimilar-46", "google-bert/bert-base-uncased", "google-bert/bert-base-cased", "independent", "none", "medium"),
    ("dissimilar-47", "mistralai/Mistral-7B-v0.1", "meta-llama/Llama-2-7b-hf", "independent", "none", "hard"),
    ("dissimilar-48", "tiiuae/falcon-7b", "mistralai/Mistral-7B-v0.1", "independent", "none", "hard"),
    ("dissimilar-49", "google-bert/bert-base-uncased", "FacebookAI/roberta-base", "independent", "none", "hard"),
    ("dissimilar-50", "meta-llama/Llama-2-7b-hf", "01-ai/Yi-6B-200K", "independent", "none", "hard"),
    ("dissimilar-51", "stabilityai/stablelm-base-alpha-3b", "EleutherAI/pythia-2.8b", "independent", "none", "hard"),
    ("dissimilar-52", "EleutherAI/pythia-1.4b", "togethercomputer/RedPajama-INCITE-Base-3B-v1", "independent", "none", "hard"),
    ("dissimilar-53", "mistralai/Mistral-7B-v0.3", "microsoft/MediPhi-Clinical", "independent", "none", "hard"),
    ("dissimilar-54", "EleutherAI/pythia-1.4b", "01-ai/Yi-1.5-9B-32K", "independent", "none", "hard"),
    ("dissimilar-55", "mistralai/Mistral-7B-v0.1", "huihui-ai/Huihui-Qwen3-4B-abliterated-v2", "independent", "none", "hard"),
    ("dissimilar-56", "meta-llama/Llama-2-7b-hf", "openlm-research/open_llama_7b", "independent", "none", "extreme"),
)]

# The benchmark's kind of every model that is not a decoder.
NOT_DECODERS = {
    **dict.fromkeys((
        "FacebookAI/roberta-base", "FacebookAI/xlm-roberta-base", "FacebookAI/xlm-roberta-large",
        "albert/albert-base-v2", "allenai/scibert_scivocab_uncased", "distilbert/distilbert-base-uncased",
        "ehsanaghaei/SecureBERT", "google-bert/bert-base-cased", "google-bert/bert-base-uncased",
        "google-bert/bert-large-uncased", "huawei-noah/TinyBERT_General_4L_312D", "katanemo/Arch-Guard",
        "meta-llama/Prompt-Guard-86M", "microsoft/MiniLM-L12-H384-uncased", "microsoft/deberta-v3-base",
        "sentence-transformers/all-MiniLM-L6-v2"), "encoder"),
    **dict.fromkeys((
        "Helsinki-NLP/opus-mt-en-de", "Helsinki-NLP/opus-mt-en-fr", "facebook/bart-base", "facebook/bart-large",
        "facebook/bart-large-cnn", "facebook/mbart-large-50", "facebook/mbart-large-50-many-to-many-mmt",
        "facebook/nllb-200-distilled-600M", "google-t5/t5-base", "google-t5/t5-small", "google/flan-t5-base",
        "google/mt5-small"), "encoder-decoder"),
}

# The model_type in each decoder's config.json (a fact about the repo, read off the Hub).
ARCHITECTURES = {
    **dict.fromkeys((
        "NousResearch/Llama-2-7b-hf", "meta-llama/Llama-2-7b-hf", "meta-llama/Llama-2-7b-chat-hf",
        "meta-llama/Llama-2-13b-hf", "meta-llama/Llama-3.1-8B-Instruct", "meta-llama/Meta-Llama-3.1-8B",
        "codellama/CodeLlama-7b-hf", "openlm-research/open_llama_7b", "01-ai/Yi-6B-200K", "01-ai/Yi-1.5-9B-Chat",
        "01-ai/Yi-1.5-9B-32K", "01-ai/Yi-1.5-34B-Chat", "01-ai/Yi-1.5-34B-32K", "01-ai/Yi-Coder-1.5B",
        "01-ai/Yi-Coder-1.5B-Chat", "deepseek-ai/deepseek-coder-6.7b-instruct", "TheBloke/deepseek-coder-6.7B-instruct-AWQ",
        "deepseek-ai/deepseek-coder-7b-instruct-v1.5"), "llama"),
    **dict.fromkeys((
        "mistralai/Mistral-7B-v0.1", "mistralai/Mistral-7B-Instruct-v0.1", "mistralai/Mistral-7B-v0.3",
        "mistralai/Mistral-7B-Instruct-v0.3", "unsloth/mistral-7b-instruct-v0.3-bnb-4bit", "HuggingFaceH4/zephyr-7b-beta",
        "teknium/OpenHermes-2.5-Mistral-7B"), "mistral"),
    **dict.fromkeys((
        "Qwen/Qwen2-1.5B", "LenguajeNaturalAI/leniachat-qwen2-1.5B-v0", "Qwen/Qwen2-Math-1.5B-Instruct",
        "Qwen/Qwen2.5-0.5B", "Gensyn/Qwen2.5-0.5B-Instruct", "Qwen/Qwen2.5-7B", "Qwen/Qwen2.5-7B-Instruct",
        "Qwen/Qwen2.5-7B-Instruct-1M", "longvideoagent/longvideoagent-qwen2.5-7b", "Qwen/Qwen2.5-Coder-7B-Instruct",
        "Qwen/Qwen2.5-Coder-14B-Instruct", "microsoft/NextCoder-7B", "microsoft/NextCoder-14B"), "qwen2"),
    **dict.fromkeys(("Qwen/Qwen2.5-VL-7B-Instruct", "ChenShawn/DeepEyes-7B"), "qwen2_5_vl"),
    **dict.fromkeys((
        "Qwen/Qwen3-0.6B", "Qwen/Qwen3-0.6B-Base", "Qwen/Qwen3-4B", "Qwen/Qwen3-4B-SafeRL", "Qwen/Qwen3-8B",
        "Qwen/Qwen3-32B", "ethicalabs/Kurtis-E1.1-Qwen3-4B", "huihui-ai/Huihui-Qwen3-4B-abliterated-v2",
        "zeroentropy/zembed-1", "t-tech/T-pro-it-2.0", "t-tech/T-pro-it-2.1", "wassemgtk/chuck-norris-llm"), "qwen3"),
    "Qwen/Qwen3-Coder-30B-A3B-Instruct": "qwen3_moe",
    **dict.fromkeys(("google/gemma-2b", "google/gemma-2b-it", "google/gemma-1.1-2b-it"), "gemma"),
    **dict.fromkeys(("google/gemma-2-2b", "sartifyllc/Pawa-Gemma-Swahili-2B"), "gemma2"),
    **dict.fromkeys((
        "google/gemma-3-4b-pt", "google/gemma-3-4b-it", "google/gemma-3-12b-pt", "google/gemma-3-12b-it",
        "CEIA-UFG/Gemma-3-Gaia-PT-BR-4b-it"), "gemma3"),
    **dict.fromkeys(("microsoft/phi-1_5", "rasyosef/Phi-1_5-Instruct-v0.1", "microsoft/phi-2"), "phi"),
    **dict.fromkeys((
        "microsoft/Phi-3-mini-4k-instruct", "microsoft/Phi-3.5-mini-instruct", "microsoft/MediPhi",
        "microsoft/MediPhi-Clinical", "microsoft/MediPhi-MedCode", "microsoft/phi-4", "stelterlab/phi-4-AWQ",
        "microsoft/Phi-4-reasoning"), "phi3"),
    **dict.fromkeys(("bigscience/bloom-560m", "bigscience/bloomz-560m", "bigscience/bloom-1b7", "bigscience/bloomz-1b7"), "bloom"),
    **dict.fromkeys(("tiiuae/falcon-7b", "tiiuae/falcon-7b-instruct"), "falcon"),
    **dict.fromkeys(("openai-community/gpt2", "distilbert/distilgpt2"), "gpt2"),
    **dict.fromkeys((
        "EleutherAI/pythia-410m", "EleutherAI/pythia-1.4b", "EleutherAI/pythia-1.4b-deduped", "EleutherAI/pythia-2.8b",
        "stabilityai/stablelm-base-alpha-3b", "togethercomputer/RedPajama-INCITE-Base-3B-v1"), "gpt_neox"),
    "stabilityai/stablelm-2-1_6b": "stablelm",
    "THUDM/chatglm3-6b": "chatglm",
    **dict.fromkeys(("deepseek-ai/DeepSeek-V2-Lite", "deepseek-ai/DeepSeek-Coder-V2-Lite-Instruct", "mfirth/agi-ds"), "deepseek_v2"),
    # Architectures without a row in awm's table.
    **dict.fromkeys(("facebook/opt-1.3b", "facebook/opt-iml-1.3b"), "opt"),
    **dict.fromkeys(("tiiuae/falcon-mamba-7b", "tiiuae/falcon-mamba-7b-instruct"), "falcon_mamba"),
    **dict.fromkeys(("tencent/WeDLM-7B-Base", "tencent/WeDLM-7B-Instruct", "tencent/WeDLM-8B-Base"), "wedlm"),
    **dict.fromkeys(("tencent/HY-MT1.5-1.8B", "huihui-ai/Huihui-HY-MT1.5-1.8B-abliterated"), "hunyuan_v1_dense"),
    "zai-org/GLM-Z1-9B-0414": "glm4",
    "zai-org/GLM-4.5-Air": "glm4_moe",
    "EleutherAI/gpt-j-6b": "gptj",
    "EleutherAI/gpt-neo-2.7B": "gpt_neo",
    "Salesforce/codegen-350M-mono": "codegen",
    "bigcode/starcoderbase-1b": "gpt_bigcode",
}

ENCODERS_LEFT_OUT = "encoder models are not supported"
# Why an architecture outside the table cannot get a row at all.
NO_ATTENTION = {"falcon_mamba": "a state-space model (Mamba) has no attention, so no W_q / W_k to compare"}


def model_gap(repo):
    """Why awm cannot score this model (a short reason), or None when it can."""
    if repo in NOT_DECODERS:
        return ENCODERS_LEFT_OUT
    model_type = ARCHITECTURES[repo]
    if model_type in NO_ATTENTION:
        return NO_ATTENTION[model_type]
    families = [family for family in FAMILIES if model_type in family.model_types]
    if not families:
        return f"architecture '{model_type}' is not in awm's table"
    if all(family.unsupported for family in families):
        return f"architecture '{model_type}' is not supported: {families[0].unsupported.split(':')[0]}"
    return None


def pair_gaps(pair):
    """{reason: [repos]} for the models of a pair awm cannot score; empty when it scores both."""
    gaps = {}
    for repo in (pair.repo_a, pair.repo_b):
        gap = model_gap(repo)
        if gap:
            gaps.setdefault(gap, []).append(repo)
    return gaps


def refusal(pair):
    """The pair's reason to be left out, naming its models, or None when awm scores it."""
    return "; ".join(f"{gap} ({', '.join(repos)})" for gap, repos in pair_gaps(pair).items()) or None


def kept():
    return [pair for pair in PAIRS if not pair_gaps(pair)]


def left_out():
    """(pair, causes, reason) of every pair awm cannot score: the causes are its models' gaps,
    the reason also names the models that have them."""
    return [(pair, list(pair_gaps(pair)), refusal(pair)) for pair in PAIRS if pair_gaps(pair)]


def model_names(taken):
    """A local name for each repo of the kept pairs: the name `taken` (name -> repo) already
    gives it, else the repo's own name, else owner--name when that is another repo's."""
    names, used = {repo: name for name, repo in taken.items()}, dict(taken)
    for repo in dict.fromkeys(r for pair in kept() for r in (pair.repo_a, pair.repo_b)):
        if repo not in names:
            name = repo.split("/")[-1]
            name = name if name not in used else repo.replace("/", "--")
            names[repo], used[name] = name, repo
    return {name: repo for repo, name in names.items() if repo not in taken.values()}
