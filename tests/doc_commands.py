"""The shell commands of a Markdown page's fenced ``bash`` blocks, as a reader would type them."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_FENCE = re.compile(r"^```(?:bash|sh|shell)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def _without_comment(line: str) -> str:
    """``line`` up to a ``#`` that starts a shell comment (outside quotes, after a blank or at the start)."""
    quote = ""
    for i, char in enumerate(line):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
        else:
            continue
    return line


def shell_commands(doc: str) -> list[str]:
    """Every command of the fenced shell blocks of ``doc`` (a path relative to the repository root), in
    order: continuation lines joined, comments dropped, ``a && b`` split in two, blanks collapsed."""
    commands = []
    for block in _FENCE.finditer((ROOT / doc).read_text()):
        for line in block.group(1).replace("\\\n", " ").splitlines():
            for part in _without_comment(line).split(" && "):
                if part.strip():
                    commands.append(" ".join(part.split()))
    return commands


def program(command: str) -> str:
    """The program a command runs, ``.venv/bin/`` dropped: ``.venv/bin/dir-serve --queue X`` -> dir-serve."""
    return shlex.split(command)[0].removeprefix(".venv/bin/")


def flags(command: str) -> set[str]:
    """The ``--long`` options a command passes."""
    return {word.split("=")[0] for word in shlex.split(command) if word.startswith("--")}
