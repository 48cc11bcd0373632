"""Tests for sparsenet.config: defaults, YAML + overrides, validation messages, round trip."""

import dataclasses

import pytest

from sparsenet.config import (
    config_from_yaml,
    CheckpointConfig,
    Config,
    DataConfig,
    EvolutionConfig,
    PruningConfig,
    TrainConfig,
    config_from_dict,
    config_to_dict,
    config_to_yaml,
    dump_config,
    load_config,
)
from sparsenet.errors import ConfigError


def write(tmp_path, text, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(overrides=(), path=None):
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_defaults():
    cfg = load_config(None)
    assert cfg == Config()
    assert (cfg.seed, cfg.threads) == (0, 0)
    assert cfg.data == DataConfig(name="fashion_mnist", path=None, test_fraction=0.3,
                                  standardize=True, label_column=-1, samples=2600, features=500,
                                  informative=5, redundant=15, classes=2, max_train=None,
                                  max_test=None)
    assert cfg.model.hidden == (1000, 1000, 1000)
    assert (cfg.model.epsilon, cfg.model.activation, cfg.model.alpha) == (20.0, "all_relu", 0.6)
    assert (cfg.model.init, cfg.model.dropout, cfg.model.output) == ("he_uniform", 0.3, "softmax")
    assert cfg.train == TrainConfig(epochs=500, batch_size=128, lr=0.01, momentum=0.9,
                                    weight_decay=0.0002, weight_decay_mode="coupled", eval_batch_size=2048, progress=True)
    assert cfg.evolution == EvolutionConfig(zeta=0.3, evolve_output=False)
    assert cfg.checkpoint == CheckpointConfig(every=10)
    assert cfg.pruning == PruningConfig(method="none", start_epoch=10, every=5, percentile=10.0,
                                        fraction=0.04, duration=40)


def test_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().train.epochs = 3


def test_yaml_file_and_overrides(tmp_path):
    path = write(tmp_path, """
seed: 7
model:
  hidden: [300, 100]
  activation: relu
train:
  lr: 1e-3          # PyYAML alone would read this as a string
  epochs: 20
data:
  name: synthetic
  path: /tmp/somewhere
""")
    cfg = load_config(path, ["model.hidden=[200,200]", "train.lr=0.1", "data.path=null",
                             "train.momentum=0", "threads=2", "data.max_train=100"])
    assert cfg.seed == 7 and cfg.threads == 2
    assert cfg.model.hidden == (200, 200)
    assert isinstance(cfg.model.hidden, tuple)
    assert cfg.model.activation == "relu"
    assert cfg.train.lr == 0.1 and cfg.train.epochs == 20
    assert cfg.train.momentum == 0.0 and isinstance(cfg.train.momentum, float)
    assert cfg.data.name == "synthetic" and cfg.data.path is None
    assert cfg.data.max_train == 100
    assert load_config(path).train.lr == 0.001


def test_empty_file_and_empty_section(tmp_path):
    assert load_config(write(tmp_path, "")) == Config()
    assert load_config(write(tmp_path, "train:\n", "b.yaml")) == Config()


def test_unknown_keys():
    message = error_of(["train.epoch=10"])
    assert message == ("unknown config key 'train.epoch'; valid keys in 'train': batch_size, "
                       "early_stopping_min_delta, early_stopping_patience, epochs, eval_batch_size, lr, momentum, optimizer, progress, weight_decay, weight_decay_mode")
    message = error_of(["trian.epochs=10"])
    assert message.startswith("unknown config key 'trian'; valid keys at the top level: ")
    assert "checkpoint, data, debug, evolution, memory_limit_gb, model, parallel, pruning, seed, threads, train" in message


def test_unknown_yaml_key_same_message_as_override(tmp_path):
    from_yaml = error_of(path=write(tmp_path, "train:\n  epoch: 10\n"))
    assert from_yaml == error_of(["train.epoch=10"])


@pytest.mark.parametrize("override, expected", [
    ("train.epochs=ten", "config key 'train.epochs' must be an integer, got 'ten' (str)"),
    ("train.epochs=10.0", "config key 'train.epochs' must be an integer, got 10.0 (float)"),
    ("train.epochs=true", "config key 'train.epochs' must be an integer, got True (bool)"),
    ("train.lr=fast", "config key 'train.lr' must be a number, got 'fast' (str)"),
    ("train.progress=1", "config key 'train.progress' must be true or false, got 1 (int)"),
    ("data.path=3", "config key 'data.path' must be a non-empty string or null, got 3 (int)"),
    ("data.max_train=1.5",
     "config key 'data.max_train' must be an integer or null, got 1.5 (float)"),
])
def test_wrong_types(override, expected):
    assert error_of([override]) == expected


@pytest.mark.parametrize("override, expected", [
    ("evolution.zeta=1.3", "config key 'evolution.zeta' must be in [0, 1), got 1.3"),
    ("evolution.zeta=-0.1", "config key 'evolution.zeta' must be in [0, 1), got -0.1"),
    ("train.epochs=0", "config key 'train.epochs' must be >= 1, got 0"),
    ("train.lr=0", "config key 'train.lr' must be > 0, got 0"),
    ("model.dropout=1", "config key 'model.dropout' must be in [0, 1), got 1"),
    ("data.test_fraction=0", "config key 'data.test_fraction' must be in (0, 1), got 0"),
    ("seed=-1", "config key 'seed' must be >= 0, got -1"),
    ("data.samples=9", "config key 'data.samples' must be >= 10, got 9"),
    ("train.lr=.inf", "config key 'train.lr' must be a finite number, got inf"),
])
def test_out_of_range(override, expected):
    assert error_of([override]) == expected


def test_enums():
    assert error_of(["model.activation=tanh"]) == (
        "config key 'model.activation' must be one of relu, leaky_relu, all_relu, got 'tanh'")
    assert error_of(["model.init=zeros"]) == (
        "config key 'model.init' must be one of normal, xavier, he_uniform, he_uniform_sparse, got 'zeros'")
    assert error_of(["model.output=tanh"]) == (
        "config key 'model.output' must be one of softmax, sigmoid, linear, got 'tanh'")
    message = error_of(["data.name=imagenet"])
    assert message == ("config key 'data.name' must be one of fashion_mnist, mnist, cifar10, "
                       "synthetic, synthetic_hdf5, npz, csv, hdf5, got 'imagenet'")


@pytest.mark.parametrize("value, shown", [
    ("[]", "[]"), ("[100, 0]", "[100, 0]"), ("200", "200"), ("[1.5]", "[1.5]"),
    ("[true]", "[True]"), ("[2147483648]", "[2147483648]"),
])
def test_hidden(value, shown):
    assert error_of([f"model.hidden={value}"]) == (
        f"config key 'model.hidden' must be a non-empty list of positive integers below 2**31, got {shown}")


def test_cross_field_rules():
    assert error_of(["data.name=npz"]) == ("config key 'data.path' is required when data.name is "
                                          "'npz', got null; set it to the npz file")
    assert error_of(["data.informative=600"]) == (
        "config key 'data.informative' must be <= data.features (500), got 600")
    assert error_of(["data.features=10", "data.redundant=6"]) == (
        "config key 'data.redundant' must be <= data.features - data.informative (5), got 6")
    assert load_config(None, ["data.name=csv", "data.path=x.csv"]).data.path == "x.csv"


def test_phase1_epochs_come_from_the_count_else_the_fraction_and_never_exceed_the_epochs():
    def phase1(*overrides):
        return load_config(None, ["train.epochs=20", *overrides]).phase1_epochs

    assert phase1() == 18  # phase1_fraction 0.9
    assert phase1("parallel.phase1_fraction=0.25") == 5
    assert phase1("parallel.phase1_epochs=3", "parallel.phase1_fraction=0.25") == 3
    assert phase1("parallel.phase1_epochs=0") == 0
    assert phase1("parallel.phase1_epochs=30") == 20


def test_section_not_a_mapping(tmp_path):
    assert error_of(["train=5"]) == (
        "invalid override 'train=5': 'train' is a config section, not a value; "
        "override its keys one by one, e.g. train.epochs=...")
    message = error_of(path=write(tmp_path, "model: [1, 2]\n"))
    assert message.startswith("config section 'model' must be a mapping")


@pytest.mark.parametrize("override", ["train.lr", "=3", " =3", "train..lr=1", ".lr=1", "train.=1"])
def test_bad_override_form(override):
    message = error_of([override])
    assert message.startswith(f"invalid override {override!r}: expected the form KEY=VALUE")


def test_override_value_not_yaml_and_not_section():
    message = error_of(["model.hidden=[200,"])
    assert message.startswith(
        "invalid override 'model.hidden=[200,': value is not valid YAML (line 1")
    assert error_of(["seed.x=1"]) == "config key 'seed' must be an integer, got {'x': 1} (dict)"


def test_file_errors(tmp_path):
    missing = tmp_path / "nope.yaml"
    assert error_of(path=missing) == f"config file '{missing}' not found"
    bad = write(tmp_path, "train:\n  epochs: 10\n  lr: [1,\n")
    message = error_of(path=bad)
    assert message.startswith(f"cannot parse config file '{bad}': line ")
    bad = write(tmp_path, "train:\n  epochs: 1\n bad: 2\n", "b.yaml")
    assert "line 3" in error_of(path=bad)
    listed = write(tmp_path, "- 1\n- 2\n", "c.yaml")
    assert error_of(path=listed) == (f"config file '{listed}' must hold a mapping of sections at "
                                     f"the top level, got list")
    dup = write(tmp_path, "train:\n  epochs: 1\n  epochs: 2\n", "d.yaml")
    assert error_of(path=dup) == (
        f"cannot parse config file '{dup}': line 3, column 3: duplicate key 'epochs'")
    assert error_of(path=tmp_path).startswith(f"cannot read config file '{tmp_path}'")


def test_round_trip(tmp_path):
    cfg = load_config(None, ["model.hidden=[64, 32]", "data.max_test=5", "train.lr=0.5",
                             "evolution.zeta=0", "data.name=hdf5", "data.path=/d.h5"])
    plain = config_to_dict(cfg)
    assert plain["model"]["hidden"] == [64, 32]
    assert plain["data"]["max_test"] == 5 and plain["data"]["path"] == "/d.h5"
    assert config_from_dict(plain) == cfg
    assert config_from_dict(config_to_dict(Config())) == Config()
    path = tmp_path / "out.yaml"
    dump_config(cfg, path)
    assert path.read_text() == config_to_yaml(cfg)
    assert "hidden: [64, 32]" in config_to_yaml(cfg)
    assert load_config(path) == cfg


def test_config_from_dict_validates():
    assert config_from_dict({"train": {"epochs": 3}}).train.epochs == 3
    with pytest.raises(ConfigError, match="must be a mapping"):
        config_from_dict([1, 2])
    with pytest.raises(ConfigError, match=r"^unknown config key 'model.width'"):
        config_from_dict({"model": {"width": 3}})
    assert config_from_dict({"model": {"hidden": (5,)}}).model.hidden == (5,)


def test_dump_config_bad_path(tmp_path):
    with pytest.raises(ConfigError, match="cannot write config file"):
        dump_config(Config(), tmp_path / "missing" / "x.yaml")


# ---------------------------------------------------------------- hostile configs (issue 15 items 5, 12)

BOMB = 'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n' + "".join(
    f"{key}: &{key} [{', '.join([f'*{prev}'] * 9)}]\n" for prev, key in zip("abcdef", "bcdefg"))


def test_alias_bombs_are_refused_everywhere(tmp_path):
    assert len(BOMB) < 400 and BOMB.count("*") == 54  # 9**7 'lol's once expanded
    refusal = "anchors and aliases (&name, *name) are not allowed in a sparsenet config; write each value out"
    message = error_of(path=write(tmp_path, BOMB))
    assert message.startswith(f"cannot parse config file '{tmp_path / 'cfg.yaml'}': line 1, column 4: ") and refusal in message
    assert refusal in error_of(["model.hidden=[&a 10, *a]"])
    with pytest.raises(ConfigError, match=r"^cannot parse the config stored in c\.h5: line 1, column 4: anchors"):
        config_from_yaml(BOMB, "the config stored in c.h5")
    assert refusal in error_of(["train=<<: *x"])


def test_error_messages_never_show_a_value_whole(tmp_path):
    long = "x" * 100_000
    for overrides, path in [([f"model.activation={long}"], None), ([f"train.lr={long}"], None),
                            ([f"{long}=1"], None), ([f"train.{long}=1"], None), (["model.hidden=[" + "0," * 50_000 + "]"], None),
                            ([f"seed={'9' * 5000}"], None), ([f"model.hidden=[{long}"], None),
                            ([], write(tmp_path, f"train:\n  epochs: {long}\n"))]:
        message = error_of(overrides, path)
        assert len(message) < 450, message[:500]
        assert "..." in message, message
    config_file = write(tmp_path, "seed: 1\n" + "# padding\n" * 200_000)
    assert error_of(path=config_file).startswith(f"cannot parse config file '{config_file}': 1048577 characters or more")


def test_empty_override_and_whole_section_overrides():
    assert error_of(["data.path="]) == "invalid override 'data.path=': no value after '='; write data.path=null to mean null"
    assert error_of(["data.path= "]).startswith("invalid override 'data.path= ': no value after '='")
    assert load_config(None, ["data.path=null"]).data.path is None
    assert error_of(["train=null"]) == ("invalid override 'train=null': 'train' is a config section, not a value; "
                                        "override its keys one by one, e.g. train.epochs=...")
    cfg = load_config(None, ["train.lr=0.5", "train={epochs: 3}"])  # a mapping updates only the keys it names
    assert (cfg.train.lr, cfg.train.epochs) == (0.5, 3)


def test_stored_configs_never_hold_anchors():
    import yaml

    from sparsenet import config as config_module

    shared = [1, 2]
    text = yaml.dump({"a": shared, "b": shared}, Dumper=config_module._Dumper)
    assert "&" not in text and "*" not in text
    assert config_from_yaml(config_to_yaml(Config())) == Config()


def test_config_files_merge_left_to_right(tmp_path):
    base = write(tmp_path, "train:\n  lr: 0.1\n  epochs: 7\nmodel:\n  hidden: [20, 20]\n", "base.yaml")
    over = write(tmp_path, "train:\n  lr: 0.5\nmodel:\n  hidden: [9]\n", "over.yaml")
    cfg = load_config([base, over])
    assert (cfg.train.lr, cfg.train.epochs, cfg.model.hidden) == (0.5, 7, (9,))  # a list replaces, a section merges
    cfg = load_config([over, base], ["train.epochs=3"])
    assert (cfg.train.lr, cfg.train.epochs, cfg.model.hidden) == (0.1, 3, (20, 20))


def test_config_merge_names_the_bad_file(tmp_path):
    base = write(tmp_path, "train:\n  lr: 0.1\n", "base.yaml")
    with pytest.raises(ConfigError, match="config file '.*missing.yaml' not found"):
        load_config([base, tmp_path / "missing.yaml"])
    bad = write(tmp_path, "- 1\n", "list.yaml")
    with pytest.raises(ConfigError, match="list.yaml' must hold a mapping"):
        load_config([base, bad])
