"""Bad input the user can fix, and how the command-line tools report it.

Errors caused by the user's input (config, weight files, datasets, vocabularies) are reported by
``train_net.py`` as one line on stderr with exit status 2 (``eval.sh`` passes that line on); anything else is
a bug or an environment fault and keeps its full traceback. What counts as input (:func:`is_input_error`):

* :class:`InputError` and its subclasses (weight files, checkpoints, vocabularies, labels);
* ``FileNotFoundError`` (missing config, weights, data or class-name files);
* an error marked with :func:`mark_input_error` (e.g. a checkpoint that does not fit the model);
* a ``ValueError`` / ``KeyError`` whose message names a config key (``MODEL.DINOV3SEG.VIEW_SIZE`` ...): the
  config checks of every module say which key is wrong, and yacs names the key it cannot merge;
* Detectron2's ``KeyError`` for a dataset name that is not registered.

Set ``DINOV3SEG_TRACEBACK=1`` (or pass ``--traceback`` to train_net.py) to print the traceback as well.

In a job of several processes only rank 0 prints the line; the other ranks write it to their own log file
(Detectron2's ``log.txt.rank<N>`` in OUTPUT_DIR, once it is open) and exit with the same status.
"""
import contextlib
import logging
import os
import re
import sys
import traceback

from torch.multiprocessing import ProcessExitedException

from .launcher_env import process_rank

__all__ = ["InputError", "ConfigError", "DataError", "VocabularyError", "INPUT_ERROR_EXIT_CODE", "TRACEBACK_ENV",
           "is_input_error", "mark_input_error", "error_message", "exit_on_input_error", "InputErrorTracebackFilter"]

INPUT_ERROR_EXIT_CODE = 2
TRACEBACK_ENV = "DINOV3SEG_TRACEBACK"

_CONFIG_KEY = re.compile(r"\b(?:MODEL|INPUT|SOLVER|DATASETS|DATALOADER|TEST)\.[A-Z][A-Z0-9_]*")
_UNREGISTERED = re.compile(r"Dataset '.*' is not registered")


class InputError(Exception):
    """Bad input with a message that says what is wrong and how to fix it."""

    def __str__(self):  # the message itself, also for the KeyError subclasses (KeyError would quote it)
        return str(self.args[0]) if self.args else ""


class ConfigError(InputError, ValueError):
    """The config file or its overrides cannot be read or merged."""


class DataError(InputError, ValueError):
    """A dataset's files hold values the model cannot use (label values, sizes)."""


class VocabularyError(InputError, ValueError):
    """A class-name list or file is unusable (not JSON, empty, duplicates ...)."""


def mark_input_error(err: Exception, source: str) -> Exception:
    """Mark ``err`` (type unchanged) as caused by the input ``source`` (e.g. "MODEL.WEIGHTS 'x.pth'"),
    which its reported message then starts with. Returns ``err``."""
    err.input_source = source
    return err


def is_input_error(err: BaseException) -> bool:
    """True for errors the user's input caused (see the module doc)."""
    if isinstance(err, (InputError, FileNotFoundError)) or getattr(err, "input_source", None):
        return True
    message = error_message(err)
    if isinstance(err, KeyError) and _UNREGISTERED.match(message):  # Detectron2's catalogs: a misspelt name
        return True
    return isinstance(err, (ValueError, KeyError)) and bool(_CONFIG_KEY.search(message))


def error_message(err: BaseException) -> str:
    """The message of ``err`` (KeyError's without the quotes ``str`` adds)."""
    if isinstance(err, KeyError) and not isinstance(err, InputError) and len(err.args) == 1:
        message = str(err.args[0])
    else:
        message = str(err)
    if "Original Traceback (most recent call last)" in message:  # re-raised from a DataLoader worker
        message = message.rstrip().splitlines()[-1].split(": ", 1)[-1]
    source = getattr(err, "input_source", None)
    return f"{source}: {message}" if source and not message.startswith(source) else message


def traceback_requested(flag: bool = False) -> bool:
    return flag or os.environ.get(TRACEBACK_ENV, "") not in ("", "0")


@contextlib.contextmanager
def exit_on_input_error(prog: str, show_traceback: bool = False):
    """Turn an input error raised inside the block into ``prog: error: <message>`` on stderr (rank 0; the
    other ranks' own log, see the module doc) and ``SystemExit(2)``; other errors propagate with their
    traceback. A worker process that exited with status 2 (it has reported already) ends the launcher with
    status 2 too."""
    try:
        yield
    except ProcessExitedException as err:
        if err.exit_code == INPUT_ERROR_EXIT_CODE:
            raise SystemExit(INPUT_ERROR_EXIT_CODE) from None
        raise
    except Exception as err:
        if not is_input_error(err):
            raise
        line = f"{prog}: error: {error_message(err)}"
        rank = process_rank()
        if rank == 0:
            if traceback_requested(show_traceback):
                traceback.print_exc()
            print(line, file=sys.stderr, flush=True)
        else:
            _log_to_own_file(rank, line, show_traceback)
        raise SystemExit(INPUT_ERROR_EXIT_CODE) from None


def _log_to_own_file(rank: int, line: str, show_traceback: bool) -> None:
    """Rank > 0: the error goes to this rank's log file only (rank 0 prints it for the job). Before that file
    exists (a config that cannot be read) there is nothing to write to: every rank meets such an error."""
    logger = logging.getLogger("dinov3seg")  # train_net.py's setup gives it the file (Detectron2's setup_logger)
    to_files = [h for h in logger.handlers if getattr(h, "stream", None) not in (sys.stdout, sys.stderr)]
    if to_files:
        record = logger.makeRecord(logger.name, logging.ERROR, __file__, 0, f"rank {rank}: {line}", None,
                                   sys.exc_info() if traceback_requested(show_traceback) else None)
        for handler in to_files:
            handler.handle(record)


class InputErrorTracebackFilter(logging.Filter):
    """Drops log records that carry the traceback of an input error (Detectron2's training loop logs
    "Exception during training:" with the traceback before re-raising), unless a traceback was asked for."""

    def __init__(self, show_traceback: bool = False):
        super().__init__()
        self.show_traceback = show_traceback

    def filter(self, record: logging.LogRecord) -> bool:
        err = record.exc_info[1] if record.exc_info else None
        return err is None or not is_input_error(err) or traceback_requested(self.show_traceback)
