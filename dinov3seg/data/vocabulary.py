"""Class-name vocabularies: from a JSON list or a registered dataset's metadata."""
import json
import logging
from pathlib import Path
from typing import Dict, List, Sequence

from detectron2.data import MetadataCatalog

from ..errors import VocabularyError

logger = logging.getLogger(__name__)


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


def check_user_vocabulary(names: List[str], source: str, shared_synonyms_ok: bool = False) -> List[str]:
    """A vocabulary typed or chosen by a user: :func:`validate_vocabulary`, and a synonym shared by two
    classes is refused too, or only warned about with ``shared_synonyms_ok`` (benchmark lists such as
    ADE-847 have some). Returns it unchanged."""
    from ..modeling.text_embeddings import split_synonyms

    if not names:
        raise VocabularyError(f"{source} is empty: give at least one class name")
    validate_vocabulary(names, source)
    owner: Dict[str, str] = {}
    for name in names:
        for synonym in split_synonyms(name):
            key = synonym.lower()
            if key in owner and owner[key] != name:
                message = f"{source}: '{synonym}' is in two classes ('{owner[key]}' and '{name}')"
                if not shared_synonyms_ok:
                    raise VocabularyError(f"{message}; each name may appear in one class only")
                logger.warning(message)
            owner[key] = name
    return names


def parse_vocabulary(text: str, source: str = "the vocabulary") -> List[str]:
    """The demos' vocabulary syntax: classes comma-separated, synonyms of a class "|"-separated.
    'cat, dog|puppy, grass' -> ['cat', 'dog, puppy', 'grass'] (checked by :func:`check_user_vocabulary`)."""
    classes = []
    for entry in text.split(","):
        synonyms = [s.strip() for s in entry.split("|") if s.strip()]
        if synonyms:
            classes.append(", ".join(synonyms))
    return check_user_vocabulary(classes, source)


def format_vocabulary(names: Sequence[str]) -> str:
    """The inverse of :func:`parse_vocabulary`: ['cat', 'dog, puppy'] -> 'cat, dog|puppy'."""
    return ", ".join("|".join(s.strip() for s in name.split(",") if s.strip()) for name in names)


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
