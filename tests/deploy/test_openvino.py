"""--provider openvino: the OpenVINO plugin for ONNX Runtime, registered by the session factory, strict like CUDA."""

import json
import os
import subprocess
import sys

import onnxruntime as ort
import pytest

from vggdeploy.config import CheckConfig
from vggdeploy.deploy.session import (
    OPENVINO_INSTALL,
    ProviderSettings,
    create_session,
    openvino_devices,
    openvino_hint,
    openvino_options,
    session_provider,
)
from vggdeploy.errors import ProviderUnavailable, UsageError


@pytest.fixture(scope="module")
def plugin():
    return pytest.importorskip(
        "onnxruntime_ep_openvino", reason=f"the openvino extra is not installed: {OPENVINO_INSTALL}"
    )


def _devices_or_reason() -> tuple[list, str | None]:
    try:
        return openvino_devices(), None
    except ProviderUnavailable as error:
        return [], str(error)


def test_auto_is_latency_and_throughput_is_asked_for():
    # one waiting caller gets half the speed from THROUGHPUT's streams (BENCHMARKS.md), so auto never picks it
    assert [openvino_hint(setting) for setting in ("auto", "latency", "throughput")] == [
        "LATENCY",
        "LATENCY",
        "THROUGHPUT",
    ]


def test_threads_hint_and_precision_reach_the_plugin_through_load_config():
    options = openvino_options(ProviderSettings("openvino", intra_op_threads=2, performance_hint="throughput"))
    assert json.loads(options["load_config"]) == {
        "CPU": {"PERFORMANCE_HINT": "THROUGHPUT", "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": "2"}
    }
    # no thread count asked for: OpenVINO's own default, not a forced number; f32 always (never a silent bf16)
    plain = json.loads(openvino_options(ProviderSettings("openvino"))["load_config"])
    assert plain == {"CPU": {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}}


def test_a_hint_without_openvino_is_a_usage_error(tiny_export):
    with pytest.raises(UsageError, match="applies to --provider openvino only"):
        ProviderSettings("cpu", performance_hint="latency")
    with pytest.raises(UsageError, match="performance hint must be one of auto, latency, throughput"):
        ProviderSettings("openvino", performance_hint="fast")
    model, golden = str(tiny_export[0].model_path), str(tiny_export[1] / "onnx" / "golden")
    for command in (["run", golden, "--model", model], ["check", "--model", model]):
        args = [sys.executable, "-m", "vggdeploy", *command, "--provider", "cpu", "--performance-hint", "throughput"]
        result = subprocess.run(args, capture_output=True, text=True, timeout=300)
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip() == "error: a performance hint applies to --provider openvino only"


def test_bench_engines_name_their_hint():
    from vggdeploy.verify.bench import describe_settings
    from vggdeploy.verify.engines import Engine

    assert Engine.parse("ort-openvino-int8-throughput").performance_hint == "throughput"
    assert Engine.parse("ort-openvino-int8").performance_hint == "auto"
    assert describe_settings(Engine.parse("ort-openvino-fp32")).endswith(" threads, OpenVINO hint LATENCY")
    assert describe_settings(Engine.parse("ort-openvino-fp32-throughput")).endswith("OpenVINO hint THROUGHPUT")
    assert describe_settings(Engine.parse("ort-cpu-int8")).endswith(" threads")


def test_the_plugin_registers_once_and_says_what_it_offers(plugin):
    devices, reason = _devices_or_reason()
    # registered: ONNX Runtime knows the library under the plugin's name (unregistering an unknown name fails)
    ort.unregister_execution_provider_library(plugin.get_ep_name())
    again, again_reason = _devices_or_reason()  # registers it anew
    assert len(again) == len(devices) and again_reason == reason
    _devices_or_reason()  # a third call with the library registered is harmless
    if reason is not None:
        assert "offers no device on this CPU" in reason and "Intel" in reason


