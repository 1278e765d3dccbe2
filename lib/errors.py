"""User-facing failures: one line naming the file and what to do, a non-zero exit, no traceback."""
from __future__ import annotations

import errno
import sys
from typing import Callable


class PipelineError(Exception):
    """A problem the user can fix (bad input, missing stage output, bad setting)."""


def run_main(main: Callable[[], None]) -> None:
    """Run a script's main(); turn expected failures into a one-line message and exit code 1."""
    try:
        main()
    except PipelineError as e:
        _die(str(e))
    except KeyboardInterrupt:
        _die("interrupted; finished files are kept, a re-run continues where it can", code=130)
    except MemoryError:
        _die("out of memory: lower --batch-size, --predict-batch-size or --workers")
    except OSError as e:
        if e.errno == errno.ENOSPC:
            _die(f"disk full while writing {e.filename or 'output'}: free space and re-run; "
                 "files written before are intact")
        raise
    except RuntimeError as e:
        if "out of memory" in str(e).lower():
            _die("out of memory on the device: lower --batch-size (and raise --accum-steps to keep "
                 "the effective batch), or lower --height/--width")
        raise


def _die(message: str, code: int = 1) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)
