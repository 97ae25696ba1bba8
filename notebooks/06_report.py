# ---
# jupyter:
#   kernelspec:
#     display_name: Python (steering study)
#     language: python
#     name: steering-study
# ---

# %% [markdown]
# # 06 · Report
#
# **What this stage does.** It gathers every earlier stage's artifacts into
# `experiment_results.json`, typed by `steering_utils.results.ExperimentResults` (the
# models that `steering_utils/schemas/experiment_results.schema.json` is generated from),
# written to this stage's folder and to `reports/<run_name>/`; draws the figures (PNG and SVG
# under `reports/<run_name>/figures/`) and writes the self-contained
# `reports/<run_name>/report.html`: summary numbers first, then figures, tables, example
# generations and a browser of every eval continuation (prompt × cell) behind a content
# warning (escaped: model text is untrusted), and the run manifest. The same continuations,
# one row each, go to `reports/<run_name>/continuations.parquet`. The report folder is built
# beside the old one and swapped in as a whole, so a reader sees the old report or the new
# one, never a mix.
#
# **Reads** `01_data` … `05_sweep` (`03_activations`: the contrast counts), and the run
# manifest `runs/<run_name>/run_manifest.json`. **Writes** `runs/<run_name>/06_report/` and
# `reports/<run_name>/`.

# %% tags=["parameters"]
params_file = "../params/default.yaml"
runs_root = "../runs"
reports_root = "../reports"

# %%
from steering_utils.session import open_stage

stage = open_stage(params_file, runs_root, "06_report", reports_root)
params = stage.params
stage

# %%
from steering_utils.assembly import build_results
from steering_utils.continuations import read_continuations
from steering_utils.params import run_path
from steering_utils.reportdir import publish_report
from steering_utils.results import write_results

results = build_results(stage)  # typed: steering_utils.results.ExperimentResults
write_results(results, stage.out("results").parent)  # raises once 06 has finished
# Every eval continuation (sweep, control, method picks): the report's browser and its table.
continuations = read_continuations(stage)
# Built in a temporary folder, then swapped in whole: never a mix of two runs.
report_path = publish_report(results, run_path(reports_root, params.run_name), continuations)
print(report_path)

# %%
from steering_utils.report_tables import summary_table

summary_table(results)

# %%
from steering_utils.report_tables import methods_table

methods_table(results)

# %% [markdown]
# Methods at matched fluency: every pair on the same eval prompts (paired CI, shown or not
# with its MDE), and the goal for the method chosen on dev (met, not met or undecidable).

# %%
from steering_utils.report_tables import pairwise_table
from steering_utils.report_text import goal_text

print(goal_text(results))
pairwise_table(results)

# %% [markdown]
# Every claim with its power: each comparison's paired estimate and 95% CI, shown or not
# (with the smallest effect this n detects at 80% power), and whether a limit is decidable.

# %%
from steering_utils.report_tables import claims_table

claims_table(results)

# %%
stage.finish()
