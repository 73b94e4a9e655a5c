"""The GPU validation's wiring, exercised on the CPU: the parts that carry what the GPU host lacks, and a rehearsal
of every stage through the same driver (tiny models, the CPU provider)."""

import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from vggdeploy.verify.engines import CPU_ENGINES, ENGINE_SETS

ROOT = Path(__file__).parents[2]
sys.path.insert(0, str(ROOT / "scripts" / "gpu"))
import parts  # noqa: E402
import validate  # noqa: E402

GPU_BUNDLE = parts.BUNDLES["gpu"]


def rehearse(stage: str, out: Path, *options: str, **env: str) -> dict:
    """`validate.sh --rehearse STAGE OUT OPTIONS` with ``env`` added; every step must pass. Returns the report."""
    result = subprocess.run(
        [str(ROOT / "scripts" / "gpu" / "validate.sh"), "--rehearse", stage, str(out), *options],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHON": sys.executable, **env},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads((out / "gpu-report.json").read_text())


@pytest.mark.slow
def test_rehearsal_runs_every_stage_and_writes_the_report(tmp_path):
    # the train stage as the next window runs it: fitted, with a recipe's option added
    report = rehearse(
        "all", tmp_path, "--full-fit-epochs", "3", "--full-train-options", "--calibration-holdout 100 --save-every 2"
    )
    assert report["profile"] == "cpu-rehearsal" and report["stages"] == ["runtime", "train", "cpu"]
    names = [
        "seed-train",
        "seed-export",
        "seed-check",
        "seed-run",
        "bench-model-train",
        "bench-model-export",
        "bench",
        "pytest-gpu",
        "full-train",
        "full-export",
        "full-familiarity",
        "pytest-openvino",
        "cpu-table",
    ]
    assert [step["name"] for step in report["steps"]] == names
    for step in report["steps"]:
        assert step["returncode"] == 0 and step["seconds"] > 0
        assert step["command"].startswith(
            {"cpu-table": "bash scripts/cpu_table.sh --smoke ", "full-familiarity": "python scripts/"}.get(
                step["name"], "python -m "
            )
        )
    full_train = report["steps"][-5]["command"]  # as many of 3 epochs as fit the 380 s: all 3
    assert full_train.endswith(
        f" --epochs 3 --fit-to-time --calibration-holdout 100 --save-every 2 --time-limit 380 --out "
        f"{tmp_path / 'work' / 'full'} --quiet"
    )
    assert report["environment"]["torch"] and report["environment"]["onnxruntime"].startswith("1.")
    assert re.fullmatch(r".+ CPU \(.*\), \d+ cores, \d+ torch threads", report["environment"]["cpu"])
    assert report["environment"]["source_sha256"] == validate.source_fingerprint()  # names the code that ran

    check = report["figures"]["seed_check"]
    assert check["provider"] == "cpu" and [r["name"] for r in check["results"]] == ["fp32", "fp16", "int8"]
    assert check["results"][0]["images"] == 256 and check["results"][0]["max_abs_diff"] < 1e-3
    bench = report["figures"]["bench"]["measurements"]
    assert {(m["engine"], m["batch"]) for m in bench} == {
        (e, b) for e in ("torch-cpu-fp32", "ort-cpu-fp32") for b in (1, 8)
    }
    timeline = report["figures"]["full_train"]["accuracy_against_time"]
    assert [row["epoch"] for row in timeline] == [1, 2, 3]
    assert report["figures"]["full_train"]["summary"]["fitted_to_time_limit_seconds"] == 380
    assert report["figures"]["full_train"]["summary"]["held_out_for_calibration"] == 100
    assert 0 < timeline[0]["elapsed_seconds"] < timeline[1]["elapsed_seconds"]
    assert all(0 < row["epoch_seconds"] < row["elapsed_seconds"] for row in timeline)  # the rest: loading, saving
    assert report["figures"]["pytest_gpu"].get("skipped", 0) + report["figures"]["pytest_gpu"].get("passed", 0) == 3
    familiarity = report["figures"]["full_familiarity"]  # issue #35's benchmark of the full run's export
    assert familiarity["fit_images"] == 600 and familiarity["device"] == "cpu"
    assert report["steps"][-3]["command"].startswith(
        f"python scripts/familiarity_benchmark.py {tmp_path / 'work' / 'full' / 'checkpoints' / 'best.pt'} --model "
    )

    goals = {goal["goal"]: goal for goal in report["goals"]}
    assert goals["run --provider cpu: the golden images answered as golden.json says"]["met"] is True
    assert report["figures"]["seed_run"]["images"] == report["figures"]["seed_run"]["top1_as_golden"] > 0
    assert goals["fp32 (TF32 off): 100 % top-1 agreement, max |logit diff| <= 1e-3"]["met"] is True
    assert goals[">= 95.0 % test accuracy within the first 4 min"]["met"] is False  # a tiny model; the figure is honest
    assert all(goal["source"] in names for goal in report["goals"])
    unfamiliar = goals[
        "full model's familiarity, 95 % of the test set accepted: <= 5% of digits, noise, blanks accepted"
    ]
    assert unfamiliar["met"] is not None and re.fullmatch(
        r"digits [\d.]+%, noise [\d.]+%, blanks [\d.]+%", unfamiliar["measured"]
    )
    ece = goals["full preset: test-set ECE <= 2.5 % (temperature fitted on held-out training images)"]
    calibration = report["figures"]["full_calibration"]  # a tiny model near chance: a fit at the bound, so refused
    assert " -> " in ece["measured"] and isinstance(calibration["fitted"], bool)
    assert ece["met"] is (calibration["fitted"] and calibration["test_set"]["after"]["ece"] <= 0.025)
    variants_ece = goals["every variant's ECE within +0.5 pp of torch fp32's (at the model's temperature)"]
    checked_calibration = report["figures"]["seed_check"]["calibration"]
    assert variants_ece["met"] is (not checked_calibration["worse_than_limit"])
    assert variants_ece["measured"].endswith(f" vs torch {checked_calibration['reference']['ece']:.2%}")
    # the cpu stage: BENCHMARKS.md's CPU table made by scripts/cpu_table.sh (CPU named, bench, floors), then the
    # OpenVINO tests, which skip on a CPU that is not Intel's: shown neither way
    cpu_bench = report["figures"]["cpu_bench_vgg11"]
    measured = {m["engine"] for m in cpu_bench["measurements"]}
    assert measured | set(cpu_bench["skipped"]) == set(ENGINE_SETS["cpu"]) and measured >= set(CPU_ENGINES)
    assert "cpu_bench_quick" not in report["figures"]  # --smoke leaves the quick model out
    best = goals["VGG-11 224 px, batch 1: best deployable CPU engine >= 5x torch eager fp32"]
    ratio = re.match(r"ort-(?:cpu|openvino)-\w+ [\d.]+ ms, ([\d.]+)x torch", best["measured"])
    assert ratio and best["met"] is (float(ratio.group(1)) >= 5)
    assert goals["quick model: a batch-256 throughput for every CPU engine"]["met"] is None
    openvino = goals["the OpenVINO tests pass, none skipped (parity of fp32 and int8 through OpenVINO)"]
    assert report["figures"]["pytest_openvino"].get("passed", 0) >= 1 and openvino["met"] in (True, None)
    markdown = (tmp_path / "gpu-report.md").read_text()
    assert "## CPU engines: vgg11" in markdown and "best deployable CPU engine at batch 1: ort-" in markdown
    assert "Rehearsal on the CPU" in markdown and "| seed-check | `python -m vggdeploy check" in markdown
    assert "## full model: familiarity (600 training images fitted)" in markdown
    assert "max \\|logit diff\\|" in markdown  # pipes escaped: the goals table keeps four columns
    logs = (tmp_path / "gpu-logs.txt").read_text()
    assert all(f"==== {name}: " in logs for name in names) and "of best.pt (epoch" in logs
    assert re.search(r"== CPU: .+ CPU \(.*\), \d+ cores, \d+ torch threads", logs)
    assert re.search(r"int8 matrix product \d+ GOP/s", logs) and re.search(r"int8 floor [\d.]+ ms per image", logs)
    assert re.search(r"ONNX Runtime CPU int8: [\d.]+ ms = [\d.]+x the fp32 floor, [\d.]+x the int8 floor", logs)
    assert len([p for p in tmp_path.iterdir() if p.is_file()]) <= 8  # what the device tool brings back
    for png in ("seed-curves.png", "bench.png", "full-curves.png", "full-accuracy-time.png", "full-reliability.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG", png


@pytest.fixture
def packed(tmp_path):
    """Two fake wheels (one holding the excluded TensorRT library) and a data folder, packed into 1 KiB parts."""
    excluded = GPU_BUNDLE.excluded[0]
    wheels = []
    for name, files in {
        "fakeort-1.0-py3-none-any.whl": {
            "fakeort/__init__.py": "VALUE = 42\n",
            excluded: "never carried",
            "fakeort/blob.bin": os.urandom(3000),
        },
        "fakesim-1.0-py3-none-any.whl": {"fakesim/__init__.py": "from fakeort import VALUE\n"},
    }.items():
        path = tmp_path / name
        with zipfile.ZipFile(path, "w") as archive:
            for member, content in files.items():
                archive.writestr(member, content)
        wheels.append(path)
    data = tmp_path / "data"
    data.mkdir()
    for name in parts.DATA_FILES:
        (data / name).write_bytes(name.encode() * 20)
    payload = tmp_path / "payload.tar.xz"
    contents = parts.build_payload(wheels, data, payload, GPU_BUNDLE.excluded)
    carried = parts.split(payload, contents, tmp_path / "carried", max_part_bytes=1024)
    return carried, contents, tmp_path


def test_parts_arrive_one_per_call_and_install_when_complete(packed, capsys):
    carried, contents, root = packed
    assert contents["excluded"] == [GPU_BUNDLE.excluded[0]] and len(carried) >= 3
    assert max(p.stat().st_size for p in carried) <= 1024
    assert len({p.stat().st_size for p in carried[:-1]}) == 1  # equal parts: the fewest that fit
    state = root / "state"
    for number, part in enumerate(carried, start=1):
        call = root / f"call{number}"  # each device call carries one pK folder
        (call / part.parent.name).mkdir(parents=True)
        for file in part.parent.iterdir():
            (call / part.parent.name / file.name).write_bytes(file.read_bytes())
        status = parts.receive(GPU_BUNDLE, call, state)
        line = capsys.readouterr().out
        if number < len(carried):
            assert status == 3 and f"{number} of {len(carried)} parts here" in line and f"p{number + 1}" in line
        else:
            assert status == 0 and f"all {len(carried)} parts joined and installed" in line
    assert not (state / "site" / GPU_BUNDLE.excluded[0]).exists()
    assert sorted(p.name for p in (state / "data").iterdir()) == sorted(parts.DATA_FILES)
    imported = subprocess.run(
        [sys.executable, "-c", "import fakesim; print(fakesim.VALUE)"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(state / "site")},
    )
    assert imported.stdout.strip() == "42", imported.stderr
    assert (
        parts.receive(GPU_BUNDLE, root / "empty", state) == 0 and "gpu: installed in" in capsys.readouterr().out
    )  # a later call


def test_an_optional_bundle_is_installed_when_carried_and_awaited_when_half_carried(packed, tmp_path, capsys):
    carried, _, root = packed
    wheel = tmp_path / "fakeplugin-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("fakeplugin/__init__.py", "NAME = 'plugin'\n")
        archive.writestr("fakeplugin/blob.bin", os.urandom(2000))
    payload = tmp_path / "plugin.tar.xz"
    plugin = parts.split(payload, parts.build_payload([wheel], None, payload), tmp_path / "plugin", 512)
    assert len(plugin) >= 2

    def call(name: str, folders: dict[str, list[Path]]) -> int:
        for bundle, paths in folders.items():
            for part in paths:
                target = root / name / bundle / part.parent.name
                target.mkdir(parents=True)
                for file in part.parent.iterdir():
                    (target / file.name).write_bytes(file.read_bytes())
        return parts.receive_all(root / name, root / "state")

    assert call("gpu-and-half-plugin", {"gpu": carried, "openvino": plugin[:1]}) == 3  # the plugin is awaited
    assert "openvino: 1 of" in capsys.readouterr().out
    assert call("rest-of-plugin", {"openvino": plugin[1:]}) == 0
    assert "openvino: all" in capsys.readouterr().out
    assert (root / "state" / "openvino" / "site" / "fakeplugin" / "__init__.py").is_file()
    assert (root / "state" / "gpu" / "site" / "fakeort" / "__init__.py").is_file()


def test_a_corrupt_part_is_refused_by_name(packed):
    carried, _, root = packed
    carried[1].write_bytes(b"x" + carried[1].read_bytes()[1:])
    with pytest.raises(parts.PartsError, match=f"{carried[1].name}: not the part its manifest describes"):
        parts.receive(GPU_BUNDLE, carried[0].parent.parent, root / "state")


def test_a_stage_before_every_part_arrived_says_what_to_carry(packed, tmp_path):
    carried, _, root = packed
    only_first = root / "first"
    (only_first / "gpu" / "p1").mkdir(parents=True)
    for file in carried[0].parent.iterdir():
        (only_first / "gpu" / "p1" / file.name).write_bytes(file.read_bytes())
    env = {
        **os.environ,
        "VGGDEPLOY_GPU_PARTS": str(only_first),
        "VGGDEPLOY_GPU_STATE": str(root / "state"),
        "OUT": str(tmp_path),
    }
    script = str(ROOT / "scripts" / "gpu" / "validate.sh")
    received = subprocess.run([script, "receive"], capture_output=True, text=True, env=env, timeout=60)
    assert received.returncode == 0 and f"gpu: 1 of {len(carried)} parts here" in received.stdout
    assert "openvino: not carried (only the cpu stage uses it)" in received.stdout
    assert re.search(r"host CPU: .+, \d+ cores", received.stdout)  # decides whether the cpu stage is worth a call
    stage = subprocess.run([script, "runtime"], capture_output=True, text=True, env=env, timeout=60)
    assert stage.returncode == 3 and "cannot run runtime before every part is installed" in stage.stderr
    assert ".device/gpu/p2" in stage.stdout and not (tmp_path / "gpu-report.json").exists()


def test_a_mistyped_stage_or_a_missing_out_is_refused_before_any_part_is_taken(tmp_path):
    """A typo on the GPU host once installed every part (seconds of a 15-minute window) and then said only that OUT
    was unset, never naming the stage."""
    script = str(ROOT / "scripts" / "gpu" / "validate.sh")
    env = {k: v for k, v in os.environ.items() if k != "OUT"} | {"VGGDEPLOY_GPU_STATE": str(tmp_path / "state")}
    usage = f"usage: {script} receive|runtime|train|cpu|perf|all [options] (or --rehearse STAGE OUTDIR)"
    for args, words in (
        (["runtme"], f"validate: unknown stage 'runtme'; {usage}"),
        ([], f"validate: {usage}"),
        (["runtime"], "validate: set OUT to the folder the report goes to"),
    ):
        result = subprocess.run([script, *args], capture_output=True, text=True, env=env, timeout=60)
        assert (result.returncode, result.stderr, result.stdout) == (2, words + "\n", "")
    assert not (tmp_path / "state").exists()


def test_cpu_table_refuses_a_bad_option_before_it_builds_the_model(tmp_path):
    """`--seconds abc` was refused by bench only after the full-size VGG-11 was built, and `--bogus` became a folder."""
    script = str(ROOT / "scripts" / "cpu_table.sh")
    usage = f"usage: {script} [--smoke] [--seconds S] [--only vgg11|quick] [OUTDIR]"
    missing = tmp_path / "no-quick.onnx"
    for args, words in (
        (["--bogus"], f"cpu_table: unknown option --bogus; {usage}"),
        (["--seconds", "abc"], "cpu_table: --seconds needs a number of seconds, got 'abc'"),
        (["--only", "resnet"], "cpu_table: --only takes vgg11 or quick, got 'resnet'"),
        (["--only"], "cpu_table: --only takes vgg11 or quick, got ''"),
        # the quick model is looked for before the full-size table's ten minutes, not after them
        ([str(tmp_path / "out")], f"cpu_table: {missing} not found: run ./scripts/demo.sh first"),
        (
            ["--smoke", "--only", "quick", str(tmp_path / "out")],
            f"cpu_table: {missing} not found: run ./scripts/demo.sh first",
        ),
    ):
        result = subprocess.run(
            [script, *args],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=60,
            env={**os.environ, "QUICK_MODEL": str(missing)},
        )
        assert (result.returncode, result.stderr, result.stdout) == (2, words + "\n", "")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_the_cpu_stage_can_run_the_quick_models_table_alone(tmp_path, tiny_export, tiny_checkpoint):
    """What a short GPU window leaves for the cpu stage: the OpenVINO tests and the quick model's table, without the
    full-size VGG-11's (264 s on the H200 host's Xeon)."""
    exported = tmp_path / "quick"  # a run folder as train and export leave it: bench's torch engines read best.pt
    shutil.copytree(tiny_export[1] / "onnx", exported / "onnx")
    (exported / "checkpoints").mkdir()
    shutil.copy(tiny_checkpoint, exported / "checkpoints" / "best.pt")
    report = rehearse(
        "cpu", tmp_path / "out", "--cpu-table-only", "quick", QUICK_MODEL=str(exported / "onnx" / "model.onnx")
    )
    assert [step["name"] for step in report["steps"]] == ["pytest-openvino", "cpu-table"]
    assert report["steps"][1]["command"].startswith("bash scripts/cpu_table.sh --smoke --only quick ")
    assert (
        "cpu_bench_vgg11" not in report["figures"] and not (tmp_path / "out" / "work" / "cpu-table" / "vgg11").exists()
    )
    quick = report["figures"]["cpu_bench_quick"]
    measured = {(m["engine"], m["batch"]) for m in quick["measurements"]}
    assert measured >= {(engine, batch) for engine in CPU_ENGINES for batch in (1, 2)}
    assert quick["model"] == str(exported / "onnx" / "model.onnx")
    goals = {goal["goal"]: goal["met"] for goal in report["goals"]}
    assert goals["VGG-11 224 px, batch 1: best deployable CPU engine >= 5x torch eager fp32"] is None  # not run
    assert "## CPU engines: quick" in (tmp_path / "out" / "gpu-report.md").read_text()


def test_the_source_fingerprint_changes_with_any_source_file(tmp_path):
    for folder in validate.SOURCE_FOLDERS:
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "a.py").write_text("x = 1\n")
    (tmp_path / "pyproject.toml").write_text("[project]\n")
    first = validate.source_fingerprint(tmp_path)
    (tmp_path / "tests" / "notes.txt").write_text("not source")
    assert validate.source_fingerprint(tmp_path) == first
    (tmp_path / "tests" / "a.py").write_text("x = 2\n")
    assert validate.source_fingerprint(tmp_path) != first


def test_the_run_goal_fails_on_a_wrong_logit_a_missing_image_or_an_error(tmp_path):
    golden = {
        "tolerance": {"logits_atol": 1e-3},
        "images": [
            {"file": f"test{i}.png", "predicted": i, "logits": [float(i == k) for k in range(3)]} for i in (0, 1)
        ],
    }

    def answer(i: int, shift: float = 0.0) -> dict:
        logits = [float(i == k) + (shift if k == 2 else 0.0) for k in range(3)]
        return {"file": f"golden/test{i}.png", "top": [{"index": i}], "logits": logits}

    def met(predictions: list[dict], errors: list | None = None) -> bool | None:
        validation = validate.Validation(validate.REHEARSAL, tmp_path / "out", tmp_path / "work", 60, ["runtime"])
        validate.add_run_goal(
            validation, {"predictions": predictions, "errors": errors or []}, golden, validate.Step("seed-run", "run")
        )
        return validation.goals[-1].met

    assert met([answer(0), answer(1, 5e-4)]) is True
    assert met([answer(0), answer(1, 2e-3)]) is False  # a logit outside the golden tolerance
    assert met([answer(0)]) is False  # an image left out
    assert met([answer(0), answer(1)], errors=[{"file": "x.png", "error": "unreadable"}]) is False
    assert met([]) is False


@pytest.mark.slow
def test_a_step_past_the_stage_budget_is_stopped_with_its_children_and_the_next_is_not_run(tmp_path, monkeypatch):
    child = tmp_path / "child.pid"
    (tmp_path / "slowstep.py").write_text(
        "import pathlib, subprocess\n"
        "sleeper = subprocess.Popen(['sleep', '120'])\n"
        f"pathlib.Path({str(child)!r}).write_text(str(sleeper.pid))\n"
        "sleeper.wait()\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    validation = validate.Validation(validate.REHEARSAL, tmp_path / "out", tmp_path / "work", 6, ["cpu"])
    validation.start_stage()
    slow = validation.run("slow", [], module="slowstep")
    assert slow.returncode == 124 and slow.seconds < 10
    assert not _running(int(child.read_text()))  # the step's own child went with it
    after = validation.run("after", [], module="slowstep")
    assert after.returncode is None and after.output_tail == "not run: the stage budget was spent"
    steps = json.loads((tmp_path / "out" / "gpu-report.json").read_text())["steps"]
    assert [(s["name"], s["returncode"]) for s in steps] == [("slow", 124), ("after", None)]


def _running(pid: int) -> bool:
    """Whether a process runs (a killed one may stay a zombie until its new parent reaps it), within 2 s."""
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except FileNotFoundError:
            return False
        if state in ("Z", "X"):
            return False
        time.sleep(0.05)
    return True


MEASUREMENT_FIELDS = ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "images_per_second", "runs", "peak_fraction")
OTHER_REPORT_FIELDS = {"model": "m.onnx", "device": "CPU", "versions": {}, "gflops_per_image": 15.1}
CPU_ENGINES_P50 = dict.fromkeys(CPU_ENGINES, 1.0)


def _goals_of(tmp_path, add) -> dict:
    validation = validate.Validation(validate.GPU, tmp_path / "out", tmp_path / "work", 60, ["cpu"])
    add(validation)
    return {goal.goal: goal.met for goal in validation.goals}


def test_the_cpu_goals_hold_the_speedups_and_every_engine_at_batch_256(tmp_path):
    def bench(p50: dict[str, float], batch: int = 1) -> dict:
        rows = [
            {**dict.fromkeys(MEASUREMENT_FIELDS, 1.0), "engine": e, "batch": batch, "p50_ms": ms}
            for e, ms in p50.items()
        ]
        return {"measurements": rows, "cold_starts": [], "skipped": {}, **OTHER_REPORT_FIELDS}

    def cpu_goals(torch_fp32: float, ort_fp32: float, ort_int8: float, quick_p50: dict[str, float]) -> dict:
        full = bench({"torch-cpu-fp32": torch_fp32, "ort-cpu-fp32": ort_fp32, "ort-cpu-int8": ort_int8})
        return _goals_of(tmp_path, lambda v: validate.add_cpu_goals(v, full, bench(quick_p50, 256)))

    goals = cpu_goals(100.0, 70.0, 19.0, dict.fromkeys(ENGINE_SETS["cpu"], 1.0))
    assert goals["VGG-11 224 px, batch 1: best deployable CPU engine >= 5x torch eager fp32"] is True  # 5.26x
    assert goals["VGG-11 224 px, batch 1: ORT fp32 >= 1.5x torch eager fp32"] is False  # 1.43x
    assert goals["quick model: a batch-256 throughput for every CPU engine"] is True
    goals = cpu_goals(100.0, 66.0, 21.0, CPU_ENGINES_P50)
    assert goals["VGG-11 224 px, batch 1: best deployable CPU engine >= 5x torch eager fp32"] is False  # 4.76x
    assert goals["VGG-11 224 px, batch 1: ORT fp32 >= 1.5x torch eager fp32"] is True  # 1.52x
    assert goals["quick model: a batch-256 throughput for every CPU engine"] is False  # OpenVINO's rows missing
    goals = _goals_of(tmp_path, lambda v: validate.add_cpu_goals(v, None, None))
    assert set(goals.values()) == {None}  # nothing measured: nothing claimed


def test_the_openvino_tests_goal_is_met_only_when_none_was_skipped(tmp_path):
    def met(tail: str, returncode: int | None) -> bool | None:
        step = validate.Step("pytest-openvino", "pytest", returncode, 1.0, tail)
        return _goals_of(tmp_path, lambda v: validate.add_openvino_tests_goal(v, step)).popitem()[1]

    assert met("14 passed in 30.0s", 0) is True
    assert met("10 passed, 4 skipped in 20.0s", 0) is None  # not an Intel CPU: shown neither way
    assert met("1 failed, 9 passed, 4 skipped in 20.0s", 1) is False
    assert met("not run: the stage budget was spent", None) is None


@pytest.mark.slow
def test_the_perf_stage_rehearses_the_profile_and_both_ablations(tmp_path):
    report = rehearse("perf", tmp_path)
    assert [step["name"] for step in report["steps"]] == [
        "bench-model-train",
        "bench-model-export",
        "bench-profile",
        "perf-inference",
        "perf-training",
    ]
    assert all(step["returncode"] == 0 for step in report["steps"])
    inference, training = report["figures"]["perf_inference"], report["figures"]["perf_training"]
    assert {(c["engine"], c["batch"]) for c in inference["cells"]} >= {("ort-base", 1), ("torch-eager", 8)}
    assert inference["skipped"]["ort-nhwc-graph"] == "a CUDA execution provider option"
    assert [p["engine"] for p in inference["profiles"]][:2] == ["torch-eager", "ort-base"]
    assert training["rates"][0]["variant"] == "eager" and training["rates"][0]["images_per_second"] > 0
    assert training["pipeline_images_per_second"] > 0 and training["profile"]["kernels"]
    goals = [goal["goal"] for goal in report["goals"]]
    assert "ONNX Runtime fp16 batch-1 p50 <= 0.20 ms" in goals and goals[-1].startswith("training step >= 10,000")
    markdown = (tmp_path / "gpu-report.md").read_text()
    assert "## bench --profile" in markdown and "## perf: inference ablation" in markdown
    assert "## perf: training ablation" in markdown


@pytest.mark.slow
def test_the_perf_stage_refuses_an_unknown_part(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "gpu" / "validate.py"),
            "perf",
            "--out",
            str(tmp_path),
            "--rehearse",
            "--perf-parts",
            "inference,speed",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 2 and "--perf-parts takes inference and/or training" in result.stderr
    assert not (tmp_path / "gpu-report.json").exists()


def _familiarity_rows(accepted: dict[str, float]) -> dict:
    other = {"score": "Mahalanobis, penultimate", "set": "digits", "accepted": 0.0}  # another score: never read
    rows = [{"score": validate.FAMILIARITY_AT_TEST, "set": name, "accepted": share} for name, share in accepted.items()]
    return {"rows": [other, *rows]}


@pytest.mark.parametrize(
    ("accepted", "verdicts"),
    [
        ({"digits": 0.05, "noise": 0.0, "blanks": 0.0, "inverted": 0.2}, [True, True]),  # both at their limits
        ({"digits": 0.0501, "noise": 0.0, "blanks": 0.0, "inverted": 0.2}, [False, True]),
        ({"digits": 0.0, "noise": 0.0, "blanks": 0.0625, "inverted": 0.19}, [False, True]),
        ({"digits": 0.0, "noise": 0.0, "blanks": 0.0, "inverted": 0.2001}, [True, False]),
        ({"digits": 0.0, "noise": 0.0, "inverted": 0.0}, [None, True]),  # no blanks row: not measured, not met
    ],
)
def test_the_familiarity_goals_hold_issue_35s_limits_on_the_exported_output(tmp_path, accepted, verdicts):
    validation = validate.Validation(validate.REHEARSAL, tmp_path, tmp_path / "work", 60, ["train"])
    validate.add_familiarity_goals(validation, _familiarity_rows(accepted), validate.Step("full-familiarity", "x"))
    assert [goal.met for goal in validation.goals] == verdicts
    assert validation.goals[1].measured == f"inverted {accepted['inverted']:.2%}"


def test_a_failed_familiarity_benchmark_is_not_measured(tmp_path):
    validation = validate.Validation(validate.REHEARSAL, tmp_path, tmp_path / "work", 60, ["train"])
    validate.add_familiarity_goals(validation, None, validate.Step("full-familiarity", "x", returncode=1))
    assert [(goal.measured, goal.met) for goal in validation.goals] == [("not measured", None)] * 2
