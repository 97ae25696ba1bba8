"""Checks before a long run: `python -m steering_utils.preflight --params FILE` (make check).

The command line over the checks (`checks`: params valid, runs and reports folders
writable, model config and tokenizer reachable, layers in range, prompts available and
short enough for the context, the capability task, the scorer, device memory against
`memory.memory_plan`, the engine and executor, free disk) and, in deep mode, the smoke
test (`smoke`: load the model, steer, generate, project the wall time). Deep mode is
`check.deep` in the params (auto: when the model's weights are on this machine), or
--deep / --no-deep. One line per check; exits non-zero on the first problem.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from .checks import (
    check_capability,
    check_context,
    check_device,
    check_disk,
    check_engine,
    check_execution,
    check_folders,
    check_layers,
    check_push,
    check_scorer,
    check_sizes,
    check_tokenizer,
)
from .params import ParamsError, StudyParams, apply_environment, load_params


def run_checks(params: StudyParams, runs_root: Path, echo: Callable[[str], None] = print,
               reports_root: Path = Path("reports"), deep: bool = False) -> bool:
    """Every preflight check, one line each; False at the first failure.

    deep: also load the model, check steering and generation, and time them.
    """
    checks = [("params", lambda p: f"{p.run_name}: valid (hash {p.params_hash})"),
              ("folders", lambda p: check_folders(p, runs_root, reports_root)),
              ("layers", check_layers), ("data", check_sizes), ("context", check_context),
              ("capability", lambda p: check_capability(p, deep)),
              ("tokenizer", check_tokenizer), ("scorer", check_scorer), ("device", check_device),
              ("engine", check_engine), ("execution", check_execution),
              ("disk", lambda p: check_disk(p, runs_root)),
              ("push", lambda p: check_push(p, runs_root))]
    if deep:
        from .smoke import DeepChecks

        probe = DeepChecks(params)
        checks += [("model", probe.load), ("steering", probe.steering),
                   ("wall time", probe.wall_time)]
    for name, check in checks:
        try:
            echo(f"ok    {name:<10} {check(params)}")
        except Exception as err:  # a preflight reports every kind of failure the same way
            echo(f"FAIL  {name:<10} {type(err).__name__}: {err}")
            return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", required=True, help="params YAML file")
    parser.add_argument("--runs-root", default="runs", type=Path)
    parser.add_argument("--reports-root", default="reports", type=Path)
    parser.add_argument("--deep", action=argparse.BooleanOptionalAction, default=None,
                        help="load the model and time it (default: the params' check.deep; "
                             "auto: when the weights are on this machine)")
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
    except ParamsError as err:
        print(f"FAIL  params     {err}")
        return 1
    apply_environment(params)
    deep = args.deep if args.deep is not None else params.check.deep
    if deep == "auto":
        from .smoke import weights_are_local

        try:
            deep = weights_are_local(params.model)
        except Exception:  # a cache we cannot read: the light checks still run
            deep = False
    return 0 if run_checks(params, args.runs_root, reports_root=args.reports_root,
                         deep=deep) else 1


if __name__ == "__main__":
    sys.exit(main())
