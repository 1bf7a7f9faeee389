"""`python -m labs.models build|which`: build the offline models, or show which model a lab would use."""

from __future__ import annotations

import argparse
import sys

from labs.models.resolve import resolve_model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labs.models", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build tiny-random and tiny-phrasebook into models/ (cached)")
    build.add_argument("names", nargs="*", default=["tiny-random", "tiny-phrasebook"])
    build.add_argument("--force", action="store_true", help="rebuild even if an identical build exists")
    which = sub.add_parser("which", help="print the model a lab would use, and why")
    which.add_argument("model", nargs="?", default=None)
    args = parser.parse_args(argv)

    if args.command == "build":
        from labs.models.build import build_model  # imports torch: only when building

        for name in args.names:
            build_model(name, force=args.force)
        return 0
    resolved = resolve_model(args.model)
    print(f"{resolved.path}\n  why: {resolved.reason}")
    return 0


if __name__ == "__main__":
    from labs.errors import run_main

    sys.exit(run_main(main))
