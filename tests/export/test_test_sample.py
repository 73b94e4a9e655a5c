"""What export's test-set figures rest on: the sample rule, the working batch, the shared torch pass, and phases."""

from __future__ import annotations

import io
import json
import time

import numpy as np
import pytest
import torch

from vggdeploy import passes
from vggdeploy.artifacts import export_report
from vggdeploy.config import PRESETS, ExportConfig
from vggdeploy.deploy.preprocess import PreprocessSpec
from vggdeploy.model.archs import ModelArgs
from vggdeploy.model.vgg import summarize

FULL_GFLOPS = summarize(PRESETS["full"].model).gflops  # VGG-11-BN at 224 px, 15.2 GFLOP an image
QUICK_GFLOPS = summarize(PRESETS["quick"].model).gflops


def test_a_cpu_export_of_a_224_px_vgg_rests_on_1000_evenly_spread_test_images():
    """The stated default: if this count or its spread changes, the figures the README promises change with it."""
    sample = passes.evaluation_sample(10_000, None, FULL_GFLOPS, "cpu")
    assert len(sample) == 1000 and sample.of == 10_000
    assert np.array_equal(sample.indices, np.arange(0, 10_000, 10))
    assert "1,000 of 10,000 test images" in sample.format() and "--test-images all" in sample.format()
    assert sample.to_dict()["images"] == 1000


def test_a_cpu_export_of_a_224_px_vgg_fits_its_temperature_and_threshold_on_1000_held_out_images():
    """The slice's stated default, by the test set's rule: a full Fashion-MNIST run holds out 5,000 images."""
    sample = passes.evaluation_sample(5_000, None, FULL_GFLOPS, "cpu", passes.HELD_OUT_SLICE)
    assert len(sample) == 1000 and sample.of == 5_000
    assert np.array_equal(sample.indices, np.arange(0, 5_000, 5))
    assert sample.format().startswith("temperature and familiarity threshold on 1,000 of 5,000 held-out training")
    assert "--slice-images all for every image" in sample.format()
    assert passes.evaluation_sample(5_000, "all", FULL_GFLOPS, "cpu", passes.HELD_OUT_SLICE).reason == (
        "--slice-images all"
    )
    assert len(passes.evaluation_sample(5_000, None, QUICK_GFLOPS, "cpu", passes.HELD_OUT_SLICE)) == 5_000
    whole = passes.evaluation_sample(5_000, None, FULL_GFLOPS, "cuda", passes.HELD_OUT_SLICE)
    assert len(whole) == 5_000 and whole.reason == "the whole slice"


@pytest.mark.parametrize(
    ("images", "asked", "gflops", "device", "count"),
    [
        (10_000, None, QUICK_GFLOPS, "cpu", 10_000),  # the quick model: the whole pass is cheap
        (10_000, None, FULL_GFLOPS, "cuda", 10_000),  # a GPU keeps the whole test set
        (1_300, None, FULL_GFLOPS, "cpu", 1_300),  # 19.8 TFLOP: within the budget
        (1_400, None, FULL_GFLOPS, "cpu", 1_000),  # 21.3 TFLOP: sampled
        (2_000, None, 10.005, "cpu", 1_000),  # 20.01 TFLOP: over the budget
        (2_000, None, 10.0, "cpu", 2_000),  # 20 TFLOP exactly: within it
        (600, None, 40.0, "cpu", 600),  # a test set smaller than the sample is kept whole
        (10_000, "all", FULL_GFLOPS, "cpu", 10_000),
        (10_000, 300, FULL_GFLOPS, "cpu", 300),
        (10_000, 300, QUICK_GFLOPS, "cuda", 300),
        (200, 300, QUICK_GFLOPS, "cpu", 200),
    ],
)
def test_the_sample_size(images, asked, gflops, device, count):
    sample = passes.evaluation_sample(images, asked, gflops, device)
    assert len(sample) == count and len(np.unique(sample.indices)) == count
    assert sample.indices.min() == 0 and sample.indices.max() < images
    if asked is not None:
        assert sample.reason == f"--test-images {asked}"


@pytest.mark.parametrize("name", ["test_images", "slice_images"])
def test_a_sample_of_no_images_is_a_usage_error(name):
    from vggdeploy.errors import UsageError

    option = f"--{name.replace('_', '-')}"
    for count in (0, -3):
        with pytest.raises(UsageError, match=f"^{option} must be a count of at least 1 or 'all', got {count}$"):
            ExportConfig(**{name: count})
    assert getattr(ExportConfig(**{name: "all"}), name) == "all" and getattr(ExportConfig(**{name: 1}), name) == 1


def test_a_whole_sample_is_the_tensor_itself_and_a_part_its_rows():
    tensor = torch.arange(20)
    assert passes.evaluation_sample(20, None, 1.0, "cpu").take(tensor) is tensor
    assert passes.evaluation_sample(20, 5, 1.0, "cpu").take(tensor).tolist() == [0, 4, 8, 12, 16]


