"""The documentation runs as written: every ```python block of README.md, docs/quickstart.md, docs/design.md and
docs/extending.md, and the command lines of README.md and docs/quickstart.md.

README.md is read as one reader's session, in a fresh working directory: its Python blocks run in order in one
namespace, its command lines run with the installed ``attnlrp`` (each Python block after the commands above it;
the commands start early, beside the Python blocks before them, since none of them reads what a Python block
writes), and the output it shows for
``make demo`` is compared with what the demo's command prints. The test supplies only what the README leaves to
the reader (``PRELUDES``) and checks what the README's comments say a block gives (``CLAIMS``). ``make`` lines are
checked to name a target of the Makefile (``make test`` cannot run inside the suite; ``make demo``'s command is
run). A command line with options in brackets runs up to its first ``[``, with ``SMALL_SETTINGS`` where the
README's own are slow. Blocks marked ``<!-- synopsis -->`` (a
command's options) are not run; every other block is, and the test counts them. The docs' blocks are
self-contained, run one by one, and must not leave a rule or a method registered; their command blocks run like
the README's, each in a fresh working directory.

The embedded SmolLM2 is loaded once (the session's ``smollm2``): inside the Python examples
``attnlrp.models.load_model()`` of the default model returns it. The commands run in their own processes.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import transformers

pytestmark = pytest.mark.real_model

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("docs/quickstart.md", "docs/design.md", "docs/extending.md")
SYNOPSIS = "synopsis"
TRANSFORMERS_MAJOR = int(transformers.__version__.split(".")[0])

#: What the README leaves to the reader, keyed by a piece of the one block that needs it.
PRELUDES = {
    # an image classifier and a preprocessed image: a tiny random ViT and noise stand in for the reader's
    "ImageExplainer(model": """
import torch, transformers
torch.manual_seed(0)
model = transformers.ViTForImageClassification(transformers.ViTConfig(
    image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_labels=3)).eval()
pixel_values = torch.randn(3, 32, 32)
""",
    # the reader's prompt as token ids
    "steer(lm.model": """
ids = lm.tokenizer("The capital of France is", return_tensors="pt").input_ids
""",
    # the lower-level context on the language model loaded at the top of the README
    "attnlrp.lrp(model": """
model = lm.model
ids = lm.tokenizer("Lisbon is the capital of", return_tensors="pt").input_ids
""",
}


#: Smaller settings for README command lines whose own are slow for the suite (appended to the line's words).
SMALL_SETTINGS = {
    "steer": ["--generate", "4"],  # the default generates 20 tokens, twice (before and after steering)
}

#: What the README's comments say a block gives (with transformers 5's tokens; 4.57's start with a BOS token).
CLAIMS = {
    'e = explainer("Lisbon is the capital of")': """
assert [token for _, token, _ in e.top(3)] == ["bon", " of", " capital"], e.top(3)
""",
    "L.top_neurons(10)": """
