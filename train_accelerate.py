"""Train the foveated VLM: ``accelerate launch train_accelerate.py --config configs/demo.yaml [flags]``.

Flags override the config file: ``--output_dir``, ``--max_steps``, ``--seed``, and any field with
``--set section.key=value`` (repeatable; the value is parsed as YAML). ``--resume latest`` (or a checkpoint
folder) continues a run exactly where it stopped; ``--push_to_hub owner/name`` publishes ``OUTPUT/final``.
The same entry point is importable: ``train_accelerate.main(["--config", ...]) -> dict`` of final metrics.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from foveated_vlm.training.config import load_config
from foveated_vlm.training.hub import HUB_LOCAL_DIR_ENV
from foveated_vlm.training.trainer import run_training


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config", help="YAML config (sections model, data, train, eval); defaults if omitted"
    )
    parser.add_argument("--output_dir", help="run folder (checkpoints/, final/, log.jsonl, metrics.json)")
    parser.add_argument("--max_steps", type=int, help="optimizer steps (overrides train.max_steps)")
    parser.add_argument("--seed", type=int, help="seed of model init, data order and dropout (train.seed)")
    parser.add_argument(
        "--resume", help='checkpoint folder, or "latest" (the newest under OUTPUT/checkpoints)'
    )
    parser.add_argument("--push_to_hub", metavar="REPO", help="publish OUTPUT/final to this Hub repository")
    parser.add_argument(
        "--hub_local_dir", help=f"write the pushed files to DIR/REPO instead (or ${HUB_LOCAL_DIR_ENV})"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config field (repeatable), e.g. --set train.lora.enabled=true",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Run training from command-line arguments; returns the final metrics."""
    args = parse_args(argv)
    overrides = list(args.overrides)
    if args.max_steps is not None:
        overrides.append(f"train.max_steps={args.max_steps}")
    if args.seed is not None:
        overrides.append(f"train.seed={args.seed}")
    config = load_config(args.config, overrides)
    if args.output_dir is not None:
        config.output_dir = args.output_dir
    return run_training(
        config, resume=args.resume, push_to_hub_repo=args.push_to_hub, hub_local_dir=args.hub_local_dir
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # its INFO lines narrate every checkpoint save
    metrics = main(sys.argv[1:])
    print(json.dumps({"final_metrics": metrics}, default=str))
