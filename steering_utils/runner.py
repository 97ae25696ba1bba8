"""Run the study: `python -m steering_utils.runner --params params/default.yaml` (make report).

Executes notebooks/01_..06_ in order with papermill (each stage's notebook as the newer
side of its jupytext pair holds it, `notebooks.read_stage_notebook`), injecting the params
file and the run folders; skips a stage whose artifacts are complete for the same key
(params, code, inputs: `artifacts.key_parts`), and says why each other stage runs ("04_vectors
runs: notebook changed"); prints a line per stage, one progress bar (or, off a terminal, a
line a minute) over the rows of all its job tables, and the whole run's ETA after each stage
(`progress`). Kernels talk to the runner over local IPC sockets, not TCP (no transport warning).
One runner per run folder (`runs/<run>/.lock`).
Executed notebooks are written to runs/<run_name>/notebooks/ and copied beside the
report once it is published; the report folder is replaced as a whole, and a report
from other params is moved aside first. Any failure, Ctrl-C or SIGTERM (`timeout`, Slurm's
time limit) ends with one line naming the cause and the resume command, plus
failed_/partial_experiment_results.json, the lock released. The runs and reports roots
must be disjoint, and a folder at reports/<run>/ must be one of our reports: otherwise the
run stops before any work (`reportdir.FolderConflict`). `--force` removes this params
version's stage folders and the shards no other version records (`prune.remove_version`).
Exit codes: 0 done, 1 failed, 2 bad params, 130 interrupted, 143 terminated (SIGTERM).
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import signal
import sys
import tempfile
import time
from pathlib import Path

from .artifacts import (
    SHARDS_DIR,
    is_complete,
    key_changes,
    key_parts,
    last_finished,
    stage_folder,
    stage_key,
    stage_seconds,
)
from .extras import MissingExtra
from .notebooks import KERNEL_NAME, NOTEBOOKS, PROJECT_ROOT, read_stage_notebook
from .params import ParamsError, StudyParams, load_params, run_path
from .progress import PROGRESS_ENV, RunClock, StageProgress, expected_rows, stage_work
from .prune import EXECUTED_DIR, remove_version
from .reportdir import (
    FAILED_FILE,
    PARTIAL_FILE,
    FolderConflict,
    attach_notebooks,
    clear_records,
    report_params_hash,
    set_aside_stale,
    write_record,
)
from .runlock import RunLock, RunLocked
from .stages import STAGES

REPORT_STAGE = "06_report"
EXIT_FAILED, EXIT_PARAMS, EXIT_INTERRUPTED = 1, 2, 130
EXIT_TERMINATED = 128 + signal.SIGTERM  # 143: what a shell reports for a SIGTERM'd process
_MAX_CAUSE = 400


class RunStopped(Exception):
    """A run ended early; `line` is the one line for the user (cause and next step)."""

    def __init__(self, line: str, exit_code: int):
        super().__init__(line)
        self.line = line
        self.exit_code = exit_code


def _kernel_name(params: StudyParams | None = None) -> str:
    """The kernel that runs the notebooks: the vLLM environment's for engine: vllm."""
    if params is not None:
        from .engines import make_engine

        kernel = make_engine(params).kernel(PROJECT_ROOT)  # vLLM: MissingExtra naming the setup
        if kernel is not None:
            return kernel
    from jupyter_client.kernelspec import KernelSpecManager

    specs = KernelSpecManager().find_kernel_specs()
    return KERNEL_NAME if KERNEL_NAME in specs else "python3"


def _kernel_config(scratch: Path):
    """Kernels on IPC sockets in `scratch`: local only, so there is nothing to encrypt and
    ipykernel does not warn "Kernel is running over TCP without encryption" at each stage."""
    from traitlets.config import Config

    ip = scratch / "kernel"
    if len(str(ip)) > 90:  # a Unix socket path holds ~107 bytes (with its "-<port>" suffix)
        return Config()
    return Config({"KernelManager": {"transport": "ipc", "ip": str(ip)}})


def _job_counts(params: StudyParams) -> dict[str, int] | None:
    """The params' job counts for progress and ETA; None if the model config cannot be read
    (validate_run has read it already: the estimate is a courtesy, never a reason to stop)."""
    from .models import load_model_config, num_decoder_layers
    from .workload import job_counts

    try:
        return job_counts(params, num_decoder_layers(load_model_config(params.model)))
    except Exception:  # noqa: BLE001
        return None


def report_dir(reports_root: Path, params: StudyParams) -> Path:
    """reports_root/<run_name>, guaranteed inside reports_root."""
    return run_path(reports_root, params.run_name)


