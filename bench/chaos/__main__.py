"""``python -m bench.chaos [--seconds N] [--seed S] [--short] [--json FILE]``: one chaos run."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

from bench.chaos.run import ChaosConfig, format_report, run_chaos


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__)
    p.add_argument("--seconds", type=float, help="load duration (default 300; --short: 50)")
    p.add_argument("--seed", type=int, help="repeat a run's fault schedule")
    p.add_argument("--short", action="store_true", help="CI's form: short outages")
    p.add_argument("--json", type=Path, help="write the report here")
    p.add_argument("--workdir", type=Path, help="logs and configs (default: a tmp folder)")
    args = p.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="cache-edge-chaos-"))
    config = ChaosConfig.ci(args.seed) if args.short else ChaosConfig(seed=args.seed)
    if args.seconds is not None:
        config = dataclasses.replace(config, seconds=args.seconds)
    report = run_chaos(config, workdir)
    print(format_report(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 1 if report["violations"]["total"] else 0


if __name__ == "__main__":
    sys.exit(main())
