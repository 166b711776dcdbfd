"""Run the code blocks of a Markdown guide and check the output it shows.

The guides are written for people; this module holds them to what they say.
A fenced block's info string decides what happens to it (GitHub shows only its
first word, so the flags after it stay invisible to readers):

- ``python``: executed, in order, in one namespace per guide. The block right
  after it, if it has no language (or ``text``), is the output it prints.
- ``console``: a shell session. Each ``$ `` line (continued by a trailing
  ``\\``) runs in bash; the lines up to the next prompt are its output (stdout
  and stderr together). ``console background`` starts its one command and
  leaves it running (a sandbox), waiting until its output shows the lines given.
- ``notest`` after the language: shown, not run (a command for a real host);
  every such block is listed by the guide's test so the list stays visible.
- anything else (``toml``, ``json``, ``mermaid``, no language): shown, not run.

Expected output is matched line by line after trailing spaces are dropped: a
line that is only ``...`` matches any number of lines, and ``...`` inside a
line matches any text. Literal values that differ between the guide and the
run (a port, a temporary folder) are declared by the guide's test as
substitutions, applied to the code before it runs and, in reverse, to the
output before it is compared.
"""

from __future__ import annotations

import contextlib
import io
import os
import queue
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ELLIPSIS = "..."
RUNNABLE = ("python", "console")
SHELL_TIMEOUT = 300.0
# A background command that has not shown its lines by then fails with what it did print
# (before pytest-timeout's 300 s, which would only show a stack).
START_TIMEOUT = 180.0
# Variables bash sets itself: not the reader's exports.
_SHELL_OWN = frozenset({"PWD", "OLDPWD", "SHLVL", "_"})


@dataclass(frozen=True)
class Block:
    """One fenced code block of a guide."""

    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    flags: tuple[str, ...]
    text: str
    output: Block | None = None  # the unlabelled block that follows a python block

    @property
    def where(self) -> str:
        return f"{self.path.name}:{self.line}"

    @property
    def runs(self) -> bool:
        return self.lang in RUNNABLE and "notest" not in self.flags


def blocks(path: Path) -> list[Block]:
    """The guide's fenced blocks in order; a python block owns the output block after it."""
    lines = path.read_text(encoding="utf-8").split("\n")
    found: list[Block] = []
    i = 0
    while i < len(lines):
        opening = lines[i]
        if not opening.startswith("```"):
            i += 1
            continue
        info = opening[3:].split()
        end = i + 1
        while end < len(lines) and not lines[end].startswith("```"):
            end += 1
        if end == len(lines):
            raise ValueError(f"{path.name}:{i + 1}: code block is never closed")
        block = Block(
            path, i + 1, info[0] if info else "", tuple(info[1:]), "\n".join(lines[i + 1 : end])
        )
        previous = found[-1] if found else None
        between = lines[_closing_line(previous) : i] if previous else []
        if (
            previous is not None
            and previous.lang == "python"
            and previous.output is None
            and block.lang in ("", "text")
            and not any(line.strip() for line in between)
        ):
            found[-1] = Block(
                previous.path,
                previous.line,
                previous.lang,
                previous.flags,
                previous.text,
                output=block,
            )
        else:
            found.append(block)
        i = end + 1
    return found


def _closing_line(block: Block) -> int:
    """Index just past the closing fence of ``block`` (or of its output block)."""
    last = block.output or block
    return last.line + last.text.count("\n") + 2


# ---- matching ----------------------------------------------------------------


def _line_pattern(expected: str) -> re.Pattern[str]:
    parts = [re.escape(part) for part in expected.split(ELLIPSIS)]
    return re.compile(".*".join(parts) + r"\Z", re.DOTALL)


def matches(expected: str, actual: str) -> bool:
    """Does ``actual`` fit ``expected`` (``...`` lines and ``...`` inside lines as wildcards)?"""
    want = _trimmed(expected)
    got = _trimmed(actual)
    return _match_lines(want, 0, got, 0, {})


def _trimmed(text: str) -> list[str]:
    rows = [line.rstrip() for line in text.split("\n")]
    while rows and not rows[0]:
        rows.pop(0)
    while rows and not rows[-1]:
        rows.pop()
    return rows


def _match_lines(
    want: list[str], i: int, got: list[str], j: int, memo: dict[tuple[int, int], bool]
) -> bool:
    key = (i, j)
    if key in memo:
        return memo[key]
    if i == len(want):
        result = j == len(got)
    elif want[i].strip() == ELLIPSIS:
        result = any(_match_lines(want, i + 1, got, k, memo) for k in range(j, len(got) + 1))
    else:
        result = (
            j < len(got)
            and _line_pattern(want[i]).match(got[j]) is not None
            and _match_lines(want, i + 1, got, j + 1, memo)
        )
    memo[key] = result
    return result


