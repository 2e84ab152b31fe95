"""`make refit` and `make bases`: the `fruits_pca_basis` DAG once, locally, on a lake.

    make refit FROM=YYYY-MM-DD TO=YYYY-MM-DD [LAKE=.lake] [VARIANCE=v | K=n] [WEIGHTS=...]
    make bases [LAKE=.lake]

`make refit` runs the DAG as `make demo` runs the daily one (`airflow dags test`, a throwaway
AIRFLOW_HOME, the local backend; nothing left running, whatever ends it), then prints the new
basis: its id, the days and rows it was fit on, k, the explained variance, the days moved and the
time taken. A refit reads features, it featurizes nothing: WEIGHTS only sets the default weights
of the throwaway Airflow, as in `make demo`. `make bases` lists the lake's bases.
"""

from __future__ import annotations

import argparse
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path

from devtools.airflow_env import choose_weights
from devtools.demo import check_lake, check_weights
from devtools.staging import DemoError
from devtools.throwaway import dags_test, exit_on_signal, run_throwaway
from fruits_pipeline import basis, refit
from fruits_pipeline.lake import Lake
from fruits_pipeline.lake_io import LocalLakeStorage
from fruits_pipeline.settings import REPO_ROOT


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="make refit", description=__doc__.split("\n")[0])
    parser.add_argument("--from-date", help="first day of the fit window (YYYY-MM-DD)")
    parser.add_argument("--to-date", help="last day of the fit window, included")
    parser.add_argument("--lake", default=str(REPO_ROOT / ".lake"), help="lake folder")
    parser.add_argument("--variance", type=float, help="share of the variance to keep (0.95)")
    parser.add_argument("--k", type=int, help="or a fixed number of components")
    parser.add_argument("--weights", help="default weights of the throwaway Airflow")
    parser.add_argument("--list", action="store_true", help="list the lake's bases and stop")
    return parser.parse_args(argv)


def bases_table(lake: Lake) -> str:
    rows = basis.bases(LocalLakeStorage(), lake)
    if not rows:
        return f"no basis in {lake.root}"
    lines = []
    for row in rows:
        days = row["fit_on"]["days"]
        span = f"{days[0]} .. {days[-1]} ({len(days)} days)" if len(days) > 1 else days[0]
        lines.append(
            f"{'*' if row['current'] else ' '} {row['basis']}  k={row['k']:<4} "
            f"explained {row['explained_variance']:.4f}  fit on {span}, "
            f"{row['fit_on']['rows']} rows  ({row['created_at']})"
        )
    return "\n".join(lines) + "\n(* current)"


def check(args: argparse.Namespace) -> tuple[Lake, dict]:
    """The checked lake and the DAG's conf; raises DemoError naming what is wrong."""
    lake = check_lake(args.lake)
    if not Path(lake.root).is_dir():
        raise DemoError(f"LAKE {args.lake!r} does not exist: run make demo first")
    conf = {"from_date": args.from_date, "to_date": args.to_date}
    if args.k is not None:
        conf["k"] = args.k
    if args.variance is not None:
        conf["variance"] = args.variance
    try:
        params = refit.validate_refit_params(conf, datetime.now(UTC).date())
    except ValueError as err:
        names = {"from_date": "FROM", "to_date": "TO", "variance": "VARIANCE", "k": "K"}
        message = str(err)
        for name, shown in names.items():
            message = message.replace(name, shown)
        raise DemoError(message) from None
    if args.from_date is None:
        raise DemoError("give FROM=YYYY-MM-DD and TO=YYYY-MM-DD: the days to fit on")
    published = refit.published_days(LocalLakeStorage(), lake)
    if not [dt for dt in published if params.first <= dt <= params.last]:
        raise DemoError(
            f"no published day in {params.first} .. {params.last} in {lake.root} "
            f"(published: {', '.join(map(str, published)) or 'none'})"
        )
    return lake, conf


def summary(lake: Lake, before: str | None, seconds: float, code: int) -> str:
    storage = LocalLakeStorage()
    found = basis.current(storage, lake)
    current = found[1]["basis"] if found else None
    if code != 0 or current == before:
        return (
            f"result:   FAILED (exit {code}): the current basis is still {before}; every "
            "published day is as it was. See the log above."
        )
    fitted = basis.manifest(storage, lake, current)
    moved = [
        dt for dt in refit.published_days(storage, lake)
        if basis.day_basis(storage, lake, dt) == current
    ]  # fmt: skip
    days = fitted["fit_on"]["days"]
    return "\n".join(
        [
            f"result:   basis {current} is current (was {before}), in {seconds:.0f} s",
            f"fit on:   {len(days)} days ({days[0]} .. {days[-1]}), "
            f"{fitted['fit_on']['rows']} rows",
            f"k = {fitted['k']}, explained variance {fitted['explained_variance']:.4f}",
            f"moved:    {len(moved)} published days now in this basis",
            f"bases:\n{bases_table(lake)}",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.list:
            print(bases_table(check_lake(args.lake)))
            return 0
        lake, conf = check(args)
        weights = choose_weights(check_weights(args.weights, lake) if args.weights else None)
    except DemoError as err:
        print(f"make refit: {err}", file=sys.stderr)
        return err.code
    found = basis.current(LocalLakeStorage(), lake)
    before = found[1]["basis"] if found else None
    dag_id = "fruits_pca_basis"
    outcome = run_throwaway(lake, weights, dag_id, lambda env: dags_test(env, dag_id, conf))
    if outcome.interrupted:
        print(f"\nresult:   {outcome.interrupted.upper()}: see the log above", file=sys.stderr)
        return outcome.code
    print("\n" + summary(lake, before, outcome.seconds, outcome.code))
    return outcome.code


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, exit_on_signal)
    signal.signal(signal.SIGHUP, exit_on_signal)
    sys.exit(main())
