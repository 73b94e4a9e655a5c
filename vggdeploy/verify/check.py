"""The ``vggdeploy check`` stage: torch vs ONNX Runtime on the real test set, for every variant present.

``--localize`` exposes intermediate outputs of the ONNX graph and names the first layer whose difference from the
torch model exceeds the tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch

from vggdeploy.artifacts import (
    CONFUSION_PNG,
    PER_CLASS_JSON,
    checkpoint_beside,
    familiarity_fit,
    reports_folder,
    sibling,
)
from vggdeploy.config import FAMILIARITY_LIMITS, CheckConfig, variant_limits
from vggdeploy.data.batches import to_input_tensor
from vggdeploy.data.dataset import dataset_of
from vggdeploy.deploy.contract import familiarity_threshold, is_calibrated, temperature
from vggdeploy.deploy.onnx_file import require_model_file
from vggdeploy.deploy.preprocess import PreprocessSpec
from vggdeploy.deploy.session import ORT_CHUNK, ProviderSettings, create_session, open_model, session_provider
from vggdeploy.errors import CheckFailed, DataError, UsageError
from vggdeploy.files import folder_lock
from vggdeploy.metrics.calibration import DEFAULT_BINS, CalibrationFigures
from vggdeploy.metrics.familiarity import flag_agreement, flag_failures
from vggdeploy.metrics.parity import ParityResult, compare_logits
from vggdeploy.metrics.per_class import PerClassReport
from vggdeploy.model.archs import ModelArgs, model_args_from_metadata
from vggdeploy.model.checkpoint import CheckpointFile
from vggdeploy.model.familiarity import ScoredModel
from vggdeploy.model.vgg import release_weights, return_freed_memory
from vggdeploy.passes import (
    session_engine,
    split_familiarity,
    stream_logits,
    torch_device,
    torch_test_pass,
    working_batch,
)
from vggdeploy.report import markdown_table, write_json, write_text

LISTED_FLIPS = 10  # flips printed per variant; check.json lists up to parity.MAX_LISTED_FLIPS


# ONNX op <-> torch module pairs that survive export one-to-one (BatchNorm is folded into Conv, Dropout vanishes).
BOUNDARY_OPS = {
    "Relu": torch.nn.ReLU,
    "MaxPool": torch.nn.MaxPool2d,
    "Gemm": torch.nn.Linear,
    "LRN": torch.nn.LocalResponseNorm,
}


@dataclass(frozen=True)
class LayerDifference:
    layer: str  # torch module name and type, e.g. "features.2.1 (ReLU)"
    onnx_output: str
    max_abs_diff: float
    relative: float  # max |diff| / max |torch value|


@dataclass(frozen=True)
class CalibrationCheck:
    """The deployed probabilities' calibration on the test set, per variant, against the torch fp32 model's."""

    temperature: float
    calibrated: bool  # the temperature was fitted at export (False: plain softmax)
    reference: CalibrationFigures  # torch fp32 at the same temperature
    variants: dict[str, CalibrationFigures]
    max_ece_increase_pp: float  # percentage points, like every change and limit

    def worse(self) -> list[str]:
        """The variants whose ECE exceeds the reference's by more than the limit, or is not a number (NaN outputs)."""
        return [n for n, change in self.ece_changes_pp().items() if not change <= self.max_ece_increase_pp + 1e-7]

    def ece_changes_pp(self) -> dict[str, float]:
        """Each variant's ECE minus torch fp32's, in percentage points (NaN where a variant's output is not finite)."""
        return {name: round((f.ece - self.reference.ece) * 100, 10) for name, f in self.variants.items()}

    def format(self) -> str:
        how = "fitted" if self.calibrated else "not fitted, plain softmax"
        lines = [f"  calibration, T = {self.temperature:.4g} ({how}); torch fp32: {self.reference.format()}"]
        changes = self.ece_changes_pp()
        for name, figures in self.variants.items():
            change = changes[name]
            verdict = "ok" if name not in self.worse() else "FAILED"
            lines.append(
                f"    {name}: {figures.format()}; ECE {change:+.2f} pp (limit +{self.max_ece_increase_pp:.2f}) "
                f"-> {verdict}"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "temperature": self.temperature,
            "calibrated": self.calibrated,
            "max_ece_increase_pp": self.max_ece_increase_pp,
            "reference": self.reference.to_dict(),
            "variants": {
                name: {**figures.to_dict(), "ece_change_pp": self.ece_changes_pp()[name]}
                for name, figures in self.variants.items()
            },
            "worse_than_limit": self.worse(),
        }


