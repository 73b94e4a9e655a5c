import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from forked_cli import script, vggdeploy

from vggdeploy import hardware
from vggdeploy.config import BenchConfig
from vggdeploy.errors import UsageError
from vggdeploy.verify.bench import (
    BenchReport,
    BoundOrtRun,
    Measurement,
    engine_session,
    ratio_noise,
    run_bench,
)
from vggdeploy.verify.engines import CPU_ENGINES, ENGINE_SETS, GPU_ENGINES, Engine

ROOT = Path(__file__).parents[2]


@pytest.mark.slow
def test_bench_produces_a_well_formed_report_on_cpu(tiny_export, tiny_checkpoint, tmp_path):
    result, _ = tiny_export
    config = BenchConfig(CPU_ENGINES, batch_sizes=(1, 4), seconds=0.05, min_runs=3, warmup=1)
    report = run_bench(result.model_path, tiny_checkpoint, config, report_dir=tmp_path)
    assert [(m.engine, m.batch) for m in report.measurements] == [(e, b) for e in CPU_ENGINES for b in (1, 4)]
    for m in report.measurements:
        assert m.runs >= 3 and 0 < m.p50_ms <= m.p90_ms <= m.p99_ms
        assert m.images_per_second == pytest.approx(m.batch / (m.mean_ms / 1e3))
    assert report.cpu_peak_gflops > 1
    for m in report.measurements:  # fp32 engines against the measured fp32 matrix product; int8 has no fp32 peak
        assert (m.peak_fraction is None) if "int8" in m.engine else 0 < m.peak_fraction < 1
    assert [c.engine for c in report.cold_starts] == list(CPU_ENGINES)
    assert all(c.create_seconds > 0 and c.first_run_seconds > 0 for c in report.cold_starts)
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["gflops_per_image"] == pytest.approx(report.gflops_per_image) and len(saved["measurements"]) == 6
    assert BenchReport.from_json(saved) == report  # what the GPU validation reads back
    first = next(m for m in report.measurements if m.engine == "ort-cpu-fp32")
    assert (
        f"| ort-cpu-fp32 | 1 | {first.runs:,} |"
        in (tmp_path / "bench.md").read_text()  # how many runs each figure is of
        and "matrix product measured here" in report.format()
    )
    assert (tmp_path / "bench.png").read_bytes()[:4] == b"\x89PNG"
    table = {row["engine"]: row for row in report.cpu_table()}  # the one CPU table: engines as rows
    assert list(table) == list(CPU_ENGINES) and report.cpu_threads == torch.get_num_threads()
    single = {m.engine: m for m in report.measurements if m.batch == 1}
    for engine, row in table.items():
        assert row["batch-1 p50 ms"] == single[engine].p50_ms and row["img/s @8"] is None  # batch 8 was not run
        assert row["MB"] > 0 and row["cold start s"] > 0
    assert table["ort-cpu-int8"]["accuracy change pp"] == pytest.approx(
        result.variants["int8"].parity.accuracy_change * 100
    )
    best = min(("ort-cpu-fp32", "ort-cpu-int8"), key=lambda e: single[e].p50_ms)
    speedup = single["torch-cpu-fp32"].p50_ms / single[best].p50_ms
    noise = ratio_noise(single[best], single["torch-cpu-fp32"])  # a busy machine: no ratio (a test of its own below)
    assert report.best_cpu_engine() == (
        f"best deployable CPU engine at batch 1: {best} ({single[best].p50_ms:.3g} ms p50, "
        f"{noise or f'{speedup:.2f}x torch eager fp32'})"
    )
    assert f"CPU engines ({report.cpu_threads} threads each)" in report.format()
    assert report.format().startswith(  # what each engine ran, where the files differ
        f"bench of the export in {result.model_path.parent}/ (each engine runs the file of its precision: "
        "ort-cpu-fp32 model.onnx, ort-cpu-int8 model.int8.onnx) on "
    )
    assert report.engine_files["torch-cpu-fp32"]["file"] == str(tiny_checkpoint)
    fp16_named = run_bench(  # a report headed "bench of model.fp16.onnx" once held fp32 figures of model.onnx
        result.variants["fp16"].path,
        tiny_checkpoint,
        BenchConfig(("ort-cpu-fp32",), batch_sizes=(1,), seconds=0.0, min_runs=1, warmup=1),
        report_dir=tmp_path / "fp16",
    )
    assert fp16_named.format().startswith(f"bench of the export in {result.model_path.parent}/ (each engine runs")
    batch_lines = report.fastest_by_batch()
    assert [line.split(":")[0] for line in batch_lines] == ["CPU batch 1", "CPU batch 4"]
    if not noise:
        assert batch_lines[0].startswith(f"CPU batch 1: fastest ONNX Runtime engine {best}, {speedup:.2f}x the fastest")