def failure_cause(err: BaseException) -> str:
    """One line with the real error: a notebook's own exception, not papermill's wrapper."""
    ename, evalue = getattr(err, "ename", None), getattr(err, "evalue", None)
    if ename:  # PapermillExecutionError: the exception raised inside the failing cell
        text = f"{ename}: {evalue}" if evalue else ename
    else:
        text = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
    line = " ".join(text.split())
    return line if len(line) <= _MAX_CAUSE else line[: _MAX_CAUSE - 1] + "…"


def resume_command(params_file: Path, runs_root: Path, reports_root: Path) -> str:
    """The command that picks the run up where it stopped (roots only when not the default)."""
    parts = ["python", "-m", "steering_utils.runner", "--params", str(params_file)]
    for flag, given, default in (("--runs-root", runs_root, "runs"),
                                 ("--reports-root", reports_root, "reports")):
        if Path(given).resolve() != (Path.cwd() / default).resolve():
            parts += [flag, str(given)]
    return shlex.join(parts)


class Terminated(KeyboardInterrupt):
    """SIGTERM reached the runner (`timeout`, Slurm's time limit): it stops as for Ctrl-C."""


_signals = {"terminated": False, "interrupted": False}


def _on_sigint(signum, frame) -> None:
    """Ctrl-C: raised here, in the runner's own handler. Under Python's default handler,
    asyncio (papermill's event loop) turns SIGINT into a cancelled task, which nbclient can
    swallow near a cell's end: the run then went on and exited 0 (seen in CI). The flag
    keeps the interrupt even if something catches the exception."""
    _signals["interrupted"] = True
    raise KeyboardInterrupt()


def _on_sigterm(signum, frame) -> None:
    if _signals["terminated"]:
        return  # a second SIGTERM must not cut the records and the lock release short
    _signals["terminated"] = True
    raise Terminated()


def _interrupted(err: BaseException) -> bool:
    return isinstance(err, KeyboardInterrupt) or getattr(err, "ename", None) == "KeyboardInterrupt"


def _stop_kernels(grace_s: float = 10.0) -> None:
    """Stop this process's child processes (the stage's kernel) and reap them: an interrupt or
    SIGTERM leaves nbclient no chance to shut its kernel down, which would otherwise run on
    until it notices its parent has gone (and print after the user's line). Linux (/proc)."""
    me = str(os.getpid())
    children = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if (proc / "stat").read_text().rsplit(")", 1)[1].split()[1] == me:
                children.append(int(proc.name))
        except (OSError, IndexError, ValueError):
            continue
    for how in (signal.SIGTERM, signal.SIGKILL):
        for pid in children:
            try:
                os.kill(pid, how)
            except ProcessLookupError:
                pass
        deadline = time.time() + grace_s
        while children and time.time() < deadline:
            for pid in list(children):
                try:
                    if os.waitpid(pid, os.WNOHANG)[0] == pid:
                        children.remove(pid)
                except ChildProcessError:  # already reaped by its Popen
                    children.remove(pid)
            time.sleep(0.05)
        if not children:
            return


def _kept(run_dir: Path, params: StudyParams) -> str:
    """What is on disk for a resume, counted now (a failure line says only what is true)."""
    keys = {s: stage_key(params, s, run_dir.parent) for s in STAGES}
    done = sum(is_complete(run_dir / s / key, key) for s, key in keys.items())
    shards = len(list((run_dir / SHARDS_DIR).glob("*.parquet")))
    return f"kept: {done} finished stage(s) of these params and {shards} generation shard(s)"


def run_study(params_file: str | Path, runs_root: str | Path = "runs",
              reports_root: str | Path = "reports", force: bool = False,
              echo=print, wait: bool = False) -> Path:
    """Run every stage not yet complete; returns the report folder.

    Raises ParamsError before any work on bad params (MissingExtra on a missing install),
    RunLocked when another runner holds the run, RunStopped (with the user's line) when a
    stage fails or is interrupted.
    """
    from .checks import check_folders, validate_run
    from .params import apply_environment

    params_file = Path(params_file).resolve()
    params = load_params(params_file)
    apply_environment(params)
    runs_root, reports_root = Path(runs_root).resolve(), Path(reports_root).resolve()
    run_dir = run_path(runs_root, params.run_name)
    out_dir = report_dir(reports_root, params)
    validate_run(params)  # bad layers, sizes, context or tasks fail here, before any stage
    check_folders(params, runs_root, reports_root)  # a read-only folder fails here, by name
    kernel = _kernel_name(params)  # the vLLM env's kernel for engine: vllm (checked above)
    with RunLock(run_dir, wait=wait, echo=echo):
        moved = set_aside_stale(out_dir, params.params_hash)
        echo(f"run {params.run_name!r} (params hash {params.params_hash}) -> {out_dir}")
        if moved:
            echo(f"  the report there was made under other params: moved aside to {moved}")
        with tempfile.TemporaryDirectory(prefix="steering-") as scratch:
            try:
                _run_stages(params, params_file, run_dir, runs_root, reports_root, out_dir,
                            force, echo, kernel, Path(scratch))
            finally:
                os.environ.pop(PROGRESS_ENV, None)
        notebooks = _executed_notebooks(params, run_dir)
        if report_params_hash(out_dir) == params.params_hash:
            attach_notebooks(out_dir, notebooks)
        clear_records(out_dir)
    echo(f"report: {out_dir / 'report.html'}")
    return out_dir


