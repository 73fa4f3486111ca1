"""build_model: names, keyword arguments and the errors a config can cause."""

from __future__ import annotations

import pytest

from raymc.errors import ConfigError
from raymc.models import MODEL_NAMES, MCResNet, SDResNet, build_model


def test_model_names():
    assert MODEL_NAMES == (
        "mc_resnet18",
        "mc_resnet34",
        "mc_resnet50",
        "mc_resnet101",
        "mc_resnet152",
        "sd_resnet50",
        "sd_resnet101",
        "sd_resnet152",
    )


def test_builds_two_stream_model_with_settings():
    model = build_model("mc_resnet18", num_classes=10, fusion="gated", dropout=0.2, stream_names=("a", "b"))
    assert isinstance(model, MCResNet)
    assert model.head.out_features == 10
    assert model.stream_names == ("a", "b")


def test_builds_stochastic_depth_model_with_settings():
    model = build_model("sd_resnet50", num_classes=100, pL=0.5, sd_mode="batch")
    assert isinstance(model, SDResNet)
    assert model.fc.out_features == 100
    assert model.survival_probabilities()[-1] == pytest.approx(0.5)


def test_unknown_name_lists_the_valid_names():
    with pytest.raises(ConfigError, match="resnet9") as error:
        build_model("resnet9", num_classes=10)
    assert all(name in str(error.value) for name in MODEL_NAMES)


@pytest.mark.parametrize(
    ("name", "kwargs", "named"),
    [
        ("mc_resnet18", {"num_classes": 10, "pL": 0.5}, "pL"),
        ("sd_resnet50", {"num_classes": 10, "fusion": "concat"}, "fusion"),
        ("sd_resnet50", {"block": None}, "block"),
    ],
)
def test_argument_the_model_does_not_take_is_named(name, kwargs, named):
    with pytest.raises(ConfigError, match=f"does not take {named}"):
        build_model(name, **kwargs)


def test_missing_num_classes_is_named():
    with pytest.raises(ConfigError, match="needs num_classes"):
        build_model("mc_resnet18")


def test_model_errors_reach_the_caller_as_config_errors():
    with pytest.raises(ConfigError, match="fusion"):
        build_model("mc_resnet18", num_classes=10, fusion="late")
    with pytest.raises(ConfigError, match="pL"):
        build_model("sd_resnet50", pL=2.0)