def _lone_model(result, tmp_path):
    """The fp32 model alone in a folder: no fp16 or int8 variant beside it."""
    lone = tmp_path / "onnx" / "model.onnx"
    lone.parent.mkdir()
    lone.write_bytes(result.model_path.read_bytes())
    return lone


def test_the_timing_loop_stops_at_its_run_cap_before_long_seconds_end(monkeypatch):
    """`bench --seconds inf` ended after 10,000 runs of a fast engine: the cap is the contract (and the help's)."""
    monkeypatch.setattr(hardware, "MAX_TIMED_RUNS", 25)
    assert len(hardware.timed_runs(lambda: None, seconds=float("inf"), min_runs=3, warmup=1)) == 25
    assert len(hardware.timed_runs(lambda: None, seconds=0.0, min_runs=40, warmup=1)) == 40  # min_runs wins


@pytest.mark.slow
def test_an_engine_set_skips_what_cannot_run_here_with_a_reason(tiny_checkpoint, tiny_export, tmp_path):

    lone = _lone_model(tiny_export[0], tmp_path)
    for name in ("cpu", "gpu"):
        report = run_bench(
            lone, tiny_checkpoint, BenchConfig((name,), batch_sizes=(1,), seconds=0.01), report_dir=tmp_path / name
        )
        assert set(report.skipped) | {m.engine for m in report.measurements} == set(ENGINE_SETS[name])
        assert "ort-cpu-fp32" in {m.engine for m in report.measurements}
        assert json.loads((tmp_path / name / "bench.json").read_text())["skipped"] == report.skipped
    assert report.skipped.get("ort-cuda-fp32") == (None if torch.cuda.is_available() else "no CUDA GPU")
    cpu = json.loads((tmp_path / "cpu" / "bench.json").read_text())
    assert cpu["skipped"]["ort-cpu-int8"] == "model.int8.onnx not found beside the model (export with --int8)"


def test_names_one_by_one_must_run_and_a_set_or_the_default_skips():
    from vggdeploy.verify.engines import COMPILE_ENGINE, chosen_engines

    here = "gpu" if torch.cuda.is_available() else "cpu"
    assert chosen_engines(BenchConfig(None)) == (ENGINE_SETS[here], False)
    assert chosen_engines(BenchConfig(("gpu",), compile_torch=True)) == ((*ENGINE_SETS["gpu"], COMPILE_ENGINE), False)
    # --compile on the CPU set once did nothing without a word; now its GPU engine is skipped with the reason
    assert chosen_engines(BenchConfig(("cpu",), compile_torch=True)) == ((*ENGINE_SETS["cpu"], COMPILE_ENGINE), False)
    with pytest.raises(UsageError, match="with engines named one by one, name it"):
        chosen_engines(BenchConfig(("ort-cpu-fp32",), compile_torch=True))
    assert chosen_engines(BenchConfig(("ort-cpu-fp32",))) == (("ort-cpu-fp32",), True)
    with pytest.raises(UsageError, match="unknown engine 'cpu' "):  # a set is named alone
        chosen_engines(BenchConfig(("cpu", "ort-cpu-fp32")))