@dataclass(frozen=True)
class FamiliarityCheck:
    """Each deployment's familiarity scores and flags against the torch model's, which carries the arrays export
    fitted (``familiarity_fit.npz`` beside the model); ``missing`` says why there was nothing to compare with."""

    threshold: float
    variants: dict[str, dict]  # metrics.flag_agreement's figures with the variant's limits (FAMILIARITY_LIMITS)
    missing: str | None = None

    def failures(self, name: str) -> list[str]:
        figures = self.variants[name]
        return flag_failures(figures, figures["min_flag_agreement"], figures.get("atol"))

    def worse(self) -> list[str]:
        return [name for name in self.variants if self.failures(name)]

    def format(self) -> str:
        if self.missing is not None:
            return f"  familiarity (threshold {self.threshold:.4g}): not compared with torch: {self.missing}"
        lines = [f"  familiarity (threshold {self.threshold:.4g}), against torch's:"]
        for name, figures in self.variants.items():
            verdict = "ok" if not self.failures(name) else "FAILED: " + "; ".join(self.failures(name))
            atol = "" if figures.get("atol") is None else f" (limit {figures['atol']:g})"
            lines.append(
                f"    {name}: max |diff| {figures['max_abs_diff']:.3g}{atol}, flags agree "
                f"{figures['flag_agreement']:.2%} (floor {figures['min_flag_agreement']:.2%}) -> {verdict}"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "threshold": self.threshold,
            "missing": self.missing,
            "variants": {name: {**f, "failures": self.failures(name)} for name, f in self.variants.items()},
            "worse_than_limit": self.worse(),
        }


@dataclass
class CheckReport:
    model: Path
    provider: str
    results: list[ParityResult]
    labels: list[str]  # class names, for the flips
    calibration: CalibrationCheck
    per_class: PerClassReport | None = None  # the checked model's (the first result's) answers on the test set
    layers: list[LayerDifference] = field(default_factory=list)
    first_bad_layer: LayerDifference | None = None
    familiarity: FamiliarityCheck | None = None  # None for a model without the familiarity output

    def __bool__(self) -> bool:
        familiar = self.familiarity is None or not self.familiarity.worse()
        return all(self.results) and not self.calibration.worse() and familiar and self.first_bad_layer is None

    def raise_if_failed(self) -> None:
        """CheckFailed naming what failed: a variant over its limits, or (with --localize) a layer over tolerance."""
        if self:
            return
        failed = [r.name for r in self.results if not r]
        failed += [f"{name} calibration (ECE)" for name in self.calibration.worse()]
        if self.familiarity is not None:
            failed += [f"{name} familiarity" for name in self.familiarity.worse()]
        where = f"; first layer over tolerance: {self.first_bad_layer.layer}" if self.first_bad_layer else ""
        raise CheckFailed(f"parity check failed for {', '.join(failed) or 'the layers'}{where}")

    def format(self) -> str:
        lines = [f"check {self.model} on onnxruntime {self.provider.upper()}:"]
        lines += [f"  {r.format()}" for r in self.results]
        for result in self.results:
            shown = result.flips[:LISTED_FLIPS]
            if len(result.flips) > len(shown):
                lines.append(
                    f"    {result.name}: the first {len(shown)} of {len(result.flips)} flips (all in check.json):"
                )
            for flip in shown:
                lines.append(
                    f"    {result.name}: test image {flip.index}: {self.labels[flip.reference_label]} -> "
                    f"{self.labels[flip.candidate_label]} (torch margin {flip.reference_margin:.3g})"
                )
        lines.append(self.calibration.format())
        if self.familiarity is not None:
            lines.append(self.familiarity.format())
        if self.per_class is not None:
            confused = ", ".join(f"{t} -> {p} ({n})" for t, p, n in self.per_class.most_confused())
            lines.append(
                f"  per class ({self.results[0].name}): macro F1 {self.per_class.macro_f1:.4f}; most confused: "
                f"{confused or 'none'} (per_class.json, confusion.png)"
            )
        if self.layers:
            lines.append(
                f"  first layer over tolerance: {self.first_bad_layer.layer} (relative diff "
                f"{self.first_bad_layer.relative:.3g})"
                if self.first_bad_layer
                else "  every layer within tolerance"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "model": str(self.model),
            "provider": self.provider,
            "passed": bool(self),
            "results": [r.to_dict() for r in self.results],
            "calibration": self.calibration.to_dict(),
            "familiarity": None if self.familiarity is None else self.familiarity.to_dict(),
            "per_class": None if self.per_class is None else self.per_class.to_dict(),
            "layers": [layer.__dict__ for layer in self.layers],
            "first_bad_layer": None if self.first_bad_layer is None else self.first_bad_layer.__dict__,
        }


