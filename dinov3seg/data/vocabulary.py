"""Class-name vocabularies: from a JSON list or a registered dataset's metadata."""
import json
from pathlib import Path
from typing import List, Sequence

from detectron2.data import MetadataCatalog


def validate_vocabulary(names: List[str], source: str) -> List[str]:
    """Check a vocabulary: non-empty, strings, no blank or duplicate names. Returns it unchanged."""
    if not names:
        raise ValueError(f"{source} has zero classes; give at least one class name.")
    bad = [n for n in names if not isinstance(n, str) or not n.strip()]
    if bad:
        raise ValueError(f"{source} holds empty or non-string class names: {bad[:5]}")
    seen, duplicates = set(), []
    for n in names:
        key = n.strip().lower()
        duplicates += [n] if key in seen else []
        seen.add(key)
    if duplicates:
        raise ValueError(f"{source} holds duplicate class names {duplicates[:5]}; merge them into one entry "
                         "(synonyms go comma-separated inside one name).")
    return names


def load_class_names(json_path: str, dataset_names: Sequence[str], json_key: str, datasets_key: str) -> List[str]:
    """Class names from ``json_path`` (a JSON list of names) or, if empty, from the first dataset's
    ``stuff_classes`` in MetadataCatalog. ``json_key`` / ``datasets_key`` name the config keys in errors."""
    if json_path:
        path = Path(json_path)
        if not path.is_file():
            raise FileNotFoundError(f"{json_key}: class-name file '{json_path}' does not exist. Point it to a "
                                    "JSON list of class names, or set it to '' to use the dataset's classes.")
        names = json.loads(path.read_text())
        if not isinstance(names, list):
            raise ValueError(f"{json_key}: '{json_path}' must hold a JSON list of class names, "
                             f"found {type(names).__name__}.")
        return validate_vocabulary(names, f"{json_key} '{json_path}'")
    if not dataset_names:
        raise ValueError(f"No vocabulary: set {json_key} or name a registered dataset in {datasets_key}.")
    name = dataset_names[0]
    names = MetadataCatalog.get(name).get("stuff_classes", None)
    if names is None:
        raise KeyError(f"{datasets_key}: dataset '{name}' has no registered class names (stuff_classes). "
                       f"Check the name (see dinov3seg/data/datasets) or set {json_key}.")
    return validate_vocabulary(list(names), f"{datasets_key} '{name}'")
