"""--pretrained: torchvision and raymc weights mapped onto MCResNet and SDResNet, and the errors.

No test downloads anything: TORCH_HOME points at a temporary folder, torch's one download function
fails as it would offline, and the "ImageNet" files are torchvision ResNets with seeded weights.
"""

from __future__ import annotations

import argparse
import json
import urllib.error
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torchvision

from raymc import checkpoint, storage
from raymc.config import TrainConfig, add_config_arguments, build_config
from raymc.errors import DataError
from raymc.models import build_model, model_kwargs
from raymc.pretrained import IMAGENET, PretrainedRecord, imagenet_weights, initialize, locate

NYU10 = ("bathroom", "bedroom", "bookstore", "classroom", "dining_room", "home_office", "kitchen", "living_room")
NYU10 += ("office", "others")
IMAGENET_LIKE = tuple(f"n{i:08d}" for i in range(4))


@pytest.fixture(autouse=True)
def downloads(monkeypatch, tmp_path) -> list[str]:
    """An empty torch hub cache in tmp_path, and torch's download failing as offline (the calls kept)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    calls: list[str] = []

    def offline(url, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("no network in the tests")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return calls


def _resnet_state(name: str, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return torchvision.models.get_model(name).state_dict()


@pytest.fixture(scope="module")
def resnet_files(tmp_path_factory) -> dict[str, Path]:
    """torchvision-format resnet18 and resnet50 state_dicts, as torchvision's files hold them."""
    folder = tmp_path_factory.mktemp("torchvision")
    files = {}
    for seed, name in enumerate(("resnet18", "resnet50")):
        files[name] = folder / f"{name}.pth"
        torch.save(_resnet_state(name, seed), files[name])
    return files


def _load(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)


def _fresh_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_trunk(trunk: dict[str, torch.Tensor], resnet: dict[str, torch.Tensor], *, depth: bool = False) -> None:
    """A trunk holds every tensor of the ResNet but fc; a depth trunk has conv1 averaged to one channel."""
    assert set(trunk) == {k for k in resnet if not k.startswith("fc.")}
    for key, value in trunk.items():
        expected = resnet[key].mean(dim=1, keepdim=True) if depth and key == "conv1.weight" else resnet[key]
        assert torch.equal(value, expected), key


def _sub(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}


def _best_model_payload(model_name: str, classes: tuple[str, ...], *, seed: int, **settings) -> dict:
    """best_model.pt's payload of a raymc model as the loop builds it, through checkpoint.best_model."""
    config = TrainConfig(model=model_name, **settings)
    torch.manual_seed(seed)
    core = build_model(model_name, **model_kwargs(config, len(classes)))
    spec = SimpleNamespace(num_classes=len(classes), classes=classes)
    state = SimpleNamespace(config=config, spec=spec, core=core, epoch=3, pretrained=None)
    return checkpoint.best_model(state, {"val_acc": 0.5}, {})


@pytest.mark.parametrize(("model_name", "resnet"), [("mc_resnet18", "resnet18"), ("mc_resnet50", "resnet50")])
def test_a_torchvision_state_dict_fills_both_mc_trunks_with_depth_conv1_averaged(resnet_files, model_name, resnet):
    torch.manual_seed(1)
    model = build_model(model_name, num_classes=10, fusion="gated")
    before = _fresh_state(model)
    record = initialize(model, str(resnet_files[resnet]), model_name=model_name, classes=NYU10)
    source, after = _load(resnet_files[resnet]), model.state_dict()
    _assert_trunk(_sub(after, "stream1."), source)
    _assert_trunk(_sub(after, "stream2."), source, depth=True)
    assert model.stream2.conv1.weight.shape == (64, 1, 7, 7)
    fresh = [k for k in after if k.startswith(("head.", "fusion."))]
    assert record.new == fresh and all(torch.equal(after[k], before[k]) for k in fresh)
    assert len(record.loaded) == 2 * (len(source) - 2)
    assert record.origin == str(resnet_files[resnet]) and record.source == str(resnet_files[resnet])