def test_the_working_batch_keeps_one_layer_within_the_budget_on_a_cpu():
    assert passes.working_batch(PRESETS["quick"].model, "cpu") == 256
    assert passes.working_batch(PRESETS["full"].model, "cpu") == 3  # 12.8 MB an image in its first conv, 48 MB a batch
    assert passes.working_batch(PRESETS["full"].model, "cuda") == 256
    assert passes.working_batch(ModelArgs(arch="A", image_size=160), "cpu") == 7  # 6.55 MB an image: 7.68 fit
    assert passes.working_batch(ModelArgs(arch="A", image_size=4096), "cpu") == 1


def test_a_cpu_pass_hands_the_dense_layers_many_images_while_convolving_a_few():
    """The classifier's weights (470 MB at 224 px) are read once per stream batch, not once per working batch."""
    assert passes.stream_batch(PRESETS["quick"].model, "cpu") == 256  # the working batch already: unchanged
    assert passes.stream_batch(PRESETS["full"].model, "cpu") == 64  # 0.2 MB of inputs an image
    assert passes.stream_batch(PRESETS["full"].model, "cuda") == 256
    assert passes.stream_batch(ModelArgs(arch="A", image_size=224, in_channels=3), "cpu") == 64  # 0.6 MB: 83 fit
    partial = passes.stream_batch(ModelArgs(arch="A", image_size=500, in_channels=3), "cpu")
    assert partial == 16 and isinstance(partial, int)  # 3 MB an image: 16.8 fit
    assert passes.stream_batch(ModelArgs(arch="A", image_size=2048, in_channels=3), "cpu") == 1  # 50 MB: none fits


@pytest.mark.parametrize("scored", [False, True])
def test_the_dense_layers_take_every_input_at_once_and_the_convolutions_a_chunk(scored):
    from vggdeploy.model.familiarity import LAYERS, PARTS, ScoredModel
    from vggdeploy.model.vgg import build_model, predict_logits

    torch.manual_seed(0)
    vgg = build_model(ModelArgs(arch="A", width_ratio=8, hidden=32, image_size=32)).eval()
    model = vgg
    if scored:
        widths = {"early": 2 * vgg.args.stages[0][0], "late": 32}
        rng = np.random.default_rng(0)
        arrays = {
            f"{layer}_{part}": rng.normal(size=shape).astype(np.float32)
            for layer, width in widths.items()
            for part, shape in zip(PARTS, [(width,), (width, width), (10, width), (2,)], strict=True)
        }
        assert set(arrays) == {f"{layer}_{part}" for layer in LAYERS for part in PARTS}
        model = ScoredModel(vgg, arrays).eval()
    seen: dict[str, list[int]] = {"first stage": [], "first dense layer": []}
    for name, module in zip(seen, (vgg.features[0], vgg.classifier[1]), strict=True):
        module.register_forward_hook(lambda module, args, out, name=name: seen[name].append(len(args[0])))
    inputs = torch.randn(11, 1, 32, 32).numpy()
    with torch.no_grad():
        whole = model(torch.from_numpy(inputs))
    whole = torch.column_stack(whole) if scored else whole
    for calls in seen.values():
        calls.clear()
    chunked = predict_logits(model, inputs, chunk=4)
    assert seen == {"first stage": [4, 4, 3], "first dense layer": [11]}
    np.testing.assert_allclose(chunked, whole.numpy(), atol=1e-5, rtol=1e-5)


def test_a_cpu_pass_runs_the_model_channels_last_with_the_same_logits():
    """oneDNN's faster layout on a CPU (BENCHMARKS.md): the weights change layout in place, not value."""
    import copy

    from vggdeploy.model.vgg import build_model, predict_logits

    torch.manual_seed(0)
    model = build_model(ModelArgs(arch="A", width_ratio=8, hidden=32, image_size=32)).eval()
    contiguous = copy.deepcopy(model)
    inputs = torch.randn(5, 1, 32, 32).numpy()
    engine = passes.torch_engine(model, "cpu", 4)
    chunks: list[int] = []
    model.features[0].register_forward_hook(lambda module, args, out: chunks.append(len(args[0])))
    convolutions = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convolutions and all(w.is_contiguous(memory_format=torch.channels_last) for w in convolutions)
    assert not convolutions[1].is_contiguous()
    for moved, kept in zip(model.state_dict().values(), contiguous.state_dict().values(), strict=True):
        assert torch.equal(moved, kept)
    np.testing.assert_allclose(engine(inputs), predict_logits(contiguous, inputs), atol=1e-5, rtol=0)
    assert chunks == [4, 1]  # the engine's working batch


