"""The ``recallkit`` command's entry point: it imports the CLI (and so torch) inside a Ctrl-C handler,
since an interrupt during those seconds of imports would otherwise end in a traceback."""

import sys

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as ``recallkit.cli.EXIT_INTERRUPTED``


def main() -> None:
    try:
        from recallkit.cli import app
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(EXIT_INTERRUPTED) from None
    app(prog_name="recallkit")
