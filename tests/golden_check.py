"""The golden-vector check of a consumer's answer, the Python twin of examples/js-common/golden.js."""

from __future__ import annotations

import numpy as np

from vggdeploy.deploy.contract import probabilities


def golden_problems(answer: dict, entry: dict, golden: dict) -> list[str]:
    """Every way ``answer`` ({top, logits, calibrated, temperature, familiarity, unfamiliar}) breaks golden.json's
    ``entry``; [] when it holds.

    ``logits`` may be None (the preprocessing variant outputs probabilities only): then only the golden
    probabilities are compared.
    """
    problems = []
    tolerance = golden["tolerance"]
    if answer["top"][0]["index"] != entry["predicted"]:
        problems.append(f"top-1 {answer['top'][0]['index']}, golden {entry['predicted']}")
    if answer["temperature"] != golden["temperature"] or answer["calibrated"] != golden["calibrated"]:
        problems.append(
            f"temperature/calibrated {answer['temperature']}/{answer['calibrated']}, golden "
            f"{golden['temperature']}/{golden['calibrated']}"
        )
    expected = None
    if answer["logits"] is not None:
        gap = float(np.abs(np.subtract(answer["logits"], entry["logits"])).max())
        if not gap <= tolerance["logits_atol"]:
            problems.append(f"logits differ by {gap} > {tolerance['logits_atol']}")
        expected = probabilities(np.array([answer["logits"]], dtype=np.float64), golden["temperature"])[0]
    if "familiarity" in entry:  # a model with the familiarity output: the score within its tolerance, the same flag
        gap = abs(answer["familiarity"] - entry["familiarity"])
        if not gap <= tolerance["familiarity_atol"]:
            problems.append(f"familiarity differs by {gap} > {tolerance['familiarity_atol']}")
        if answer["unfamiliar"] != entry["unfamiliar"]:
            problems.append(f"unfamiliar {answer['unfamiliar']}, golden {entry['unfamiliar']}")
    for ranked in answer["top"]:
        index, probability = ranked["index"], ranked["probability"]
        if expected is not None and not abs(probability - expected[index]) <= 1e-6:
            problems.append(f"p[{index}] {probability} != softmax(logits / T) {expected[index]}")
        if not abs(probability - entry["probabilities"][index]) <= tolerance["probabilities_atol"]:
            problems.append(f"p[{index}] {probability} is not the golden {entry['probabilities'][index]}")
    return problems
