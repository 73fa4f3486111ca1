"""Flags, YAML and defaults fill one TrainConfig; bad values name the flag or key."""

from __future__ import annotations

import pytest

from raymc.config import DEMO_DEFAULTS, TrainConfig, build_config
from raymc.errors import ConfigError
from raymc.train import get_args_parser


def parse(argv: list[str]) -> TrainConfig:
    args = vars(get_args_parser().parse_args(argv))
    return build_config(args, yaml_path=args.pop("config", None))


def test_no_arguments_gives_the_demo_settings():
    config = parse([])
    assert config.data is None
    for key, value in DEMO_DEFAULTS.items():
        assert getattr(config, key) == value


def test_real_data_keeps_the_full_defaults(tmp_path):
    config = parse(["--data", str(tmp_path)])
    assert config.image_size == 224 and config.epochs == 90 and config.batch == 256


def test_dash_and_underscore_spellings_are_the_same_flag():
    assert parse(["--weight-decay", "0.01"]).weight_decay == 0.01
    assert parse(["--weight_decay", "0.01"]).weight_decay == 0.01
    assert parse(["--label_smoothing", "0.2", "--stream1-lr", "0.3"]).label_smoothing == 0.2


def test_boolean_flags():
    assert parse([]).mixed_precision is True
    assert parse(["--no-mixed-precision"]).mixed_precision is False
    assert parse(["--no_mixed_precision"]).mixed_precision is False
    assert parse(["--nesterov"]).nesterov is True


def test_learning_rate_follows_the_linear_scaling_rule():
    config = parse(["--data", "x", "--batch", "512"])
    assert config.base_lr == pytest.approx(0.2)
    assert parse(["--data", "x", "--batch", "512", "--grad-accum-steps", "2"]).base_lr == pytest.approx(0.4)
    assert parse(["--data", "x", "--lr", "0.05"]).base_lr == 0.05


def test_yaml_fills_settings_and_flags_win(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("epochs: 3\nweight-decay: 1e-4\nfusion: gated\n")
    config = parse(["--config", str(path), "--epochs", "5"])
    assert config.epochs == 5 and config.weight_decay == 1e-4 and config.fusion == "gated"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("epochs: 3\nbogus_key: 1\n", "bogus_key"),
        ("epochs: three\n", "epochs"),
        ("- a\n- b\n", "mapping"),
        ("a: [\n", "YAML"),
    ],
)
def test_bad_yaml_names_the_file_and_key(tmp_path, text, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        parse(["--config", str(path)])
    assert needle in str(err.value) and str(path) in str(err.value)


def test_missing_yaml_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        parse(["--config", str(tmp_path / "nope.yaml")])


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--name", "../escape"], "--name"),
        (["--max-failures", "-1"], "--max-failures"),
        (["--epochs", "0"], "--epochs"),
        (["--label-smoothing", "1.5"], "--label-smoothing"),
        (["--lr", "-1"], "--lr"),
        (["--patience", "0"], "--patience"),
        (["--model", "sd_resnet50", "--stream1-lr", "0.1"], "--stream1-lr"),
    ],
)
def test_bad_values_name_the_flag(argv, flag):
    with pytest.raises(ConfigError, match=flag):
        parse(argv)


def test_unknown_flag_and_bad_choice_exit_with_usage_error():
    with pytest.raises(SystemExit) as err:
        parse(["--no-such-flag"])
    assert err.value.code == 2
    with pytest.raises(SystemExit):
        parse(["--fusion", "sum"])


def test_default_run_name_is_stable_and_tracks_settings():
    assert parse([]).run_name() == parse([]).run_name()
    assert parse([]).run_name() != parse(["--lr", "0.01"]).run_name()
    # where a run executes does not change what it is
    assert parse([]).run_name() == parse(["--num-workers", "1"]).run_name()
    assert parse(["--name", "mine"]).run_name() == "mine"


def test_help_documents_every_setting(capsys):
    with pytest.raises(SystemExit):
        get_args_parser().parse_args(["--help"])
    text = capsys.readouterr().out
    for name in TrainConfig.__dataclass_fields__:
        flag = "--" + name.replace("_", "-")
        assert flag in text or f"--no-{name.replace('_', '-')}" in text, flag


SEED_COMMAND = (
    "--dataset imagenet --data_dir /data/imagenet --out ./results --depth 101 --sd 1 --pL 0.5 --epochs 120 "
    "--batch 256 --mixup 0.2 --label_smoothing 0.1 --weight_decay 1e-4 --no_mixed_precision --cache --seed 42"
)


def test_the_seed_scripts_command_line_works():
    config = parse(SEED_COMMAND.split())
    assert (config.data, config.dataset, config.model, config.pL) == ("/data/imagenet", "imagenet", "sd_resnet101", 0.5)
    assert (config.epochs, config.batch, config.mixup, config.label_smoothing) == (120, 256, 0.2, 0.1)
    assert config.cache and not config.mixed_precision and config.seed == 42
    assert config.base_lr == pytest.approx(0.1) and config.warmup_epochs == 5 and config.min_lr == 1e-6
    dashed = parse(SEED_COMMAND.replace("_", "-").replace("--data-dir", "--data-dir").split())
    assert dashed == config


def test_seed_script_depth_without_sd_turns_stochastic_depth_off():
    assert parse(["--data", "x", "--depth", "50"]).pL == 1.0
    assert parse(["--data", "x", "--depth", "50", "--sd", "0", "--pL", "0.5"]).pL == 1.0
    assert parse(["--data", "x", "--depth", "152", "--sd", "1"]).model == "sd_resnet152"


def test_seed_script_flags_that_contradict_ours_are_refused():
    with pytest.raises(ConfigError, match="--depth 50"):
        parse(["--depth", "50", "--model", "sd_resnet101"])
    with pytest.raises(ConfigError, match="--data-dir"):
        parse(["--data_dir", "a", "--data", "b"])
    with pytest.raises(ConfigError, match="--pL"):
        parse(["--pL", "1.5"])


def test_with_the_seed_scripts_flags_out_is_the_run_folder_itself(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = parse(["--data_dir", "/data/imagenet", "--depth", "50", "--sd", "1", "--out", "./results_resnet50_sd"])
    assert (config.out, config.run_name()) == (str(tmp_path), "results_resnet50_sd")
    default = parse(["--data_dir", "/data/imagenet", "--depth", "50"])  # the seed script's default --out
    assert (default.out, default.run_name()) == (str(tmp_path), "results_imagenet")
    remote = parse(["--data_dir", "s3://b/imagenet", "--out", "s3://b/runs/sd50"])
    assert (remote.out, remote.run_name()) == ("s3://b/runs", "sd50")


def test_raymc_spellings_or_a_name_keep_out_as_the_folder_of_runs():
    assert parse(["--data", "/data/imagenet", "--out", "./runs"]).out == "./runs"
    named = parse(["--data_dir", "/data/imagenet", "--out", "./runs", "--name", "mine"])
    assert (named.out, named.run_name()) == ("./runs", "mine")


def test_a_seed_style_out_without_a_folder_name_is_refused():
    with pytest.raises(ConfigError, match="--out s3://bucket: with the seed script's flags"):
        parse(["--data_dir", "s3://bucket/imagenet", "--out", "s3://bucket"])
