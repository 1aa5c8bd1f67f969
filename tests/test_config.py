"""RunConfig: typed, frozen, built from plain values or a flat TOML file, typos rejected."""

from __future__ import annotations

import dataclasses
import json

import pytest

from mmrobust.config import RunConfig

# -- from_dict ---------------------------------------------------------------------

def test_from_dict_fills_defaults_and_keeps_given_values():
    config = RunConfig.from_dict({"dataset": "synthetic", "epochs": 3, "modalities": ["rgb"]})
    assert config == RunConfig(dataset="synthetic", epochs=3, modalities=("rgb",))
    assert config.modalities == ("rgb",) and isinstance(config.modalities, tuple)


def test_unknown_key_is_named_with_a_suggestion():
    with pytest.raises(ValueError) as error:
        RunConfig.from_dict({"epoch": 3})
    message = str(error.value)
    assert "'epoch'" in message
    assert "did you mean 'epochs'" in message


def test_unknown_key_without_close_match_lists_the_known_keys():
    with pytest.raises(ValueError) as error:
        RunConfig.from_dict({"zzzzzz": 1})
    assert "'zzzzzz'" in str(error.value)
    assert "dataset" in str(error.value) and "epochs" in str(error.value)


def test_error_names_its_source():
    with pytest.raises(ValueError, match=r"^my-source: unknown key 'epoch'"):
        RunConfig.from_dict({"epoch": 3}, source="my-source")


@pytest.mark.parametrize(("key", "value"), [
    ("epochs", "3"),          # str for int
    ("epochs", True),         # bool is an int subclass, still not an epoch count
    ("epochs", 2.0),          # float for int
    ("seed", False),
    ("batch_size", "16"),
    ("lr", "0.1"),            # str for float
    ("lr", True),             # bool for float
    ("dataset", 3),           # int for str
    ("split", 1),             # int for str | None
    ("modalities", "rgb"),    # a bare string is not a list
    ("modalities", ["rgb", 1]),
    ("modalities", {"rgb": True}),
    ("defense_params", [1, 2]),
    ("defense_params", "eps=1"),
])
def test_wrong_type_is_rejected_naming_the_key(key, value):
    with pytest.raises(ValueError) as error:
        RunConfig.from_dict({key: value})
    assert key in str(error.value)
    assert repr(value) in str(error.value)


def test_ints_are_accepted_for_floats():
    config = RunConfig.from_dict({"lr": 1, "momentum": 0, "weight_decay": 0})
    assert config.lr == 1.0 and type(config.lr) is float
    assert type(config.momentum) is float and type(config.weight_decay) is float


def test_none_is_accepted_for_optional_fields():
    config = RunConfig.from_dict({"epochs": None, "split": None, "root": None})
    assert config.epochs is None and config.split is None and config.root is None


@pytest.mark.parametrize(("key", "value"), [("epochs", 0), ("batch_size", 0), ("lr", 0), ("lr", -0.1)])
def test_out_of_range_values_are_rejected_naming_the_key(key, value):
    with pytest.raises(ValueError, match=key):
        RunConfig.from_dict({key: value})


# -- round trip, frozen -------------------------------------------------------------

def test_to_dict_from_dict_round_trip():
    config = RunConfig(dataset="ntu60", split="xsub", root="/data/ntu", data_dir="/tmp/cache", data_seed=3,
                       modalities=("skeleton",), defense="none", defense_params={"strength": 0.5, "steps": 3},
                       preset="paper", epochs=7, batch_size=8, lr=0.1, momentum=0.8, weight_decay=1e-4,
                       seed=11, device="cpu")
    values = config.to_dict()
    assert json.loads(json.dumps(values)) == values  # the resolved config is saved as JSON
    assert values["modalities"] == ["skeleton"]
    assert RunConfig.from_dict(json.loads(json.dumps(values))) == config
    assert set(values) == {f.name for f in dataclasses.fields(RunConfig)}


def test_default_round_trip():
    assert RunConfig.from_dict(RunConfig().to_dict()) == RunConfig()


def test_config_is_frozen():
    config = RunConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.epochs = 3  # type: ignore[misc]
    changed = config.replace(epochs=3)
    assert changed.epochs == 3 and config.epochs is None


# -- from_toml ----------------------------------------------------------------------

def test_from_toml_reads_a_flat_file(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('dataset = "synthetic"\nepochs = 4\nlr = 1\nmodalities = ["rgb", "skeleton"]\n'
                    'defense_params = { strength = 2 }\n')
    config = RunConfig.from_toml(path)
    assert config == RunConfig(dataset="synthetic", epochs=4, lr=1.0, modalities=("rgb", "skeleton"),
                               defense_params={"strength": 2})


def test_from_toml_accepts_a_defense_params_table(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('epochs = 2\n\n[defense_params]\nsteps = 3\nname = "x"\n')
    assert RunConfig.from_toml(path).defense_params == {"steps": 3, "name": "x"}


def test_from_toml_rejects_other_tables(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('epochs = 2\n\n[training]\nlr = 0.1\n')
    with pytest.raises(ValueError) as error:
        RunConfig.from_toml(path)
    assert "training" in str(error.value) and str(path) in str(error.value)


def test_from_toml_rejects_unknown_keys_naming_file_and_key(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("epoch = 2\n")
    with pytest.raises(ValueError) as error:
        RunConfig.from_toml(path)
    assert str(path) in str(error.value) and "'epoch'" in str(error.value) and "'epochs'" in str(error.value)


def test_from_toml_rejects_wrong_types_naming_the_key(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('epochs = "two"\n')
    with pytest.raises(ValueError, match="epochs"):
        RunConfig.from_toml(path)


@pytest.mark.parametrize("text", ["epochs = \n", "epochs = 1\nepochs = 2\n", "[unclosed\n"])
def test_from_toml_rejects_invalid_toml_naming_the_file(tmp_path, text):
    path = tmp_path / "broken.toml"
    path.write_text(text)
    with pytest.raises(ValueError) as error:
        RunConfig.from_toml(path)
    assert str(path) in str(error.value)
    assert "TOML" in str(error.value)


def test_from_toml_rejects_a_binary_file_naming_it(tmp_path):
    path = tmp_path / "binary.toml"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ValueError, match="binary.toml"):
        RunConfig.from_toml(path)


def test_from_toml_missing_file_names_it(tmp_path):
    path = tmp_path / "absent.toml"
    with pytest.raises(FileNotFoundError) as error:
        RunConfig.from_toml(path)
    assert str(path) in str(error.value)


def test_the_parameter_builder_checks_tuple_elements_by_their_annotation():
    from dataclasses import dataclass

    from mmrobust.params import build_params

    @dataclass(frozen=True)
    class Params:
        radii: tuple[float, ...] = ()
        names: tuple[str, ...] = ()

    assert build_params(Params, {"radii": [1, 0.5], "names": ["a"]}, owner="x") == Params((1.0, 0.5), ("a",))
    assert isinstance(build_params(Params, {"radii": [1]}, owner="x").radii[0], float)
    with pytest.raises(ValueError, match=r"^x: radii must be a list of float values, got \[1, 'a'\]"):
        build_params(Params, {"radii": [1, "a"]}, owner="x")
    with pytest.raises(ValueError, match=r"^x: names must be a list, got 'a'"):
        build_params(Params, {"names": "a"}, owner="x")
    with pytest.raises(ValueError, match=r"^x: unknown parameter 'radius'; did you mean 'radii'\?"):
        build_params(Params, {"radius": [1]}, owner="x")
