"""``python -m hotdog ...``: the command-line face of the engine.

Each area registers its own sub-commands (``hotdog/commands/<area>.py`` exposes
``register(subparsers)``), so this file only dispatches and turns errors into one readable
line on stderr instead of a traceback; with ``--json`` the same sentence is also the one
JSON document on stdout, ``{"error": "<sentence>"}``. Exit codes: what the command returns,
1 for an error, 130 when interrupted (2 for usage errors, from argparse).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from hotdog.errors import HotdogError

COMMAND_MODULES = (
    "hotdog.commands.data",
    "hotdog.commands.models",
    "hotdog.commands.train",
    "hotdog.commands.bench",
    "hotdog.commands.explain",
    "hotdog.commands.sweep",
    "hotdog.commands.launch",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hotdog",
        description="Hotdog Lab: fine-tune ImageNet models on any image-folder data set.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details to stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s",
    )
    from hotdog.paths import local_user

    try:
        with local_user():  # the command line's user is local: links in data sets are theirs
            return int(args.func(args) or 0)
    except HotdogError as err:
        return _fail(args, str(err))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `python -m hotdog ... | head` closed stdout early: not an error worth a traceback.
        # Point stdout at devnull so the interpreter's final flush cannot raise again.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as err:  # noqa: BLE001 - a bug still gets one line, not a traceback
        logging.getLogger("hotdog").debug("unexpected error", exc_info=True)
        detail = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        return _fail(args, f"unexpected {type(err).__name__}" + (f": {detail}" if detail else "")
                     + " (a bug in Hotdog Lab; run with -v to see where)")


def _fail(args, sentence: str) -> int:
    """An error: one line on stderr and, with --json, ``{"error": ...}`` on stdout."""
    print(f"error: {sentence}", file=sys.stderr)
    if getattr(args, "json", False):
        from hotdog.commands._common import emit_json

        try:
            emit_json({"error": sentence})
        except OSError:  # stdout itself is gone (closed pipe, full disk)
            pass
    return 1

