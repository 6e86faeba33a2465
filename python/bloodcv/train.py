"""Training entry point: `python -m bloodcv.train <task> ...`.

Each task is a module of bloodcv.training (bloodcv.training.TASKS: detector, retinanet, classifier) that
defines `HELP` (one line), `add_arguments(parser)` and `run(args) -> int`. Options of the old command
lines (--quiet, --max-steps, --data-root) are refused with their new names.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from .training import TASKS
from .training.config import RENAMED_OPTIONS


def _tasks() -> dict[str, str]:
    return {name: f"{__package__}.training.{name}" for name in TASKS}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    tasks = _tasks()
    parser = argparse.ArgumentParser(prog="python -m bloodcv.train", description="Train a bloodcv model.")
    sub = parser.add_subparsers(dest="task", metavar="TASK", required=True)
    # Import only the task asked for (each may pull in heavy dependencies); list the others by name.
    chosen = argv[0] if argv and argv[0] in tasks else None
    for name, module_name in sorted(tasks.items()):
        if name == chosen:
            module = importlib.import_module(module_name)
            p = sub.add_parser(name, help=getattr(module, "HELP", None), description=module.__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
            module.add_arguments(p)
            p.set_defaults(_run=module.run)
        else:
            sub.add_parser(name, help=f"see `python -m bloodcv.train {name} --help`", add_help=False)
    for option in argv:
        old = option.split("=", 1)[0]
        if old in RENAMED_OPTIONS:
            parser.error(f"{old} was renamed {RENAMED_OPTIONS[old]}")
    args = parser.parse_args(argv)
    if not hasattr(args, "_run"):
        parser.error(f"task {args.task!r} failed to load")
    args.argv = argv[1:]
    return args._run(args)


if __name__ == "__main__":
    sys.exit(main())
