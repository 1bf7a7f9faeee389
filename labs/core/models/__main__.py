"""`python -m labs.core.models build|train|train-adapters|which`: install the offline models, retrain
tiny-phrasebook or its LoRA adapters (Lab 9), or show which model a lab would use."""

from __future__ import annotations

import argparse
import sys

from labs.core.models.resolve import resolve_model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labs.core.models", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="install the shipped tiny-phrasebook and generate tiny-random and "
                                         "tiny-llama into models/ (seconds; cached)")
    build.add_argument("names", nargs="*", default=["tiny-phrasebook", "tiny-random", "tiny-llama"])
    build.add_argument("--force", action="store_true", help="rebuild even if an identical build exists")
    train = sub.add_parser("train", help="retrain tiny-phrasebook from scratch (~10 minutes on 2 cores)")
    train.add_argument("--ship", action="store_true",
                       help="also replace the shipped weights in labs/core/models/shipped/ (commit them afterwards)")
    adapters = sub.add_parser("train-adapters", help="retrain tiny-phrasebook's LoRA adapters for Lab 9 "
                                                     "(english, glossary; a few minutes on 2 cores)")
    adapters.add_argument("names", nargs="*", default=["english", "glossary"])
    adapters.add_argument("--ship", action="store_true",
                          help="also replace the shipped adapters in labs/core/models/shipped/ (commit them afterwards)")
    which = sub.add_parser("which", help="print the model a lab would use, and why")
    which.add_argument("model", nargs="?", default=None)
    args = parser.parse_args(argv)

    if args.command == "build":
        from labs.core.models.build import build_model  # imports torch: only when building

        for name in args.names:
            build_model(name, force=args.force)
        return 0
    if args.command == "train":
        from labs.core.models.build import train_phrasebook_model

        train_phrasebook_model(ship=args.ship)
        return 0
    if args.command == "train-adapters":
        from labs.core.models.lora_train import train_adapter_files

        for name in args.names:
            train_adapter_files(name, ship=args.ship)
        return 0
    resolved = resolve_model(args.model)
    print(f"{resolved.path}\n  why: {resolved.reason}")
    return 0


if __name__ == "__main__":
    from labs.core.errors import run_main

    sys.exit(run_main(main))
