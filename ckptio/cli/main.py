"""ckptio's entry point: parse arguments, run one command, map errors to exit codes.

Exit codes: 0 ok, 1 checkpoint problem, 2 usage, 130 interrupted. Heavy modules (numpy,
protobuf) are imported by the command modules only, so `ckptio --help` starts fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# command -> (module under ckptio.cli, one-line help)
COMMANDS = {
    "ls": ("ls", "list tensors (names, dtypes, shapes, sizes), optimizer state marked"),
    "show": ("show", "summarize one tensor (stats and a preview) or print it whole"),
    "verify": ("verify", "check every block, tensor checksum and shard size"),
    "diff": ("diff", "what differs between two checkpoints (names, dtypes, shapes; --values)"),
    "strip": ("rewrite", "write a copy without optimizer state"),
    "rename": ("rewrite", "write a copy with tensors renamed"),
    "rewrite": ("rewrite", "filter, strip, rename and cast into a new checkpoint"),
    "fit": ("fit", "fit a checkpoint to a changed model: a template's structure with the source's values"),
    "merge": ("merge", "average, weigh or blend checkpoints into a new one"),
    "doctor": ("doctor", "diagnose a broken checkpoint in plain words; --salvage the intact tensors"),
    "pack": ("archive", "pack a checkpoint into one .tar.zst archive"),
    "unpack": ("archive", "unpack a .tar.zst archive into checkpoint files"),
    "plan": ("plan", "plan a strip/rename/rewrite/fit/merge as independent tasks (PLAN.json); writes nothing to OUT"),
    "run-plan": ("plan", "run one task of a plan: the output shards whose number is I mod N"),
    "commit": ("plan", "finish a plan whose tasks are all done: index, state file, clean up"),
}

EXIT_OK, EXIT_BAD_CHECKPOINT, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(Exception):
    """Bad command-line arguments discovered after parsing."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and exit 2, like every other usage error
        self.exit(EXIT_USAGE, f"ckptio: error: {message}\n")


def build_parser(load_all: bool = True) -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ckptio", description="Read, inspect, verify and rewrite TensorFlow checkpoints without TensorFlow."
    )
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"ckptio {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        if load_all:
            _module(module).add_arguments(name, p)
    return parser


def _module(name: str):
    return importlib.import_module(f"ckptio.cli.{name}")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Only the chosen command's module is imported; the top-level --help imports none.
    at = next((i for i, a in enumerate(argv) if not a.startswith("-")), None)
    try:
        if at is None or at > 0 or argv[at] not in COMMANDS:
            args = build_parser(load_all=False).parse_args(argv)
        else:
            command = argv[at]
            module, help_text = COMMANDS[command]
            parser = _Parser(prog=f"ckptio {command}", description=help_text)
            mod = _module(module)
            mod.add_arguments(command, parser)
            if hasattr(mod, "parse"):  # a command with its own sub-syntax (`plan strip ...`)
                args = mod.parse(command, parser, argv[at + 1 :])
            else:
                # Intermixed: options may sit between IN and OUT (`ckptio strip IN --force OUT`).
                args = parser.parse_intermixed_args(argv[at + 1 :])
            args.command, args._module = command, module
    except SystemExit as exc:
        return int(exc.code or 0)
    if not args.command:
        build_parser(load_all=False).print_help()
        return EXIT_USAGE
    import warnings

    from ..errors import CkptioError, OutputExistsError, PlanError, StateFileWarning

    warnings.showwarning = _show_warning
    warnings.simplefilter("always", StateFileWarning)  # each stale or unwritten state file, every time
    try:
        _check_paths(args)
        return int(_module(args._module).run(args) or 0)
    except KeyboardInterrupt:
        print("ckptio: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (PlanError, OutputExistsError, UsageError) as exc:
        text = exc.describe(flags=True) if isinstance(exc, CkptioError) else exc  # advice names our flags
        print(f"ckptio: error: {text}", file=sys.stderr)
        return EXIT_USAGE
    except CkptioError as exc:
        print(f"ckptio: {exc.describe(flags=True)}", file=sys.stderr)
        return EXIT_BAD_CHECKPOINT
    except BrokenPipeError:
        return EXIT_OK
    except OSError as exc:  # an output or input file we could not touch
        print(f"ckptio: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_BAD_CHECKPOINT
    except Exception as exc:  # a bug: still one line, as promised; CKPTIO_DEBUG=1 shows the traceback
        if os.environ.get("CKPTIO_DEBUG"):
            raise
        print(
            f"ckptio: internal error: {type(exc).__name__}: {exc} (a bug in ckptio; "
            "CKPTIO_DEBUG=1 shows the traceback)",
            file=sys.stderr,
        )
        return EXIT_BAD_CHECKPOINT


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning (stale state file, state file not updated) as one stderr line."""
    print(f"ckptio: warning: {message}", file=sys.stderr)


def _check_paths(args) -> None:
    """An empty path argument is a usage error (it would otherwise mean the current directory)."""
    names = {
        "path": "PATH",
        "paths": "IN OUT",
        "out": "OUT",
        "archive": "ARCHIVE",
        "dir": "DIR",
        "out_dir": "--out-dir",
        "salvage": "--salvage",
    }
    for attr, name in names.items():
        value = getattr(args, attr, None)
        if value == "" or (isinstance(value, list) and "" in value):
            raise UsageError(f"{name}: empty path")


def console() -> None:
    """The `ckptio` command: run main(), flush, exit without tearing the interpreter down."""
    code = main()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:  # a reader such as `head` left early; what it wanted was written
        pass
    # All output is written and renamed into place by now. Freeing every module's objects one
    # by one would add ~10 ms to each command (a fifth of `ckptio ls` on a small checkpoint).
    os._exit(code)


if __name__ == "__main__":
    console()
