"""The Python API without a Ray cluster: settings, loading checkpoints, scoring batches, errors, CLIs.

Ray Data batch inference end to end is in tests/integration/test_api_run.py.
"""

from __future__ import annotations

import importlib
import json

import numpy as np
import pytest
import torch

import raymc
from raymc import api
from raymc.config import TrainConfig
from raymc.data.pipeline import data_spec
from raymc.errors import ConfigError, DataError
from raymc.figures import predictions_figure
from raymc.inference import CountBatches, PredictBatches, check_fits, count_totals, metrics_from_counts, split_name
from raymc.trained import CheckpointError
from tests.helpers import CLASSES, model_payload, raymc_stderr

NYU_INFO = {
    "dataset": "nyu",
    "classes": CLASSES,
    "counts": {"train": {c: 4 for c in CLASSES}, "test": {c: 2 for c in CLASSES}},
    "depth_mean": 2.0,
    "depth_std": 0.5,
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder with best_model.pt, and a Ray checkpoint folder inside it holding another."""
    root = tmp_path_factory.mktemp("run")
    payload = model_payload()
    torch.save(payload, root / "best_model.pt")
    (root / "checkpoint_epoch_0003").mkdir()
    torch.save(payload, root / "checkpoint_epoch_0003" / "best_model.pt")
    return root


@pytest.fixture(scope="module")
def model(run_dir):
    return raymc.load_model(run_dir)


@pytest.fixture
def nyu_folder(tmp_path):
    """A prepared folder as far as resolving it goes: only dataset_info.json."""
    (tmp_path / "dataset_info.json").write_text(json.dumps(NYU_INFO))
    return tmp_path


def _batch(n: int = 6, size: int = 32) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "rgb": rng.integers(0, 256, (n, 3, size, size), dtype=np.uint8),
        "depth": rng.uniform(0.5, 4.0, (n, 1, size, size)).astype(np.float32),
        "label": np.arange(n) % len(CLASSES),
        "index": np.arange(100, 100 + n),
    }


# ---------------------------------------------------------------- settings


def test_train_config_takes_a_dataclass_as_is_and_applies_overrides():
    given = TrainConfig(epochs=3, image_size=48)
    config = api.train_config(given, batch=8)
    assert config == TrainConfig(epochs=3, image_size=48, batch=8)


def test_train_config_reads_dicts_with_either_spelling_and_yaml_files(tmp_path):
    assert api.train_config({"label-smoothing": 0.2}).label_smoothing == 0.2
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("epochs: 5\nlr: 0.01\n")
    config = api.train_config(yaml_file, lr=0.02)
    assert (config.epochs, config.lr) == (5, 0.02)  # keywords win over the file, as flags do


def test_unknown_settings_are_refused_with_the_closest_name():
    with pytest.raises(ConfigError, match="'epoch'.*did you mean 'epochs'"):
        api.train_config(epoch=3)
    with pytest.raises(ConfigError, match="TrainConfig, a dict or a YAML path"):
        api.train_config(3)


# ---------------------------------------------------------------- loading


@pytest.mark.parametrize("where", ["file", "run folder", "checkpoint folder"])
def test_load_model_from_file_run_folder_or_checkpoint_folder(run_dir, where):
    path = {
        "file": run_dir / "best_model.pt",
        "run folder": run_dir,
        "checkpoint folder": run_dir / "checkpoint_epoch_0003",
    }[where]
    model = raymc.load_model(path)
    assert not model.training
    assert model.classes == CLASSES and model.input_streams == ("rgb", "depth")
    assert model.raymc_info.name == "mc_resnet18" and model.raymc_info.epoch == 3
    assert model.raymc_info.config.image_size == 32
    expected = torch.load(run_dir / "best_model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(expected[k], v) for k, v in model.state_dict().items())


def test_missing_checkpoint_names_the_path_and_what_to_pass(tmp_path):
    with pytest.raises(CheckpointError, match=f"{tmp_path / 'nope'}.*run folder"):
        raymc.load_model(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="holds no best_model.pt"):
        raymc.load_model(tmp_path)


def test_a_file_that_is_not_a_checkpoint_is_refused(tmp_path):
    (tmp_path / "best_model.pt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable raymc checkpoint"):
        raymc.load_model(tmp_path)
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="no key 'state_dict'"):
        raymc.load_model(tmp_path / "other.pt")
    torch.save({}, tmp_path / "empty.pt")
    with pytest.raises(CheckpointError, match="no best weights"):
        raymc.load_model(tmp_path / "empty.pt")


def test_weights_that_do_not_fit_the_named_model_are_refused(tmp_path, run_dir):
    payload = torch.load(run_dir / "best_model.pt", weights_only=True)
    torch.save({**payload, "model": "mc_resnet34"}, tmp_path / "best_model.pt")
    with pytest.raises(CheckpointError, match=r"best_model.pt: its weights do not fit model mc_resnet34"):
        raymc.load_model(tmp_path)
    torch.save({**payload, "model": "resnet9000"}, tmp_path / "best_model.pt")
    with pytest.raises(CheckpointError, match="cannot rebuild its model.*resnet9000"):
        raymc.load_model(tmp_path)


def test_a_plain_module_is_refused_with_how_to_load_one():
    with pytest.raises(CheckpointError, match="raymc.load_model"):
        raymc.evaluate(torch.nn.Linear(2, 2))


# ---------------------------------------------------------------- data checks (before any Ray work)


def test_missing_data_is_named(model, tmp_path):
    with pytest.raises(DataError, match=f"{tmp_path / 'missing'}: no such file"):
        raymc.evaluate(model, tmp_path / "missing")


def test_an_imagenet_checkpoint_is_refused_for_nyu_data(tmp_path, nyu_folder):
    torch.save(model_payload("sd_resnet50"), tmp_path / "sd.pt")
    with pytest.raises(
        CheckpointError, match=r"sd.pt holds sd_resnet50, which takes rgb input, but .* provides rgb \+ depth"
    ):
        raymc.evaluate(tmp_path / "sd.pt", nyu_folder)


def test_data_with_other_classes_is_refused(model):
    info = model.raymc_info
    spec = data_spec({**NYU_INFO, "classes": ["a", "b"], "counts": {"train": {"a": 1}, "test": {"a": 1}}})
    with pytest.raises(DataError, match="2 classes.*trained on 3.*--protocol nyu10"):
        check_fits(info, spec, "other-data")


def test_test_and_val_both_mean_the_held_out_split():
    nyu = data_spec(NYU_INFO)
    imagenet = data_spec({"dataset": "imagenet", "classes": CLASSES, "counts": {"train": {"a": 1}, "val": {"a": 1}}})
    assert [split_name(s, nyu, "d") for s in (None, "test", "val", "train")] == ["test", "test", "test", "train"]
    assert [split_name(s, imagenet, "d") for s in (None, "test", "val")] == ["val", "val", "val"]
    with pytest.raises(ConfigError, match="'dev'"):
        split_name("dev", nyu, "d")
    empty = data_spec({**NYU_INFO, "counts": {"train": {"a": 1}}})
    with pytest.raises(DataError, match="no rows in its test split"):
        split_name(None, empty, "d")


# ---------------------------------------------------------------- scoring batches (what each actor runs)


def test_counts_of_a_batch_add_up_to_the_metrics(run_dir):
    payload = torch.load(run_dir / "best_model.pt", weights_only=True)
    spec = data_spec(NYU_INFO)
    scorer = CountBatches(payload, spec)
    batch = _batch()
    rows = [scorer({k: v[:4] for k, v in batch.items()}), scorer({k: v[4:] for k, v in batch.items()})]
    totals = count_totals(_FakeDataset(rows), len(CLASSES))
    metrics = metrics_from_counts(totals, spec.classes)
    predicted = PredictBatches(payload, spec)(batch)
    correct = predicted.column("correct").to_numpy()
    assert metrics["num_samples"] == 6 and sum(map(sum, metrics["confusion"])) == 6
    assert metrics["acc"] == pytest.approx(correct.mean())
    assert "acc5" not in metrics  # 3 classes: top-5 says nothing
    assert set(metrics["pathways"]) == {"full", "rgb_only", "depth_only"}
    assert metrics["per_class_acc"]["bedroom"] == pytest.approx(correct[[0, 3]].mean())


class _FakeDataset:
    """Stands in for the Ray Dataset of CountBatches rows."""

    def __init__(self, rows):
        self.rows = rows

    def iter_batches(self, **_):
        return iter(self.rows)


def test_predictions_have_ids_classes_and_probabilities_that_sum_to_one(run_dir):
    payload = torch.load(run_dir / "best_model.pt", weights_only=True)
    table = PredictBatches(payload, data_spec(NYU_INFO), probs=True)(_batch()).to_pandas()
    assert table["index"].tolist() == list(range(100, 106))
    assert table["true_class"].tolist() == [CLASSES[i % 3] for i in range(6)]
    assert all(row.sum() == pytest.approx(1.0, abs=1e-5) for row in table["probs"])
    top = np.stack(table["top5_prob"])
    assert top.shape == (6, 3) and (np.diff(top, axis=1) <= 0).all()
    assert table["pred_class"].tolist() == [CLASSES[p] for p in table["pred"]]
    assert [row[0] for row in table["top5_class"]] == table["pred_class"].tolist()


def test_metrics_from_no_rows_say_why():
    with pytest.raises(DataError, match="no rows were scored"):
        metrics_from_counts({}, tuple(CLASSES))


# ---------------------------------------------------------------- figure and CLIs


def test_predictions_grid_marks_mistakes_in_red():
    batch = _batch(5)
    fig = predictions_figure(batch["rgb"], batch["depth"], ["a", "b", "c", "a", "b"], ["a", "c", "c", "a", "a"])
    titled = [ax for ax in fig.axes if ax.get_title()]
    assert len(titled) == 5
    red = [ax.get_title() for ax in titled if ax.title.get_color() == "tab:red"]
    assert red == ["true: b\npred: c", "true: b\npred: a"]
    assert "2 of 5 wrong" in fig.get_suptitle()


@pytest.mark.parametrize("cli", ["evaluate", "predict"])
def test_cli_errors_are_one_line_with_exit_code_2(cli, tmp_path, capsys):
    main = importlib.import_module(f"raymc.{cli}").main
    code = main(
        ["--checkpoint", str(tmp_path / "missing.pt"), "--data", str(tmp_path), "--out", str(tmp_path / "o.parquet")]
    )
    err = raymc_stderr(capsys)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert str(tmp_path / "missing.pt") in err


def test_cli_flags_take_both_spellings():
    from raymc.evaluate import get_args_parser

    args = get_args_parser().parse_args(["--checkpoint", "c", "--batch_size", "8"])
    assert args.batch_size == 8
    assert get_args_parser().parse_args(["--checkpoint", "c", "--batch-size", "4"]).batch_size == 4


def test_importing_a_cli_module_keeps_the_api_name_callable():
    import raymc.evaluate  # noqa: F401  (rebinds the package attributes to the CLI modules)
    import raymc.predict  # noqa: F401

    for name in ("evaluate", "predict"):
        with pytest.raises(CheckpointError, match="raymc.load_model"):
            getattr(raymc, name)(torch.nn.Linear(1, 1))
