"""Every example in README.md is run, so that none can drift from what miniguest does.

Each code block in the README is preceded by an HTML comment (invisible when rendered) saying how it is
tested; a block without one fails `test_every_readme_block_says_how_it_is_tested`. When you add a section,
add the comment:

  <!-- readme-test: sh -->        the block is a shell script, run with `sh -e` in an empty temporary directory
                                  with `miniguest` on PATH, $REPO (the repository) and $SAMPLES (the bundled
                                  guests) set and no standard input. `miniguest` exiting with a guest's outcome
                                  (3-8: crash, reboot, ..., hung, a limit) counts as success; a usage error (2),
                                  a host error (1) or a bad image (9) fails the test, as does a Traceback.
      options after `;`:          `stderr` (the next `output` block is checked against standard error),
                                  `setup: CMD` (shell run first, e.g. to create the files the example names),
                                  `skip-line: WORD` (lines containing WORD are not run; continuation lines go
                                  with them)
  <!-- readme-test: output -->    lines that the previous `sh` block's output must contain, in order;
                                  whitespace runs compare equal and `...` matches anything
  <!-- readme-test: python -->    run as a script; `print(...)  # -> TEXT` lines must print TEXT, in order
  <!-- readme-test: pytest -->    a test file using the pytest plugin: run once (it must fail for the missing
                                  golden), with --update-golden, then again (it must pass)
  <!-- readme-test: gdb -->       a transcript: `miniguest gdb ...` then `(gdb) COMMAND` lines run in gdb's
                                  batch mode from the repository root; the other lines are expected output
  <!-- readme-test: json; from: CMD -->
                                  JSON objects that CMD (run as in `sh`) writes to the file named last in CMD
  <!-- readme-test: skip: WHY -->  not run here, and WHY says where it is checked instead. Used for: the two
                                  install commands (they install from PyPI and Debian; .ci/run runs the
                                  second one, checked below to be the same command, and both were run by
                                  hand from a clean clone), downloads of Debian packages, and rebuilding the
                                  committed firmware (tests/test_firmware.py).

Interactive sessions that need a terminal (`miniguest boot` with a live console, gdb at its prompt) are run
without one: the console goes to a pipe and gdb runs its commands in batch mode.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Optional

import pytest

from guestlib import ROOT, SAMPLES

README = os.path.join(ROOT, "README.md")
DIRECTIVE = re.compile(r"^<!--\s*readme-test:\s*(.*?)\s*-->\s*$")
OPTION_SPLIT = re.compile(r";\s*(?=stderr\b|setup:|skip-line:|from:)")     # `;` inside a value stays
GUEST_OUTCOMES = {0, 3, 4, 5, 6, 7, 8, 130, 143}


@dataclass
class Block:
    line: int                       # 1-based line of the block's first line
    lines: list[str]
    lang: str = ""
    directive: Optional[str] = None
    options: dict[str, str] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return re.split(r"[;:\s]", (self.directive or "").strip(), maxsplit=1)[0]

    @property
    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def parse(text: str) -> list[Block]:
    """Fenced (```) and indented (4 spaces, after a blank or a directive line) code blocks, each with the
    readme-test directive just before it (blank lines may come between)."""
    lines = text.split("\n")
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            lang = line[3:].strip()
            j = i + 1
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            blocks.append(Block(i + 2, lines[i + 1:j], lang))
            i = j + 1
            continue
        prev = lines[i - 1] if i else ""
        if line.startswith("    ") and line.strip() and (not prev.strip() or DIRECTIVE.match(prev)):
            j = i
            body: list[str] = []
            while j < len(lines) and (lines[j].startswith("    ") or not lines[j].strip()):
                if not lines[j].strip() and not (j + 1 < len(lines) and lines[j + 1].startswith("    ")):
                    break
                body.append(lines[j][4:])
                j += 1
            blocks.append(Block(i + 1, body))
            i = j
            continue
        i += 1
    for b in blocks:
        k = b.line - 2
        if lines[k].startswith("```"):
            k -= 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        m = DIRECTIVE.match(lines[k]) if k >= 0 else None
        if m:
            b.directive = m.group(1)
            if b.kind != "skip":
                for part in OPTION_SPLIT.split(m.group(1))[1:]:
                    key, _, value = part.strip().partition(":")
                    b.options[key.strip()] = value.strip()
    return blocks


with open(README, encoding="utf-8") as _f:
    BLOCKS = parse(_f.read())


def block_id(b: Block) -> str:
    return f"README.md:{b.line}:{b.kind}"


def test_every_readme_block_says_how_it_is_tested():
    missing = [f"README.md:{b.line}" for b in BLOCKS if b.directive is None]
    assert not missing, ("code blocks without a `<!-- readme-test: ... -->` line before them (see "
                         f"tests/test_readme.py for the kinds): {missing}")
    unknown = [block_id(b) for b in BLOCKS if b.kind not in ("sh", "output", "python", "pytest", "gdb", "json",
                                                                 "skip")]
    assert not unknown, unknown
    skipped = [b for b in BLOCKS if b.kind == "skip"]
    assert all(b.directive.split(":", 1)[1].strip() for b in skipped), "a skip must say why"


def test_ci_runs_exactly_the_readme_test_command():
    commands = [b.text.strip() for b in BLOCKS if b.kind == "skip" and "pytest" in b.text]
    with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as f:
        ci = [line for line in f.read().splitlines() if line.strip() and not line.startswith(("#", "set ", "cd "))]
    assert commands and ci == [commands[0]], (ci, commands)
    boot = [b.text.strip() for b in BLOCKS if b.kind == "skip" and "miniguest boot" in b.text]
    assert boot and boot[0].endswith(".venv/bin/miniguest boot") and "python3 -m venv .venv" in boot[0]


# -- running the examples -----------------------------------------------------------------------------------
def matches(expected: str, actual: str) -> bool:
    """Whitespace runs compare equal; `...` matches anything."""
    parts = [re.escape(" ".join(p.split())) for p in expected.split("...")]
    return re.search(".*".join(parts), " ".join(actual.split())) is not None


def contains_in_order(expected: list[str], output: str) -> Optional[str]:
    lines = output.splitlines()
    at = 0
    for want in expected:
        if not want.strip():
            continue
        while at < len(lines) and not matches(want, lines[at]):
            at += 1
        if at == len(lines):
            return want
        at += 1
    return None


@pytest.fixture
def sandbox(tmp_path):
    """An empty directory with a `miniguest` on PATH that runs this checkout and reports bad exit codes."""
    bin_dir = tmp_path / ".bin"
    bin_dir.mkdir()
    shim = bin_dir / "miniguest"
    shim.write_text(f'''#!/bin/sh
"{sys.executable}" -m miniguest.cli "$@"
rc=$?
case " {' '.join(map(str, sorted(GUEST_OUTCOMES)))} " in *" $rc "*) exit 0;; esac
echo "readme-test: \\`miniguest $*\\` exited $rc" >&2
exit $rc
''')
    shim.chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", REPO=ROOT,
               SAMPLES=SAMPLES, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("XENSTORED_PATH", None)
    return work, env


def run_sh(script: str, work, env, timeout: float = 600) -> subprocess.CompletedProcess:
    r = subprocess.run(["sh", "-e", "-c", script], cwd=work, env=env, stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=timeout)
    return r


def runnable(b: Block) -> str:
    """The block's commands: without `skip-line` lines (and their continuation lines) and without comment
    lines that only continue the comment of the line before."""
    skip = b.options.get("skip-line")
    out: list[str] = []
    dropping = False
    for line in b.lines:
        if dropping or (skip and skip in line):
            dropping = line.rstrip().endswith("\\")
            continue
        if line.startswith(" ") and line.strip().startswith("#"):
            continue
        out.append(line)
    return "\n".join(out) + "\n"


SH_BLOCKS = [b for b in BLOCKS if b.kind == "sh"]


@pytest.mark.slow
@pytest.mark.parametrize("block", SH_BLOCKS, ids=block_id)
def test_shell_example(block: Block, sandbox):
    if "xenstore-ls" in block.text and shutil.which("xenstore-ls") is None:
        pytest.skip("needs xenstore-utils")
    work, env = sandbox
    script = (block.options.get("setup", "") + "\n" if block.options.get("setup") else "") + runnable(block)
    r = run_sh(script, work, env)
    assert r.returncode == 0 and "readme-test:" not in r.stderr, \
        f"README.md:{block.line}: the example failed ({r.returncode}):\n{script}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    assert "Traceback" not in r.stderr, r.stderr
    i = BLOCKS.index(block)
    if i + 1 < len(BLOCKS) and BLOCKS[i + 1].kind == "output":
        out = r.stderr if "stderr" in block.options else r.stdout
        miss = contains_in_order(BLOCKS[i + 1].lines, out)
        assert miss is None, f"README.md:{BLOCKS[i + 1].line}: not in the output: {miss!r}\n{out[-4000:]}"


@pytest.mark.slow
@pytest.mark.parametrize("block", [b for b in BLOCKS if b.kind == "python"], ids=block_id)
def test_python_example(block: Block, sandbox):
    work, env = sandbox
    r = subprocess.run([sys.executable, "-c", block.text], cwd=work, env=env, stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    expected = [m.group(1).strip() for m in (re.search(r"^print\(.*#\s*->\s*(.*)$", line) for line in block.lines)
                if m]
    assert expected and r.stdout.splitlines() == expected, (r.stdout, expected)


@pytest.mark.slow
@pytest.mark.parametrize("block", [b for b in BLOCKS if b.kind == "pytest"], ids=block_id)
def test_pytest_example(block: Block, sandbox):
    work, env = sandbox
    (work / "test_example.py").write_text(block.text)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist"]
    first = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 1 and "no golden trace" in first.stdout, first.stdout
    update = subprocess.run(cmd + ["--update-golden"], cwd=work, env=env, capture_output=True, text=True,
                            timeout=300)
    assert update.returncode == 0, update.stdout
    again = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "1 passed" in again.stdout, again.stdout


@pytest.mark.slow
@pytest.mark.parametrize("block", [b for b in BLOCKS if b.kind == "json"], ids=block_id)
def test_json_example(block: Block, sandbox):
    work, env = sandbox
    cmd = block.options["from"]
    r = run_sh(cmd, work, env)
    assert r.returncode == 0, r.stderr
    with open(work / cmd.split()[-1], encoding="utf-8") as f:
        exported = json.load(f)
    events = exported["traceEvents"] if isinstance(exported, dict) else exported
    text, decoder, at = " ".join(block.lines), json.JSONDecoder(), 0
    wanted = []
    while at < len(text):
        if text[at].isspace():
            at += 1
            continue
        obj, at = decoder.raw_decode(text, at)
        wanted.append(obj)
    assert wanted and all(w in events for w in wanted), wanted


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("gdb") is None, reason="needs gdb")
@pytest.mark.parametrize("block", [b for b in BLOCKS if b.kind == "gdb"], ids=block_id)
def test_gdb_transcript(block: Block, sandbox):
    _, env = sandbox
    command = block.lines[0].split()
    assert command[:2] == ["miniguest", "gdb"], block.lines[0]
    gdb_commands = [line[len("(gdb) "):] for line in block.lines if line.startswith("(gdb) ")]
    argv = [sys.executable, "-m", "miniguest.cli", *command[1:], "--quiet", "--max-time", "60",
            "--gdb-arg=-batch", "--gdb-arg=-nx"]
    for c in gdb_commands + ["kill"]:
        argv += ["--gdb-arg=-ex", f"--gdb-arg={c}"]
    r = subprocess.run(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=300)     # gdb prints monitor output on stderr
    expected = [line for line in block.lines[1:] if not line.startswith("(gdb) ")]
    miss = contains_in_order(expected, r.stdout)
    assert miss is None, f"not in gdb's output: {miss!r}\n{r.stdout}"
