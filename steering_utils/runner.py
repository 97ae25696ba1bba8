"""Run the study: `python -m steering_utils.runner --params params/default.yaml` (make report).

Executes notebooks/01_..06_ in order with papermill, injecting the params file
and the run folders; keeps executed copies under reports/<run_name>/notebooks/;
skips a stage whose artifacts are complete for the same params hash; prints a
line per stage. On failure it writes failed_experiment_results.json and says how
to resume (finished stages and generation shards are kept).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .artifacts import SHARDS_DIR, is_complete, stage_folder, stage_seconds, write_json
from .params import ParamsError, StudyParams, load_params
from .stages import STAGES

PROJECT_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = PROJECT_ROOT / "notebooks"
KERNEL_NAME = "steering-study"
# What the runner injects; every notebook's `parameters` cell declares these
# (checked by tests/test_notebooks.py).
NOTEBOOK_PARAMETERS = ("params_file", "runs_root", "reports_root")


def _kernel_name() -> str:
    from jupyter_client.kernelspec import KernelSpecManager

    specs = KernelSpecManager().find_kernel_specs()
    return KERNEL_NAME if KERNEL_NAME in specs else "python3"


def report_dir(reports_root: Path, params: StudyParams) -> Path:
    return Path(reports_root) / params.run_name


def run_study(params_file: str | Path, runs_root: str | Path = "runs",
              reports_root: str | Path = "reports", force: bool = False,
              echo=print) -> Path:
    """Run every stage not yet complete; returns the report folder."""
    import papermill

    from .params import apply_environment
    from .preflight import validate_run

    params_file = Path(params_file).resolve()
    params = load_params(params_file)
    apply_environment(params)
    validate_run(params)  # bad layers, sizes or tasks fail here, before any stage runs
    runs_root, reports_root = Path(runs_root).resolve(), Path(reports_root).resolve()
    out_dir = report_dir(reports_root, params)
    (out_dir / "notebooks").mkdir(parents=True, exist_ok=True)
    kernel = _kernel_name()
    echo(f"run {params.run_name!r} (params hash {params.params_hash}) -> {out_dir}")
    if force:  # recompute everything these params need; other params' folders stay
        import shutil

        shutil.rmtree(runs_root / params.run_name / SHARDS_DIR, ignore_errors=True)
        for stage in STAGES:
            shutil.rmtree(stage_folder(runs_root, params, stage), ignore_errors=True)
    for stage in STAGES:
        folder = stage_folder(runs_root, params, stage)
        if is_complete(folder, folder.name):
            echo(f"  {stage:<15} skipped: complete for these params ({stage_seconds(folder)} s "
                 "when it ran)")
            continue
        started = time.time()
        executed = out_dir / "notebooks" / f"{stage}.ipynb"
        try:
            papermill.execute_notebook(
                str(NOTEBOOKS / f"{stage}.ipynb"), str(executed),
                parameters={"params_file": str(params_file), "runs_root": str(runs_root),
                            "reports_root": str(reports_root)},
                kernel_name=kernel, cwd=str(NOTEBOOKS), progress_bar=False,
                start_timeout=120,
            )
        except Exception as err:
            _write_failure(out_dir, runs_root, params, stage, err, executed, params_file)
            echo(f"  {stage:<15} FAILED after {time.time() - started:.1f} s: "
                 f"{type(err).__name__}")
            echo(f"  the executed notebook, with the failing cell: {executed}")
            echo(f"  finished stages and generation shards are kept; resume with: "
                 f"python -m steering_utils.runner --params {params_file}")
            raise
        echo(f"  {stage:<15} done in {time.time() - started:.1f} s")
    echo(f"report: {out_dir / 'report.html'}")
    return out_dir


def _write_failure(out_dir: Path, runs_root: Path, params: StudyParams, stage: str,
                   err: Exception, executed: Path, params_file: Path) -> None:
    done = [s for s in STAGES if is_complete(stage_folder(runs_root, params, s),
                                             stage_folder(runs_root, params, s).name)]
    write_json({"run_name": params.run_name, "params_hash": params.params_hash,
                "failed_stage": stage, "error": f"{type(err).__name__}: {err}"[:4000],
                "executed_notebook": str(executed), "completed_stages": done,
                "resume": f"python -m steering_utils.runner --params {params_file}"},
               out_dir / "failed_experiment_results.json")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params/default.yaml")
    parser.add_argument("--runs-root", default="runs")
    parser.add_argument("--reports-root", default="reports")
    parser.add_argument("--force", action="store_true", help="rerun complete stages too")
    args = parser.parse_args(argv)
    try:
        run_study(args.params, args.runs_root, args.reports_root, args.force)
    except ParamsError as err:
        print(f"params error: {err}", file=sys.stderr)
        return 2
    except Exception:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
