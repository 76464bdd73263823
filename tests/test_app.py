"""demo/app.py, the web page: started as a user starts it (a subprocess on 127.0.0.1 with a quickstart checkpoint
made here), driven in a real headless Chromium (what a person sees, the label PNG they download, every network
request the page makes), and through its "segment" API with gradio_client (20 requests, 4 at a time, bad inputs
among good ones, the server's memory). The server runs under an audit hook that records any connection or name
lookup to a host other than this machine: the app must work offline."""
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dinov3seg.data.vocabulary import format_vocabulary
from dinov3seg.inference.segmenter import known_vocabulary

pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = ("127.0.0.1", "::1", "localhost")
# Runs the app with an audit hook that logs connections and name lookups to anything but this machine.
OFFLINE_HOOK = r"""
import runpy, sys
log = open(sys.argv[1], "a", buffering=1)
def hook(event, args):
    if event == "socket.connect" and isinstance(args[1], tuple) and args[1][0] not in %r:
        log.write(f"connect {args[1]!r}\n")
    elif event == "socket.getaddrinfo" and args[0] not in (None, *%r):
        log.write(f"getaddrinfo {args[0]!r}\n")
sys.addaudithook(hook)
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
""" % (LOOPBACK, LOOPBACK)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The app on a free port with a random-weight quickstart checkpoint; yields (url, process, folder)."""
    from detectron2.modeling import build_model

    import dinov3seg
    from dinov3seg.checkpoint import DINOv3SegCheckpointer

    folder = tmp_path_factory.mktemp("app")
    cfg = dinov3seg.get_dinov3seg_cfg(str(ROOT / "configs" / "quickstart.yaml"))
    torch.manual_seed(0)
    DINOv3SegCheckpointer(build_model(cfg), save_dir=str(folder)).save("model_final")
    port = free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               GRADIO_TEMP_DIR=str(folder / "gradio"))
    log = open(folder / "server.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-c", OFFLINE_HOOK, str(folder / "outbound.log"), "demo/app.py", "--config-file",
         "configs/quickstart.yaml", "--port", str(port), "--max-side", "400", "--max-classes", "12",
         "--opts", "MODEL.WEIGHTS", str(folder / "model_final.pth"), "MODEL.DEVICE", "cpu"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 180
    while True:
        try:
            urllib.request.urlopen(url, timeout=5).read()
            break
        except OSError:
            if process.poll() is not None or time.time() > deadline:
                process.kill()
                pytest.fail(f"the app did not start:\n{(folder / 'server.log').read_text()[-3000:]}")
            time.sleep(1)
    yield url, process, folder
    process.terminate()
    process.wait(timeout=30)
    log.close()
    outbound = (folder / "outbound.log").read_text() if (folder / "outbound.log").exists() else ""
    assert outbound == "", f"the server reached beyond this machine:\n{outbound}"


def scene(height=120, width=160, seed=0) -> np.ndarray:
    """An image of the quickstart's synthetic classes (colour x texture, in shapes)."""
    from dinov3seg.data import synthetic

    rng = np.random.default_rng(seed)
    label = synthetic.random_label(4, rng)
    names = [synthetic.CLASSES[i] for i in (0, 5, 10, 15)]
    image = Image.fromarray(synthetic.render(label, names, rng)).resize((width, height))
    return np.asarray(image)


def api_labels(client, path, vocabulary, threshold=None):
    """(label PNG as an array, JSON) of one /segment call."""
    overlay, label_png, record = client.predict(gradio_client.handle_file(str(path)), vocabulary, threshold,
                                                api_name="/segment")
    assert Image.open(overlay).width > record["width"]  # the overlay has its legend on the right
    return np.asarray(Image.open(label_png)), record


def check_record(labels, record):
    """The JSON's shares are the label PNG's pixel counts, and add up to 1."""
    names = record["label_names"]
    shares = record["pixel_shares"]
    assert abs(sum(shares.values()) - 1) < 1e-4
    assert labels.shape == (record["height"], record["width"])
    for value, name in names.items():
        assert shares[name] == pytest.approx(float(np.mean(labels == int(value))), abs=1e-5)


def find_chromium():
    browser = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip("no Chromium and chromedriver on PATH (Debian: apt-get install chromium chromium-driver; "
                    ".ci/run installs them); the browser test never downloads a browser")
    return browser, driver