def test_imagenet_takes_the_matching_depth_from_the_hub_cache_and_keeps_a_fresh_fc(resnet_files, downloads):
    weights, cached = imagenet_weights("sd_resnet50")
    assert weights == torchvision.models.ResNet50_Weights.DEFAULT
    assert cached == Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    cached.parent.mkdir(parents=True)
    cached.symlink_to(resnet_files["resnet50"])
    torch.manual_seed(1)
    model = build_model("sd_resnet50", num_classes=len(IMAGENET_LIKE))
    fc_before = model.fc.weight.clone()
    record = initialize(model, IMAGENET, model_name="sd_resnet50", classes=IMAGENET_LIKE)
    _assert_trunk({k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}, _load(cached))
    assert torch.equal(model.fc.weight, fc_before) and record.new == ["fc.weight", "fc.bias"]
    assert record.origin == str(cached) and not downloads
    assert record.log_line() == f"pretrained: {len(record.loaded)} tensors from {cached}, 2 new (fc)"


def test_imagenet_with_an_empty_cache_is_one_line_naming_the_file_and_the_cache_folder(downloads):
    model = build_model("mc_resnet18", num_classes=10)
    with pytest.raises(DataError) as caught:
        initialize(model, IMAGENET, model_name="mc_resnet18", classes=NYU10)
    message = str(caught.value)
    weights, cached = imagenet_weights("mc_resnet18")
    assert "\n" not in message and cached.name in message and str(cached.parent) in message
    assert downloads == [weights.url]  # asked torchvision's weights API, which met no network


@pytest.mark.parametrize("form", ["run folder", "best_model.pt", "checkpoint folder"])
def test_a_raymc_sd_resnet50_run_initializes_mc_resnet50(tmp_path, form):
    payload = _best_model_payload("sd_resnet50", IMAGENET_LIKE, seed=2)
    run = tmp_path / "runs" / "sd_resnet50-imagenet"
    run.mkdir(parents=True)
    torch.save(payload, run / checkpoint.BEST_MODEL_FILE)
    trained = payload["state_dict"]
    location = {"run folder": run, "best_model.pt": run / checkpoint.BEST_MODEL_FILE}.get(form)
    if form == "checkpoint folder":  # its epoch's weights (state.pt), not the best so far
        location = run / "checkpoint_epoch_0003"
        location.mkdir()
        trained = {k: v + 1 if v.is_floating_point() else v for k, v in trained.items()}
        progress = {"epoch": 3, "steps_done": 0, "stopped_early": False}
        checkpoint.save(location, state={"model": trained}, best_model=payload, history=[], progress=progress)
    torch.manual_seed(1)
    model = build_model("mc_resnet50", num_classes=10)
    record = initialize(model, str(location), model_name="mc_resnet50", classes=NYU10)
    _assert_trunk(_sub(model.state_dict(), "stream1."), trained)
    _assert_trunk(_sub(model.state_dict(), "stream2."), trained, depth=True)
    assert record.new == ["head.weight", "head.bias"]


def test_the_same_model_on_the_same_classes_loads_the_head_and_fusion_too(tmp_path):
    payload = _best_model_payload("mc_resnet18", NYU10, seed=3, fusion="gated")
    torch.save(payload, tmp_path / checkpoint.BEST_MODEL_FILE)
    source = str(tmp_path / checkpoint.BEST_MODEL_FILE)
    same = build_model("mc_resnet18", num_classes=10, fusion="gated")
    record = initialize(same, source, model_name="mc_resnet18", classes=NYU10)
    assert record.new == [] and len(record.loaded) == len(payload["state_dict"])
    assert all(torch.equal(v, payload["state_dict"][k]) for k, v in same.state_dict().items())
    renamed = build_model("mc_resnet18", num_classes=10, fusion="gated")
    assert initialize(renamed, source, model_name="mc_resnet18", classes=NYU10[::-1]).new[0].startswith("fusion.")
    other_fusion = build_model("mc_resnet18", num_classes=10, fusion="concat")
    assert initialize(other_fusion, source, model_name="mc_resnet18", classes=NYU10).new == ["head.weight", "head.bias"]


def _one_line_error(model_name: str, source: str | Path) -> str:
    with pytest.raises(DataError) as caught:
        initialize(build_model(model_name, num_classes=3), str(source), model_name=model_name, classes="abc")
    assert "\n" not in str(caught.value)
    return str(caught.value)


