"""The ``flowtie`` command's entry point: installed before anything heavy is
imported, so that Ctrl-C while the command line loads is one line too."""

import importlib
import sys


def main(argv=None) -> int:
    """Import the command line and run it (the ``flowtie`` script).

    Parameters
    ----------
    argv : list of str, optional
        As for :func:`flowtie_fast.cli.main` (default None: ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit status of :func:`flowtie_fast.cli.main`; 130 when interrupted
        while the command line is imported.
    """
    try:
        cli = importlib.import_module("flowtie_fast.cli")
    except KeyboardInterrupt:
        print("flowtie: interrupted while starting; nothing was done", file=sys.stderr)
        return 130
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