def _executed(run_dir: Path, params: StudyParams, stage: str) -> Path:
    # The stage hash in the name: a notebook executed under other params is never shown.
    return run_dir / EXECUTED_DIR / f"{stage}-{stage_key(params, stage, run_dir.parent)}.ipynb"


def _executed_notebooks(params: StudyParams, run_dir: Path) -> dict[str, Path]:
    found = {f"{stage}.ipynb": _executed(run_dir, params, stage) for stage in STAGES}
    return {name: path for name, path in found.items() if path.is_file()}


def _run_stages(params: StudyParams, params_file: Path, run_dir: Path, runs_root: Path,
                reports_root: Path, out_dir: Path, force: bool, echo, kernel: str,
                scratch: Path) -> None:
    import shutil

    import papermill

    from .manifest import write_run_manifest

    resume = resume_command(params_file, runs_root, reports_root)
    if force:  # recompute everything these params need; other params versions' work stays
        echo(f"  {remove_version(runs_root, params)}")
    started_run = False
    counts = _job_counts(params)
    if counts:
        echo(f"  {'work':<15} {counts['generated']:,} generated rows ("
             + ", ".join(f"{s} {n:,}" for s, n in expected_rows(counts).items())
             + f"), {counts['activations']:,} activation texts, "
             f"{counts['capability']:,} capability answers")
    expected, clock = expected_rows(counts), RunClock(stage_work(params, counts))
    tty = echo is print and sys.stdout.isatty()
    for number, stage in enumerate(STAGES, start=1):
        # Keys are computed in stage order: a stage's key holds its inputs' contents,
        # known once they have finished (above, in this loop).
        folder = stage_folder(runs_root, params, stage)
        if force:
            shutil.rmtree(folder, ignore_errors=True)
        current = is_complete(folder, folder.name)
        reasons = ["--force"] if force else [] if current else key_changes(
            (last_finished(run_dir, stage) or {}).get("key_parts"),
            key_parts(params, stage, runs_root))
        if stage == REPORT_STAGE and current and \
                report_params_hash(out_dir) != params.params_hash:
            current, reasons = False, ["no report for these params in " + str(out_dir)]
        if current:
            echo(f"  {stage:<15} skipped: complete for these params and code "
                 f"({stage_seconds(folder)} s when it ran)")
            continue
        echo(f"  {stage:<15} runs: {'; '.join(reasons)}")
        if not started_run:  # one manifest per run, built when it starts work
            write_run_manifest(run_dir, params)
            started_run = True
        started = time.time()
        executed = _executed(run_dir, params, stage)
        executed.parent.mkdir(parents=True, exist_ok=True)
        executed.unlink(missing_ok=True)  # other versions' notebooks stay (prune removes them)
        progress_file = scratch / f"{stage}.json"
        os.environ[PROGRESS_ENV] = str(progress_file)  # the kernel inherits it
        try:
            with StageProgress(stage, progress_file, expected.get(stage, 0), echo,
                               tty) as shown:
                papermill.execute_notebook(
                    read_stage_notebook(stage), str(executed),
                    parameters={"params_file": str(params_file), "runs_root": str(runs_root),
                                "reports_root": str(reports_root)},
                    kernel_name=kernel, cwd=str(NOTEBOOKS), progress_bar=False,
                    start_timeout=120, config=_kernel_config(scratch),
                )
                if _signals["interrupted"]:  # Ctrl-C reached us, whatever caught it
                    raise KeyboardInterrupt()
        except (Exception, KeyboardInterrupt) as err:
            seconds = time.time() - started
            terminated = isinstance(err, Terminated) or _signals["terminated"]
            interrupted = _interrupted(err) or terminated
            note = _write_records(out_dir, run_dir, params, stage, err, executed, resume,
                                  "terminated" if terminated else
                                  "interrupted" if interrupted else "failed")
            kept = _kept(run_dir, params)
            if interrupted:
                # nbclient leaves a task whose "kernel died" error asyncio would print after
                # our line at exit; the interrupt is already the whole story.
                logging.getLogger("asyncio").setLevel(logging.CRITICAL)
                _stop_kernels()
                how = "TERMINATED (SIGTERM)" if terminated else "INTERRUPTED"
                echo(f"  {stage:<15} {how} after {seconds:.1f} s")
                raise RunStopped(
                    f"{'terminated (SIGTERM)' if terminated else 'interrupted'} during {stage}: "
                    f"{kept} ({out_dir / PARTIAL_FILE}{note}); resume with: {resume}",
                    EXIT_TERMINATED if terminated else EXIT_INTERRUPTED) from err
            cause = failure_cause(err)
            echo(f"  {stage:<15} FAILED after {seconds:.1f} s: {cause}")
            echo(f"  the executed notebook, with the failing cell: {executed}")
            echo(f"  {kept}; resume with: {resume}")
            raise RunStopped(
                f"{stage} failed: {cause} (failing cell in {executed}; record in "
                f"{out_dir / FAILED_FILE}{note}); fix that, then resume with: {resume}",
                EXIT_FAILED) from err
        wall = time.time() - started
        echo(f"  {stage:<15} done in {wall:.1f} s{shown.summary()}")
        clock.record(stage, wall, shown.rows)
        eta = clock.eta_line(list(STAGES)[number:])
        if eta:
            echo(eta)


