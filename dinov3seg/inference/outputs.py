"""What every surface (demo CLI, web page, notebooks) writes for a segmentation, in one place: the colour
overlay with its legend, the index label PNG, JSON records and, for a video, the class-share plot over time.
Files are written atomically (a temporary file renamed into place), so an interrupted run never leaves a
half-written output that looks complete."""
import json
import os
from typing import Dict, List, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..checkpoint import atomic_write
from ..data.datasets.register_benchmarks import class_colors
from ..modeling.text_embeddings import split_synonyms
from .segmenter import Segmentation

__all__ = ["draw_overlay", "draw_result", "display_names", "legend_colors", "shares_record", "save_image",
           "save_labels", "save_json", "plot_class_shares"]


def _font(size: int):
    try:
        import matplotlib

        path = os.path.join(matplotlib.get_data_path(), "fonts", "ttf", "DejaVuSans.ttf")
        return ImageFont.truetype(path, size)
    except Exception:  # no matplotlib font: Pillow's small bitmap font
        return ImageFont.load_default()


def draw_overlay(
    image: np.ndarray, labels: np.ndarray, display_names: List[str], shares: List[float], alpha: float = 0.5,
    legend: str = "right",
) -> Image.Image:
    """The label colours blended over the image (H x W x 3 uint8 RGB; ``labels`` H x W), with a legend of the
    classes present, by share: ``legend="right"`` puts it in a white panel right of the image (a wider
    picture), ``"inset"`` in a translucent box at the top left, keeping the image's size (video frames).
    Pixels labelled ``Segmentation.UNLABELED`` stay uncoloured; a share beyond the last name is theirs."""
    if legend not in ("right", "inset"):
        raise ValueError(f'legend must be "right" or "inset", got {legend!r}')
    colors = legend_colors(len(display_names))
    colors = np.concatenate([colors, np.full((1, 3), 255, np.uint8)])  # unlabeled: white swatch
    display_names = list(display_names) + ["unlabeled"]
    shares = list(shares) + [0.0] * (len(display_names) - len(shares))
    coloured = colors[np.where(labels == Segmentation.UNLABELED, len(colors) - 1, labels)].astype(np.float32)
    blended = np.where((labels == Segmentation.UNLABELED)[..., None], image.astype(np.float32),
                       image.astype(np.float32) * (1 - alpha) + coloured * alpha).astype(np.uint8)
    height, width = image.shape[:2]

    present = sorted((i for i, s in enumerate(shares) if s > 0), key=lambda i: -shares[i])
    font_size = max(10, min(32, max(height, 240) // 30)) if legend == "right" else max(8, min(24, height // 24))
    font = _font(font_size)
    line = int(font_size * 1.5)
    pad = font_size // 2
    room = height if legend == "right" else height // 2  # an inset legend covers at most the top half
    rows = max(1, (max(room, 2 * line) - 2 * pad) // line)
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

    if legend == "right":
        canvas = Image.new("RGB", (width + legend_width, max(height, 2 * pad + line * len(texts))), (255, 255, 255))
        canvas.paste(Image.fromarray(blended), (0, 0))
        left = width
    else:
        canvas = Image.fromarray(blended).convert("RGBA")
        box = Image.new("RGBA", canvas.size, (0, 0, 0, 0))
        ImageDraw.Draw(box).rectangle([0, 0, legend_width, 2 * pad + line * len(texts)], fill=(255, 255, 255, 190))
        canvas = Image.alpha_composite(canvas, box).convert("RGB")
        left = 0
    draw = ImageDraw.Draw(canvas)
    for row, text in enumerate(texts):
        y = pad + row * line
        x = left + pad
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


def draw_result(image: np.ndarray, result: Segmentation, alpha: float = 0.5, legend: str = "right") -> Image.Image:
    """:func:`draw_overlay` of a :class:`Segmentation` over its H x W x 3 uint8 RGB image."""
    shares = result.pixel_shares()
    return draw_overlay(image, result.labels, display_names(result.class_names), list(shares.values()), alpha, legend)


def shares_record(result: Segmentation) -> Dict[str, float]:
    """Share of the pixels per class name (and "unlabeled" / "other" when present), rounded to 6 digits."""
    return {name: round(share, 6) for name, share in result.pixel_shares().items()}


def save_image(image: Image.Image, path: str) -> None:
    """Save a PIL image atomically (format from the extension)."""
    fmt = Image.registered_extensions().get(os.path.splitext(path)[1].lower(), "PNG")
    with atomic_write(path) as f:
        image.save(f, format=fmt)


def save_labels(result: Segmentation, path: str) -> None:
    """The index PNG of ``result`` (:meth:`Segmentation.label_image`: uint8, or uint16 beyond 255 classes)."""
    save_image(Image.fromarray(result.label_image()), path)


def save_json(record, path: str) -> None:
    """``record`` as indented JSON, atomically."""
    with atomic_write(path, "w") as f:
        json.dump(record, f, indent=2)


def plot_class_shares(times: Sequence[float], shares: Dict[str, Sequence[float]], path: str, title: str = "",
                      top: int = 8) -> None:
    """Each class's pixel share (F values, one per frame) against time (F seconds), as a PNG: the ``top``
    classes by mean share in colour and named in the legend, the others thin and grey."""
    from matplotlib.figure import Figure  # no pyplot: no display backend needed

    names = sorted(shares, key=lambda n: -float(np.mean(shares[n])) if len(shares[n]) else 0.0)
    colors = dict(zip(shares, class_colors(len(shares))))
    figure = Figure(figsize=(9, 4.5), dpi=100)
    axes = figure.add_subplot(1, 1, 1)
    named = {}
    for rank, name in reversed(list(enumerate(names))):  # top classes drawn last, on top
        values = 100 * np.asarray(shares[name], dtype=float)
        if rank < top and values.max(initial=0) > 0:
            named[rank] = axes.plot(times, values, color=np.array(colors[name]) / 255, linewidth=2,
                                    label=f"{name} ({values.mean():.1f}%)", marker="o" if len(times) < 30 else None)[0]
        else:
            axes.plot(times, values, color="0.75", linewidth=0.8)
    axes.set_xlabel("time (s)")
    axes.set_ylabel("pixel share (%)")
    axes.set_ylim(0, 100)
    axes.set_title(title or "class share over time")
    axes.grid(alpha=0.3)
    if named:  # largest mean share first
        axes.legend(handles=[named[r] for r in sorted(named)], loc="upper left", bbox_to_anchor=(1.01, 1.0),
                    fontsize=9, frameon=False)
    figure.tight_layout()
    with atomic_write(path) as f:
        figure.savefig(f, format="png")
