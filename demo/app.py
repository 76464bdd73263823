"""A web page for dinov3seg: drop a photo, type class names, see the segmentation. Runs offline.

    python demo/app.py --config-file configs/quickstart.yaml --opts MODEL.WEIGHTS output/quickstart/model_final.pth
    python demo/app.py --config-file configs/dinotxt_zeroshot.yaml       # the training-free model

then open http://127.0.0.1:7860. The same config / --opts as demo/demo.py; one model, loaded once. The page's
function is also the API endpoint "segment" (inputs: image, vocabulary, threshold or None; outputs: overlay,
label PNG, JSON of pixel shares):

    from gradio_client import Client, handle_file
    overlay, label_png, shares = Client("http://127.0.0.1:7860/").predict(
        handle_file("photo.jpg"), "cat, dog|puppy, grass", None, api_name="/segment")
"""
import argparse
import collections
import json
import os
import shutil
import sys
import tempfile
import threading
import time

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # offline: no analytics, no telemetry, no hub
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from demo import DemoError, setup_cfg  # noqa: E402  (demo/demo.py: the CLI's config and --opts handling)
from dinov3seg.data.vocabulary import format_vocabulary, parse_vocabulary  # noqa: E402
from dinov3seg.errors import exit_on_input_error  # noqa: E402
from dinov3seg.inference.predictor import read_image_rgb  # noqa: E402
from dinov3seg.inference.segmenter import KNOWN_VOCABULARIES, Segmenter, known_vocabulary  # noqa: E402
from dinov3seg.inference.outputs import (display_names, draw_result, legend_colors,  # noqa: E402
                                         save_labels, shares_record)

VOCABULARY_BUTTONS = {"ADE-150": "ade150", "COCO-Stuff-171": "coco_stuff", "PC-59": "pc59", "VOC-20": "voc20"}


def undecoded(image: gr.Image) -> gr.Image:
    """``image`` hands the uploaded file over as it is: the app reads it, and says what is wrong with it. (An
    instance attribute, not a subclass: Gradio writes a stub file beside any module that subclasses a component.)"""
    decode = image.preprocess
    image.preprocess = lambda payload: payload.path if payload is not None and payload.path else decode(payload)
    return image


class SegmentationApp:
    """The page's and the API's function over one Segmenter: one request at a time, bounded files kept."""

    def __init__(self, segmenter: Segmenter, max_classes: int, max_side: int, workdir: str, keep: int = 64):
        self.segmenter, self.max_classes, self.max_side, self.workdir = segmenter, max_classes, max_side, workdir
        self.lock, self.folders = threading.Lock(), collections.deque()
        self.keep = keep

    def read(self, path):
        if not path:
            raise gr.Error("Give an image first: upload, drop or paste one, or pick an example.")
        name = os.path.basename(path)
        try:
            with Image.open(path) as img:
                size, mode = img.size, img.mode
            rgb = read_image_rgb(path, self.max_side)
        except (OSError, ValueError, Image.DecompressionBombError) as e:  # not an image, truncated, too large
            raise gr.Error(f"'{name}' cannot be read as an image: {str(e).replace(path, name)}") from None
        notes = [] if mode == "RGB" else [f"converted from Pillow mode {mode} to 8-bit RGB"]
        if rgb.shape[1] != size[0]:
            notes.append(f"downscaled from {size[0]}x{size[1]} to {rgb.shape[1]}x{rgb.shape[0]} "
                         f"(longer side at most {self.max_side}, --max-side)")
        return rgb, name, notes

    def segment(self, image, vocabulary, threshold=None, distractors=None):
        """-> (result, rgb, overlay, label PNG path, record, JSON path)."""
        try:
            classes = parse_vocabulary(vocabulary or "", "the vocabulary")
            if len(classes) > self.max_classes:
                raise ValueError(f"the vocabulary has {len(classes)} classes; this server takes at most "
                                 f"{self.max_classes} (--max-classes)")
            options = dict(threshold=threshold, distractors=distractors or None)
            self.segmenter.check(classes, **options)
        except (KeyError, ValueError) as e:
            raise gr.Error(str(e).strip("\"'")) from None
        rgb, name, notes = self.read(image)
        with self.lock:
            start = time.perf_counter()
            result = self.segmenter.segment(rgb, classes, **options)
            seconds = time.perf_counter() - start
        folder = tempfile.mkdtemp(dir=self.workdir)
        self.folders.append(folder)
        while len(self.folders) > self.keep:
            shutil.rmtree(self.folders.popleft(), ignore_errors=True)
        stem = os.path.splitext(name)[0] or "image"
        label_path, json_path = os.path.join(folder, f"{stem}_labels.png"), os.path.join(folder, f"{stem}.json")
        save_labels(result, label_path)
        record = {"image": name, "height": rgb.shape[0], "width": rgb.shape[1], "vocabulary": classes,
                  "threshold": threshold, "distractors": options["distractors"], "seconds": round(seconds, 3),
                  "notes": notes, "label_names": {str(k): v for k, v in result.name_table().items()},
                  "pixel_shares": shares_record(result)}
        with open(json_path, "w") as f:
            json.dump(record, f, indent=2)
        return result, rgb, draw_result(rgb, result), label_path, record, json_path

    def api(self, image, vocabulary, threshold):
        _, _, overlay, label_path, record, _ = self.segment(image, vocabulary, threshold)
        return overlay, label_path, record

    def page(self, image, vocabulary, use_threshold, threshold, distractors, progress=gr.Progress()):
        progress(0.1, desc="segmenting")
        result, rgb, overlay, label_path, record, json_path = self.segment(
            image, vocabulary, threshold if use_threshold else None, None if distractors == "off" else distractors)
        names, colors = display_names(result.class_names), legend_colors(len(result.class_names))
        masks = [(result.labels == i, names[i]) for i in range(len(names)) if (result.labels == i).any()]
        color_map = {names[i]: "#%02x%02x%02x" % tuple(colors[i]) for i in range(len(names))}
        table = sorted(([n, round(100 * s, 2)] for n, s in record["pixel_shares"].items()), key=lambda r: -r[1])
        status = (f"**{record['seconds']:.2f} s** for {len(result.class_names)} classes on a "
                  f"{record['width']}x{record['height']} image" + "".join(f"; {n}" for n in record["notes"]))
        return gr.AnnotatedImage((rgb, masks), color_map=color_map), overlay, table, label_path, json_path, status