def test_a_missing_plugin_is_one_line_with_the_pip_command(plugin, tiny_export, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime_ep_openvino", None)  # import fails as if it were not installed
    with pytest.raises(ProviderUnavailable, match=r"its plugin is not installed: pip install 'vggdeploy\[openvino\]'"):
        create_session(tiny_export[0].model_path, ProviderSettings(provider="openvino"))


@pytest.mark.slow
def test_run_and_check_with_openvino_answer_or_refuse_in_one_line(plugin, tiny_export, tiny_checkpoint):
    devices, reason = _devices_or_reason()
    model = str(tiny_export[0].model_path)
    golden = str(tiny_export[1] / "onnx" / "golden")
    check = ["check", "--model", model, "--checkpoint", str(tiny_checkpoint), "--images", "200"]  # not beside it
    for command in (["run", golden, "--model", model], check):
        args = [sys.executable, "-m", "vggdeploy", *command, "--provider", "openvino"]
        result = subprocess.run(args, capture_output=True, text=True, timeout=300)
        if devices:
            assert result.returncode == 0, result.stderr
        else:
            assert result.returncode == 6 and result.stderr.strip() == f"error: {reason}", result.stderr


@pytest.fixture(scope="module")
def openvino_ready(plugin):
    devices, reason = _devices_or_reason()
    if not devices:
        pytest.skip(f"needs an Intel CPU: {reason}")


@pytest.mark.parametrize("hint", ["auto", "latency", "throughput"])
def test_a_session_is_strict_and_runs_on_openvino(openvino_ready, tiny_export, hint):
    session = create_session(
        tiny_export[0].model_path, ProviderSettings("openvino", intra_op_threads=1, performance_hint=hint)
    )
    assert session_provider(session) == "openvino"


def test_fp32_and_int8_parity_through_openvino(openvino_ready, tiny_export, tiny_checkpoint, tmp_path):
    from vggdeploy.verify.check import run_check

    report = run_check(
        tiny_export[0].model_path,
        tiny_checkpoint,
        CheckConfig(provider="openvino", images=1000, int8_max_drop_pp=5.0),
        report_dir=tmp_path,
    )
    assert report.provider == "openvino" and report, report.format()
    assert {r.name for r in report.results} >= {"fp32", "int8"}


@pytest.mark.slow
def test_bench_runs_the_openvino_engines_or_skips_them_with_the_reason(plugin, tiny_export, tiny_checkpoint, tmp_path):
    from vggdeploy.config import BenchConfig
    from vggdeploy.verify.bench import run_bench
    from vggdeploy.verify.engines import OPENVINO_ENGINES

    devices, reason = _devices_or_reason()
    report = run_bench(
        # the CPU set by name: a machine with a GPU (the GPU host's Intel CPU) defaults to the GPU set, without OpenVINO
        tiny_export[0].model_path,
        tiny_checkpoint,
        BenchConfig(("cpu",), batch_sizes=(1, 8), seconds=0.01),
        tmp_path,
    )
    for engine in OPENVINO_ENGINES:
        if devices:
            assert {m.batch for m in report.measurements if m.engine == engine} == {1, 8}
            assert report.engine_settings[engine].endswith("OpenVINO hint LATENCY")
        else:
            assert report.skipped[engine] == reason
    if not devices:  # asked for by name, an engine that cannot run is an error before anything is measured
        with pytest.raises(ProviderUnavailable, match="engine ort-openvino-fp32 cannot run: OpenVINO"):
            run_bench(tiny_export[0].model_path, tiny_checkpoint, BenchConfig(("ort-openvino-fp32",)), tmp_path)


def test_bench_says_where_openvino_loses_to_mlas():
    from vggdeploy.verify.bench import BenchReport, Measurement

    def measured(engine, batch, p50_ms):
        return Measurement(engine, batch, 5, p50_ms, p50_ms, p50_ms, p50_ms, batch / (p50_ms / 1e3), None)

    report = BenchReport(
        "model.onnx",
        "cpu",
        {},
        15.0,
        [
            measured("ort-cpu-int8", 1, 20.0),
            measured("ort-openvino-int8", 1, 18.0),  # wins at batch 1: not listed
            measured("ort-cpu-int8", 8, 100.0),
            measured("ort-openvino-int8", 8, 125.0),  # 64 vs 80 img/s: listed
            measured("ort-cpu-fp32", 1, 60.0),
            measured("ort-openvino-fp32", 1, 61.5),  # listed
            measured("torch-cpu-fp32", 1, 80.0),
        ],
        [],
        {},
    )
    assert report.openvino_losses() == [
        "ort-openvino-int8 is slower than ort-cpu-int8 at batch 8 (64 vs 80 img/s)",
        "ort-openvino-fp32 is slower than ort-cpu-fp32 at batch 1 (61.5 vs 60 ms p50)",
    ]
    text = report.format()
    assert "best deployable CPU engine at batch 1: ort-openvino-int8 (18 ms p50, 4.44x torch eager fp32)" in text
    assert text.index("best deployable") < text.index("is slower than ort-cpu-int8 at batch 8")


def test_the_openvino_session_is_built_strict_with_its_options(tiny_export, monkeypatch):
    """On any CPU: what the session factory hands ONNX Runtime for OpenVINO (a stand-in records it), and how it
    reports ONNX Runtime refusing to leave nodes to the CPU provider."""
    from vggdeploy.deploy import session as runtime

    recorded = {}

    class RecordingOptions:
        def __init__(self):
            recorded["config"] = {}

        def add_provider_for_devices(self, devices, options):
            recorded["devices"], recorded["options"] = devices, options

        def add_session_config_entry(self, key, value):
            recorded["config"][key] = value

    def refusing_session(source, sess_options):
        raise RuntimeError("This session contains graph nodes ... fallback to CPU EP has been explicitly disabled")

    monkeypatch.setattr(runtime, "openvino_devices", lambda: ["the Intel CPU device"])
    monkeypatch.setattr(ort, "SessionOptions", RecordingOptions)
    monkeypatch.setattr(ort, "InferenceSession", refusing_session)
    settings = ProviderSettings("openvino", intra_op_threads=2)
    with pytest.raises(ProviderUnavailable, match="would leave nodes of this model to its CPU provider"):
        create_session(tiny_export[0].model_path, settings)
    assert recorded["devices"] == ["the Intel CPU device"]
    assert recorded["config"] == {"session.disable_cpu_ep_fallback": "1"}
    assert json.loads(recorded["options"]["load_config"]) == {
        "CPU": {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": "2"}
    }


def test_the_hint_probe_answers_bad_input_in_one_line(tmp_path):
    """scripts/openvino_hint_probe.py needs OpenVINO's own runtime, which vggdeploy does not install: without it, or
    with a model that is not there, it ended in a traceback."""
    from pathlib import Path

    script = Path(__file__).parents[2] / "scripts" / "openvino_hint_probe.py"
    for name, body in (("absent", "raise ImportError('not installed')"), ("present", "")):
        (tmp_path / name / "openvino").mkdir(parents=True)
        (tmp_path / name / "openvino" / "__init__.py").write_text(body)
    for site, code, words in (
        ("absent", 2, "error: this probe needs OpenVINO's own runtime: pip install openvino\n"),
        ("present", 3, f"error: {tmp_path / 'nothing.onnx'}: no such model file\n"),
    ):
        env = {**os.environ, "PYTHONPATH": str(tmp_path / site)}
        result = subprocess.run(
            [sys.executable, str(script), str(tmp_path / "nothing.onnx")], capture_output=True, text=True, env=env
        )
        assert (result.returncode, result.stderr) == (code, words)
