"""``python -m benchmarks [--smoke] [--only idle] [--rounds N] [--duration S] [--out DIR]``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import report
from .run import Config, run

RESULTS = Path(__file__).with_name("results")


def parse_args(argv: list[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Measure revgw's tunnel against the direct path to the same private server.",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a few seconds in total: tiny sizes, 1 round, no install, no PASS/FAIL",
    )
    parser.add_argument(
        "--only",
        choices=["idle"],
        help="idle: only the idle-pool memory phase (writes idle.md / idle.json, "
        "smoke: smoke-idle.*)",
    )
    parser.add_argument("--rounds", type=int, help="direct+tunnel rounds (default 3; smoke 1)")
    parser.add_argument("--duration", type=float, help="seconds per wrk run (default 10; smoke 1)")
    parser.add_argument(
        "--out",
        type=Path,
        default=RESULTS,
        help="directory for latest.md and latest.json (smoke: smoke.md, smoke.json) "
        "(default: benchmarks/results)",
    )
    parser.add_argument(
        "--loop",
        choices=["auto", "asyncio"],
        default="auto",
        help="REVGW_LOOP for the gateway and client (auto = uvloop where installed)",
    )
    parser.add_argument(
        "--server",
        choices=["auto", "nginx", "revgw"],
        default="auto",
        help="the private server: nginx (auto), or force the `revgw server` fallback",
    )
    parser.add_argument(
        "--load",
        choices=["auto", "wrk", "python"],
        default="auto",
        help="the load generator: wrk (auto), or force the asyncio fallback",
    )
    parser.add_argument(
        "--no-install", action="store_true", help="never apt-get install nginx or wrk"
    )
    args = parser.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.duration is not None and args.duration <= 0:
        parser.error("--duration must be positive")
    given = {
        "out": args.out,
        "loop": args.loop,
        "server": args.server,
        "load": args.load,
        "install": not args.no_install,
        "only": args.only,
        "rounds": args.rounds or (1 if args.smoke else 3),
        "duration": args.duration or (1.0 if args.smoke else 10.0),
    }
    if args.smoke:
        return Config.smoke_defaults(**given)
    return Config(smoke=False, **given)


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    result = run(config)
    report.add_derived(result)
    figures = report.figures(result)
    result["figures"] = [f.as_dict() for f in figures]
    text = report.markdown(result, figures)
    config.out.mkdir(parents=True, exist_ok=True)
    stem = "smoke" if config.smoke else "latest"
    if config.only:  # a partial run never overwrites a whole one
        stem = f"smoke-{config.only}" if config.smoke else config.only
    (config.out / f"{stem}.md").write_text(text)
    (config.out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    sys.stdout.write(text)
    sys.stdout.write(f"\nwritten: {config.out / stem}.md and .json\n")
    # Missed targets are the report's business; a figure that could not be measured is ours.
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