def example_images(folder: str):
    """A photo that matplotlib ships and a generated image of the quickstart's synthetic classes."""
    from dinov3seg.data import synthetic

    rng = np.random.default_rng(0)
    names = [synthetic.SEEN[0], synthetic.SEEN[4], synthetic.UNSEEN[2], synthetic.SEEN[9]]  # one held out in training
    path = os.path.join(folder, "synthetic_scene.png")  # at the training scale: its textures are 4 pixels
    Image.fromarray(synthetic.render(synthetic.random_label(len(names), rng), names, rng)).save(path)
    examples = [[path, ", ".join(names)]]
    import matplotlib

    photo = os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")
    if os.path.isfile(photo):
        examples.append([shutil.copy(photo, folder), "person, flag, hat, wall"])
    return examples


def build_page(app: SegmentationApp, examples) -> gr.Blocks:
    with gr.Blocks(title="dinov3seg", analytics_enabled=False, delete_cache=(600, 3600)) as page:
        gr.Markdown("# dinov3seg: open-vocabulary segmentation\nDrop a photo, name the classes, press Segment.")
        with gr.Row():
            with gr.Column():
                image = undecoded(gr.Image(label="Image", type="filepath", image_mode=None, elem_id="image",
                                           sources=["upload", "clipboard"]))
                vocabulary = gr.Textbox(label="Vocabulary", elem_id="vocabulary", placeholder="cat, dog|puppy, grass",
                                        info="classes comma-separated; synonyms of one class joined by |")
                with gr.Row():
                    buttons = {label: gr.Button(label, size="sm") for label in VOCABULARY_BUTTONS}
                with gr.Row():
                    use_threshold = gr.Checkbox(label='"None of these" below a score', value=False)
                    threshold = gr.Slider(0, 1, value=0.5, step=0.01, label="score threshold",
                                          info=f"the model's {app.segmenter.score_type or 'undeclared'} probability")
                distractors = gr.Dropdown(["off", *KNOWN_VOCABULARIES], value="off", label="Distractors",
                                          info='pixels won by these names are labelled "other"')
                run = gr.Button("Segment", variant="primary", elem_id="segment")
                gr.Examples(examples, [image, vocabulary])
            with gr.Column():
                status = gr.Markdown(elem_id="status")
                with gr.Tab("Classes"):
                    annotated = gr.AnnotatedImage(label="Segmentation (hover a class to highlight it)",
                                                  elem_id="annotated")
                with gr.Tab("Overlay"):
                    overlay = gr.Image(label="Overlay with legend", type="pil", elem_id="overlay", format="png")
                table = gr.Dataframe(headers=["class", "pixels %"], datatype=["str", "number"], label="Pixel share",
                                     interactive=False, elem_id="shares")
                with gr.Row():
                    label_file = gr.File(label="Label map (index PNG)", elem_id="label_png")
                    json_file = gr.File(label="Result (JSON)", elem_id="result_json")
        for label, name in VOCABULARY_BUTTONS.items():
            buttons[label].click(lambda n=name: format_vocabulary(known_vocabulary(n)), None, vocabulary,
                                 api_visibility="private", queue=False)
        run.click(app.page, [image, vocabulary, use_threshold, threshold, distractors],
                  [annotated, overlay, table, label_file, json_file, status], api_visibility="private",
                  concurrency_id="model")
        api_threshold, shares = gr.Number(visible=False), gr.JSON(visible=False)
        gr.Button(visible=False).click(app.api, [image, vocabulary, api_threshold], [overlay, label_file, shares],
                                       api_name="segment", concurrency_id="model")
    return page


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE", help="model config (YAML)")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: the whole network)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--max-classes", type=int, default=300, help="largest vocabulary a request may give")
    parser.add_argument("--max-side", type=int, default=2048, help="larger images are downscaled to this side")
    parser.add_argument("--queue-size", type=int, default=16, help="requests waiting beyond this are refused")
    parser.add_argument("--opts", default=[], nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args(argv)
    try:
        with exit_on_input_error("app.py"):  # bad config or weight files: one line, exit status 2
            segmenter = Segmenter(setup_cfg(args))
    except DemoError as e:
        print(f"app.py: error: {e}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="dinov3seg-app-") as workdir:
        app = SegmentationApp(segmenter, args.max_classes, args.max_side, workdir)
        page = build_page(app, example_images(workdir))
        page.queue(max_size=args.queue_size, default_concurrency_limit=1)
        page.launch(server_name=args.host, server_port=args.port, show_error=True, ssr_mode=False,
                    max_file_size="200mb", footer_links=["api"], run_history=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