def require_same_training(metadata: dict, state: dict, model_path: str | Path, checkpoint: Path) -> None:
    """Refuse a checkpoint other than the one the model was exported from (a run trained again after its export, or
    another run's): its parity would fail for a reason no figure of the report names. The model's ``training``
    record holds the epoch and test accuracy of its checkpoint; a model without it is not compared."""
    record = metadata.get("training", {})
    exported = (record.get("epoch"), record.get("test_accuracy"))
    given = (state.get("epoch"), state.get("test_accuracy"))
    if None in exported or None in given or exported == given:
        return
    raise DataError(
        f"{model_path}: was exported from another checkpoint than {checkpoint} (the model's: epoch {exported[0]}, "
        f"test accuracy {exported[1]:.2%}; this one's: epoch {given[0]}, test accuracy {given[1]:.2%}); export it "
        "again, or pass --checkpoint with the one it came from"
    )


def run_check(
    model_path: str | Path,
    checkpoint: str | Path | None = None,
    config: CheckConfig = CheckConfig(),
    data_dir=None,
    report_dir: str | Path | None = None,
) -> CheckReport:
    """Compare the exported model with the checkpoint's torch model: model.onnx and its fp16/int8 siblings, or a
    variant file alone against that variant's own limits."""
    folder = Path(report_dir) if report_dir else reports_folder(require_model_file(model_path))
    with folder_lock(folder, "vggdeploy check"):  # one check writing these reports at a time
        return _check(Path(model_path), checkpoint, config, data_dir, folder)


def _check(model_path: Path, checkpoint, config: CheckConfig, data_dir, report_dir: Path) -> CheckReport:
    model_path = Path(model_path)
    images = config.images
    settings = ProviderSettings(config.provider, performance_hint=config.performance_hint)
    loaded = open_model(model_path, settings, weights_on_disk=True)
    metadata = loaded.metadata
    variant = metadata["export"].get("variant", "fp32")
    if loaded.takes_raw_images:
        raise UsageError(
            f"{model_path}: the preprocessing variant takes raw images and is checked at export; "
            f"check {sibling(model_path, 'fp32')} instead"
        )
    if config.localize and variant != "fp32":
        raise UsageError(f"{model_path}: --localize follows the fp32 graph; pass {sibling(model_path, 'fp32')}")
    checkpoint = Path(checkpoint or checkpoint_beside(model_path))
    source = CheckpointFile.of(checkpoint, "check")  # read twice: its weights once ONNX Runtime is done
    state = source.load(mmap=True)
    args: ModelArgs = state["model_args"]
    if model_args_from_metadata(metadata) != args:
        raise DataError(f"{model_path}: was exported from another model than the checkpoint ({args.name})")
    require_same_training(metadata, state, model_path, checkpoint)

    spec = PreprocessSpec.from_metadata(metadata["preprocessing"])
    dataset = dataset_of(state, data_dir)
    test_images, labels = dataset.test_images, dataset.test_labels[:images].numpy()
    del dataset, state  # the training images and the mapped weights are not needed before torch's pass

    scored = familiarity_threshold(metadata) is not None
    fit = familiarity_fit(model_path.parent)
    fitted = scored and fit.is_file()
    # ONNX Runtime first, then torch: the sessions (each a copy of the model) and the torch weights are never resident
    # together (a 515 MB model's check peaked at 2.63 GB with both), and the sessions open beside the imports alone
    device = torch_device()
    batch = working_batch(args, device)
    sessions = {variant: loaded.session}
    del loaded
    if variant == "fp32":  # the whole export: the variants found beside it too
        for name in ("fp16", "int8"):
            if sibling(model_path, name).is_file():
                sessions[name] = create_session(sibling(model_path, name), settings, weights_on_disk=True)
    provider = session_provider(sessions[variant])
    engines = {name: session_engine(session, min(batch, ORT_CHUNK)) for name, session in sessions.items()}
    columns = stream_logits(test_images[:images], spec, engines, batch, "onnxruntime on test images")
    del engines, sessions
    return_freed_memory()
    outputs, scores = {}, {}
    for name, output in columns.items():
        outputs[name], scores[name] = split_familiarity(output, scored)

    torch_model, _ = source.rebuild_model()
    reference_model = ScoredModel(torch_model, dict(np.load(fit))) if fitted else torch_model
    reference, torch_familiarity = torch_test_pass(reference_model, test_images[:images], spec, device, batch, fitted)
    if not config.localize:  # --localize runs the torch model again, layer by layer
        release_weights(reference_model)
    familiarity = None
    if scored:
        familiarity = (torch_familiarity, scores) if fitted else f"{fit.name} is not beside the model"
    report = judge(model_path, provider, metadata, config, reference, outputs, labels, familiarity)
    if config.localize:
        inputs = to_input_tensor(test_images[: config.localize_images], spec).numpy()
        report.layers = localize_difference(model_path, torch_model, inputs, settings)
        report.first_bad_layer = next((d for d in report.layers if d.relative > config.localize_rtol), None)
    write_reports(report_dir, report)
    return report