def test_the_report_names_what_the_engines_ran_on(monkeypatch):
    from vggdeploy.hardware import cpu_name
    from vggdeploy.verify import bench

    monkeypatch.setattr(bench.torch.cuda, "get_device_name", lambda index=0: "NVIDIA H100 80GB HBM3")
    on_cpu, on_gpu = [Engine.parse("ort-cpu-fp32")], [Engine.parse("ort-cuda-fp16")]
    assert bench.device_name(on_cpu) == cpu_name()  # a CPU bench on a GPU machine names the CPU, not the GPU
    assert bench.device_name(on_gpu) == "NVIDIA H100 80GB HBM3"
    assert bench.device_name(on_gpu + on_cpu) == f"NVIDIA H100 80GB HBM3; {cpu_name()}"


@pytest.mark.slow
def test_onnx_runtime_engines_alone_need_no_checkpoint_on_fashion_mnist(tiny_export, tmp_path):
    """A deployed model.onnx without its 500 MB checkpoint could not be benched at all, even with no torch engine."""
    lone = _lone_model(tiny_export[0], tmp_path)  # no checkpoints/ beside it
    command = ["bench", "--model", str(lone), "--batch-sizes", "1"]
    alone = vggdeploy(*command, "--engines", "ort-cpu-fp32", "--seconds", "0.05", "--min-runs", "2")
    assert alone.returncode == 0, alone.stderr
    assert (
        json.loads((lone.parent / "reports" / "bench.json").read_text())["measurements"][0]["engine"] == "ort-cpu-fp32"
    )
    with_torch = vggdeploy(*command)
    assert with_torch.returncode == 2 and with_torch.stderr == (
        f"error: no checkpoint at {tmp_path / 'checkpoints' / 'best.pt'}: the torch engines need it; pass "
        "--checkpoint, or name ONNX Runtime engines alone with --engines\n"
    )


@pytest.mark.slow
def test_an_engine_asked_for_that_cannot_run_exits_6_and_keeps_the_old_report(tiny_checkpoint, tiny_export, tmp_path):
    lone = _lone_model(tiny_export[0], tmp_path)
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "bench.json").write_text("the previous complete report")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "vggdeploy",
            "bench",
            "--model",
            str(lone),
            "--checkpoint",
            str(tiny_checkpoint),
            "--engines",
            "ort-cpu-fp32,ort-cpu-int8",
            "--batch-sizes",
            "1",
            "--report-dir",
            str(reports),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 6, result.stderr
    assert result.stderr.strip() == (
        "error: engine ort-cpu-int8 cannot run: model.int8.onnx not found beside the model "
        "(export with --int8) (no report written)"
    )
    assert (reports / "bench.json").read_text() == "the previous complete report"
    assert sorted(p.name for p in reports.iterdir()) == ["bench.json"]


def test_unknown_engine_is_refused(tiny_export, tiny_checkpoint):
    from vggdeploy.errors import UsageError

    with pytest.raises(UsageError, match=r"unknown engine 'ort-tpu' .*; or one set alone: cpu, gpu"):
        run_bench(tiny_export[0].model_path, tiny_checkpoint, BenchConfig(("ort-tpu",), batch_sizes=(1,)))


def test_engine_names_are_parsed_once():
    assert Engine.parse("ort-cuda-fp16-nhwc-graph") == Engine(
        "ort-cuda-fp16-nhwc-graph", "ort", "cuda", "fp16", True, True, False
    )
    assert Engine.parse("torch-cuda-fp16-compile").compiled and Engine.parse("torch-cuda-fp16-cl").channels_last
    assert Engine.parse("torch-cuda-tf32").peak_precision == "tf32"


@pytest.mark.gpu
def test_gpu_engines_measure(tiny_export, tiny_checkpoint, tmp_path):
    result, _ = tiny_export
    report = run_bench(
        result.model_path,
        tiny_checkpoint,
        BenchConfig(GPU_ENGINES, batch_sizes=(1, 8), seconds=0.2),
        report_dir=tmp_path,
    )
    assert not report.skipped and len(report.measurements) == 2 * len(GPU_ENGINES)
    assert all(m.peak_fraction is None or 0 < m.peak_fraction < 1 for m in report.measurements)


