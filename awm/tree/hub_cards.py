"""The family tree in the Hub's own terms: for each model, the `base_model` list and the
`base_model_relation` a model card would declare (adapter, merge, quantized, finetune), so a
map can be checked against, or published as, Hub metadata.

awm's relations are finer than the Hub's four: pruned, upcycled and multimodal children were
trained from their parent's weights (finetune); a stacked (depth up-scaled) model is a
passthrough merge of its parent's layers (merge). Only directions the weights measured are
published: copies, undirected pairs, metadata claims and inferred directions (a structural prior,
a tie-pick, a direction spread from a neighbour's) declare nothing.
"""
import os

import yaml

HUB_RELATION = {"fine-tune": "finetune", "pruned": "finetune", "upcycled": "finetune", "multimodal": "finetune",
                "stacked": "merge", "merge": "merge", "quantized": "quantized", "adapter": "adapter"}


def hub_repo(meta):
    """The name the Hub knows a model by: its repo for a Hub model, else its name in the run."""
    source = (meta or {}).get("source") or {}
    return source.get("hub_repo") or (meta or {}).get("name")


def names_as_base(meta, name, other_meta):
    """Does `meta`'s config, model card or GGUF metadata name the model `name` (described by
    `other_meta`) as its base?"""
    declared = meta.get("declared_base") or ()
    claims = [declared] if isinstance(declared, str) else list(declared)
    known = {name, other_meta.get("path"), hub_repo(other_meta)} - {None}
    return any(claim in known or claim.split("/")[-1] in known for claim in claims)


def declared_base(parents, repo_of):
    """{"base_model": [...], "base_model_relation": ...} for a node's measured parents (empty without any)."""
    parents = [p for p in parents if p.get("confidence") == "measured"]
    relations = [HUB_RELATION.get(p["relation"]) for p in parents]
    relations = [r for r in relations if r]
    if not relations:
        return {}
    relation = "merge" if "merge" in relations or len(parents) > 1 else relations[0]
    return {"base_model": [repo_of(p["name"]) for p in parents], "base_model_relation": relation}


def card_front_matter(fields):
    """A model card's YAML front matter declaring those fields."""
    return "---\n" + yaml.safe_dump(fields, sort_keys=False, default_flow_style=False) + "---\n"


def write_cards(folder, tree, file_name):
    """cards/<model>.md for every node of the tree that declares a base (file_name: a model's
    name as a file name); returns the files."""
    written = []
    for node in tree.get("nodes", []):
        fields = node.get("hub") or {}
        if not fields:
            continue
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, file_name(node["name"]) + ".md")
        with open(path, "w", encoding="utf-8") as out:
            out.write(card_front_matter(fields))
        written.append(path)
    return written
