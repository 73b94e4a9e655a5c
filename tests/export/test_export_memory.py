"""Export's memory design: torch's weights are freed once its passes are done, the familiarity fit runs in numpy
without them, and the graph's export reads the same checkpoint again (BENCHMARKS.md, "Big models on small
machines")."""

from __future__ import annotations

import os
import shutil

import pytest

from vggdeploy.config import ExportConfig

SMALL = ExportConfig(audit_batches=(1, 2), parity_images=32)


def test_the_fit_and_onnx_runtime_run_with_torch_s_weights_freed(tiny_checkpoint, data_dir, tmp_path, monkeypatch):
    from vggdeploy.export import pipeline
    from vggdeploy.model import checkpoint

    built, held_at = [], {}
    real_rebuild, real_fit, real_session = checkpoint.rebuild_model, pipeline.fit_familiarity, pipeline.create_session

    def rebuilding(*args, **kwargs):
        model, state = real_rebuild(*args, **kwargs)
        built.append(model)
        return model, state

    def weights_held() -> int:
        return sum(p.numel() for model in built for p in model.parameters())

    def fitting(*args, **kwargs):
        held_at["fit"] = (len(built), weights_held())
        return real_fit(*args, **kwargs)

    def opening(model, settings, *args, **kwargs):
        held_at["session"] = (len(built), weights_held(), settings.prepack_weights)
        return real_session(model, settings, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "rebuild_model", rebuilding)  # CheckpointFile's readings
    monkeypatch.setattr(pipeline, "fit_familiarity", fitting)
    monkeypatch.setattr(pipeline, "create_session", opening)
    result = pipeline.export_model(tiny_checkpoint, tmp_path / "onnx", SMALL, data_dir=data_dir)
    assert result.parity and result.familiarity is not None
    # one model for torch's passes, freed before the fit; one rebuilt for the graph's export, freed before the session,
    # which (a small model's) prepacks its weights as `run`'s sessions do: batched rows equal their batch-1 rows
    assert held_at == {"fit": (1, 0), "session": (2, 0, True)}
    assert result.audit.max_abs_diff == 0


def test_a_large_model_s_checks_run_without_a_prepacked_copy_of_its_weights():
    from vggdeploy.export.pipeline import PREPACK_LIMIT_BYTES, checking_session_settings

    assert PREPACK_LIMIT_BYTES == 64 * 2**20
    assert checking_session_settings(PREPACK_LIMIT_BYTES).prepack_weights
    assert not checking_session_settings(PREPACK_LIMIT_BYTES + 1).prepack_weights
    assert checking_session_settings(1).provider == "cpu"


def test_a_session_without_prepacked_weights_answers_within_float_rounding(tiny_export):
    import numpy as np

    from vggdeploy.deploy.contract import INPUT_NAME
    from vggdeploy.deploy.session import PREPACKING_KEY, ProviderSettings, create_session, session_options_for

    assert (
        session_options_for(ProviderSettings(prepack_weights=False), False).get_session_config_entry(PREPACKING_KEY)
        == "1"
    )
    with pytest.raises(RuntimeError):  # the default leaves ONNX Runtime's own setting: prepacked
        session_options_for(ProviderSettings(), False).get_session_config_entry(PREPACKING_KEY)
    path = tiny_export[0].model_path
    inputs = np.random.default_rng(0).standard_normal((8, 1, 32, 32)).astype(np.float32)
    answers = [
        create_session(path, ProviderSettings(provider="cpu", prepack_weights=prepack)).run(None, {INPUT_NAME: inputs})
        for prepack in (True, False)
    ]
    for packed, unpacked in zip(*answers, strict=True):
        np.testing.assert_allclose(unpacked, packed, rtol=0, atol=1e-5)