def judge(
    model_path: Path,
    provider: str,
    metadata: dict,
    config: CheckConfig,
    reference: np.ndarray,
    outputs: dict[str, np.ndarray],
    labels: np.ndarray,
    familiarity: tuple[np.ndarray, dict[str, np.ndarray]] | str | None = None,
) -> CheckReport:
    """The verdict from the logits: each variant's (``outputs``, the checked file's first) parity with torch fp32's
    (``reference``) against its own limits, and its calibration at the model's temperature against torch's. For a
    model with the familiarity output, ``familiarity`` is torch's scores and each variant's, or why torch has none."""
    limits = {
        "fp32": {"atol": config.fp32_atol, "min_agreement": config.fp32_min_agreement},
        "fp16": variant_limits(config, "fp16"),
        "int8": variant_limits(config, "int8"),
    }
    results = [compare_logits(name, reference, logits, labels, **limits[name]) for name, logits in outputs.items()]
    scale, bins = temperature(metadata), metadata.get("calibration", {}).get("ece_bins", DEFAULT_BINS)
    calibration = CalibrationCheck(
        scale,
        is_calibrated(metadata),
        CalibrationFigures.measure(reference, labels, scale, bins),
        {name: CalibrationFigures.measure(logits, labels, scale, bins) for name, logits in outputs.items()},
        config.max_ece_increase_pp,
    )
    checked = next(iter(outputs.values()))
    per_class = PerClassReport.of(metadata["labels"], labels, checked.argmax(axis=1))
    report = CheckReport(model_path, provider, results, metadata["labels"], calibration, per_class)
    threshold = familiarity_threshold(metadata)
    if isinstance(familiarity, str):
        report.familiarity = FamiliarityCheck(threshold, {}, familiarity)
    elif familiarity is not None:
        torch_scores, scores = familiarity
        report.familiarity = FamiliarityCheck(
            threshold,
            {
                name: {**flag_agreement(torch_scores, candidate, threshold), **FAMILIARITY_LIMITS[name]}
                for name, candidate in scores.items()
            },
        )
    return report


def localize_difference(
    model_path: Path, torch_model: torch.nn.Module, inputs: np.ndarray, settings: ProviderSettings
) -> list[LayerDifference]:
    """Per-layer differences, in forward order, between the ONNX graph's boundary outputs and torch's."""
    proto = onnx.load(str(model_path))
    boundary = [node for node in proto.graph.node if node.op_type in BOUNDARY_OPS]
    existing = {output.name for output in proto.graph.output}
    for node in boundary:
        if node.output[0] not in existing:
            proto.graph.output.append(onnx.helper.make_tensor_value_info(node.output[0], onnx.TensorProto.FLOAT, None))
    session = create_session(proto.SerializeToString(), settings)
    names = [output.name for output in session.get_outputs()]
    onnx_values = dict(zip(names, session.run(None, {session.get_inputs()[0].name: inputs}), strict=True))

    modules = [(name, m) for name, m in torch_model.named_modules() if isinstance(m, tuple(BOUNDARY_OPS.values()))]
    captured: list[tuple[str, np.ndarray]] = []
    hooks = [
        m.register_forward_hook(
            lambda m, i, out, name=name: captured.append(
                (f"{name} ({type(m).__name__})", out.detach().cpu().numpy().copy())
            )
        )
        for name, m in modules
    ]
    with torch.no_grad():
        torch_model.cpu()(torch.from_numpy(inputs))
    for hook in hooks:
        hook.remove()
    if [BOUNDARY_OPS[n.op_type] for n in boundary] != [type(m) for _, m in modules]:
        raise DataError(f"{model_path}: its layers do not map one-to-one onto the checkpoint's model; cannot localize")
    differences = []
    for node, (layer, expected) in zip(boundary, captured, strict=True):
        worst = float(np.abs(onnx_values[node.output[0]] - expected).max())
        differences.append(
            LayerDifference(layer, node.output[0], worst, worst / max(float(np.abs(expected).max()), 1e-12))
        )
    return differences


