"""The contract's gate on a model's metadata: each malformed section is one DataError that names the model and the
key, and the readers' answers for a model exported before a key existed (the consumers' tests run the same models)."""

import json
import math

import numpy as np
import onnx
import pytest

from vggdeploy.deploy.contract import (
    FORMAT_VERSION,
    METADATA_KEYS,
    OPTIONAL_METADATA_KEYS,
    decode_metadata,
    encode_metadata,
    familiarity_threshold,
    is_calibrated,
    probabilities,
    proto_metadata,
    temperature,
)
from vggdeploy.errors import DataError


def _props(**sections) -> dict[str, str]:
    """metadata_props of a model with every required key (placeholder sections) and ``sections`` on top."""
    props = {key: json.dumps({}) for key in METADATA_KEYS if key not in OPTIONAL_METADATA_KEYS}
    props["vggdeploy.format"] = json.dumps(FORMAT_VERSION)
    props.update({key.replace("_", "."): json.dumps(value) for key, value in sections.items()})
    return props


def test_a_model_without_the_optional_keys_means_temperature_1_uncalibrated_and_no_familiarity():
    metadata = decode_metadata(_props(), "m.onnx")
    assert temperature(metadata) == 1.0 and is_calibrated(metadata) is False
    assert familiarity_threshold(metadata) is None


def test_the_readers_return_what_the_sections_say():
    metadata = decode_metadata(
        _props(calibration={"temperature": 0.7, "fitted": True}, familiarity={"threshold": -2.5}), "m.onnx"
    )
    assert temperature(metadata) == 0.7 and is_calibrated(metadata) is True
    assert familiarity_threshold(metadata) == -2.5
    unfitted = decode_metadata(_props(calibration={"temperature": 1, "fitted": False}), "m.onnx")
    assert temperature(unfitted) == 1.0 and is_calibrated(unfitted) is False


@pytest.mark.parametrize(
    ("props", "message"),
    [
        ({"labels": "[]"}, "m.onnx: no vggdeploy metadata (was it exported by 'vggdeploy export'?)"),
        ({k: v for k, v in _props().items() if k != "labels"}, "m.onnx: metadata key 'labels' is missing"),
        ({**_props(), "io": "{not json"}, "m.onnx: metadata key 'io' is not valid JSON (Expecting property name"),
        (_props(vggdeploy_format="2"), "m.onnx: vggdeploy format '2', but this vggdeploy reads format '1' only"),
    ],
)
def test_a_model_whose_metadata_is_not_the_contract_is_named_with_the_key(props, message):
    with pytest.raises(DataError) as refused:
        decode_metadata(props, "m.onnx")
    assert str(refused.value).startswith(message)


@pytest.mark.parametrize("value", [0, 0.0, -1.0, "0.7", True, math.inf, math.nan, None])
def test_a_temperature_that_is_not_a_positive_number_is_refused(value):
    """T = 0 divides by zero, a negative T ranks the classes backwards, a string or a boolean is no number."""
    with pytest.raises(DataError) as refused:
        decode_metadata(_props(calibration={"temperature": value}), "m.onnx")
    assert str(refused.value) == f"m.onnx: calibration.temperature must be a positive number, got {value!r}"


@pytest.mark.parametrize(
    ("section", "shown"),
    [
        ({"threshold": "1"}, "'1'"),
        ({"threshold": True}, "True"),
        ({"threshold": math.nan}, "nan"),
        ({}, "None"),
        ([-2.5], "None"),
    ],
)
def test_a_familiarity_threshold_that_is_not_a_finite_number_is_refused(section, shown):
    with pytest.raises(DataError) as refused:
        decode_metadata(_props(familiarity=section), "m.onnx")
    assert str(refused.value) == f"m.onnx: familiarity.threshold must be a number, got {shown}"


def test_export_writes_only_documented_keys_as_sorted_strict_json():
    assert encode_metadata({"labels": ["a", "b"], "model": {"b": 1, "a": 2}}) == {
        "labels": '["a", "b"]',
        "model": '{"a": 2, "b": 1}',
    }
    with pytest.raises(ValueError, match=r"^undocumented metadata keys: \['extra', 'more'\]$"):
        encode_metadata({"labels": [], "more": 1, "extra": 2})


def test_an_in_memory_model_is_read_and_named_like_a_file():
    proto = onnx.ModelProto()
    onnx.helper.set_model_props(proto, _props(calibration={"temperature": 0.5}))
    assert temperature(proto_metadata(proto, "staged.onnx")) == 0.5
    del proto.metadata_props[:]
    with pytest.raises(DataError, match=r"^staged\.onnx: no vggdeploy metadata"):
        proto_metadata(proto, "staged.onnx")


def test_probabilities_are_softmax_of_logits_over_t_for_any_logits():
    """Each row shifted by its own peak: a confident row and a flat one side by side stay finite."""
    chances = probabilities(np.array([[2000.0, 1999.0], [0.0, 0.0], [2.0, 0.0]]), temperature=2.0)
    half = 1 / (1 + math.exp(-0.5))
    np.testing.assert_allclose(chances, [[half, 1 - half], [0.5, 0.5], [1 / (1 + math.exp(-1)), 1 / (1 + math.e)]])
