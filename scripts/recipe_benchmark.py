"""How the default recipe (vggdeploy/recipe.py) does on image folders of every size, against a sweep.

Makes labelled image sets locally (nothing is downloaded): colour Fashion-MNIST subsets (scripts/make_image_folder.py),
synthetic shapes, an imbalanced set and a set with many classes. On each it trains the default command
(`vggdeploy train --data SET --device cpu`), exports the model (the calibration figures), and, unless --no-sweep, a
small sweep of batch size, learning rate and epochs, each run with all three given. Prints a markdown table and
writes OUT/recipe_benchmark.json.

    python scripts/recipe_benchmark.py OUT [--sets fmnist-100,shapes-1200] [--no-sweep] [--sweep-on SET,...]
        [--light] [--keep-sweep]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from vggdeploy.data.fashion_mnist import load_split
from vggdeploy.errors import UsageError, run_script
from vggdeploy.train.recipe import MIN_STEPS, MOST_EPOCHS

_spec = importlib.util.spec_from_file_location("make_image_folder", Path(__file__).with_name("make_image_folder.py"))
make_image_folder = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_image_folder)

SHAPES = ("ellipse", "rectangle", "triangle", "cross", "ring", "diamond")
FILLS = ("solid", "rows", "columns", "checks", "dots")
CANVAS = 48


def _shape_mask(shape: str, rng: np.random.Generator) -> Image.Image:
    """A white shape of random size and place on black, at CANVAS px."""
    mask = Image.new("L", (CANVAS, CANVAS), 0)
    draw = ImageDraw.Draw(mask)
    size = int(rng.integers(CANVAS * 4 // 10, CANVAS * 8 // 10))
    left, top = (int(v) for v in rng.integers(0, CANVAS - size, 2))
    box = (left, top, left + size, top + size)
    third = size // 3
    if shape == "ellipse":
        draw.ellipse(box, fill=255)
    elif shape == "rectangle":
        draw.rectangle(box, fill=255)
    elif shape == "triangle":
        draw.polygon([(left, top + size), (left + size, top + size), (left + size // 2, top)], fill=255)
    elif shape == "cross":
        draw.rectangle((left + third, top, left + 2 * third, top + size), fill=255)
        draw.rectangle((left, top + third, left + size, top + 2 * third), fill=255)
    elif shape == "ring":
        draw.ellipse(box, fill=255)
        draw.ellipse((left + third, top + third, left + size - third, top + size - third), fill=0)
    else:  # diamond
        middle = size // 2
        draw.polygon(
            [(left + middle, top), (left + size, top + middle), (left + middle, top + size), (left, top + middle)],
            fill=255,
        )
    return mask


def _fill_pattern(fill: str, rng: np.random.Generator) -> np.ndarray:
    """1 where the shape's colour shows, 0 where the background shows through."""
    y, x = np.mgrid[0:CANVAS, 0:CANVAS]
    period = int(rng.integers(4, 7))
    phase = int(rng.integers(0, period))
    patterns = {
        "solid": np.ones_like(x),
        "rows": ((y + phase) // (period // 2)) % 2,
        "columns": ((x + phase) // (period // 2)) % 2,
        "checks": (((x + phase) // (period // 2)) + ((y + phase) // (period // 2))) % 2,
        "dots": (((x + phase) % period) < 2) & (((y + phase) % period) < 2),
    }
    return patterns[fill].astype(np.float32)


def shape_image(shape: str, fill: str, rng: np.random.Generator) -> Image.Image:
    foreground, background = rng.integers(0, 256, (2, 3))
    while np.abs(foreground - background).sum() < 120:  # a shape that can be seen
        foreground = rng.integers(0, 256, 3)
    mix = (np.asarray(_shape_mask(shape, rng), np.float32) / 255 * _fill_pattern(fill, rng))[..., None]
    rgb = background * (1 - mix) + foreground * mix
    noisy = rgb + rng.normal(0, 8, rgb.shape)
    return Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8), "RGB")


def write_shapes(out: Path, classes: list[tuple[str, str]], train_per_class: int, test_per_class: int, seed: int):
    rng = np.random.default_rng(seed)
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for shape, fill in classes:
            folder = out / split / (shape if len({f for _, f in classes}) == 1 else f"{shape}_{fill}")
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                shape_image(shape, fill, rng).save(folder / f"{index:05d}.png")


def write_imbalanced(out: Path, counts: list[int], test_per_class: int, seed: int, data_dir=None) -> None:
    """Colour Fashion-MNIST with class i holding counts[i] training images (the test split balanced)."""
    rng = np.random.default_rng(seed)
    train_images, train_labels = (t.numpy() for t in load_split("train", data_dir))
    test_images, test_labels = (t.numpy() for t in load_split("test", data_dir))
    for split, images, labels in (("train", train_images, train_labels), ("test", test_images, test_labels)):
        for label, name in enumerate(make_image_folder.CLASS_NAMES):
            folder = out / split / make_image_folder.folder_name(name)
            folder.mkdir(parents=True, exist_ok=True)
            count = counts[label] if split == "train" else test_per_class
            for index in np.flatnonzero(labels == label)[:count]:
                make_image_folder.colour_image(images[index], rng, int(rng.integers(28, 57))).save(
                    folder / f"{index:05d}.png"
                )


def fmnist(train_per_class: int, test_per_class: int):
    return lambda out, seed: make_image_folder.make_image_folder(out, train_per_class, test_per_class, seed=seed)


SETS = {  # name: (writer, chance accuracy)
    "fmnist-100": (fmnist(10, 50), 0.1),
    "fmnist-300": (fmnist(30, 50), 0.1),
    "shapes-1200": (lambda out, seed: write_shapes(out, [(s, "solid") for s in SHAPES[:4]], 300, 60, seed), 0.25),
    "imbalanced-990": (
        lambda out, seed: write_imbalanced(out, [300, 200, 150, 100, 80, 60, 40, 30, 20, 10], 50, seed),
        0.1,
    ),
    "many-classes-1500": (
        lambda out, seed: write_shapes(out, [(s, f) for s in SHAPES[:6] for f in FILLS], 50, 15, seed),
        1 / 30,
    ),
    "fmnist-5000": (fmnist(500, 100), 0.1),
    "fmnist-50000": (fmnist(5000, 200), 0.1),
}


def make_set(root: Path, name: str, seed: int = 0) -> Path:
    folder = root / "sets" / name
    done = folder / ".complete"
    if not done.is_file():
        if folder.exists():
            subprocess.run(["rm", "-rf", str(folder)], check=True)
        SETS[name][0](folder, seed)
        done.write_text("")
    return folder


def train(folder: Path, out: Path, options: list[str]) -> dict:
    """One `vggdeploy train` run; its --json result with the wall time of the whole command."""
    command = [sys.executable, "-m", "vggdeploy", "train", "--data", str(folder), "--device", "cpu", "--quiet"]
    command += [*options, "--out", str(out), "--overwrite", "--json"]
    started = time.perf_counter()
    finished = subprocess.run(command, capture_output=True, text=True)
    if finished.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: exit {finished.returncode}: {finished.stderr.strip()[-400:]}")
    result = json.loads(finished.stdout)
    result["command_seconds"] = time.perf_counter() - started
    result["plan"] = next((line for line in finished.stderr.splitlines() if "training images: batch" in line), None)
    return result


def calibration(checkpoint: Path, out: Path) -> dict:
    """Export the checkpoint (no variants) and read its calibration section."""
    command = [sys.executable, "-m", "vggdeploy", "export", "--checkpoint", str(checkpoint), "--out", str(out)]
    command += ["--parity-images", "16", "--audit-batches", "1,2", "--no-simplify"]
    finished = subprocess.run(command, capture_output=True, text=True)
    if finished.returncode != 0:
        raise RuntimeError(f"export of {checkpoint}: exit {finished.returncode}: {finished.stderr.strip()[-400:]}")
    report = json.loads((out / "export_report.json").read_text())
    section = report["metadata"]["calibration"] if "metadata" in report else report["calibration"]
    test = section["test_set"]
    return {
        "calibrated": section["fitted"],
        "temperature": section["temperature"],
        "method": section["method"],
        "ece_before": test["before"]["ece"],
        "ece_after": test["after"]["ece"],
    }


def sweep_points(images: int) -> list[tuple[int, float, int]]:
    """(batch, lr, epochs): batches 8/32/128 at 0.25x, 1x and 4x the preset's rate per image, each for about
    MIN_STEPS steps."""
    points = []
    for batch in (8, 32, 128):
        per_epoch = images // batch
        if per_epoch < 4:
            continue
        epochs = min(math.ceil(MIN_STEPS / per_epoch), MOST_EPOCHS)
        points += [(batch, 0.2 * batch / 256 * factor, epochs) for factor in (0.25, 1.0, 4.0)]
    return points


def light_sweep_points(batch: int, lr: float, epochs: int) -> list[tuple[int, float, int]]:
    """Around the default's own plan, for sets where the full grid takes hours on 2 cores: half and twice the rate,
    half the batch at the same rate per image, and twice the epochs."""
    return [(batch, lr / 2, epochs), (batch, lr * 2, epochs), (batch // 2, lr / 2, epochs), (batch, lr, epochs * 2)]


def _plan(line: str) -> tuple[int, float, int]:
    """(batch, lr, epochs) of a plan line: "... training images: batch 32, 46 epochs, 1,518 steps, lr 0.025 (...)"."""
    fields = line.split("images: ")[1].split(" (")[0].split(", ")
    return int(fields[0].split()[1]), float(fields[3].split()[1]), int(fields[1].split()[0])


def run_set(root: Path, name: str, sweep: str, earlier: dict | None = None) -> dict:
    """``sweep``: "grid" (sweep_points, then the best one's epochs / 3 and x 3), "light" (light_sweep_points),
    "none", or "keep": the ``earlier`` row's sweep with a new default run (the sweep's runs give all three settings,
    so a change of the rule leaves them as they were)."""
    folder = make_set(root, name)
    runs = root / "runs" / name
    default = train(folder, runs / "default", [])
    row = {
        "set": name,
        "chance": SETS[name][1],
        "training_images": default["held_out"] + int(default["plan"].split()[1].replace(",", "")),
        "plan": default["plan"],
        "default_test_accuracy": default["selected_test_accuracy"],
        "default_final_test_accuracy": default["final_test_accuracy"],
        "default_seconds": default["command_seconds"],
        **calibration(Path(default["best_checkpoint"]), runs / "default" / "onnx"),
        "sweep": [],
        "sweep_kind": sweep,
    }
    if sweep == "keep":
        if not earlier or not earlier.get("sweep"):
            raise UsageError(f"--keep-sweep: no earlier sweep of {name} in {root / 'recipe_benchmark.json'}")
        return {**row, **{key: earlier.get(key, "grid") for key in ("sweep", "sweep_kind", "sweep_best")}}
    if sweep == "light":
        for batch, lr, epochs in light_sweep_points(*_plan(default["plan"])):
            result = train(folder, runs / f"b{batch}-lr{lr:g}-e{epochs}", _options(batch, lr, epochs))
            row["sweep"].append(_sweep_row(batch, lr, epochs, result))
        row["sweep_best"] = max(row["sweep"], key=lambda r: r["test_accuracy"])
    if sweep == "grid":
        images = int(default["plan"].split()[1].replace(",", ""))
        points = sweep_points(images)
        for batch, lr, epochs in points:
            result = train(folder, runs / f"b{batch}-lr{lr:g}-e{epochs}", _options(batch, lr, epochs))
            row["sweep"].append(_sweep_row(batch, lr, epochs, result))
        best = max(row["sweep"], key=lambda r: r["test_accuracy"])
        for epochs in sorted({max(1, best["epochs"] // 3), min(best["epochs"] * 3, MOST_EPOCHS)} - {best["epochs"]}):
            result = train(
                folder,
                runs / f"b{best['batch']}-lr{best['lr']:g}-e{epochs}",
                _options(best["batch"], best["lr"], epochs),
            )
            row["sweep"].append(_sweep_row(best["batch"], best["lr"], epochs, result))
        row["sweep_best"] = max(row["sweep"], key=lambda r: r["test_accuracy"])
    return row


def _options(batch: int, lr: float, epochs: int) -> list[str]:
    return ["--batch-size", str(batch), "--lr", f"{lr:g}", "--epochs", str(epochs)]


def _sweep_row(batch: int, lr: float, epochs: int, result: dict) -> dict:
    return {
        "batch": batch,
        "lr": lr,
        "epochs": epochs,
        "test_accuracy": result["selected_test_accuracy"],
        "final_test_accuracy": result["final_test_accuracy"],
        "seconds": result["command_seconds"],
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| set | training images | chance | default plan | default: test acc. (best.pt) | time | sweep best "
        "(batch, lr, epochs) | gap (pp) | test ECE before -> after |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        best = row.get("sweep_best")
        sweep = (
            f"{best['test_accuracy']:.2%} ({best['batch']}, {best['lr']:.3g}, {best['epochs']}), "
            f"{row.get('sweep_kind', 'grid')}: {len(row['sweep'])} runs"
            if best
            else "not swept"
        )
        gap = f"{(best['test_accuracy'] - row['default_test_accuracy']) * 100:+.2f}" if best else "–"
        after = f"{row['ece_after']:.2%}" if row["calibrated"] else "uncalibrated"
        plan = row["plan"].split("images: ")[1].split(" (")[0]
        lines.append(
            f"| {row['set']} | {row['training_images']:,} | {row['chance']:.1%} | {plan} | "
            f"{row['default_test_accuracy']:.2%} | {row['default_seconds']:.0f} s | {sweep} | {gap} | "
            f"{row['ece_before']:.2%} -> {after} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--sets", default=",".join(SETS), help=f"comma-separated, of: {', '.join(SETS)}")
    parser.add_argument("--no-sweep", action="store_true", help="the default command only")
    parser.add_argument("--sweep-on", default=None, help="sweep these sets only [default: all but fmnist-50000]")
    parser.add_argument("--light", action="store_true", help="the light sweep (4 runs around the default's plan)")
    parser.add_argument(
        "--keep-sweep", action="store_true", help="run the default command again, keep the earlier sweep's runs"
    )
    args = parser.parse_args(argv)
    names = [name for name in args.sets.split(",") if name]
    unknown = sorted(set(names) - set(SETS))
    if unknown:
        raise UsageError(f"unknown set {unknown[0]!r}; valid: {', '.join(SETS)}")
    swept = set(args.sweep_on.split(",")) if args.sweep_on else set(SETS) - {"fmnist-50000"}
    results = args.out / "recipe_benchmark.json"
    earlier = json.loads(results.read_text()) if results.is_file() else []
    rows = [row for row in earlier if row["set"] not in names]  # a later call adds its sets to the table
    for name in names:
        sweep = "none" if args.no_sweep or name not in swept else "light" if args.light else "grid"
        sweep = "keep" if args.keep_sweep else sweep
        rows.append(run_set(args.out, name, sweep, next((row for row in earlier if row["set"] == name), None)))
        results.write_text(json.dumps(rows, indent=2) + "\n")
        print(table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    rows.sort(key=lambda row: list(SETS).index(row["set"]))
    print(table(rows))
    return 0


if __name__ == "__main__":
    run_script(main)