def test_page_in_headless_chromium(server, tmp_path):
    pytest.importorskip("selenium")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, _, _ = server
    browser, driver_path = find_chromium()
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 "--window-size=1400,1200", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})  # every request the page makes
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    wait = WebDriverWait(driver, 120)
    css = lambda selector: driver.find_elements(By.CSS_SELECTOR, selector)  # noqa: E731
    try:
        driver.get(url)
        wait.until(lambda d: css("#segment") and css("#image input[type=file]"))

        # A known vocabulary button fills the box in the CLI's syntax.
        next(b for b in css("button") if b.text == "VOC-20").click()
        box = css("#vocabulary textarea")[0]
        wait.until(lambda d: box.get_attribute("value") == format_vocabulary(known_vocabulary("voc20")))

        # Upload, type, run, wait for the result.
        Image.fromarray(scene()).save(tmp_path / "scene.png")
        css("#image input[type=file]")[0].send_keys(str(tmp_path / "scene.png"))
        box.clear()
        vocabulary = "grass, sky|blue sky, water, road"
        box.send_keys(vocabulary)
        wait.until(lambda d: css("#image img"))
        css("#segment")[0].click()
        wait.until(lambda d: css("#annotated img.mask") and "classes on a 160x120 image" in css("#status")[0].text)
        legend = [b.text for b in css("#annotated .legend button")]
        rows = [[c.text for c in r.find_elements(By.CSS_SELECTOR, "[role=gridcell]")] for r in css("#shares [role=row]")]
        table = {r[0]: float(r[1]) for r in rows if len(r) == 2 and r[1]}
        assert set(legend) == {n.split(",")[0] for n, s in table.items() if s > 0}  # the legend names the classes
        assert set(legend) <= {"grass", "sky", "water", "road"} and len(css("#annotated img.mask")) == len(legend)
        assert sum(table.values()) == pytest.approx(100, abs=0.05)  # the share table adds up to 100 %

        # The label PNG downloads and decodes to the API's labels for the same image and words.
        css("#label_png a[download]")[0].click()
        png = downloads / "scene_labels.png"
        wait.until(lambda d: png.is_file() and png.stat().st_size > 0)
        downloaded = np.asarray(Image.open(png))
        client = gradio_client.Client(url, verbose=False, download_files=str(tmp_path / "api"))
        labels, record = api_labels(client, tmp_path / "scene.png", vocabulary)
        np.testing.assert_array_equal(downloaded, labels)
        check_record(downloaded, record)
        assert {k: round(100 * v, 2) for k, v in record["pixel_shares"].items()} == table

        screenshot = Path(os.environ.get("DINOV3SEG_APP_SCREENSHOT", tmp_path / "app.png"))  # docs/img/app.png
        driver.save_screenshot(str(screenshot))
        assert Image.open(screenshot).size[0] >= 1000
        next(b for b in css("button[role=tab]") if b.text == "Overlay").click()
        wait.until(lambda d: css("#overlay img"))

        # A bad vocabulary: a message in the page, and the page goes on working.
        box.clear()
        box.send_keys("grass, Grass")
        css("#segment")[0].click()
        wait.until(lambda d: "duplicate class names" in d.find_element(By.TAG_NAME, "body").text)
        box.clear()
        box.send_keys("grass, water")
        css("#segment")[0].click()
        wait.until(lambda d: "for 2 classes on a 160x120 image" in css("#status")[0].text)

        requests = []
        for entry in driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message["method"] in ("Network.requestWillBeSent", "Network.webSocketCreated"):
                requests.append(message["params"].get("request", message["params"])["url"])
        remote = [u for u in requests if u.split(":")[0] in ("http", "https", "ws", "wss")]
        assert remote and all(u.startswith(url.rstrip("/")) for u in remote), \
            [u for u in remote if not u.startswith(url)]  # fonts, scripts, everything from the app itself
    finally:
        driver.quit()


