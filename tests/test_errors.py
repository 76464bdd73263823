"""Clear errors: checkpoints (MODEL.WEIGHTS / --resume), class-name JSON files, atomic writes, one-line CLI errors."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from dinov3seg.checkpoint import CHECKPOINT_FORMAT, DINOv3SegCheckpointer
from dinov3seg.data.vocabulary import load_class_names, read_class_name_json
from dinov3seg.errors import (ConfigError, DataError, InputErrorTracebackFilter, VocabularyError, error_message,
                              exit_on_input_error, is_input_error, mark_input_error)
from dinov3seg.modeling.encoders.weights import WeightFileError

REPO = Path(__file__).resolve().parents[1]


class Tiny(nn.Module):
    """What DINOv3SegCheckpointer needs of a model: a trainable_state_dict."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(3, 2)

    def trainable_state_dict(self):
        return self.state_dict()


# ---------------------------------------------------------------- checkpoints
def test_truncated_or_foreign_model_weights_name_the_key_and_file(tmp_path):
    DINOv3SegCheckpointer(Tiny(), save_dir=str(tmp_path)).save("model_final")
    good = tmp_path / "model_final.pth"
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(WeightFileError, match=r"MODEL\.WEIGHTS: cannot read '.*truncated\.pth'.*truncated or corrupt"):
        DINOv3SegCheckpointer(Tiny()).load(str(truncated))
    foreign = tmp_path / "encoder.pth"
    torch.save({"cls_token": torch.zeros(1)}, foreign)  # an encoder file given as MODEL.WEIGHTS
    with pytest.raises(WeightFileError, match=r"MODEL\.WEIGHTS: '.*encoder\.pth' is not a dinov3seg training"):
        DINOv3SegCheckpointer(Tiny()).load(str(foreign))
    with pytest.raises(WeightFileError, match=r"MODEL\.WEIGHTS: checkpoint '.*nope\.pth' does not exist"):
        DINOv3SegCheckpointer(Tiny()).load(str(tmp_path / "nope.pth"))
    (tmp_path / "model.pkl").write_bytes(good.read_bytes())
    with pytest.raises(WeightFileError, match=r"MODEL\.WEIGHTS: .*\.pth files saved by training"):
        DINOv3SegCheckpointer(Tiny()).load(str(tmp_path / "model.pkl"))


def test_resume_errors_name_the_last_checkpoint(tmp_path):
    checkpointer = DINOv3SegCheckpointer(Tiny(), save_dir=str(tmp_path))
    checkpointer.save("model_0000009", iteration=9)
    (tmp_path / "model_0000009.pth").write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(WeightFileError, match=r"--resume \(last_checkpoint in .*\): cannot read .*model_0000009"):
        DINOv3SegCheckpointer(Tiny(), save_dir=str(tmp_path)).resume_or_load("", resume=True)


def test_a_checkpoint_of_another_model_is_an_input_error_of_the_same_type(tmp_path):
    torch.save({"model": {"other.weight": torch.zeros(1)}, "format": CHECKPOINT_FORMAT}, tmp_path / "other.pth")
    with pytest.raises(KeyError) as err:  # type kept; marked as input, with its source
        DINOv3SegCheckpointer(Tiny()).load(str(tmp_path / "other.pth"))
    assert is_input_error(err.value) and "MODEL.WEIGHTS" in err.value.input_source


def test_checkpoint_writes_are_atomic(tmp_path, monkeypatch):
    """A save killed half-way leaves the previous file (which last_checkpoint names) intact."""
    model = Tiny()
    checkpointer = DINOv3SegCheckpointer(model, save_dir=str(tmp_path))
    checkpointer.save("model_final", iteration=5)
    before = (tmp_path / "model_final.pth").read_bytes()
    real_save = torch.save

    def killed_mid_write(obj, f):
        real_save(obj, f)
        f.truncate(10)
        raise KeyboardInterrupt("killed during the save")

    monkeypatch.setattr(torch, "save", killed_mid_write)
    with torch.no_grad():
        model.head.weight.add_(1)
    with pytest.raises(KeyboardInterrupt):
        checkpointer.save("model_final", iteration=6)
    assert (tmp_path / "model_final.pth").read_bytes() == before
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    assert torch.load(tmp_path / "model_final.pth", weights_only=True)["iteration"] == 5
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_final.pth"]  # no temporary file left


# ---------------------------------------------------------------- class-name files
@pytest.mark.parametrize("key", ["MODEL.DINOV3SEG.TRAIN_CLASS_JSON", "MODEL.DINOV3SEG.TEST_CLASS_JSON"])
def test_class_name_file_that_is_not_json_names_key_and_file(tmp_path, key):
    bad = tmp_path / "classes.json"
    bad.write_text('["cat", "dog",]')  # trailing comma
    with pytest.raises(VocabularyError, match=rf"{key.replace('.', '[.]')}: '.*classes\.json' is not valid JSON "
                                              r"\(line 1 column"):
        load_class_names(str(bad), [], key, "DATASETS.TRAIN")
    bad.write_bytes(b"\xff\xfe not utf-8")
    with pytest.raises(VocabularyError, match="is not valid JSON"):
        load_class_names(str(bad), [], key, "DATASETS.TRAIN")
    bad.write_text('{"cat": 1}')
    with pytest.raises(VocabularyError, match="must hold a JSON list of class names, found dict"):
        load_class_names(str(bad), [], key, "DATASETS.TRAIN")