def test_a_shape_mismatch_names_the_tensor_and_both_shapes(resnet_files):
    message = _one_line_error("sd_resnet50", resnet_files["resnet18"])
    assert "layer1.0.conv1.weight" in message and "(64, 64, 3, 3)" in message and "(64, 64, 1, 1)" in message


def test_tensors_missing_from_or_left_over_in_the_source_are_named(resnet_files, tmp_path):
    resnet18 = _load(resnet_files["resnet18"])
    torch.save({k: v for k, v in resnet18.items() if k != "layer2.0.bn1.weight"}, tmp_path / "missing.pth")
    assert "stream1.layer2.0.bn1.weight" in _one_line_error("mc_resnet18", tmp_path / "missing.pth")
    torch.save({**resnet18, "layer1.2.conv1.weight": resnet18["layer1.1.conv1.weight"]}, tmp_path / "deeper.pth")
    assert "stream1.layer1.2.conv1.weight" in _one_line_error("mc_resnet18", tmp_path / "deeper.pth")


def test_a_source_without_batchnorm_counters_still_loads(resnet_files, tmp_path):
    """Older torchvision files have no num_batches_tracked; the model keeps its own (unused with momentum)."""
    resnet18 = _load(resnet_files["resnet18"])
    torch.save({k: v for k, v in resnet18.items() if "num_batches_tracked" not in k}, tmp_path / "old.pth")
    record = initialize(
        build_model("mc_resnet18", num_classes=3), str(tmp_path / "old.pth"), model_name="mc_resnet18", classes="abc"
    )
    assert record.new == ["head.weight", "head.bias"]


def test_missing_or_unreadable_sources_are_one_line_errors(tmp_path):
    assert "no such file or folder" in _one_line_error("mc_resnet18", tmp_path / "nowhere.pth")
    (tmp_path / "empty").mkdir()
    assert checkpoint.BEST_MODEL_FILE in _one_line_error("mc_resnet18", tmp_path / "empty")
    (tmp_path / "notes.pth").write_text("not weights")
    assert "weights_only" in _one_line_error("mc_resnet18", tmp_path / "notes.pth")
    torch.save({"epochs": torch.tensor(3), "note": "a dict"}, tmp_path / "other.pt")
    assert "neither a torchvision state_dict nor a raymc" in _one_line_error("mc_resnet18", tmp_path / "other.pt")
    with pytest.raises(DataError, match="no such file or folder"):
        locate(str(tmp_path / "nowhere.pth"))


def test_locate_makes_a_local_source_absolute_for_the_workers(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("weights.pth").write_bytes(b"")
    assert locate("weights.pth") == str(tmp_path / "weights.pth")
    assert locate(IMAGENET) == IMAGENET and locate(None) is None


def test_the_setting_and_the_record_reach_flags_fingerprint_and_summary_json():
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    args = parser.parse_args(["--pretrained", "runs/sd", "--head-lr", "0.02"])
    assert (args.pretrained, args.head_lr) == ("runs/sd", 0.02)
    assert build_config({"pretrained": "imagenet"}).fingerprint() != build_config({}).fingerprint()
    record = PretrainedRecord(source="imagenet", origin="/c/r.pth", loaded=["a.w"], new=["head.w", "fusion.l"])
    assert record.log_line() == "pretrained: 1 tensors from /c/r.pth, 2 new (fusion, head)"
    assert json.loads(storage.json_bytes(record.to_dict()))["new"] == ["head.w", "fusion.l"]


def test_the_record_travels_in_best_model_pt_into_the_summary():
    from raymc.driver import _summary  # imports Ray Train (starts nothing)

    record = {"source": "imagenet", "origin": "/c/r.pth", "loaded": ["stream1.conv1.weight"], "new": ["head.weight"]}
    config = TrainConfig(model="mc_resnet18")
    spec = SimpleNamespace(num_classes=3, classes=("a", "b", "c"), num_train=6, num_val=3)
    state = SimpleNamespace(config=config, spec=spec, core=build_model("mc_resnet18", num_classes=3), epoch=1)
    state.pretrained = record
    best = checkpoint.best_model(state, {"val_acc": 0.5}, {})
    assert best["pretrained"] == record
    summary = _summary(config, spec, best, [{"epoch": 1, "epoch_time_s": 1.0}], 2.0, stopped_early=False)
    assert summary["pretrained"] == record
