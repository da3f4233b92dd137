"""The `hf-frozen` command.

    hf-frozen dect ...    fit and evaluate a DecT head (hf_frozen/dect/cli.py)
    hf-frozen serve ...   serve task encoders and DecT heads over HTTP on Ray Serve (hf_frozen/serving/cli.py)

A mistake in the command line, the data or the model named (a missing column, an empty file, an unknown label, a
path that does not exist) is one line on stderr and exit status 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys

from ._version import __version__


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    parser = argparse.ArgumentParser(prog="hf-frozen", description="Frozen-decoder and DecT adapters.")
    parser.add_argument("--version", action="version", version=f"hf-frozen {__version__}")
    parser.add_argument("--debug", action="store_true", help="on an error, show its traceback")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("dect", help="fit and evaluate a DecT head; `hf-frozen dect --help` lists options",
                        add_help=False)  # fmt: skip
    commands.add_parser("serve", help="serve task encoders and DecT heads over an OpenAI-compatible HTTP API "
                        "(Ray Serve); `hf-frozen serve --help` lists options", add_help=False)  # fmt: skip
    args, rest = parser.parse_known_args(argv)
    try:
        # Imported here: `hf-frozen --help` answers without loading torch, and `serve` needs the `serve` extra.
        if args.command == "dect":
            from .dect.cli import dect_main

            dect_main(rest)
        else:
            from .serving.cli import serve_main

            serve_main(rest)
    except Exception as err:  # noqa: BLE001 - sorted below: a user's mistake is one line, a bug keeps its traceback
        if debug or not is_user_error(err):
            raise
        message = " ".join(str(err).split())
        print(f"hf-frozen {args.command}: error: {message} (--debug shows the traceback)", file=sys.stderr)
        return 2
    return 0


def is_user_error(err: Exception) -> bool:
    """What a user can cause and fix: a bad option or value (`ValueError`: `UsageError`, a config's checks, a damaged
    artifact), a missing file or package, or an error hf-frozen raises (an endpoint that refuses)."""
    return isinstance(err, (ValueError, FileNotFoundError, ImportError)) or type(err).__module__.startswith(
        "hf_frozen."
    )


if __name__ == "__main__":
    sys.exit(main())
