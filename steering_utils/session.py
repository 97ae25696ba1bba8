"""A notebook's stage, opened and finished: the checks, the stage folder, the run manifest.

    stage = open_stage(params_file, runs_root, "02_baseline", reports_root)
    ...
    stage.finish()

`open_stage` loads the params, applies their environment (offline mode) and makes the
runner's checks (`checks.validate_run`, `checks.check_folders`), so a notebook opened in Lab
stops on what the runner stops on; then it opens the stage's keyed folder
(`artifacts.StageDir`). `NotebookStage.finish` lets go of the executor's workers (Ray stops
in the cell, not at kernel exit, where a slow stop would be cut short), builds the run's
manifest (`manifest`: package versions, git, device), then writes the stage's markers
(`artifacts.StageDir.finish`). The three concerns stay in their own modules.
"""

from __future__ import annotations

from pathlib import Path

from .artifacts import StageDir

RUN_SUMMARY = ("created_utc", "git_commit", "device", "params_hash")


class NotebookStage(StageDir):
    """A stage opened by its notebook: finishing also stops its executor and records the run."""

    def finish(self, run: dict | None = None) -> None:
        from .executors import make_executor
        from .manifest import run_manifest

        make_executor(self.params).shutdown()
        self._check_writable()  # before building a manifest for a stage that cannot finish
        if run is None:
            manifest = run_manifest(self.run, self.params)
            run = {name: manifest[name] for name in RUN_SUMMARY}
        super().finish(run)


def open_stage(params_file: str | Path, runs_root: str | Path, stage: str,
               reports_root: str | Path = "../reports") -> NotebookStage:
    """The stage, after the runner's checks on these params (raises on what they refuse)."""
    from .checks import check_folders, validate_run
    from .params import apply_environment, load_params

    params = load_params(params_file)
    apply_environment(params)
    validate_run(params)
    check_folders(params, Path(runs_root).resolve(), Path(reports_root).resolve())
    return NotebookStage(runs_root, params, stage)
