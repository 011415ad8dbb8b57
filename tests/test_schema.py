"""peftlab.schema: one field description read by the CLI, the web forms and adapter_config.json."""

from __future__ import annotations

import dataclasses
import json

import pytest

import peftlab
from peftlab import schema
from peftlab.errors import ConfigError
from peftlab.method import MethodConfig
from peftlab.schema import FieldSpec, fields_of, from_values, option, parse_values
from peftlab.train import TrainArgs


@dataclasses.dataclass
class Example:  # annotations are strings here (from __future__ import annotations): fields_of resolves them
    count: int = option(3, "how many")
    rate: float | None = option(None, "a rate (default: automatic)")
    names: list[str] = option(["a", "b"], "some names")
    mode: str = option("fast", "a mode", choices=["fast", "slow"])
    flag: bool = option(False, "a switch")
    extra: dict = option({}, "free-form")
    base_model: str | None = option(None, "a model", flag="base")

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ConfigError("count must be at least 1")


def test_fields_of_reads_types_from_string_annotations():
    assert isinstance(dataclasses.fields(Example)[0].type, str)  # what made parsing type names break
    specs = {s.name: s for s in fields_of(Example)}
    assert [(s.kind, s.optional) for s in specs.values()] == [
        ("int", False),
        ("float", True),
        ("list", False),
        ("choice", False),
        ("bool", False),
        ("dict", False),
        ("str", True),
    ]
    assert specs["count"].default == 3 and specs["count"].help == "how many"
    assert specs["names"].default == ["a", "b"] and specs["mode"].choices == ["fast", "slow"]
    assert Example().names is not Example().names  # a list default is a fresh copy per instance


def test_flag_names_and_hidden_aliases():
    specs = {s.name: s for s in fields_of(Example)}
    assert specs["count"].option_string == "--count" and specs["count"].aliases == []
    assert specs["base_model"].option_string == "--base" and specs["base_model"].aliases == ["--base-model"]
    train = {s.name: s for s in fields_of(TrainArgs)}
    assert train["base_model"].option_string == "--base" and train["output_dir"].option_string == "--output"


def test_parse_and_build_from_text():
    values = parse_values(Example, {"count": "4", "rate": "0.5", "names": "x, y", "flag": "yes", "extra": '{"k": 1}'})
    assert values == {"count": 4, "rate": 0.5, "names": ["x", "y"], "flag": True, "extra": {"k": 1}}
    assert parse_values(Example, {"rate": "none", "count": 5}) == {"rate": None, "count": 5}  # typed values pass
    built = from_values(Example, {"count": "2", "base_model": ""})
    assert built.count == 2 and built.base_model is None and built.mode == "fast"
    with pytest.raises(ConfigError, match="count: cannot read 'many' as int"):
        from_values(Example, {"count": "many"})
    with pytest.raises(ConfigError, match="count must be at least 1"):  # __post_init__ is the validator
        from_values(Example, {"count": "0"})
    with pytest.raises(ConfigError, match=r"no field\(s\) \['size'\]"):
        parse_values(Example, {"size": "1"})


def test_trainargs_and_method_configs_share_the_reader():
    specs = {s.name: s for s in fields_of(TrainArgs)}
    assert (specs["threads"].kind, specs["threads"].optional) == ("int", True)  # `--threads 2` is an int
    assert (specs["learning_rate"].kind, specs["learning_rate"].optional) == ("float", True)
    assert specs["lr_scheduler"].kind == "choice" and specs["lr_scheduler"].choices == ["cosine", "linear", "constant"]
    assert specs["resume"].kind == "bool" and specs["method_config"].kind == "dict"
    assert all(s.help for s in specs.values())
    assert TrainArgs.from_strings({"threads": "2"}).threads == 2
    with pytest.raises(ConfigError, match="dtype must be one of"):  # every choice field is checked, once
        TrainArgs(dtype="fp8")
    for m in peftlab.methods():
        assert m.config_class.fields() == fields_of(m.config_class), m.name
    assert peftlab.option is option and schema.FieldSpec is FieldSpec
    from peftlab import method

    assert method.option is option and method.FieldSpec is FieldSpec and issubclass(m.config_class, MethodConfig)


def test_adapter_config_keys_are_the_schema_fields():
    """adapter_config.json's method keys, ``methods --json`` and the CLI flags all come from fields_of."""
    for m in peftlab.methods():
        config = m.config_class()
        names = [s.name for s in fields_of(m.config_class)]
        data = json.loads(json.dumps(config.to_dict()))  # a method may add keys peft expects
        assert list(data)[: len(names)] == names, m.name
        assert m.config_class.from_dict(data).to_dict() == data, m.name  # what it writes, it reads back
        assert [f["name"] for f in m.to_json()["fields"]] == names
