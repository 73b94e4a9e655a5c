"""Checkpoint -> ONNX (dynamic batch) -> checker -> onnxsim -> batch audit -> parity -> metadata -> variants.

Every file is checked before it is written, and written atomically: a failed export leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
import torch

from vggdeploy.artifacts import (
    export_folder_entries,
    export_report,
    familiarity_fit,
    golden_folder,
    model_file,
    reliability_diagram,
    sibling,
)
from vggdeploy.config import FAMILIARITY_LIMITS, ExportConfig
from vggdeploy.data.batches import to_input_tensor
from vggdeploy.data.dataset import Dataset, dataset_of
from vggdeploy.deploy.contract import (
    BATCH_AXIS,
    FAMILIARITY_NAME,
    FORMAT_VERSION,
    INPUT_NAME,
    OUTPUT_NAME,
    cap_ir_version,
)
from vggdeploy.deploy.session import ProviderSettings, create_session, run_session
from vggdeploy.deploy.weights_on_disk import write_embedded
from vggdeploy.errors import NO_SPACE, CheckFailed, DataError, UsageError, write_error
from vggdeploy.export.calibrate import Calibration, calibrate, held_out_slice
from vggdeploy.export.familiarity import (
    Familiarity,
    familiarity_refusal,
    fit_familiarity,
    torch_fit_pass,
    torch_scores,
)
from vggdeploy.export.golden import write_golden_vectors
from vggdeploy.export.graph import GraphStats, attach_metadata, check_proto, io_section
from vggdeploy.export.triton import TRITON_MODEL_ENTRIES, triton_model_name, write_triton_model
from vggdeploy.files import ensure_writable, folder_lock, require_replaceable, staged_folder
from vggdeploy.metrics.parity import ParityResult, compare_logits
from vggdeploy.model.archs import ModelArgs
from vggdeploy.model.checkpoint import CheckpointFile
from vggdeploy.model.familiarity import ScoredModel
from vggdeploy.model.vgg import (
    count_parameters,
    onnx_size_problem,
    release_weights,
    return_freed_memory,
    summarize,
)
from vggdeploy.passes import (
    HELD_OUT_SLICE,
    EvaluationSample,
    evaluation_sample,
    session_pass,
    torch_device,
    torch_representations,
    torch_slice_pass,
    torch_test_pass,
    working_batch,
)
from vggdeploy.phases import PhaseLog
from vggdeploy.report import markdown_table, write_json, write_text
from vggdeploy.versions import deployment_versions

# Above this size of weights, the session export's checks and golden vectors run on uses the weights as ONNX Runtime
# maps them from the graph's scratch file, without its prepacked copy: creating the session held both at once, 0.25
# GB over what its runs need for a 515 MB VGG at 224 px (BENCHMARKS.md, "torch's weights freed for the fits"), and its
# batched rows then differ from their batch-1 rows by float summation order (1.5e-5 there, within --audit-atol).
# Smaller models keep ONNX Runtime's default, the one `run` uses, whose batched rows equal their batch-1 rows exactly.
PREPACK_LIMIT_BYTES = 64 * 2**20


def checking_session_settings(weight_bytes: int) -> ProviderSettings:
    """The CPU session settings for export's checks of a graph with ``weight_bytes`` of weights."""
    return ProviderSettings(provider="cpu", prepack_weights=weight_bytes <= PREPACK_LIMIT_BYTES)


SCRATCH = ".scratch"  # a folder inside the staging folder, removed before the export is swapped in

if TYPE_CHECKING:
    from vggdeploy.export.variants import Variant


@dataclass(frozen=True)
class BatchAudit:
    batch_sizes: tuple[int, ...]
    max_abs_diff: float  # worst row vs the batch-1 answer for the same image
    labels_equal: bool
    atol: float  # the largest row difference allowed

    def __bool__(self) -> bool:
        return self.labels_equal and self.max_abs_diff <= self.atol

    def format(self) -> str:
        verdict = "ok" if self else "FAILED"
        return f"batch audit {list(self.batch_sizes)}: max |row - batch-1 row| {self.max_abs_diff:.3g} -> {verdict}"