def _write_records(out_dir: Path, run_dir: Path, params: StudyParams, stage: str,
                   err: BaseException, executed: Path, resume: str, reason: str) -> str:
    """failed_ (on a failure) and partial_experiment_results.json; '' or why they are missing.
    reason: failed, interrupted (Ctrl-C) or terminated (SIGTERM)."""
    keys = {s: stage_key(params, s, run_dir.parent) for s in STAGES}
    done = {s: key for s, key in keys.items() if is_complete(run_dir / s / key, key)}
    partial = {"run_name": params.run_name, "params_hash": params.params_hash,
               "stopped_stage": stage, "reason": reason,
               "completed_stages": done, "executed_notebook": str(executed),
               "stopped_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "resume": resume}
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_record(out_dir, PARTIAL_FILE, partial)
        if reason == "failed":
            write_record(out_dir, FAILED_FILE, {
                "run_name": params.run_name, "params_hash": params.params_hash,
                "failed_stage": stage, "error": failure_cause(err),
                "executed_notebook": str(executed), "completed_stages": list(done),
                "resume": resume})
    except (OSError, FolderConflict) as write_err:
        return f"; could not write the record there: {failure_cause(write_err)}"
    return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params/default.yaml")
    parser.add_argument("--runs-root", default="runs")
    parser.add_argument("--reports-root", default="reports")
    parser.add_argument("--force", action="store_true",
                        help="rerun complete stages too: removes these params' stage folders "
                             "and the shards no other params version uses")
    parser.add_argument("--wait", action="store_true",
                        help="wait for another runner of the same run to finish instead of "
                             "stopping")
    args = parser.parse_args(argv)
    resume = resume_command(Path(args.params).resolve(), Path(args.runs_root),
                            Path(args.reports_root))
    _signals["terminated"] = _signals["interrupted"] = False
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    previous_int = signal.signal(signal.SIGINT, _on_sigint)
    try:
        run_study(args.params, args.runs_root, args.reports_root, args.force, wait=args.wait)
    except ParamsError as err:
        print(f"params error: {err}", file=sys.stderr)
        return EXIT_PARAMS
    except MissingExtra as err:  # the params are fine, this environment lacks an install
        print(f"missing install: {err}", file=sys.stderr)
        return EXIT_PARAMS
    except RunStopped as err:
        print(err.line, file=sys.stderr)
        return err.exit_code
    except (RunLocked, FolderConflict) as err:
        print(f"not started: {err}", file=sys.stderr)
        return EXIT_FAILED
    except Terminated:
        print(f"terminated (SIGTERM) before or between stages; finished stages are kept; "
              f"resume with: {resume}", file=sys.stderr)
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        print(f"interrupted before or between stages; finished stages are kept; resume with: "
              f"{resume}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:  # every other failure still ends with its cause, never silently
        print(f"run failed: {failure_cause(err)}; fix that, then run again: {resume}",
              file=sys.stderr)
        return EXIT_FAILED
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
    return 0


if __name__ == "__main__":
    sys.exit(main())