@pytest.mark.slow
def test_cpu_layer_times_script_prints_the_breakdown_and_the_floor(tiny_export, tiny_checkpoint):
    layer_times = ROOT / "scripts" / "cpu_layer_times.py"
    result = script(layer_times, str(tiny_export[0].model_path), str(tiny_checkpoint), "--runs", "2")
    assert result.returncode == 0, result.stderr
    assert "ERROR" not in result.stderr and "gpuGetDeviceCount" not in result.stderr, result.stderr
    engines = ("torch eager fp32", "ONNX Runtime CPU fp32", "ONNX Runtime CPU int8")  # int8: the sibling exported
    assert all(f"\n{engine}: " in result.stdout for engine in engines), result.stdout
    assert result.stdout.count("GFLOP/s; fully connected") == 3
    for engine in engines:  # each engine's time against both floors
        assert re.search(rf"  {engine}: [\d.]+ ms = [\d.]+x the fp32 floor, [\d.]+x the int8 floor", result.stdout)
    missing = tiny_checkpoint.parent / "absent.pt"  # once a traceback, as every script's bad input was
    result = script(layer_times, str(tiny_export[0].model_path), str(missing))
    assert result.returncode == 3 and result.stderr == f"error: {missing}: no such checkpoint\n"
    result = script(
        layer_times, str(tiny_export[0].model_path), str(tiny_checkpoint), "--runs", "0"
    )  # once a traceback
    assert result.returncode == 2 and result.stderr == "error: --runs must be at least 1, got 0\n"