def test_shared_class_name_reader_for_other_callers(tmp_path):
    """The demo's --vocabulary-file can use the same reader: the flag is named in its errors."""
    good = tmp_path / "v.json"
    good.write_text(json.dumps(["cat", "sofa, couch"]))
    assert read_class_name_json(str(good), "--vocabulary-file") == ["cat", "sofa, couch"]
    good.write_text("cat, dog")
    with pytest.raises(VocabularyError, match=r"^--vocabulary-file: '.*v\.json' is not valid JSON"):
        read_class_name_json(str(good), "--vocabulary-file")
    with pytest.raises(FileNotFoundError, match="--vocabulary-file: class-name file"):
        read_class_name_json(str(tmp_path / "missing.json"), "--vocabulary-file")


# ---------------------------------------------------------------- one-line errors
def test_what_counts_as_an_input_error():
    assert is_input_error(WeightFileError("x")) and is_input_error(VocabularyError("x"))
    assert is_input_error(DataError("x")) and is_input_error(ConfigError("x"))
    assert is_input_error(FileNotFoundError("data not prepared"))
    assert is_input_error(ValueError("MODEL.DINOV3SEG.VIEW_SIZE must be a multiple of 16"))
    assert is_input_error(KeyError("Non-existent config key: MODEL.NOPE"))
    assert is_input_error(KeyError("Dataset 'ade_150' is not registered! Available datasets are: a, b"))
    assert is_input_error(mark_input_error(KeyError("missing keys"), "MODEL.WEIGHTS 'a.pth'"))
    assert not is_input_error(ValueError("too many values to unpack"))  # a bug: keeps its traceback
    assert not is_input_error(RuntimeError("CUDA out of memory"))
    from_worker = DataError("Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent "
                            "call last):\n  File \"x.py\", line 1\ndinov3seg.errors.DataError: label a.png has size")
    assert error_message(from_worker) == "label a.png has size"


def test_input_errors_exit_2_with_one_line_and_others_keep_their_traceback(capsys, monkeypatch):
    monkeypatch.delenv("DINOV3SEG_TRACEBACK", raising=False)
    with pytest.raises(SystemExit) as stop:
        with exit_on_input_error("tool"):
            raise mark_input_error(KeyError("checkpoint does not match"), "MODEL.WEIGHTS 'a.pth'")
    assert stop.value.code == 2
    assert capsys.readouterr().err == "tool: error: MODEL.WEIGHTS 'a.pth': checkpoint does not match\n"
    monkeypatch.setenv("DINOV3SEG_TRACEBACK", "1")
    with pytest.raises(SystemExit):
        with exit_on_input_error("tool"):
            raise VocabularyError("TEST_CLASS_JSON: bad")
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.endswith("tool: error: TEST_CLASS_JSON: bad\n")
    with pytest.raises(ZeroDivisionError):  # unexpected: propagates untouched
        with exit_on_input_error("tool"):
            1 / 0


def test_training_loop_logs_no_traceback_for_input_errors(monkeypatch):
    """Detectron2 logs "Exception during training:" with the traceback; for input errors only on request."""
    import logging

    monkeypatch.delenv("DINOV3SEG_TRACEBACK", raising=False)

    def record(err):
        try:
            raise err
        except Exception:
            return logging.LogRecord("d2", logging.ERROR, "x", 1, "Exception during training:", None, sys.exc_info())

    assert not InputErrorTracebackFilter().filter(record(DataError("labels must lie in [0, 3)")))
    assert InputErrorTracebackFilter(show_traceback=True).filter(record(DataError("labels must lie in [0, 3)")))
    assert InputErrorTracebackFilter().filter(record(RuntimeError("a bug")))
    assert InputErrorTracebackFilter().filter(logging.LogRecord("d2", logging.INFO, "x", 1, "no error", None, None))


def run_train_net(*args, **env):
    return subprocess.run([sys.executable, "train_net.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=900, env=dict(os.environ, **env))


def test_train_net_reports_input_errors_in_one_line(tmp_path):
    bad_key = run_train_net("--config-file", "configs/quickstart.yaml", "MODEL.DINOV3SEG.NO_SUCH_KEY", "1")
    assert bad_key.returncode == 2, bad_key.stderr[-3000:]
    assert bad_key.stderr.splitlines()[-1].startswith("train_net.py: error: --config-file configs/quickstart.yaml")
    assert "MODEL.DINOV3SEG.NO_SUCH_KEY" in bad_key.stderr and "Traceback" not in bad_key.stderr
    asked = run_train_net("--config-file", "configs/quickstart.yaml", "--traceback", "MODEL.DINOV3SEG.NO_SUCH_KEY", "1")
    assert asked.returncode == 2 and "Traceback (most recent call last)" in asked.stderr
    assert asked.stderr.splitlines()[-1] == bad_key.stderr.splitlines()[-1]
    truncated = tmp_path / "model_final.pth"
    truncated.write_bytes(b"PK\x03\x04 cut short")
    weights = run_train_net("--config-file", "configs/quickstart.yaml", "--eval-only", "MODEL.WEIGHTS", str(truncated),
                            "OUTPUT_DIR", str(tmp_path))
    assert weights.returncode == 2 and "Traceback" not in weights.stderr, weights.stderr[-3000:]
    last = weights.stderr.splitlines()[-1]
    assert last.startswith(f"train_net.py: error: MODEL.WEIGHTS: cannot read '{truncated}'"), last