@dataclass
class ExportResult:
    model_path: Path
    file_bytes: int
    before: GraphStats
    after: GraphStats
    audit: BatchAudit
    parity: ParityResult
    simplified: bool
    calibration: Calibration
    sample: EvaluationSample
    slice_sample: EvaluationSample | None  # None: no held-out slice was passed through torch
    familiarity: Familiarity | None  # None: the model has no familiarity output
    variants: dict[str, Variant] = field(default_factory=dict)
    triton_model: Path | None = None  # the Triton model's folder in --triton-repo
    phases: list[dict] = field(default_factory=list)  # wall seconds and peak memory so far, per phase

    def samples(self) -> list[EvaluationSample]:
        """What the figures rest on: the test sample, and the held-out slice's where it was passed."""
        return [self.sample] + ([] if self.slice_sample is None else [self.slice_sample])

    def format(self) -> str:
        step = "simplified" if self.simplified else "not simplified (--no-simplify)"
        lines = [
            f"wrote {self.model_path} ({self.file_bytes / 1e6:.2f} MB)",
            f"  graph: {self.before.nodes} nodes ({self.before.bytes / 1e6:.2f} MB) -> {step} "
            f"{self.after.nodes} nodes ({self.after.bytes / 1e6:.2f} MB): {self.after.ops}",
            f"  {self.audit.format()}",
            *(f"  {sample.format()}" for sample in self.samples()),
            f"  parity {self.parity.format()}",
            f"  {self.calibration.format()}",
        ]
        if self.familiarity is not None:
            lines.append(f"  {self.familiarity.format()}")
        for name, variant in self.variants.items():
            lines.append(f"  {name}: {variant.path} ({variant.bytes / 1e6:.2f} MB) {variant.summary()}")
        if self.triton_model is not None:
            serves = "logits and familiarity" if self.familiarity else "logits"
            lines.append(f"  triton: {self.triton_model} (config.pbtxt, 1/model.onnx, labels.txt; it serves {serves})")
        return "\n".join(lines)


def to_onnx(model: torch.nn.Module, args: ModelArgs, opset: int, path: Path, scored: bool = False) -> onnx.ModelProto:
    """torch.export-based exporter with a dynamic batch axis (cleaner graph than the TorchScript tracer), written to
    ``path`` with its weights in ``path``.data, one tensor at a time; the graph, its weights as references to that
    file. ``scored``: the model's second output is the familiarity score."""
    example = torch.zeros(2, args.in_channels, args.image_size, args.image_size)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):  # exporter progress lines
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (example,),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME, FAMILIARITY_NAME] if scored else [OUTPUT_NAME],
            dynamic_shapes={INPUT_NAME: {0: torch.export.Dim(BATCH_AXIS)}},
            opset_version=opset,
            dynamo=True,
            optimize=True,
            verbose=False,
        )
        program.save(path, external_data=True)
    del program
    proto = onnx.load(str(path), load_external_data=False)
    cap_ir_version(proto)
    _name_batch_axis(proto)
    onnx.save(proto, str(path))  # the graph alone: the weights stay where they are
    return proto