def substitute(text: str, values: Mapping[str, str]) -> str:
    """Replace each guide literal by its value in this run (longest first)."""
    for literal in sorted(values, key=len, reverse=True):
        text = text.replace(literal, values[literal])
    return text


def unsubstitute(text: str, values: Mapping[str, str]) -> str:
    """Put the guide's literals back into output made by this run."""
    return substitute(text, {value: literal for literal, value in values.items()})


class OutputMismatch(AssertionError):
    """What a block printed is not what its guide shows."""

    def __init__(self, block: Block, command: str, expected: str, actual: str) -> None:
        self.block = block
        self.actual = actual
        super().__init__(
            f"{block.where}: {command.strip()[:200]!r} printed\n{actual}\n"
            f"--- but the guide shows ---\n{expected}"
        )


# ---- running -------------------------------------------------------------------


@dataclass
class Guide:
    """One guide's run: its Python namespace, shell environment and background processes."""

    path: Path
    cwd: Path
    env: dict[str, str] = field(default_factory=dict)
    values: dict[str, str] = field(default_factory=dict)
    # guide literal -> regex whose group 1, in what a command or a python block prints, is its value
    learn: dict[str, str] = field(default_factory=dict)
    namespace: dict[str, Any] = field(default_factory=dict)
    background: list[subprocess.Popen[str]] = field(default_factory=list)
    not_run: list[Block] = field(default_factory=list)
    ran: int = 0
    status: int = 0  # the last command's exit status, which the next one sees as $?
    # Write what blocks printed into the guide instead of failing (ONCOFED_DOCS_UPDATE=1),
    # for a person to review as a diff; never set in CI.
    update: bool = False
    rewrites: dict[Block, str] = field(default_factory=dict)
    # text of a runnable block -> called once just before the first block holding it: what
    # happens in the world meanwhile (a researcher's task arrives, a file goes missing),
    # which the guide describes but its reader does not type
    before: dict[str, Callable[[], None]] = field(default_factory=dict)

    def run(self) -> None:
        """Run every runnable block in order; raise at the first that does not do what it shows."""
        try:
            for block in blocks(self.path):
                if block.runs:
                    for text in [text for text in self.before if text in block.text]:
                        self.before.pop(text)()
                if block.lang in RUNNABLE and "notest" in block.flags:
                    self.not_run.append(block)
                elif block.lang == "python":
                    self._python(block)
                elif block.lang == "console":
                    self._console(block)
            if self.before:
                raise ValueError(f"{self.path.name}: no runnable block holds {sorted(self.before)}")
        finally:
            self.stop()
            if self.update and self.rewrites:
                _rewrite(self.path, self.rewrites)

    def _mismatch(self, block: Block, command: str, expected: str, actual: str) -> None:
        if not self.update:
            raise OutputMismatch(block, command, expected, actual)

    def stop(self) -> None:
        for process in self.background:
            if process.poll() is None:
                process.send_signal(2)  # Ctrl-C, as the guide tells its reader
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self.background.clear()

    # -- python

    def _python(self, block: Block) -> None:
        code = substitute(block.text, self.values)
        printed = io.StringIO()
        with _working_directory(self.cwd), contextlib.redirect_stdout(printed):
            exec(compile(code, block.where, "exec"), self.namespace)
        self.ran += 1
        for line in printed.getvalue().splitlines():
            self._learn(line)  # a folder or an id the code printed, which later blocks use
        if block.output is not None:
            actual = unsubstitute(printed.getvalue(), self.values)
            if not matches(block.output.text, actual):
                self.rewrites[block.output] = "\n".join(_trimmed(actual))
                self._mismatch(block, code, block.output.text, actual)

    # -- shell

    def _console(self, block: Block) -> None:
        steps = list(_shell_steps(block.text))
        if "background" in block.flags:
            if len(steps) != 1:
                raise ValueError(f"{block.where}: a background block holds exactly one command")
            command, expected = steps[0]
            self._start(block, command, expected)
            return
        shown: list[str] = []
        for command, expected in steps:
            actual = self._shell(substitute(command, self.values))
            self.ran += 1
            for line in actual.splitlines():
                self._learn(line)
            actual = unsubstitute(actual, self.values)
            shown.append("$ " + command)
            if matches(expected, actual):
                shown.extend(_trimmed(expected))
            else:
                shown.extend(_trimmed(actual))
                self.rewrites[block] = "\n".join(shown)  # completed as later steps run
                self._mismatch(block, command, expected, actual)
        if block in self.rewrites:
            self.rewrites[block] = "\n".join(shown)

    def _environment(self) -> dict[str, str]:
        # TMPDIR: what a guide's sandbox keeps after it stops (its logs) stays in its folder.
        return {
            **os.environ,
            "COLUMNS": "100",
            "TERM": "dumb",
            "NO_COLOR": "1",
            "TMPDIR": str(self.cwd),
            **self.env,
        }

    def _shell(self, command: str) -> str:
        # `export` lines carry over to later commands, as in the reader's terminal.
        script = (
            f"(exit {self.status})\n{command}\n__status=$?\nexport -p > .guide-env\nexit $__status"
        )
        done = subprocess.run(
            ["bash", "-c", script],
            cwd=self.cwd,
            env=self._environment(),
            capture_output=True,
            text=True,
            timeout=SHELL_TIMEOUT,
        )
        self._keep_exports()
        self.status = done.returncode
        return done.stdout + done.stderr

    def _keep_exports(self) -> None:
        exported = self.cwd / ".guide-env"
        if not exported.exists():
            return
        for line in exported.read_text().splitlines():
            found = re.match(r'declare -x ([A-Za-z_][A-Za-z0-9_]*)="(.*)"$', line)
            if not found or found.group(1) in _SHELL_OWN:
                continue
            value = re.sub(r'\\(["\\$`])', r"\1", found.group(2))
            if os.environ.get(found.group(1)) != value:
                self.env[found.group(1)] = value
        exported.unlink()

    def _start(self, block: Block, command: str, expected: str) -> None:
        process = subprocess.Popen(
            ["bash", "-c", f"exec {substitute(command, self.values)}"],
            cwd=self.cwd,
            env=self._environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.background.append(process)
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=_pump, args=(process, lines), daemon=True).start()
        want = [line for line in _trimmed(expected) if line.strip() != ELLIPSIS]
        seen: list[str] = []
        deadline = time.monotonic() + START_TIMEOUT
        while want and time.monotonic() < deadline:
            try:
                line = lines.get(timeout=1.0)
            except queue.Empty:
                if process.poll() is not None and lines.empty():
                    break
                continue
            seen.append(line.rstrip())
            self._learn(line)
            if _line_pattern(want[0]).match(unsubstitute(line.rstrip(), self.values)):
                want.pop(0)
        self.ran += 1
        if want:
            raise OutputMismatch(block, command, expected, "\n".join(seen))

    def _learn(self, line: str) -> None:
        """Values a command prints that later blocks use (an address, a folder, a task id)."""
        for literal, pattern in list(self.learn.items()):
            found = re.search(pattern, line)
            if found:
                self.values[literal] = found.group(1)
                del self.learn[literal]
                return  # one value per line: two literals may share a pattern (two task ids)


