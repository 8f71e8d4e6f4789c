"""`torso ...`: the command-line entry point.

Each command lives in a module of this package with two functions, `add_parser(subparsers)` and
`run(args) -> int`; add its module name to `COMMANDS` to make it available. A command that
takes a list of files sets `parser.intermixed = True`, so its options may come anywhere among
them.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from torso.errors import TorsoError

COMMANDS = [
    "summary",
    "check",
    "train",
    "predict",
    "interpret",
    "lr_find",
    "demo",
    "embed",
    "similar",
    "export",
    "serve",
]


class _Parser(argparse.ArgumentParser):
    #: True for a command whose options may come between its positionals (`torso predict RUN
    #: --best IMAGES...`): argparse alone fills a `nargs="*"` positional with the words before
    #: the first option and refuses those after it; `parse_known_intermixed_args` takes both.
    intermixed = False

    def parse_known_args(self, args=None, namespace=None):
        if not self.intermixed:
            return super().parse_known_args(args, namespace)
        self.intermixed = False  # the intermixed parse makes two ordinary parses itself
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self.intermixed = True

    def error(self, message: str) -> None:
        # One line and exit 2, as argparse does, without the usage block.
        self.exit(2, f"torso: error: {message}\n")


class _Formatter(argparse.HelpFormatter):
    """Aligns the help column with the commands' names as indented (argparse measures them
    without their indent, so a name of nine letters, `interpret`, had its help wrapped onto
    the next line)."""

    def add_argument(self, action: argparse.Action) -> None:
        super().add_argument(action)
        for subaction in self._iter_indented_subactions(action):
            length = len(self._format_action_invocation(subaction)) + self._current_indent
            self._action_max_length = max(self._action_max_length, length)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The `torso` parser. Every command is listed (with its `HELP` line), but only the command
    that `argv` names gets its full parser, so `torso --help` or `torso check` do not import
    what `torso train`'s options need (every task module). Without `argv`, all are built."""
    from torso.version import __version__

    parser = _Parser(
        prog="torso",
        description="Transfer learning for computer vision: a pretrained body plus a task head.",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"torso {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    chosen = None if argv is None else next((a for a in argv if not a.startswith("-")), "")
    for name in COMMANDS:
        module = importlib.import_module(f"torso.cli.{name}")
        if argv is None or name.replace("_", "-") == chosen:
            sub = module.add_parser(subparsers)
            sub.set_defaults(_run=module.run)
        else:
            subparsers.add_parser(name.replace("_", "-"), help=module.HELP)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run `torso` with `argv` (default: `sys.argv[1:]`) and return the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except TorsoError as error:
        print(f"torso: error: {error}", file=sys.stderr)
        return error.exit_code
    except BrokenPipeError:
        # The reader went away (e.g. `torso similar ... | head`): not an error of ours. Point
        # stdout at /dev/null so the interpreter's final flush does not complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("torso: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