def _name_batch_axis(proto: onnx.ModelProto) -> None:
    for value in (*proto.graph.input, *proto.graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = BATCH_AXIS


def batch_is_dynamic(proto: onnx.ModelProto) -> bool:
    return all(
        v.type.tensor_type.shape.dim[0].dim_param == BATCH_AXIS for v in (*proto.graph.input, *proto.graph.output)
    )


def simplify_file(source: Path, target: Path) -> onnx.ModelProto:
    """onnxsim on the graph at ``source``, written to ``target`` beside it; the result.

    onnxsim sees the external weights as the graph's inputs, as its ``initializers_as_constants=False`` treats them,
    so it never loads them (for a 515 MB model, onnxsim on the whole file took 1.6 GB more): nothing in a VGG folds
    through its weights, and the result is the graph onnxsim gives the whole model (tested). The weights are then
    put back as the references they were."""
    import onnxsim

    exported = onnx.load(str(source), load_external_data=False)
    weights = {t.name: t for t in exported.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL}
    skeleton = onnx.ModelProto()
    skeleton.CopyFrom(exported)
    del skeleton.graph.initializer[:]
    skeleton.graph.initializer.extend(t for t in exported.graph.initializer if t.name not in weights)
    skeleton.graph.input.extend(
        onnx.helper.make_tensor_value_info(name, t.data_type, list(t.dims)) for name, t in weights.items()
    )
    simplified, ok = onnxsim.simplify(skeleton)
    if not ok:
        raise CheckFailed("onnxsim could not validate the simplified model against the original")
    used = [value for value in simplified.graph.input if value.name in weights]
    for value in used:
        simplified.graph.input.remove(value)
    simplified.graph.initializer.extend(weights[value.name] for value in used)
    if not batch_is_dynamic(simplified):
        raise CheckFailed("onnxsim froze the batch axis; export again with --no-simplify")
    cap_ir_version(simplified)
    onnx.save(simplified, str(target))
    return simplified


def audit_batches(session, inputs: np.ndarray, batch_sizes: tuple[int, ...], atol: float) -> BatchAudit:
    """Every row of every batch size must equal the batch-1 answer for that image."""
    largest = min(max(batch_sizes), len(inputs))
    sizes = tuple(sorted({min(s, largest) for s in batch_sizes}))
    singles = run_session(session, inputs[:largest], chunk=1)
    worst, labels_equal = 0.0, True
    for size in sizes:
        batched = run_session(session, inputs[:size], chunk=size)
        worst = max(worst, float(np.abs(batched - singles[:size]).max()))
        labels_equal &= bool((batched.argmax(1) == singles[:size].argmax(1)).all())
    return BatchAudit(sizes, worst, labels_equal, atol)


def build_metadata(
    args: ModelArgs,
    state: dict,
    dataset: Dataset,
    config: ExportConfig,
    variant: str,
    parity: dict,
    calibration: dict,
    familiarity: dict | None,
    raw_input: bool,
) -> dict:
    spec = dataset.spec(args.image_size)
    described = {
        "vggdeploy.format": FORMAT_VERSION,
        "labels": list(dataset.class_names),
        "preprocessing": spec.to_metadata(),
        "io": io_section(args, raw_input, familiarity is not None),
        "model": {"name": args.name, **args.to_dict()},
        "training": {
            "test_accuracy": state.get("test_accuracy"),
            "epoch": state.get("epoch"),
            "data_checksums": state.get("data_checksums"),
            "dataset": dataset.name,
        },
        "export": {
            "exporter": "torch.onnx.export(dynamo=True)",
            "opset": config.opset,
            "variant": variant,
            "simplified": config.simplify,
            "versions": deployment_versions(),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        },
        "parity": parity,
        "calibration": calibration,
    }
    if familiarity is not None:
        described["familiarity"] = familiarity
    return described


def export_model(
    checkpoint: str | Path,
    out_dir: str | Path,
    config: ExportConfig = ExportConfig(),
    expected_arch: str | None = None,
    data_dir=None,
    triton_repo: str | Path | None = None,
) -> ExportResult:
    """Export, check and describe a checkpoint's model; returns the figures measured on the way."""
    if triton_repo is not None:
        _require_apart(Path(out_dir), Path(triton_repo))
    with folder_lock(out_dir, "vggdeploy export"):  # one export into a folder at a time
        try:
            return _export(checkpoint, Path(out_dir), config, expected_arch, data_dir, triton_repo)
        except OSError as error:  # the exporter's and onnx's own writes of the scratch graph name no file
            if error.errno not in NO_SPACE:
                raise
            raise write_error(error, out_dir) from None


def _require_apart(out_dir: Path, triton_repo: Path) -> None:
    """--out and --triton-repo must not hold one another: export replaces --out whole after it writes the Triton
    model, which went with it (exit 0, no repository), and Triton takes every folder of its repository for a model."""
    out, repo = out_dir.resolve(), triton_repo.resolve()
    if out == repo or out in repo.parents or repo in out.parents:
        raise UsageError(
            f"--triton-repo {triton_repo} and --out {out_dir} overlap: export replaces --out whole, and Triton reads "
            "every folder of its repository as a model; give them separate folders"
        )


def _export(checkpoint, out_dir: Path, config: ExportConfig, expected_arch, data_dir, triton_repo) -> ExportResult:
    out_dir = Path(out_dir)
    phases = PhaseLog()
    with phases.phase("load the checkpoint and the data"):
        source = CheckpointFile.of(checkpoint)  # read again for the graph's export, after the fits
        model, state = source.rebuild_model(expected_arch)
        args: ModelArgs = state["model_args"]
        too_large = onnx_size_problem(count_parameters(model))
        if too_large is not None:
            raise DataError(f"{checkpoint}: {too_large}")
        require_replaceable(out_dir, export_folder_entries(), "vggdeploy export")
        if triton_repo is not None:
            require_replaceable(Path(triton_repo) / triton_model_name(args), TRITON_MODEL_ENTRIES, "vggdeploy export")
        dataset = dataset_of(state, data_dir)
        ensure_writable(out_dir.parent)
    spec = dataset.spec(args.image_size)
    device = torch_device()
    batch = working_batch(args, device)
    gflops = summarize(args).gflops
    sample = evaluation_sample(len(dataset.test_labels), config.test_images, gflops, device)
    sample_images, sample_labels = sample.take(dataset.test_images), sample.take(dataset.test_labels).numpy()
    parity_count = min(config.parity_images, len(sample))
    held_out = held_out_slice(state, dataset)
    slice_sample = None
    if held_out is not None:
        slice_sample = evaluation_sample(len(held_out[1]), config.slice_images, gflops, device, HELD_OUT_SLICE)
    with phases.phase("torch over the held-out slice"):  # the one pass calibration and familiarity share
        wanted = held_out is not None and (config.calibrate or config.familiarity)
        sliced = torch_slice_pass(model, held_out, spec, config.familiarity, slice_sample) if wanted else None
        del held_out
    fitted = config.familiarity and familiarity_refusal(sliced) is None
    if fitted:
        with phases.phase("torch over the familiarity fit's training images"):
            training = torch_fit_pass(model, state, dataset, spec)
    with phases.phase("torch over the test sample"):  # the one pass parity, calibration and the variants share
        test_images = sample_images[: len(sample) if config.calibrate else parity_count]
        if fitted:  # with what the score reads, for its parity
            torch_test, statistics, penultimate = torch_representations(
                model, test_images, spec, "torch on test images"
            )
            read = (statistics[:parity_count].copy(), penultimate[:parity_count].copy())
            del statistics, penultimate
        else:
            torch_test, _ = torch_test_pass(model, test_images, spec, device, batch, scored=False)
    release_weights(model)  # every torch pass is done: the fits run in numpy, and the graph's export loads them again
    calibration_images = None
    if config.int8:
        from vggdeploy.export.variants import int8_calibration_images

        calibration_images = int8_calibration_images(dataset.train_images, config.int8_calibration_images)
    dataset = dataset.without_training_images()
    familiarity = None
    if fitted:
        with phases.phase("familiarity"):
            familiarity, score_arrays = fit_familiarity(training, sliced)
            torch_familiarity = torch_scores(score_arrays, *read)
            del training, read
    with phases.phase("calibration"):
        calibration = calibrate(config, (torch_test, sample_labels), sliced)
        del sliced  # with the features the fit read

    # Everything is built beside --out and swapped in once every check has passed: nothing half-written is left
    with contextlib.ExitStack() as stack:
        staging = stack.enter_context(staged_folder(out_dir))
        scratch = staging / SCRATCH  # the graph on its way: ONNX Runtime and onnxsim read it from disk
        scratch.mkdir()
        with phases.phase("convert to ONNX"):
            model, _ = source.rebuild_model(expected_arch)
            exported_model = model if familiarity is None else ScoredModel(model, score_arrays).eval()
            exported = to_onnx(exported_model, args, config.opset, scratch / "exported.onnx", familiarity is not None)
            release_weights(exported_model)
            if familiarity is not None:  # for check's torch side; the graph holds them too
                np.savez(familiarity_fit(staging), **score_arrays)
                del score_arrays
            before = GraphStats.of(exported, scratch)
        with phases.phase("simplify and check"):
            checked = scratch / "exported.onnx"
            final = exported
            if config.simplify:
                checked = scratch / "simplified.onnx"
                final = simplify_file(scratch / "exported.onnx", checked)
            check_proto(checked)
            session = create_session(checked, checking_session_settings(before.bytes))

        with phases.phase("batch audit"):
            audited = config.audit_batches or (*(size for size in (1, 2, 7) if size < batch), batch)
            audit_inputs = to_input_tensor(sample_images[: max(audited)], spec).numpy()
            audit = audit_batches(session, audit_inputs, audited, config.audit_atol)
            del audit_inputs
            if not audit:
                raise CheckFailed(audit.format())
        with phases.phase("parity"):
            onnx_test, onnx_familiarity = session_pass(
                session, sample_images[:parity_count], spec, batch, "onnxruntime parity"
            )
            parity = compare_logits(
                "onnxruntime-cpu fp32 vs torch fp32",
                torch_test[:parity_count],
                onnx_test,
                sample_labels[:parity_count],
                atol=config.atol,
            )
            if not parity:
                raise CheckFailed(f"parity at export: {parity.format()}")
            if familiarity is not None:
                familiarity = familiarity.compared(
                    torch_familiarity, onnx_familiarity, FAMILIARITY_LIMITS["fp32"]["atol"]
                )

        attach_metadata(
            final,
            build_metadata(
                args,
                state,
                dataset,
                config,
                "fp32",
                _parity_summary(parity),
                calibration.to_metadata(),
                None if familiarity is None else familiarity.to_metadata(),
                raw_input=False,
            ),
        )
        staged_model = model_file(staging)
        with phases.phase("write model.onnx and the golden vectors"):
            write_embedded(final, scratch, staged_model)
            threshold = None if familiarity is None else familiarity.threshold
            write_golden_vectors(golden_folder(staging), session, dataset, spec, config, calibration, threshold)
        built = []
        wants_variants = config.fp16 or config.int8 or config.with_preprocessing
        if wants_variants:
            from vggdeploy.export import variants

            count = min(config.variant_images, len(sample))
            reference = variants.Fp32Reference.of(session, sample_images[:count], spec, batch, config.int8)
        del session  # every answer of it is measured: the variants are compared with its answers, not with it
        return_freed_memory()
        if wants_variants:
            built = variants.build_variants(
                variants.VariantInputs(
                    final,
                    reference,
                    sample_images[:count],
                    spec,
                    sample_labels[:count],
                    config,
                    calibration_images,
                    batch,
                    staged_model,
                    scratch,
                ),
                model_file(staging),
                phases,
            )

        with phases.phase("write"):
            after = GraphStats.of(final, scratch)
            shutil.rmtree(scratch)
            result = ExportResult(
                model_file(out_dir),
                staged_model.stat().st_size,
                before,
                after,
                audit,
                parity,
                config.simplify,
                calibration,
                sample,
                slice_sample if wanted else None,
                familiarity,
            )
            if calibration.measured:
                calibration.plot(
                    reliability_diagram(staging), f"{args.name}: test set, {calibration.test_before.images:,} images"
                )
            for variant in built:
                variant.path = sibling(result.model_path, variant.name)  # where it will be once the export is in place
                result.variants[variant.name] = variant
            if triton_repo is not None:
                result.triton_model = Path(triton_repo) / triton_model_name(args)  # other models in the repository stay
                write_triton_model(
                    stack.enter_context(staged_folder(result.triton_model)),
                    staged_model,
                    familiarity is not None,
                    args,
                    config,
                    dataset.class_names,
                )
        result.phases = phases.phases
        _write_report(staging, result, args)
    return result


def _parity_summary(parity: ParityResult) -> dict:
    keys = ("name", "images", "max_abs_diff", "mean_abs_diff", "min_cosine", "top1_agreement", "atol")
    return {key: getattr(parity, key) for key in keys}


def _write_report(out_dir: Path, result: ExportResult, args: ModelArgs) -> None:
    data = {
        "model": str(result.model_path),
        "arch": args.to_dict(),
        "graph_before": result.before.__dict__,
        "graph_after": result.after.__dict__,
        "file_bytes": result.file_bytes,
        "batch_audit": {**result.audit.__dict__, "passed": bool(result.audit)},
        "parity": result.parity.to_dict(),
        "variants": {name: variant.to_dict() for name, variant in result.variants.items()},
        "calibration": result.calibration.to_metadata(),
        "familiarity": None if result.familiarity is None else result.familiarity.to_metadata(),
        "test_sample": result.sample.to_dict(),
        "slice_sample": None if result.slice_sample is None else result.slice_sample.to_dict(),
        "phases": result.phases,
        "triton_model": None if result.triton_model is None else str(result.triton_model),
    }
    write_json(export_report(out_dir, "json"), data)
    rows = [
        {
            "file": result.model_path.name,
            "MB": result.file_bytes / 1e6,
            "nodes": result.after.nodes,
            "summary": result.parity.format(),
        }
    ]
    rows += [
        {"file": v.path.name, "MB": v.bytes / 1e6, "nodes": v.nodes, "summary": v.summary()}
        for v in result.variants.values()
    ]
    write_text(
        export_report(out_dir, "md"),
        f"# Export of {args.name}\n\n{result.audit.format()}\n\n"
        + "".join(f"{sample.format()}\n\n" for sample in result.samples())
        + f"Graph as exported: {result.before.nodes} nodes; "
        f"{'after onnxsim' if result.simplified else 'not simplified (--no-simplify)'}: {result.after.nodes} nodes "
        f"`{json.dumps(result.after.ops)}`\n\n"
        + markdown_table(rows, ["file", "MB", "nodes", "summary"])
        + f"\n{result.calibration.format()}\n"
        + (f"\n![reliability diagram]({reliability_diagram(Path('.'))})\n" if result.calibration.measured else ""),
    )
