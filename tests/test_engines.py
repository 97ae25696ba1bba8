"""The engine and the executor, each chosen once from params; settings that change no result
stay out of every key; a missing install is its own error, not a params error."""

from __future__ import annotations

import sys

import pytest

from steering_utils.artifacts import stage_key
from steering_utils.engines import HFEngine, VLLMEngine, make_engine
from steering_utils.executors import LocalExecutor, RayExecutor, make_executor, setup_targets
from steering_utils.extras import MissingExtra
from steering_utils.generation import make_jobs
from steering_utils.jobs import plan_shards
from steering_utils.params import ParamsError, parse_params
from steering_utils.stages import ALL_LAYERS, CAA, STAGE_NAMES, UNSTEERED_LAYER, hook_layer
from tests.test_jobs import PROMPTS
from tests.test_params import _default


def _params(engine: str = "hf", mode: str = "local", **sections):
    raw = _default()
    raw["generation"]["engine"] = engine
    if engine == "vllm":  # vLLM cannot steer ActAdd's front positions (params refuse it)
        raw["sweep"]["methods"] = [m for m in raw["sweep"]["methods"] if m != "actadd"]
    raw["execution"] = {"mode": mode}
    for name, value in sections.items():
        section, _, field = name.partition("__")
        raw.setdefault(section, {})[field] = value
    return parse_params(raw)


def test_the_params_pick_the_engine_and_the_executor():
    assert type(make_engine(_params("hf"))) is HFEngine
    assert type(make_engine(_params("vllm"))) is VLLMEngine
    assert type(make_executor(_params(mode="local"))) is LocalExecutor
    assert type(make_executor(_params(mode="ray"))) is RayExecutor
    assert make_engine(_params("vllm")).group_rows > make_engine(_params("hf")).group_rows
    # Only vLLM bounds the context itself, at generation.vllm.max_model_len.
    assert make_engine(_params("hf")).max_tokens() is None
    vllm = _params("vllm", generation__vllm={"max_model_len": 512})
    assert make_engine(vllm).max_tokens() == 512


@pytest.mark.parametrize(("engine", "mode", "targets"), [
    ("hf", "local", []), ("vllm", "local", ["setup-vllm"]), ("hf", "ray", ["setup-ray"]),
    ("vllm", "ray", ["setup-vllm", "setup-ray", "setup-vllm-ray"])])
def test_make_report_installs_what_the_engine_and_executor_need(engine, mode, targets):
    assert setup_targets(_params(engine, mode)) == targets


def test_the_vllm_room_and_make_checks_depth_are_in_no_key():
    """How much vLLM holds and whether make check loads the model change no row: the stage
    keys and shard keys stay, while the params hash (the manifest's) moves."""
    base = _params("vllm")
    other = _params("vllm", generation__vllm={"max_model_len": 4096, "gpu_memory": 0.8},
                    check__deep=False)
    assert [stage_key(base, s) for s in STAGE_NAMES] == [stage_key(other, s) for s in STAGE_NAMES]
    jobs = make_jobs(PROMPTS, [(-1, 0.0), (1, 1.0)], samples=1)
    assert plan_shards(jobs, base, {CAA: "f"}, "all")[0][0] == \
        plan_shards(jobs, other, {CAA: "f"}, "all")[0][0]
    assert base.params_hash != other.params_hash
    with pytest.raises(ParamsError, match=r"generation.vllm.gpu_memory"):
        _params("vllm", generation__vllm={"gpu_memory": 1.5})


def test_a_missing_install_is_not_a_params_error(tmp_path):
    from steering_utils.cluster import require_ray
    from steering_utils.vllm_kernel import notebook_kernel

    bare = tmp_path / "python"
    bare.write_text(f"#!/bin/sh\nexec {sys.executable} -S -c 'import ray_is_not_here' \"$@\"\n")
    bare.chmod(0o755)
    for missing in (lambda: require_ray(str(bare)), lambda: notebook_kernel(tmp_path)):
        with pytest.raises(MissingExtra, match=r"; run `make setup-(ray|vllm)`") as err:
            missing()
        assert not isinstance(err.value, ParamsError) and "\n" not in str(err.value)


def test_the_special_layer_values_index_no_real_layer_and_others_are_refused():
    assert [hook_layer(x) for x in (UNSTEERED_LAYER, ALL_LAYERS, 0, 7)] == [0, 0, 0, 7]
    with pytest.raises(ValueError, match="layer -3: a row's layer is 0 or more"):
        hook_layer(-3)  # once silently steered at layer 0
