"""Class-name vocabularies: from a JSON list or a registered dataset's metadata."""
import json
from pathlib import Path
from typing import List, Sequence

from detectron2.data import MetadataCatalog

from ..errors import VocabularyError


def validate_vocabulary(names: List[str], source: str) -> List[str]:
    """Check a vocabulary: non-empty, strings, no blank or duplicate names. Returns it unchanged."""
    if not names:
        raise VocabularyError(f"{source} has zero classes; give at least one class name.")
    bad = [n for n in names if not isinstance(n, str) or not n.strip()]
    if bad:
        raise VocabularyError(f"{source} holds empty or non-string class names: {bad[:5]}")
    seen, duplicates = set(), []
    for n in names:
        key = n.strip().lower()
        duplicates += [n] if key in seen else []
        seen.add(key)
    if duplicates:
        raise VocabularyError(f"{source} holds duplicate class names {duplicates[:5]}; merge them into one entry "
                         "(synonyms go comma-separated inside one name).")
    return names


def read_class_name_json(path: str, source: str) -> list:
    """The JSON list stored in the class-name file ``path``; ``source`` (the config key or flag that named
    it) starts every error. The list itself is checked by :func:`validate_vocabulary`."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{source}: class-name file '{path}' does not exist. Point it to a "
                                "JSON list of class names, or set it to '' to use the dataset's classes.")
    try:
        names = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        where = f"line {err.lineno} column {err.colno}: {err.msg}" if isinstance(err, json.JSONDecodeError) else err
        raise VocabularyError(f"{source}: '{path}' is not valid JSON ({where}). It must hold a JSON list of "
                              'class names, e.g. ["cat", "sofa, couch"] (synonyms comma-separated).') from None
    if not isinstance(names, list):
        raise VocabularyError(f"{source}: '{path}' must hold a JSON list of class names, "
                              f"found {type(names).__name__}.")
    return names


def load_class_names(json_path: str, dataset_names: Sequence[str], json_key: str, datasets_key: str) -> List[str]:
    """Class names from ``json_path`` (a JSON list of names) or, if empty, from the first dataset's
    ``stuff_classes`` in MetadataCatalog. ``json_key`` / ``datasets_key`` name the config keys in errors."""
    if json_path:
        return validate_vocabulary(read_class_name_json(json_path, json_key), f"{json_key} '{json_path}'")
    if not dataset_names:
        raise VocabularyError(f"No vocabulary: set {json_key} or name a registered dataset in {datasets_key}.")
    name = dataset_names[0]
    names = MetadataCatalog.get(name).get("stuff_classes", None)
    if names is None:
        raise KeyError(f"{datasets_key}: dataset '{name}' has no registered class names (stuff_classes). "
                       f"Check the name (see dinov3seg/data/datasets) or set {json_key}.")
    return validate_vocabulary(list(names), f"{datasets_key} '{name}'")
