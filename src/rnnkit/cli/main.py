"""The ``rnnkit`` command line (placeholder until the CLI lands)."""

import argparse
import sys


def main(argv=None) -> int:
    import rnnkit

    parser = argparse.ArgumentParser(prog="rnnkit")
    parser.add_argument("--version", action="version", version=f"rnnkit {rnnkit.__version__}")
    parser.parse_args(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
