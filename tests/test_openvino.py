"""--provider openvino: the OpenVINO plugin for ONNX Runtime, registered by the session factory, strict like CUDA."""

import subprocess
import sys

import onnxruntime as ort
import pytest

from vggdeploy.config import CheckConfig
from vggdeploy.errors import ProviderUnavailable
from vggdeploy.runtime import OPENVINO_INSTALL, ProviderSettings, create_session, openvino_devices, session_provider

plugin = pytest.importorskip(
    "onnxruntime_ep_openvino", reason=f"the openvino extra is not installed: {OPENVINO_INSTALL}"
)


def _devices_or_reason() -> tuple[list, str | None]:
    try:
        return openvino_devices(), None
    except ProviderUnavailable as error:
        return [], str(error)


def test_the_plugin_registers_once_and_says_what_it_offers():
    devices, reason = _devices_or_reason()
    # registered: ONNX Runtime knows the library under the plugin's name (unregistering an unknown name fails)
    ort.unregister_execution_provider_library(plugin.get_ep_name())
    again, again_reason = _devices_or_reason()  # registers it anew
    assert len(again) == len(devices) and again_reason == reason
    _devices_or_reason()  # a third call with the library registered is harmless
    if reason is not None:
        assert "offers no device on this CPU" in reason and "Intel" in reason


def test_a_missing_plugin_is_one_line_with_the_pip_command(tiny_export, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime_ep_openvino", None)  # import fails as if it were not installed
    with pytest.raises(ProviderUnavailable, match=r"its plugin is not installed: pip install 'vggdeploy\[openvino\]'"):
        create_session(tiny_export[0].model_path, ProviderSettings(provider="openvino"))


def test_run_and_check_with_openvino_answer_or_refuse_in_one_line(tiny_export, tiny_checkpoint):
    devices, reason = _devices_or_reason()
    model = str(tiny_export[0].model_path)
    golden = str(tiny_export[1] / "onnx" / "golden")
    for command in (["run", golden, "--model", model], ["check", "--model", model, "--images", "200"]):
        args = [sys.executable, "-m", "vggdeploy", *command, "--provider", "openvino"]
        result = subprocess.run(args, capture_output=True, text=True, timeout=300)
        if devices:
            assert result.returncode == 0, result.stderr
        else:
            assert result.returncode == 6 and result.stderr.strip() == f"error: {reason}", result.stderr


@pytest.fixture(scope="module")
def openvino_ready():
    devices, reason = _devices_or_reason()
    if not devices:
        pytest.skip(f"needs an Intel CPU: {reason}")


def test_a_session_is_strict_and_runs_on_openvino(openvino_ready, tiny_export):
    session = create_session(tiny_export[0].model_path, ProviderSettings(provider="openvino"))
    assert session_provider(session) == "openvino"


def test_fp32_and_int8_parity_through_openvino(openvino_ready, tiny_export, tiny_checkpoint, tmp_path):
    from vggdeploy.check import run_check

    report = run_check(
        tiny_export[0].model_path,
        tiny_checkpoint,
        CheckConfig(provider="openvino", images=1000, int8_max_drop_pp=5.0),
        report_dir=tmp_path,
    )
    assert report.provider == "openvino" and report, report.format()
    assert {r.name for r in report.results} >= {"fp32", "int8"}


def test_bench_runs_the_openvino_engines_or_skips_them_with_the_reason(tiny_export, tiny_checkpoint, tmp_path):
    from vggdeploy.bench import OPENVINO_ENGINES, run_bench
    from vggdeploy.config import BenchConfig

    devices, reason = _devices_or_reason()
    report = run_bench(
        tiny_export[0].model_path, tiny_checkpoint, BenchConfig(None, batch_sizes=(1,), seconds=0.01), tmp_path
    )
    for engine in OPENVINO_ENGINES:
        if devices:
            assert any(m.engine == engine for m in report.measurements)
        else:
            assert report.skipped[engine] == reason
    if not devices:  # asked for by name, an engine that cannot run is an error before anything is measured
        with pytest.raises(ProviderUnavailable, match="engine ort-openvino-fp32 cannot run: OpenVINO"):
            run_bench(tiny_export[0].model_path, tiny_checkpoint, BenchConfig(("ort-openvino-fp32",)), tmp_path)
