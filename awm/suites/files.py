"""Which pairs a run scores: the built-in suites of configs, or a user's suite file."""
import json
import os
from dataclasses import dataclass

from awm.errors import CheckpointError
from awm.suites import configs


@dataclass(frozen=True)
class SuitePair:
    suite: str
    name_a: str
    path_a: str
    name_b: str
    path_b: str
    label: str = None
    category: str = None
    difficulty: str = None      # a published benchmark's difficulty and id for the pair
    pair_id: str = None

    @property
    def name(self):
        return f"{self.name_a} vs {self.name_b}"

    @property
    def facts(self):
        """The benchmark's facts about the pair that its results carry (none for other suites)."""
        return {key: value for key, value in (("pair_id", self.pair_id), ("difficulty", self.difficulty)) if value}


def builtin_suite(name, checkpoint_override=None, from_hub=False):
    where = lambda model: model_location(model, checkpoint_override, from_hub)
    return [SuitePair(name, p.model_a, where(p.model_a), p.model_b, where(p.model_b), p.label, p.category,
                      p.difficulty, p.pair_id) for p in configs.SUITES[name]]


def model_location(model, checkpoint_override=None, from_hub=False):
    """The model's local folder; with from_hub, its Hub repo when the folder is absent."""
    folder = configs.model_dir(model, checkpoint_override)
    return folder if os.path.isdir(folder) or not from_hub else "hf://" + configs.MODELS[model]


def _read_suite_file(path):
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    if path.endswith((".yaml", ".yml")):
        import yaml

        return yaml.safe_load(text)
    return json.loads(text)


def file_suite(path):
    """A user's suite: {"name": ..., "models": {name: path}, "pairs": [[a, b] | {"a", "b", "label", "category"}]}.

    Model paths are relative to the suite file; a pair may name a model or give a path; a Hub
    repo (owner/name[@revision], hf://...) is read remotely unless a local path of that name exists.
    """
    try:
        data = _read_suite_file(path)
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise CheckpointError(path, f"suite file does not parse ({err.__class__.__name__}: {str(err)[:100]})") from None
    except Exception as err:  # yaml's own error classes
        raise CheckpointError(path, f"suite file does not parse ({err.__class__.__name__})") from None
    if not isinstance(data, dict) or not isinstance(data.get("pairs"), list) or not data["pairs"]:
        raise CheckpointError(path, "suite file needs a non-empty 'pairs' list")
    name = str(data.get("name") or os.path.splitext(os.path.basename(path))[0])
    models = data.get("models") or {}
    folder = os.path.dirname(os.path.abspath(path))
    locate = lambda ref: _locate(str(models.get(ref, ref)), folder)
    display = lambda ref: ref if ref in models else os.path.basename(os.path.normpath(str(ref)))
    pairs = []
    for number, entry in enumerate(data["pairs"], 1):
        if isinstance(entry, list) and len(entry) == 2:
            entry = {"a": entry[0], "b": entry[1]}
        if not (isinstance(entry, dict) and entry.get("a") and entry.get("b")):
            raise CheckpointError(path, f"pair {number} needs two models ('a' and 'b')")
        label = entry.get("label")
        if label not in (None, "derived", "independent"):
            raise CheckpointError(path, f"pair {number}: label must be 'derived' or 'independent', not {label!r}")
        pairs.append(SuitePair(name, display(entry["a"]), locate(entry["a"]), display(entry["b"]), locate(entry["b"]),
                               label, entry.get("category") or label))
    return name, pairs


def _locate(reference, folder):
    from awm.readers import hub

    remote = hub.parse_reference(reference, base_dir=folder)
    return str(remote) if remote else os.path.normpath(os.path.join(folder, os.path.expanduser(reference)))


def left_out(specs):
    """The pairs the built-in suites among `specs` leave out, each with its reason."""
    return [entry for spec in specs for entry in configs.LEFT_OUT.get(spec, ())]


def resolve(specs, checkpoint_override=None, from_hub=False):
    """Suite names or files -> (run name, pairs)."""
    names, pairs = [], []
    for spec in specs:
        if spec in configs.SUITES:
            names.append(spec)
            pairs += builtin_suite(spec, checkpoint_override, from_hub)
        elif os.path.isfile(spec):
            name, found = file_suite(spec)
            names.append(name)
            pairs += found
        else:
            raise CheckpointError(spec, f"neither a built-in suite ({', '.join(configs.SUITES)}) nor a suite file")
    return "+".join(names), pairs
