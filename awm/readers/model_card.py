"""A model card's declared base: the `base_model` a README.md's YAML front matter names."""
import os

import yaml

CARD_BYTES = 1 << 16          # a model card's front matter sits at its start


def card_base_models(folder):
    """The `base_model` a model folder's README.md declares in its YAML front matter ([] when it
    has none or the card is not readable): a claim the family tree may use for one edge."""
    path = os.path.join(folder, "README.md")
    try:
        with open(path, encoding="utf-8", errors="replace") as card:
            text = card.read(CARD_BYTES)
        if not text.startswith("---"):
            return []
        fields = yaml.safe_load(text[3:].split("\n---", 1)[0])
    except (OSError, yaml.YAMLError):
        return []
    declared = fields.get("base_model") if isinstance(fields, dict) else None
    declared = [declared] if isinstance(declared, str) else declared if isinstance(declared, list) else []
    return [name for name in declared if isinstance(name, str) and name]