def test_one_preprocessing_feeds_every_engine_in_order():
    images = torch.randint(0, 256, (23, 28, 28), dtype=torch.uint8)
    spec = PreprocessSpec(32, 32)
    seen: list[int] = []

    def first(inputs):
        seen.append(len(inputs))
        return inputs.reshape(len(inputs), -1)[:, :3]

    outputs = passes.stream_logits(images, spec, {"a": first, "b": lambda x: x.mean(axis=(1, 2, 3))[:, None]}, 5, "t")
    whole = passes.to_input_tensor(images, spec).numpy()
    assert seen == [5, 5, 5, 5, 3]
    np.testing.assert_array_equal(outputs["a"], whole.reshape(23, -1)[:, :3])
    np.testing.assert_allclose(outputs["b"][:, 0], whole.mean(axis=(1, 2, 3)), rtol=1e-6)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_progress_bar_shows_the_time_left_on_a_terminal_only(monkeypatch):
    monkeypatch.setattr(passes, "PROGRESS_DELAY_S", 0.0)
    terminal, log = _Terminal(), io.StringIO()
    for stream in (terminal, log):
        with passes.progress_bar(100, "torch on test images", stream) as bar:
            time.sleep(0.15)  # past tqdm's shortest refresh interval
            bar.update(40)
    shown = terminal.getvalue()
    assert "torch on test images" in shown and "40/100" in shown and "<00:00" in shown  # elapsed<remaining
    assert log.getvalue() == ""


@pytest.mark.slow
def test_export_measures_the_stated_sample_and_says_so(tiny_checkpoint, tmp_path, data_dir, monkeypatch):
    """A CPU export of a model over the budget (the budget lowered to 0 here) rests its test figures on the stated
    1,000 images; --test-images chooses another count. The parity check uses the sample's first images."""
    from vggdeploy.export.pipeline import export_model

    small = dict(parity_images=64, audit_batches=(1, 3))
    monkeypatch.setattr(passes, "CPU_WHOLE_PASS_TFLOP", 0.0)
    monkeypatch.setattr(passes, "ACTIVATION_BUDGET", 5 * 8 * 32 * 32 * 4)  # 5 images of the first conv's output
    sampled = export_model(tiny_checkpoint, tmp_path / "sampled", ExportConfig(parity_images=64), data_dir=data_dir)
    assert sampled.audit.batch_sizes == (1, 2, 5)  # the default audit: 1, 2 and 7 below the working batch, and it
    chosen = export_model(
        tiny_checkpoint,
        tmp_path / "chosen",
        ExportConfig(test_images=300, slice_images=150, **small),
        data_dir=data_dir,
    )
    for result, count in ((sampled, 1000), (chosen, 300)):
        report = json.loads(export_report(result.model_path.parent, "json").read_text())
        assert report["test_sample"]["images"] == count and report["test_sample"]["of"] == 10_000
        assert report["calibration"]["test_set"]["before"]["images"] == count
        assert result.parity.images == 64
        assert f"test-set figures on {count:,} of 10,000" in result.format()
        assert f"({count:,} test images)" in result.format()
        phases = [p["phase"] for p in report["phases"]]
        assert phases[:7] == [
            "load the checkpoint and the data",
            "torch over the held-out slice",
            "torch over the familiarity fit's training images",
            "torch over the test sample",
            "familiarity",
            "calibration",
            "convert to ONNX",
        ]
        assert phases[-1] == "write"
        peaks = [p["peak_rss_gb"] for p in report["phases"]]
        assert peaks == sorted(peaks) and peaks[0] > 0.1
    assert "CPU export's sample" in sampled.sample.reason
    # the held-out slice by the same rule: the tiny checkpoint's slice is under 1,000 images, so all of it; or the
    # 150 --slice-images asks for, which the temperature and the familiarity threshold then rest on
    held = len(torch.load(tiny_checkpoint, weights_only=False)["calibration_split"]["indices"])
    assert 150 < held < 1000
    for result, count, reason in (
        (sampled, held, "a CPU export's sample, evenly spread"),
        (chosen, 150, "--slice-images 150"),
    ):
        report = json.loads(export_report(result.model_path.parent, "json").read_text())
        assert report["slice_sample"]["images"] == count and report["slice_sample"]["of"] == held
        assert report["slice_sample"]["reason"].startswith(reason)
        assert report["calibration"]["slice_sample"] == report["slice_sample"]
        assert report["calibration"]["calibration_slice"]["before"]["images"] == count
        assert result.familiarity.slice_images == count
        of = "" if count == held else f" of {held:,}"
        assert report["familiarity"]["threshold_from"].startswith(f"{count:,}{of} held-out training images")
        assert f"temperature and familiarity threshold on {count:,} of {held:,} held-out" in result.format()
    # the figures are torch's on exactly the evenly spread images: its accuracy recomputed from them
    from vggdeploy.data.dataset import dataset_of
    from vggdeploy.model.checkpoint import rebuild_model
    from vggdeploy.model.vgg import predict_logits

    model, state = rebuild_model(tiny_checkpoint)
    dataset = dataset_of(state, data_dir)
    picked = np.arange(300) * 10_000 // 300
    inputs = passes.to_input_tensor(dataset.test_images[picked], dataset.spec(32)).numpy()
    accuracy = (predict_logits(model, inputs).argmax(1) == dataset.test_labels[picked].numpy()).mean()
    assert chosen.calibration.test_before.accuracy == pytest.approx(accuracy)
