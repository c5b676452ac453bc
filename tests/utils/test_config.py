"""Typed, strict configs: huggingface_hub's @strict checks, raised as ValueError naming the field; mappings with
unknown keys refused by name; flags' scalar forms."""

from dataclasses import dataclass, field
from typing import Literal

import pytest

from modernalbert.utils.config import check_keys, field_kind, from_mapping, typed_config


@typed_config(prefix="train")
@dataclass
class Section:
    steps: int = 3
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.98)
    precision: Literal["auto", "fp32"] = "auto"
    limit: int | None = None
    layer_map: dict[int, int] = field(default_factory=dict)

    def validate_steps(self) -> None:
        if self.steps < 1:
            raise ValueError(f"train.steps={self.steps!r} is invalid: expected an integer >= 1.")


def test_types_and_validators_are_checked_on_construction_and_assignment():
    assert Section(lr=1).lr == 1.0 and isinstance(Section(lr=1).lr, float)  # YAML writes 1 for 1.0
    with pytest.raises(ValueError, match=r"train\.steps=0 is invalid: expected an integer >= 1"):
        Section(steps=0)
    with pytest.raises(ValueError, match=r"train\.steps='a' is invalid"):
        Section(steps="a")
    with pytest.raises(ValueError, match=r"train\.steps=True is invalid"):
        Section(steps=True)
    with pytest.raises(ValueError, match=r"train\.precision='fp16' is invalid"):
        Section(precision="fp16")
    s = Section()
    with pytest.raises(ValueError, match=r"train\.limit='x' is invalid"):
        s.limit = "x"


def test_mappings_refuse_unknown_keys_and_read_yaml_forms():
    s = from_mapping(Section, {"lr": "5e-4", "betas": [0.8, 0.9]}, unknown="Unknown key(s) {keys} in x", prefix="train")
    assert (s.lr, s.betas) == (5e-4, (0.8, 0.9))
    with pytest.raises(ValueError, match=r"Unknown key\(s\) \['stepz'\] in x: allowed are \['betas', 'layer_map'"):
        from_mapping(Section, {"stepz": 1}, unknown="Unknown key(s) {keys} in x", prefix="train")
    with pytest.raises(ValueError, match=r"train\.lr='fast' is invalid: expected a number"):
        from_mapping(Section, {"lr": "fast"}, unknown="{keys}", prefix="train")
    with pytest.raises(ValueError, match=r"corpus: unknown key\(s\) \['x'\]: allowed are \['a'\]"):
        check_keys({"x": 1}, ["a"], "corpus: unknown key(s) {keys}")


def test_field_kinds_give_command_line_forms():
    assert field_kind(Section, "steps") == (int, None) and field_kind(Section, "limit") == (int, None)
    assert field_kind(Section, "precision") == (str, ("auto", "fp32"))
    with pytest.raises(TypeError):
        field_kind(Section, "layer_map")