assert (L.top_neurons(1)[0].layer, L.top_neurons(1)[0].neuron) == (29, 1512), L.top_neurons(1)
""",
}


@dataclass(frozen=True)
class Block:
    path: str
    line: int
    language: str
    code: str
    marker: str | None  # the HTML comment right before the block: "synopsis", "output: make demo"

    def __str__(self) -> str:
        return f"{self.path}:{self.line}"


_FENCE = re.compile(r"^```([\w-]*)\n(.*?)^```$", re.S | re.M)
_MARKER = re.compile(r"<!--\s*(.*?)\s*-->")


def blocks(path: str) -> list[Block]:
    text = (ROOT / path).read_text(encoding="utf-8")
    found = []
    for match in _FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
        marker = _MARKER.fullmatch(before)
        found.append(Block(path, text.count("\n", 0, match.start()) + 1, match.group(1), match.group(2),
                           marker.group(1) if marker else None))
    return found


# ----------------------------------------------------------------------------------------------- running
@pytest.fixture
def cached_model(smollm2, monkeypatch):
    """``load_model()`` of the default model with default settings (also the commands' ``load_model(args)`` run in
    this process) returns the session's SmolLM2; anything else loads as usual."""
    import attnlrp.models

    real = attnlrp.models.load_model

    def load_model(*args, **kwargs):
        default = not args or (len(args) == 1 and args[0] in (None, "smollm2"))
        return smollm2 if default and not any(kwargs.values()) else real(*args, **kwargs)

    monkeypatch.setattr(attnlrp.models, "load_model", load_model)
    return smollm2


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the commands), for the timings ``-s`` shows."""
    import resource

    return sum(resource.getrusage(who).ru_utime + resource.getrusage(who).ru_stime
               for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))


def run_python(block: Block, namespace: dict, prelude: str = "", claims: str = "") -> None:
    if prelude:
        exec(compile(prelude, f"{block} (prelude)", "exec"), namespace)
    try:
        exec(compile(block.code, str(block), "exec"), namespace)
    except Exception as error:
        raise AssertionError(f"the Python block at {block} failed: {error!r}") from error
    if claims:
        exec(compile(claims, f"{block} (what its comments say)", "exec"), namespace)


def attnlrp_command() -> list[str]:
    installed = Path(sys.executable).parent / "attnlrp"
    return [str(installed)] if installed.exists() else [sys.executable, "-m", "attnlrp.cli"]


def run_command(argv: list[str], cwd: Path, where: str) -> str:
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{where}: {shlex.join(argv)} exited {done.returncode}:\n{done.stderr[-3000:]}"
    assert done.stdout.strip(), f"{where}: {shlex.join(argv)} printed nothing"
    print(f"{where}: {shlex.join(argv)[:100]} ({time.perf_counter() - start:.1f} s)")
    return done.stdout


def concrete_command(line: str, where: str) -> list[str]:
    """A README command line up to its first optional ``[…]`` part, without a comment; no placeholder left."""
    words = shlex.split(line.split(" [", 1)[0], comments=True)
    placeholders = [w for w in words if re.fullmatch(r"[A-Z][A-Z_]+", w) or "…" in w]
    assert not placeholders, f"{where}: {line!r} has placeholders {placeholders}: mark its block as a synopsis"
    return words


def makefile() -> tuple[set[str], dict[str, str], dict[str, list[str]]]:
    """The Makefile's targets, simple variables and recipes."""
    targets, variables, recipes, current = set(), {}, {}, None
    for line in (ROOT / "Makefile").read_text(encoding="utf-8").splitlines():
        if line.startswith("\t") and current is not None:
            recipes[current].append(line.strip())
            continue
        current = None
        variable = re.match(r"^([A-Z0-9_]+)\s*[:?]?=\s*(.*)$", line)
        rule = re.match(r"^([\w.-]+)\s*:(?!=)", line)
        if variable:
            variables[variable.group(1)] = variable.group(2)
        elif rule:
            current = rule.group(1)
            targets.add(current)
            recipes[current] = []
    return targets, variables, recipes


def make_target_commands(target: str) -> list[str]:
    """The shell lines of a Makefile target's recipe, with its variables expanded (the venv as this Python's)."""
    _, variables, recipes = makefile()
    variables["VENV"] = str(Path(sys.executable).parent.parent)
    lines = []
    for line in recipes[target]:
        expanded = re.sub(r"\$\((\w+)\)", lambda m: variables[m.group(1)], line.lstrip("@"))
        lines.append(expanded)
    return lines


_NUMBER = r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?"


def matches(expected: str, actual: str, *, numbers: bool) -> bool:
    """``actual`` reads as ``expected``: the same text, numbers equal to the digits shown, ``…``/``~`` any text."""
    cache = os.environ.get("ATTNLRP_CACHE")
    if cache:
        expected = expected.replace("~/.cache/attnlrp", cache)
    pattern, shown = "", []
    for piece in re.split(rf"({_NUMBER}|…|~)", expected):
        if piece in ("…", "~"):
            pattern += ".*?"
        elif re.fullmatch(_NUMBER, piece):
            pattern += f"({_NUMBER})"
            shown.append(piece)
        else:
            pattern += re.escape(piece)
    found = re.fullmatch(pattern, actual.rstrip())
    if found is None:
        return False
    if not numbers:
        return True
    for text, value in zip(shown, found.groups()):
        decimals = len(text.split("e")[0].split(".")[1]) if "." in text else 0
        if not math.isclose(float(text), float(value), abs_tol=2 * 10.0 ** -decimals, rel_tol=1e-3):
            return False
    return True


def check_output(block: Block, printed: str) -> None:
    """Every line the README shows appears in what the command printed, in order."""
    lines = printed.splitlines()
    position = 0
    numbers = TRANSFORMERS_MAJOR >= 5  # the README shows transformers 5's output (4.57 adds a BOS token)
    shown = [line for line in block.code.splitlines() if line.strip()]
    if not numbers:
        shown = [line for line in shown if line.startswith(("method:", "target: logit of ' Portugal'"))]
    for expected in shown:
        while position < len(lines) and not matches(expected, lines[position], numbers=numbers):
            position += 1
        assert position < len(lines), f"{block}: {expected!r} is not in the output:\n{printed}"
        position += 1


# ------------------------------------------------------------------------------------------------- tests
def test_every_block_is_run_or_marked_as_a_synopsis():
    for path in ("README.md", *DOCS):
        for block in blocks(path):
            if block.language == "python" or block.marker == SYNOPSIS:
                continue
            if path != "README.md":
                assert block.language == "" and block.marker is None, \
                    f"{block}: a docs block is Python, command lines or marked <!-- {SYNOPSIS} -->"
            assert block.language == "" and (block.marker is None or block.marker.startswith("output: ")), block
    for piece in (*PRELUDES, *CLAIMS):
        assert sum(piece in b.code for b in blocks("README.md") if b.language == "python") == 1, piece