def test_a_checkpoint_replaced_while_export_runs_is_refused_and_nothing_is_written(
    tiny_checkpoint, data_dir, tmp_path, monkeypatch
):
    from vggdeploy.errors import DataError
    from vggdeploy.export import pipeline

    checkpoint = tmp_path / "best.pt"
    shutil.copy(tiny_checkpoint, checkpoint)
    real_fit = pipeline.fit_familiarity

    def training_writes_a_new_best(*args, **kwargs):
        shutil.copy(tiny_checkpoint, tmp_path / "new.pt")
        os.replace(tmp_path / "new.pt", checkpoint)  # as training saves: a new file renamed over the old
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(pipeline, "fit_familiarity", training_writes_a_new_best)
    with pytest.raises(DataError) as raised:
        pipeline.export_model(checkpoint, tmp_path / "onnx", SMALL, data_dir=data_dir)
    assert str(raised.value) == (
        f"{checkpoint}: replaced or changed while export ran (is training still writing it?); export again once it "
        "is final"
    )
    assert sorted(path.name for path in tmp_path.iterdir()) == ["best.pt"]


@pytest.mark.parametrize("code", ["ENOSPC", "EIO"])
def test_a_full_disk_under_the_scratch_graph_is_one_plain_error_and_nothing_is_left(
    code, tiny_checkpoint, data_dir, tmp_path, monkeypatch
):
    """The exporter's and onnx's writes name no file: a full disk there was an internal error (exit 70)."""
    import errno

    from vggdeploy.errors import ResourceExhausted
    from vggdeploy.export import pipeline

    def writing_on_a_full_disk(*args, **kwargs):
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)))

    monkeypatch.setattr(pipeline, "to_onnx", writing_on_a_full_disk)
    out = tmp_path / "onnx"
    if code == "EIO":  # any other failure is not called a full disk
        with pytest.raises(OSError, match="Input/output error"):
            pipeline.export_model(tiny_checkpoint, out, SMALL, data_dir=data_dir)
    else:
        with pytest.raises(ResourceExhausted) as raised:
            pipeline.export_model(tiny_checkpoint, out, SMALL, data_dir=data_dir)
        assert str(raised.value).startswith(f"{out}: no space left on the device while writing it (")
        assert raised.value.exit_code == 7
    assert list(tmp_path.iterdir()) == []


def test_a_checkpoint_replaced_while_it_is_read_is_refused(tiny_checkpoint, tmp_path, monkeypatch):
    from vggdeploy.errors import DataError
    from vggdeploy.model import checkpoint

    path = tmp_path / "best.pt"

    def replacing_the_file_after(read):
        """``read``, after which training saves a new best.pt: a new file renamed over the old."""

        def reading(*args, **kwargs):
            value = read(*args, **kwargs)
            shutil.copy(tiny_checkpoint, tmp_path / "new.pt")
            os.replace(tmp_path / "new.pt", path)
            return value

        return reading

    shutil.copy(tiny_checkpoint, path)
    source = checkpoint.CheckpointFile.of(path)
    _, state = source.rebuild_model()  # unchanged: read as often as asked
    assert source.rebuild_model()[1]["model_args"] == state["model_args"]
    monkeypatch.setattr(checkpoint, "rebuild_model", replacing_the_file_after(checkpoint.rebuild_model))
    with pytest.raises(DataError, match="replaced or changed while export ran"):
        source.rebuild_model()
    path.unlink()  # gone since: changed as well
    with pytest.raises(DataError, match="replaced or changed while export ran"):
        source.rebuild_model()
    assert checkpoint.CheckpointFile.of(tmp_path / "none.pt").identity is None

    # its metadata read (check's first reading) the same way, the refusal naming the command
    shutil.copy(tiny_checkpoint, path)
    source = checkpoint.CheckpointFile.of(path, "check")
    assert source.load(mmap=True)["model_args"] == state["model_args"]
    monkeypatch.setattr(checkpoint, "load_checkpoint", replacing_the_file_after(checkpoint.load_checkpoint))
    with pytest.raises(DataError, match=r"replaced or changed while check ran .*; check again once it is final"):
        source.load(mmap=True)


def test_every_reading_checks_the_architecture_asked_for(tiny_checkpoint):
    from vggdeploy.errors import UsageError
    from vggdeploy.model.checkpoint import CheckpointFile

    source = CheckpointFile.of(tiny_checkpoint)
    for _ in range(2):
        with pytest.raises(UsageError, match="holds architecture A with batch norm, not vgg11"):
            source.rebuild_model("vgg11")
    assert source.rebuild_model("A")[0].args.arch == "A"
