"""Drawing and writing one segmentation, shared by every surface (demo/demo.py, demo/app.py, notebooks).

    result = segmenter(image, ["cat", "dog, puppy", "grass"])
    draw_result(image, result).save("overlay.png")      # colours over the image + legend of the classes present
    save_label_image(result, "labels.png")              # index PNG: uint8 (uint16 beyond 255 classes)
    record = shares_record(result)                      # {name: share of pixels}, for JSON
"""
import os
from typing import Dict, List

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..data.datasets.register_benchmarks import class_colors
from ..modeling.text_embeddings import split_synonyms
from .segmenter import Segmentation

__all__ = ["draw_overlay", "draw_result", "display_names", "legend_colors", "save_label_image", "shares_record"]


def _font(size: int):
    try:
        import matplotlib

        path = os.path.join(matplotlib.get_data_path(), "fonts", "ttf", "DejaVuSans.ttf")
        return ImageFont.truetype(path, size)
    except Exception:  # no matplotlib font: Pillow's small bitmap font
        return ImageFont.load_default()


def draw_overlay(
    image: np.ndarray, labels: np.ndarray, display_names: List[str], shares: List[float], alpha: float = 0.5
) -> Image.Image:
    """The label colours blended over the image, with a legend (classes present, by share) on the right.
    Pixels labelled ``Segmentation.UNLABELED`` stay uncoloured; a share beyond the last name is theirs."""
    colors = legend_colors(len(display_names))
    colors = np.concatenate([colors, np.full((1, 3), 255, np.uint8)])  # unlabeled: white swatch
    display_names = list(display_names) + ["unlabeled"]
    shares = list(shares) + [0.0] * (len(display_names) - len(shares))
    coloured = colors[np.where(labels == Segmentation.UNLABELED, len(colors) - 1, labels)].astype(np.float32)
    blended = np.where((labels == Segmentation.UNLABELED)[..., None], image.astype(np.float32),
                       image.astype(np.float32) * (1 - alpha) + coloured * alpha).astype(np.uint8)
    height, width = image.shape[:2]

    present = sorted((i for i, s in enumerate(shares) if s > 0), key=lambda i: -shares[i])
    font_size = max(10, min(32, max(height, 240) // 30))
    font = _font(font_size)
    line = int(font_size * 1.5)
    pad = font_size // 2
    rows = max(1, (max(height, 2 * line) - 2 * pad) // line)
    if len(present) > rows:  # keep the largest classes; summarise the rest on the last line
        shown, hidden = present[: rows - 1], present[rows - 1 :]
    else:
        shown, hidden = present, []
    texts = [f"{display_names[i]}  {100 * shares[i]:.1f}%" for i in shown]
    if hidden:
        texts.append(f"+{len(hidden)} more ({100 * sum(shares[i] for i in hidden):.1f}%)")
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_width = max((measure.textlength(t, font=font) for t in texts), default=0)
    legend_width = int(pad * 3 + line + text_width)

    canvas = Image.new("RGB", (width + legend_width, max(height, 2 * pad + line * len(texts))), (255, 255, 255))
    canvas.paste(Image.fromarray(blended), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for row, text in enumerate(texts):
        y = pad + row * line
        x = width + pad
        if row < len(shown):
            color = tuple(int(c) for c in colors[shown[row]])
            draw.rectangle([x, y, x + line - 4, y + line - 4], fill=color, outline=(0, 0, 0))
        draw.text((x + line + pad, y + (line - 4 - font_size) // 2), text, fill=(0, 0, 0), font=font)
    return canvas


def display_names(class_names: List[str]) -> List[str]:
    """What a legend shows for each class: its first synonym ("sofa, couch" -> "sofa")."""
    return [split_synonyms(name)[0] for name in class_names]


def legend_colors(num_classes: int) -> np.ndarray:
    """K x 3 uint8: the colour of each class in :func:`draw_overlay` (and in the web page)."""
    return np.array(class_colors(num_classes), dtype=np.uint8).reshape(-1, 3)


def draw_result(image: np.ndarray, result: Segmentation, alpha: float = 0.5) -> Image.Image:
    """:func:`draw_overlay` of a :class:`Segmentation` over its H x W x 3 uint8 RGB image."""
    shares = result.pixel_shares()
    return draw_overlay(image, result.labels, display_names(result.class_names), list(shares.values()), alpha)


def save_label_image(result: Segmentation, path: str) -> None:
    """The raw label map as an index PNG (:meth:`Segmentation.label_image`: 255 / 65535 = unlabeled)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(result.label_image()).save(path)


def shares_record(result: Segmentation) -> Dict[str, float]:
    """Share of the pixels per class name (and "unlabeled" when thresholding), rounded to 6 digits."""
    return {name: round(share, 6) for name, share in result.pixel_shares().items()}