def run_command_block(block: Block, cwd: Path) -> int:
    """Run a block of command lines (or the ``make`` target whose output it shows); the number of commands run."""
    commands = 0
    if block.marker and block.marker.startswith("output: make "):
        target = block.marker.removeprefix("output: make ")
        printed = ""
        for line in make_target_commands(target):
            words = shlex.split(line)
            if words[0] == "mkdir":
                (cwd / words[-1]).mkdir(parents=True, exist_ok=True)
            elif Path(words[0]).name == "attnlrp":
                printed += run_command(attnlrp_command() + words[1:], cwd, str(block))
                commands += 1
        assert printed, f"{block}: make {target} ran no attnlrp command"
        check_output(block, printed)
        return commands
    targets, _, _ = makefile()
    for line in block.code.splitlines():
        if not line.strip():
            continue
        if line.startswith("make "):
            target = shlex.split(line, comments=True)[1]
            assert target in targets, f"{block}: {line!r}: no target {target!r} in the Makefile"
        elif line.startswith("attnlrp "):
            words = concrete_command(line, str(block))
            words += SMALL_SETTINGS.get(words[1], [])
            run_command(attnlrp_command() + words[1:], cwd, str(block))
            commands += 1
        else:
            raise AssertionError(f"{block}: {line!r} is neither a command nor make: mark the block")
    return commands


def test_readme_runs_as_a_readers_session(cached_model, tmp_path, monkeypatch):
    """The command blocks run in order in a background thread from the start, each Python block after every command
    block above it (so it finds their files): the commands' processes overlap the Python blocks before them."""
    monkeypatch.chdir(tmp_path)
    readme = blocks("README.md")
    namespace: dict = {"__name__": "__readme__"}
    synopses = [b for b in readme if b.marker == SYNOPSIS]
    with ThreadPoolExecutor(max_workers=1) as background:
        commands = {b.line: background.submit(run_command_block, b, tmp_path)
                    for b in readme if b.language != "python" and b.marker != SYNOPSIS}
        python = 0
        try:
            for block in readme:
                if block.language != "python":
                    continue
                for line, done in commands.items():
                    if line < block.line:
                        done.result()
                start, cpu = time.perf_counter(), _cpu_seconds()
                prelude = "".join(code for piece, code in PRELUDES.items() if piece in block.code)
                claims = "".join(code for piece, code in CLAIMS.items() if piece in block.code)
                run_python(block, namespace, prelude, claims if TRANSFORMERS_MAJOR >= 5 else "")
                python += 1
                print(f"{block} (python): {time.perf_counter() - start:.1f} s, {_cpu_seconds() - cpu:.1f} s of CPU "
                      "(the commands' included)")
            ran = sum(done.result() for done in commands.values())
        except BaseException:
            for done in commands.values():
                done.cancel()  # the commands not started yet
            raise
    # every block but the synopses ran: the Python blocks, the command blocks, the demo's output
    assert python + len(commands) + len(synopses) == len(readme), [str(b) for b in readme]
    assert ran >= 5  # make demo's command, neurons, steer, concepts build and show


def _doc_python_blocks() -> list[Block]:
    return [b for path in DOCS for b in blocks(path) if b.language == "python"]


@pytest.mark.parametrize("block", _doc_python_blocks(), ids=str)
def test_docs_examples_run_and_clean_up(block, cached_model, tmp_path, monkeypatch):
    from attnlrp.core import method_names
    from attnlrp.core.dispatch import OPERATION_RULES

    monkeypatch.chdir(tmp_path)
    rules_before, methods_before = dict(OPERATION_RULES), method_names()
    run_python(block, {"__name__": "__doc_example__"})
    assert dict(OPERATION_RULES) == rules_before, f"{block} left a rule registered"
    assert method_names() == methods_before, f"{block} left a method registered"


def _doc_command_blocks() -> list[Block]:
    return [b for path in DOCS for b in blocks(path) if b.language != "python" and b.marker != SYNOPSIS]


@pytest.mark.parametrize("block", _doc_command_blocks(), ids=str)
def test_docs_command_lines_run(block, tmp_path):
    assert run_command_block(block, tmp_path) >= 1, f"{block} ran no command"


def test_docs_have_examples():
    counts = {path: sum(b.language == "python" for b in blocks(path)) for path in DOCS}
    assert counts["docs/design.md"] >= 3 and counts["docs/extending.md"] >= 6, counts  # extending: one per section
    assert counts["docs/quickstart.md"] >= 3 and _doc_command_blocks(), counts  # explain, ledger, generation; CLI