def _percent(fraction: float) -> str:
    """A rate as the text reports show it (JSON keeps the fraction): 0.9167 -> "91.67%"."""
    return f"{fraction:.2%}"


def write_reports(folder: Path, report: CheckReport) -> None:
    write_json(folder / "check.json", report.to_dict())
    rows = [
        {
            "variant": r.name,
            "images": r.images,
            "torch accuracy": _percent(r.reference_accuracy),
            "ORT accuracy": _percent(r.candidate_accuracy),
            "change (pp)": r.accuracy_change_pp,
            "top-1 agreement": _percent(r.top1_agreement),
            "max abs diff": r.max_abs_diff,
            "mean abs diff": r.mean_abs_diff,
            "min cosine": r.min_cosine,
            "flips": len(r.flips),
            "verdict": "ok" if r else "FAILED: " + "; ".join(r.failures),
        }
        for r in report.results
    ]
    text = f"# Parity check of {report.model}\n\nONNX Runtime provider: {report.provider}\n\n"
    text += markdown_table(rows, list(rows[0]))
    if report.layers:
        text += "\n## Layers\n\n" + markdown_table(
            [d.__dict__ for d in report.layers], ["layer", "onnx_output", "max_abs_diff", "relative"]
        )
    changes = report.calibration.ece_changes_pp()
    text += "\n## Calibration on the test set\n\n" + markdown_table(
        [
            {
                "model": name,
                "images": figures.images,
                "temperature": figures.temperature,
                "ECE": _percent(figures.ece),
                "ECE change (pp)": changes.get(name),
                "NLL": figures.nll,
                "mean confidence": _percent(figures.mean_confidence),
                "accuracy": _percent(figures.accuracy),
            }
            for name, figures in {"torch fp32": report.calibration.reference, **report.calibration.variants}.items()
        ],
        ["model", "images", "temperature", "ECE", "ECE change (pp)", "NLL", "mean confidence", "accuracy"],
    )
    text += f"\nLimit: a variant's ECE at most +{report.calibration.max_ece_increase_pp:g} pp over torch fp32's.\n"
    if report.familiarity is not None:
        text += f"\n## Familiarity against torch's (threshold {report.familiarity.threshold:.4g})\n\n"
        if report.familiarity.missing is not None:
            text += f"Not compared: {report.familiarity.missing}.\n"
        else:
            text += markdown_table(
                [
                    {
                        "model": name,
                        "images": figures["images"],
                        "max abs diff": figures["max_abs_diff"],
                        "limit": figures.get("atol"),
                        "flags agree": _percent(figures["flag_agreement"]),
                        "floor": _percent(figures["min_flag_agreement"]),
                        "verdict": "ok" if not report.familiarity.failures(name) else "FAILED",
                    }
                    for name, figures in report.familiarity.variants.items()
                ],
                ["model", "images", "max abs diff", "limit", "flags agree", "floor", "verdict"],
            )
    if report.per_class is not None:
        text += f"\n## Per class ({report.results[0].name}, ONNX Runtime)\n\n" + report.per_class.markdown()
        text += f"\n![confusion matrix]({CONFUSION_PNG})\n"
        report.per_class.write(
            folder / PER_CLASS_JSON,
            folder / CONFUSION_PNG,
            f"{report.model.name} on ONNX Runtime: {report.per_class.confusion.sum():,} test images",
        )
    write_text(folder / "check.md", text)
