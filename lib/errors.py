"""User-facing failures: one line naming the file and what to do, a non-zero exit, no traceback."""
from __future__ import annotations

import errno
import re
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Callable

OOM_ADVICE = ("out of memory: lower --batch-size (and raise --accum-steps to keep the effective batch) or "
              "--predict-batch-size, or lower --height/--width or --workers; finished files are kept")
# what torch says when an allocation fails: CUDA ("CUDA out of memory"), the CPU allocator
# ("DefaultCPUAllocator: can't allocate memory"; "not enough memory" on Windows), other backends
_OOM_TEXTS = ("out of memory", "can't allocate memory", "not enough memory")


class PipelineError(Exception):
    """A problem the user can fix (bad input, missing stage output, bad setting)."""


def listing(items: Sequence[str], n: int = 5, sep: str = ", ", more: str = " ... and {} more") -> str:
    """The first ``n`` items joined by ``sep``, then ``more`` with the count of the others when there are any:
    'a, b ... and 3 more'. Every message that names some of many things says it this way."""
    return sep.join(items[:n]) + (more.format(len(items) - n) if len(items) > n else "")


def steps(*commands: str) -> str:
    """Repair commands to run in order, as one clause: "`a`, then `b`"."""
    return ", then ".join(commands)


def restart_advice(fold: int | str, run: Path | None = None) -> str:
    """The command that repairs a fold whose files cannot be used (damaged, or of another split); when ``run`` (the
    experiment's folder) holds test maps, also the 03_predict.py --replace that the retrained model's maps need
    (03 refuses to mix them with the old model's), so the advice names every step at once."""
    from lib import files
    from params import command
    then = [command("03_predict.py", "--replace")] if run is not None and (run / files.TEST_PROBS).is_dir() else []
    return "train the fold again: " + steps(command("02_train.py", "--fold", str(fold), "--restart"), *then)


def run_main(main: Callable[[], None]) -> None:
    """Run a script's main(); turn expected failures into a one-line message and exit code 1."""
    try:
        main()
    except PipelineError as e:
        _die(_unwrapped(str(e)))
    except KeyboardInterrupt:
        _die("interrupted; finished files are kept, a re-run continues where it can", code=130)
    except MemoryError:
        _die(OOM_ADVICE)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            _die(f"disk full while writing {e.filename or 'output'}: free space and re-run; "
                 "files written before are intact")
        if e.filename is not None:
            _die(f"{e.filename}: {e.strerror or e}; check the path and its permissions")
        raise
    except RuntimeError as e:
        if any(text in str(e).lower() for text in _OOM_TEXTS):
            _die(OOM_ADVICE)
        if _in_distributed_job():  # a collective failed: a peer process is gone or unreachable
            first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
            first = re.sub(r"^\[[^\]]*\]\s*", "", first).split(". ")[0][:160]  # no source location, one sentence
            _die(f"another process of this torchrun job stopped or cannot be reached ({first}); finished files "
                 "are kept; continue with the same command (02: add --resume)")
        raise


def _in_distributed_job() -> bool:
    """Did this process join a torchrun job (lib.runtime.Dist.start)? Asked after the job may have been closed."""
    return bool(getattr(sys.modules.get("lib.runtime"), "JOINED", False))


def _unwrapped(message: str) -> str:
    """The original message of an error that a torch DataLoader worker re-raised with its traceback inside."""
    marker = f"{PipelineError.__name__}: "  # the traceback ends "lib.errors.PipelineError: <the message>"
    if message.startswith("Caught ") and "\nOriginal Traceback" in message and marker in message:
        return message[message.rfind(marker) + len(marker):].rstrip()
    return message


def _die(message: str, code: int = 1) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    if _in_distributed_job():  # torchrun's SIGTERM to the others must not interrupt this exit with a traceback
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.exit(code)
