"""`make bench`: run every benchmark module in bench/ (or the ones named on the command line).

`python -m bench NAME...` runs the named modules; `python -m bench NAME --option ...` runs one
module with its own options (`python -m bench probe --source DIR`), as `python -m bench.NAME
--option ...` does. Options were once read as more module names: the benchmark ran, then the
runner failed on `bench.--source` with a traceback."""

import importlib
import inspect
import pkgutil
import sys
from pathlib import Path

USAGE = "usage: python -m bench [NAME ... | NAME --option ...]"


def modules() -> list[str]:
    """The benchmark modules, by name."""
    return sorted(
        m.name
        for m in pkgutil.iter_modules([str(Path(__file__).parent)])
        if not m.name.startswith("_")
    )


def plan(argv: list[str], known: list[str]) -> list[tuple[str, list[str]]]:
    """(module, its options) to run, in order. Raises ValueError naming what is wrong."""
    if not argv:
        return [(name, []) for name in known]
    if all(arg in known for arg in argv):
        return [(name, []) for name in argv]
    if argv[0] not in known:
        raise ValueError(f"unknown benchmark {argv[0]!r} (have: {', '.join(known)})")
    return [(argv[0], argv[1:])]


def main(argv: list[str]) -> int:
    known = modules()
    if argv[:1] in (["-h"], ["--help"]):
        print(f"{USAGE}\nbenchmarks: {', '.join(known)}")
        return 0
    try:
        runs = plan(argv, known)
    except ValueError as err:
        print(f"{USAGE}\nerror: {err}", file=sys.stderr)
        return 2
    for name, options in runs:
        entry = importlib.import_module(f"bench.{name}").main
        takes_argv = bool(inspect.signature(entry).parameters)
        if options and not takes_argv:
            print(f"{USAGE}\nerror: bench.{name} takes no options", file=sys.stderr)
            return 2
        print(f"== bench.{name}", flush=True)
        if takes_argv:
            entry(options)  # never sys.argv, which holds the runner's own arguments
        else:
            entry()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