def _test_inputs(count: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((count, 1, 32, 32), dtype=np.float32)


def test_bound_ort_run_gives_the_sessions_own_logits(tiny_export):
    model_path = tiny_export[0].model_path
    engine = Engine.parse("ort-cpu-fp32")
    session = engine_session(model_path, engine)
    inputs = _test_inputs(8)
    for batch in (1, 8):
        bound = BoundOrtRun(session, engine, inputs, batch)
        bound()
        np.testing.assert_allclose(
            bound.logits(), session.run(None, {"images": inputs[:batch]})[0], rtol=1e-6, atol=1e-6
        )


@pytest.mark.gpu
def test_cuda_graph_engine_replays_the_right_graph_per_batch_size(tiny_export):
    model_path = tiny_export[0].model_path
    plain_engine, graph_engine = Engine.parse("ort-cuda-fp16"), Engine.parse("ort-cuda-fp16-nhwc-graph")
    plain, graphed = engine_session(model_path, plain_engine), engine_session(model_path, graph_engine)
    inputs = _test_inputs(8)
    for batch in (1, 8):
        reference, replayed = (
            BoundOrtRun(plain, plain_engine, inputs, batch),
            BoundOrtRun(graphed, graph_engine, inputs, batch),
        )
        for _ in range(3):  # warm-up, capture, replay
            reference()
            replayed()
        np.testing.assert_allclose(replayed.logits(), reference.logits(), atol=2e-2)


def test_the_floor_takes_the_best_rate_seen_for_each_part():
    sys.path.insert(0, str(ROOT / "scripts"))
    from cpu_layer_times import floor_ms

    # 14.9 GFLOP at 250 GFLOP/s (an engine beat the 200 measured) + 478 MB at 35 GB/s (the read beat the engines)
    assert floor_ms(14.9, 478_000_000, 200.0, 35.0, [180.0, 250.0], [20.0, 30.0]) == pytest.approx(
        59.6 + 13.657, abs=1e-3
    )
    assert floor_ms(14.9, 119_500_000, 844.0, 35.0, [804.0], [28.7]) == pytest.approx(17.654 + 3.414, abs=1e-3)


def test_the_fastest_engine_per_batch_on_the_h100_window_says_where_onnx_runtime_loses():
    """The H100's own bench (2026-11-27): ORT wins at batch 1 and 256 and loses to torch fp16 at 8 and 64."""
    figures = json.loads((Path(__file__).parent / "h100-bench-2026-11-27.json").read_text())  # its bench.json
    measurements = [Measurement(**m) for m in figures["measurements"]]
    cpu = [Measurement("torch-cpu-fp32", 1, 5, 80.0, 80.0, 80.0, 80.0, 12.5, None)]  # no ORT CPU engine: no CPU line
    report = BenchReport("model.onnx", figures["device"], {}, 15.09, measurements + cpu, [], {})
    assert report.fastest_by_batch() == [
        "GPU batch 1: fastest ONNX Runtime engine ort-cuda-fp16-nhwc-graph, 2.68x the fastest torch engine "
        "torch-cuda-fp16-cl (faster; 0.294 vs 0.787 ms p50)",
        "GPU batch 8: fastest ONNX Runtime engine ort-cuda-fp16, 0.56x the fastest torch engine torch-cuda-fp16-cl "
        "(slower; 4,180 vs 7,469 img/s)",
        "GPU batch 64: fastest ONNX Runtime engine ort-cuda-fp16, 0.70x the fastest torch engine torch-cuda-fp16-cl "
        "(slower; 7,390 vs 10,568 img/s)",
        "GPU batch 256: fastest ONNX Runtime engine ort-cuda-fp16-nhwc-graph, 1.07x the fastest torch engine "
        "torch-cuda-fp16-cl (faster; 11,717 vs 10,932 img/s)",
    ]
    assert report.fastest_by_batch()[1] in report.format()


def test_noisy_cells_are_marked_and_carry_no_ratio(tiny_export, tiny_checkpoint, tmp_path, monkeypatch):
    """On a loaded machine torch at batch 1 took 320-350 ms against 0.47 ms, and bench printed "5035.26x torch eager"
    without a word. A fake timer makes torch's runs spread (a tenth of them 3x the median) and ONNX Runtime's steady."""
    from vggdeploy.verify import bench as bench_module

    def fake_timed_runs(run, seconds, min_runs, warmup):
        run()  # the engine still runs once: its output and state are real
        if isinstance(run, bench_module.BoundOrtRun):
            return [0.010] * 20
        return [0.010] * 16 + [0.030] * 4

    monkeypatch.setattr(bench_module, "timed_runs", fake_timed_runs)
    result, _ = tiny_export
    config = BenchConfig(("torch-cpu-fp32", "ort-cpu-fp32"), batch_sizes=(1, 1, 4), seconds=0.0, min_runs=1)
    assert config.batch_sizes == (1, 4)  # a repeated size is benched once
    report = run_bench(result.model_path, tiny_checkpoint, config, report_dir=tmp_path)
    cells = {(m.engine, m.batch): m for m in report.measurements}
    assert len(report.measurements) == 4 and cells[("torch-cpu-fp32", 1)].noisy
    assert cells[("torch-cpu-fp32", 1)].spread == pytest.approx(3.0) and not cells[("ort-cpu-fp32", 1)].noisy
    assert report.best_cpu_engine() == (
        "best deployable CPU engine at batch 1: ort-cpu-fp32 (10 ms p50, no ratio: noisy (torch-cpu-fp32 p90 3.0x p50))"
    )
    assert all("x the fastest" not in line and "no ratio: noisy" in line for line in report.fastest_by_batch())
    text = report.format()
    assert (
        text.count(
            "warning: 2 of 4 cells are noisy (p90 above 1.5x p50: torch-cpu-fp32 batch 1, torch-cpu-fp32 "
            "batch 4); no ratio is built on them."
        )
        == 1
    )
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert [m["noisy"] for m in saved["measurements"]] == [m.noisy for m in report.measurements]
    assert saved["noise_warning"] == report.noise_warning() and BenchReport.from_json(saved) == report
