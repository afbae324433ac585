"""Re-run recorded program-of-thought answers, as the routing sets' source ran them.

The source (MurongYue/LLM_MoT_cascade) dropped the programs that failed from each question's
answer list, so its answers no longer line up with its texts. ../shared/data/routing/README.md
repaired gsm8k_pot1 by running the programs again; `bench/probe.py` does the same for its
probe sets. A program runs as the source's `safe_execute` ran it (`exec`, then its `ans`, at
most 2 s) and its value is read as the source's `floatify_ans` reads it. Each question's
programs run in a child process of their own (a hung or runaway program is killed with it);
the programs are model output, so they run in an empty temporary folder with no input.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

SECONDS = 2

# The child: reads a JSON list of programs on stdin, prints a JSON list of answers.
_CHILD = r"""
import json, os, resource, signal, sys
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
texts = json.load(sys.stdin)
out, sys.stdout = sys.stdout, open(os.devnull, "w")
def timeout(*_):
    raise TimeoutError
signal.signal(signal.SIGALRM, timeout)
def floatify(ans):
    if ans is None:
        return None
    if isinstance(ans, dict):
        ans = list(ans.values())[0] if ans else None
    elif isinstance(ans, bool):
        return str(ans)
    elif isinstance(ans, (list, tuple)):
        if not ans:
            return None
        ans = ans[0]
    try:
        return str(float(ans))
    except Exception:
        return str(ans)
answers = []
for text in texts:
    signal.alarm(SECONDS)
    try:
        scope = {}
        exec(text, {"__builtins__": __builtins__}, scope)
        value = floatify(scope.get("ans"))
    except BaseException:
        value = None
    finally:
        signal.alarm(0)
    answers.append(value)
out.write(json.dumps(answers))
""".replace("SECONDS", str(SECONDS))


def _run(texts: Sequence[str]) -> list[str | None]:
    limit = SECONDS * len(texts) + 10
    with tempfile.TemporaryDirectory() as folder:
        try:
            done = subprocess.run([sys.executable, "-c", _CHILD], input=json.dumps(list(texts)),
                                  capture_output=True, text=True, timeout=limit, cwd=folder,
                                  check=False)  # fmt: skip
            answers = json.loads(done.stdout)
        except (subprocess.TimeoutExpired, json.JSONDecodeError):
            answers = None
    if answers is not None and len(answers) == len(texts):
        return list(answers)
    if len(texts) == 1:
        return [None]
    return [a for text in texts for a in _run([text])]  # one at a time: find the one that hung


def run_programs(questions: Sequence[Sequence[str]], workers: int = 2) -> list[list[str | None]]:
    """Each question's programs' answers (None where a program failed), in order."""
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(_run, questions))


def same(a: str | None, b: object) -> bool:
    """The source's answers as the data's README compares them: floats within 1e-6, else
    strings after stripping whitespace."""
    if a is None or b is None:
        return a is None and b is None
    try:
        return math.isclose(float(a), float(str(b)), abs_tol=1e-6)
    except ValueError:
        return a.strip() == str(b).strip()


def realign(executed: list[str | None], recorded: Sequence[object]) -> list[str | None] | None:
    """The recorded answers put back on their texts: the executed answers when their non-failed
    ones are exactly the recorded list (the one mapping that fits), else None."""
    ran = [a for a in executed if a is not None]
    if len(ran) == len(recorded) and all(same(a, b) for a, b in zip(ran, recorded, strict=True)):
        return [None if a is None else str(b) for a, b in
                zip(executed, _spread(executed, recorded), strict=True)]  # fmt: skip
    return None


def _spread(executed: list[str | None], recorded: Sequence[object]) -> list[object]:
    """The recorded answers at the positions of the executed ones that did not fail."""
    it = iter(recorded)
    return [None if a is None else next(it) for a in executed]