def test_api_under_concurrent_load_with_bad_inputs(server, tmp_path):
    url, process, _ = server
    folder = tmp_path / "inputs"
    folder.mkdir()
    rgb = scene(seed=1)
    Image.fromarray(rgb).save(folder / "rgb.png")
    Image.fromarray(rgb).convert("L").save(folder / "gray.png")
    Image.fromarray(np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 90, np.uint8)], -1), "RGBA").save(folder / "rgba.png")
    Image.fromarray(rgb[:, :, 1].astype(np.uint16) * 257).save(folder / "gray16.png")
    Image.fromarray(scene(900, 1200, seed=2)).save(folder / "huge.jpg", quality=90)  # > --max-side 400
    (folder / "notes.txt").write_text("not an image")
    whole = io.BytesIO()
    Image.fromarray(rgb).save(whole, "JPEG")
    (folder / "truncated.jpg").write_bytes(whole.getvalue()[: len(whole.getvalue()) // 2])
    good = {"rgb": ("rgb.png", "grass, sky, water", None), "gray": ("gray.png", "road, tree", None),
            "rgba": ("rgba.png", "sky|air, sand, snow, rock", 0.5), "gray16": ("gray16.png", "water, grass", None),
            "huge": ("huge.jpg", "grass, sky, water, road", None)}
    bad = {"not an image": ("notes.txt", "grass", "cannot be read as an image"),
           "truncated": ("truncated.jpg", "grass", "truncated"),
           "empty": ("rgb.png", " , ", "is empty"), "duplicate": ("rgb.png", "sky, Sky", "duplicate class names"),
           "too many": ("rgb.png", ", ".join(f"thing {i}" for i in range(13)), "at most 12 (--max-classes)"),
           "threshold": ("rgb.png", "grass", 1.5)}
    local = threading.local()

    def call(item):
        if not hasattr(local, "client"):
            local.client = gradio_client.Client(url, verbose=False, download_files=str(tmp_path / "api"))
        kind, name = item
        try:
            if kind == "good":
                path, vocabulary, threshold = good[name]
                return api_labels(local.client, folder / path, vocabulary, threshold)
            path, vocabulary, expected = bad[name]
            threshold = expected if isinstance(expected, float) else None
            api_labels(local.client, folder / path, vocabulary, threshold)
            return None
        except Exception as e:  # noqa: BLE001  (the client raises AppError with the page's message)
            return e

    references = {name: call(("good", name)) for name in good}  # one at a time first
    before = rss_mib(process.pid)
    items = [("good", n) for n in good] * 2 + [("bad", n) for n in bad] + [("good", "rgb"), ("good", "huge"),
                                                                           ("bad", "empty"), ("bad", "truncated")]
    assert len(items) == 20
    start = time.time()
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(call, items))
    seconds = time.time() - start
    after, peak = rss_mib(process.pid), rss_mib(process.pid, "VmHWM")
    print(f"\n20 requests, 4 at a time: {seconds:.1f} s; server RSS {before:.0f} MiB before, {after:.0f} MiB after, "
          f"peak {peak:.0f} MiB (load {os.getloadavg()[0]:.1f})")

    for (kind, name), answer in zip(items, answers):
        if kind == "good":
            assert not isinstance(answer, Exception), f"{name}: {answer}"
            labels, record = answer
            np.testing.assert_array_equal(labels, references[name][0])  # as when it ran alone
            check_record(labels, record)
        else:
            expected = bad[name][2]
            assert isinstance(answer, Exception), f"{name}: no error"
            assert (f"got {expected}" if isinstance(expected, float) else expected) in str(answer), (name, answer)
    huge = references["huge"][1]
    assert (huge["width"], huge["height"]) == (400, 300) and "downscaled from 1200x900" in huge["notes"][0]
    assert references["gray16"][1]["notes"][0].startswith("converted from Pillow mode I")  # I;16, or I (Pillow 9)
    assert references["rgba"][1]["notes"] == ["converted from Pillow mode RGBA to 8-bit RGB"]
    assert references["rgb"][1]["notes"] == []
    assert "unlabeled" in references["rgba"][1]["pixel_shares"]
    assert after - before < 500, "the server's memory grew by more than 500 MiB over 20 requests"


def test_missing_weights_fail_before_the_server_starts(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for config, opts, expected in [
        ("configs/quickstart.yaml", ["MODEL.WEIGHTS", str(tmp_path / "nope.pth")], "MODEL.WEIGHTS"),
        ("configs/dinotxt_zeroshot.yaml", ["MODEL.DINOV3.WEIGHTS", str(tmp_path / "no.pth")],
         "dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth"),
    ]:
        done = subprocess.run([sys.executable, "demo/app.py", "--config-file", config, "--port", str(free_port()),
                               "--opts", *opts], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 2, done.stderr[-2000:]
        message = done.stderr[done.stderr.index("app.py: error: "):]  # after import-time warnings, if any
        assert expected in message and "Traceback" not in done.stderr and "Running on" not in done.stdout
