import types

import pytest
import torch

from vggdeploy.errors import UsageError
from vggdeploy.model.archs import VGG_TABLE, ModelArgs, parse_arch
from vggdeploy.model.vgg import build_model, count_parameters, summarize


def _meta_model(**kwargs):
    with torch.device("meta"):
        return build_model(ModelArgs(**kwargs))


@pytest.mark.parametrize(
    ("arch", "expected"),
    [("A", 128_806_154), ("D", 134_300_362), ("B", 128_990_666), ("E", 139_610_058)],
)
def test_parameter_counts_match_known_values(arch, expected):
    # A and D are the figures quoted for 1 input channel and 10 classes; B and E follow torchvision's counts
    # (133,047,848 and 143,667,240) less the same 3->1 channel and 1000->10 class differences.
    assert count_parameters(_meta_model(arch=arch)) == expected


def test_batch_norm_and_width_ratio_change_the_count():
    plain = count_parameters(_meta_model(arch="A"))
    assert count_parameters(_meta_model(arch="A", batch_norm=True)) == plain + 2 * (64 + 128 + 2 * 256 + 4 * 512)
    full, quarter = _meta_model(arch="A"), _meta_model(arch="A", width_ratio=4)
    assert count_parameters(quarter.features) < count_parameters(full.features) / 15  # conv weights scale ~1/16
    assert quarter.classifier[1].in_features == full.classifier[1].in_features // 4


@pytest.mark.parametrize("arch", list(VGG_TABLE))
@pytest.mark.parametrize("size", [32, 96, 224])
@pytest.mark.parametrize("batch_norm", [False, True])
def test_every_config_gives_logits(arch, size, batch_norm):
    model = build_model(ModelArgs(arch=arch, batch_norm=batch_norm, width_ratio=16, hidden=32, image_size=size)).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 1, size, size))
    assert logits.shape == (2, 10)
    assert torch.isfinite(logits).all()


def test_classifier_is_sized_from_the_feature_map():
    for size, side in [(32, 1), (63, 1), (64, 2), (100, 3), (224, 7)]:
        model = _meta_model(width_ratio=8, image_size=size)
        assert model.classifier[1].in_features == 64 * side * side


def test_shape_walk_of_A_at_224_matches_the_seeds():
    summary = summarize(ModelArgs(arch="A"))
    assert [s.shape for s in summary.shapes] == [
        (64, 112, 112),
        (128, 56, 56),
        (256, 28, 28),
        (512, 14, 14),
        (512, 7, 7),
        (25088,),
        (4096,),
        (4096,),
        (10,),
    ]
    assert summary.parameters == 128_806_154
    assert summary.gflops == pytest.approx(15.09, abs=0.01)
    assert summary.largest_activation == 64 * 224 * 224  # the first convolution's output, before its pool
    text = summary.format()
    assert "512x7x7" in text and "128,806,154" in text


def test_c_has_one_by_one_convolutions_and_lrn_has_its_layer():
    convs = [m for m in _meta_model(arch="C").modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.kernel_size[0] for c in convs].count(1) == 3
    assert any(isinstance(m, torch.nn.LocalResponseNorm) for m in _meta_model(arch="A-LRN").modules())


def test_kaiming_initialisation():
    model = build_model(ModelArgs(width_ratio=4, hidden=64, image_size=32))
    conv = model.features[0][0]
    expected_std = (2.0 / (conv.out_channels * 9)) ** 0.5
    assert conv.weight.std().item() == pytest.approx(expected_std, rel=0.2)
    first = model.classifier[1]
    assert first.weight.std().item() == pytest.approx((2.0 / first.in_features) ** 0.5, rel=0.1)
    last = model.classifier[-1]
    assert last.weight.std().item() == pytest.approx((1.0 / last.in_features) ** 0.5, rel=0.2)


@pytest.mark.parametrize(
    ("name", "parsed"),
    [
        ("A", ("A", None)),
        ("a-lrn", ("A-LRN", None)),
        ("vgg11", ("A", False)),
        ("vgg16_bn", ("D", True)),
        ("VGG19_BN", ("E", True)),
        ("vgg16_c", ("C", False)),
    ],
)
def test_friendly_names(name, parsed):
    assert parse_arch(name) == parsed


def test_unknown_arch_lists_the_valid_ones():
    with pytest.raises(UsageError, match="valid: A, A-LRN, B, C, D, E, vgg11"):
        parse_arch("vgg12")
    with pytest.raises(UsageError, match="valid:"):
        ModelArgs(arch="F")


@pytest.mark.parametrize(("field", "value"), [("image_size", 31), ("width_ratio", 3), ("dropout", 1.0), ("hidden", 0)])
def test_bad_model_arguments_are_refused(field, value):
    with pytest.raises(UsageError):
        ModelArgs(**{field: value})


def test_model_args_round_trip():
    args = ModelArgs(arch="B", batch_norm=True, width_ratio=2, image_size=64)
    assert ModelArgs.from_dict(args.to_dict()) == args
    assert args.name == "vgg13_bn-w2-64px"


def test_release_weights_frees_them_and_hands_the_freed_heap_back(monkeypatch):
    """The weights become empty tensors, and glibc's malloc_trim(0) is called; without one, nothing fails."""
    import ctypes

    from vggdeploy.model import vgg

    trims = []
    monkeypatch.setattr(ctypes, "CDLL", lambda name: types.SimpleNamespace(malloc_trim=trims.append))
    model = build_model(ModelArgs(arch="A", width_ratio=8, hidden=32, image_size=32))
    vgg.release_weights(model)
    assert all(t.numel() == 0 for t in (*model.parameters(), *model.buffers())) and trims == [0]
    monkeypatch.setattr(ctypes, "CDLL", lambda name: types.SimpleNamespace())  # a C library without malloc_trim
    vgg.return_freed_memory()
