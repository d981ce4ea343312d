"""What every config-driven job shares: `--config YAML key=value ...`, all config errors at once (exit 2),
the resolved config logged, a Ray connection (local, or the cluster under `ray job submit`), the result as
JSON on stdout. Launchers in jobs/ stay a docstring and one call."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from engine.core.config_base import ConfigError, dump_config, load_config


def run_config_job(doc: str, config_type: type[BaseModel], run: Callable[[Any], Any], config_help: str,
                   argv: list[str] | None = None) -> int:
    import ray

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--config", type=Path, help=config_help)
    parser.add_argument("overrides", nargs="*", help="config overrides as dotted key=value")
    args = parser.parse_intermixed_args(argv)
    try:
        config = load_config(config_type, args.config, args.overrides)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 2
    logging.getLogger(config_type.__module__).info("resolved config:\n%s", dump_config(config))
    ray.init(address=getattr(config, "ray_address", None), ignore_reinit_error=True)
    print(json.dumps(run(config), indent=2, default=str))
    return 0
