"""The ``flowtie`` command's entry point: installed before anything heavy is
imported, so that Ctrl-C while the command line loads is one line too."""

import importlib
import sys


def main(argv=None) -> int:
    """Import the command line and run it (:func:`flowtie_fast.cli.main`)."""
    try:
        cli = importlib.import_module("flowtie_fast.cli")
    except KeyboardInterrupt:
        print("flowtie: interrupted while starting; nothing was done", file=sys.stderr)
        return 130
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