def _pump(process: subprocess.Popen[str], lines: queue.Queue[str]) -> None:
    """Hand a background command's output lines over as they come (and keep its pipe drained)."""
    assert process.stdout is not None
    for line in process.stdout:
        lines.put(line)


def _rewrite(path: Path, rewrites: Mapping[Block, str]) -> None:
    lines = path.read_text(encoding="utf-8").split("\n")
    for block in sorted(rewrites, key=lambda b: b.line, reverse=True):
        body = block.text.count("\n") + 1 if block.text else 0
        lines[block.line : block.line + body] = rewrites[block].split("\n")
    path.write_text("\n".join(lines), encoding="utf-8")


def _shell_steps(text: str) -> Iterator[tuple[str, str]]:
    """(command, expected output) for each ``$ `` prompt of a console block."""
    command: list[str] = []
    output: list[str] = []
    continuing = False
    for line in text.split("\n"):
        if continuing:
            command.append(line)
            continuing = line.endswith("\\")
        elif line.startswith("$ "):
            if command:
                yield "\n".join(command), "\n".join(output)
            command, output = [line[2:]], []
            continuing = line.endswith("\\")
        elif command:
            output.append(line)
        elif line.strip():
            raise ValueError(f"console block line {line!r} comes before any '$ ' prompt")
    if command:
        yield "\n".join(command), "\n".join(output)


@contextlib.contextmanager
def _working_directory(path: Path) -> Iterator[None]:
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)
