"""Two recipes held out on the same cars (`bench_recipe.py --holdout ... --keep DIR`, each DIR/holdout.json),
compared car by car: the mean difference and a 90% interval from resampling the cars.

    .venv/bin/python benchmarks/compare_holdout.py out/base/holdout.json out/new/holdout.json
    .venv/bin/python benchmarks/compare_holdout.py A.json B.json --measured 0.98141   # A's score on unseen cars

Differences between recipes on the same held-out cars are paired: most of the spread between cars (a white car on
the white wall is hard for every recipe) cancels, so the interval is far narrower than either mean's. With
--measured X, A's Dice measured on other unseen cars, it prints B's estimate there as X plus the difference (and
the interval's ends): the held-out cars of the sample can sit above or below another set of cars as a whole, and
the difference carries over where the level does not.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import holdout  # noqa: E402
from lib.errors import run_main  # noqa: E402
from lib.invocation import suggested  # noqa: E402

SCRIPT = "benchmarks/compare_holdout.py"


def repair(args: argparse.Namespace, runs: list[dict]) -> str:
    """What makes two runs on other cars comparable: this comparison on the cars both held out where there are
    some, else B's recipe held out on A's groups."""
    shared = set(holdout.per_car(runs[0]).index) & set(holdout.per_car(runs[1]).index)
    if shared:
        return f"compare them on the {len(shared)} cars both held out: {suggested(SCRIPT, [*sys.argv[1:], '--common'])}"
    groups = ",".join(str(g["group"]) for g in runs[0]["groups"])
    keep = f"{args.b.resolve().parent}-on-groups-{groups.replace(',', '-')}"
    return (f"hold B's recipe out on A's groups, then compare the holdout.json it writes: "
            f"{suggested('benchmarks/bench_recipe.py', ['--holdout', groups, '--keep', keep, '--', *runs[1]['flags']])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", type=Path, help="holdout.json of the reference recipe")
    parser.add_argument("b", type=Path, help="holdout.json of the recipe compared with it")
    parser.add_argument("--measured", type=float, help="the reference recipe's Dice measured on other unseen cars")
    parser.add_argument("--draws", type=int, default=10000, help="resamples of the cars (default 10000)")
    parser.add_argument("--common", action="store_true",
                        help="runs that held out other groups: compare them on the cars both held out")
    args = parser.parse_args()
    runs = []
    for path in (args.a, args.b):
        try:
            runs.append(json.loads(path.read_text()))
        except (OSError, ValueError) as e:
            sys.exit(f"{path}: not a holdout.json that bench_recipe.py --holdout --keep wrote ({e})")
    r = holdout.paired(*runs, draws=args.draws, common=args.common, advice=repair(args, runs))
    print("| car | A | B | B - A |\n|---|---:|---:|---:|")
    for car, (a, b) in r["cars"].items():
        print(f"| {car} | {a:.5f} | {b:.5f} | {b - a:+.5f} |")
    print(f"\nA: {' '.join(runs[0]['flags']) or '(the preset)'}; B: {' '.join(runs[1]['flags']) or '(the preset)'}")
    if args.common:
        print(f"compared on the cars both runs held out (--common): A held out {len(holdout.per_car(runs[0]))}, "
              f"B {len(holdout.per_car(runs[1]))}")
    print(f"{r['n_cars']} held-out cars: A {r['a']:.5f}, B {r['b']:.5f}; B - A {r['diff']:+.5f} (90% interval "
          f"{r['low']:+.5f} to {r['high']:+.5f} over the cars); B better on {r['better']}, worse on {r['worse']}")
    if args.measured is not None:
        print(f"B on the unseen cars A scored {args.measured:.5f} on: {args.measured + r['diff']:.5f} "
              f"({args.measured + r['low']:.5f} to {args.measured + r['high']:.5f})")


if __name__ == "__main__":
    run_main(main)
