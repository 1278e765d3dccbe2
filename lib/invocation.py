"""How a suggested command starts, so that it pastes as printed: the interpreter this process runs and a script's
path, both as seen from the working folder. The standard library only: the torch-free predictor (deploy.py) uses it
too, without params or PyTorch."""
from __future__ import annotations

import os
import re
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the project: the numbered scripts, params.py, deploy.py


def python() -> str:
    """The interpreter this process runs, as a command names it: ``.venv/bin/python`` (its path from the working
    folder) inside the project, else ``python``."""
    executable = Path(sys.executable)
    return os.path.relpath(executable) if executable.is_relative_to(Path.cwd()) else "python"


def invocation(script: str, program: str = "python") -> list[str]:
    """The words that start ``script`` (e.g. "02_train.py") as this process was started: the interpreter it runs and
    the script's path from the working folder. ``program`` "torchrun": the torchrun beside that interpreter
    (``.venv/bin/torchrun``) instead."""
    shown = python()
    if program != "python":
        shown = os.path.join(os.path.dirname(shown), program) if os.path.dirname(shown) else program
    return [shown, os.path.relpath(ROOT / script)]


def suggested(script: str, args: list[str]) -> str:
    """The command that runs ``script`` with ``args`` as this process was run, quoted for a POSIX shell and in
    backticks, as every suggested command is printed: `.venv/bin/python 02_train.py --fold 0 --input 'in put'`."""
    return "`" + shlex.join([*invocation(script), *map(str, args)]) + "`"


def usage(doc: str) -> str:
    """A script's docstring as --help shows it: each example's ``python <script>.py`` (a script of this project)
    becomes the interpreter and path this process was started with, and ``torchrun <its flags> <script>.py`` the
    torchrun beside that interpreter and the same path, so that an example pastes as printed."""
    def shown(m: re.Match) -> str:
        if not (ROOT / m[3]).is_file():
            return m[0]
        program, script = invocation(m[3], m[1])
        return f"{shlex.quote(program)}{m[2]}{shlex.quote(script)}"
    return re.sub(r"\b(python|torchrun)((?: +--?[\w-]+(?: +[\w:.]+)?)*? +)([\w.]+\.py)\b", shown, doc)
