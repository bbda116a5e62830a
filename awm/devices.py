"""Where the math runs: the torch device for --device, and the CPU threads."""
import os

from awm.errors import DeviceError


def resolve_device(choice="auto"):
    """A torch.device for "auto", "cpu", "cuda" (or a torch.device); DeviceError if unusable."""
    import torch

    if isinstance(choice, torch.device):
        choice = choice.type
    if choice not in ("auto", "cpu", "cuda"):
        raise DeviceError(f"unknown device '{choice}': use auto, cpu or cuda")
    if choice == "cpu":
        return torch.device("cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"--device cuda: CUDA is not available (torch {torch.__version__}, "
                          f"built {'with' if torch.version.cuda else 'without'} CUDA; no usable GPU found)")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def set_threads(count=None):
    import torch

    torch.set_num_threads(max(1, count or os.cpu_count() or 1))
