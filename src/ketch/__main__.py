"""``python -m ketch``: the same entry point as the ``ketch`` script."""

from ketch.cli.entry import main

if __name__ == "__main__":
    raise SystemExit(main())
