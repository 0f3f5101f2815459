"""Load params.yaml into validated, typed objects.

Every stage calls load_params() before it writes a file or opens an MLflow run,
so a bad value stops the pipeline with a message that names its key.
`python -m pipeline.params` checks the file without running anything.
"""

import math
import re
from collections.abc import Hashable
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.errors import ParamsError

# numpy.random.seed accepts seeds in [0, 2**32 - 1]; torch accepts more.
MAX_SEED = 2**32 - 1

# The weights are float32, and torch rejects a learning rate beyond their range.
MAX_LR = 3.4028234663852886e38

# Arm names become DVC stage names (train@NAME), params paths (arms.NAME) and
# file names, so they are restricted to characters that are safe in all three.
ARM_NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")  # use fullmatch: "$" accepts a final newline
# File systems cap a file name at 255 bytes, and an arm's temporary output
# file adds about 20 characters to its name.
MAX_ARM_NAME_LENGTH = 100
ARM_NAME_RULE = (
    f"use ASCII letters, digits, '_' and '-', at most {MAX_ARM_NAME_LENGTH} characters, "
    "not starting with '-' (no dot, slash, space or '@')"
)


class _YamlLoader(yaml.SafeLoader):
    """SafeLoader that also reads YAML 1.2 floats such as 1e-06 as numbers.

    PyYAML follows YAML 1.1, where a float needs a dot, so `1e-06` (the form
    `dvc exp run -S` writes back) would load as a string.
    """


    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        # PyYAML keeps the last of two equal keys without a word, while DVC
        # rejects the file: report it here first, at the second key's line.
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *anchor` may repeat and is resolved by the base class
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):
                continue  # the base class reports an unhashable key
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"found duplicate key {key!r}", key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def parse_yaml(text: str) -> Any:
    """Parse YAML text as load_params() does, reading floats such as 1e-06 as numbers."""
    return yaml.load(text, Loader=_YamlLoader)


class _Section(BaseModel):
    # strict: "3" is not an int and "yes" is not a bool; forbid: a typo is an error.
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class DatasetParams(_Section):
    seed: Seed
    n_samples: Annotated[int, Field(ge=1)]
    n_rare: Annotated[int, Field(ge=0)]
    vocab: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=2)]

    @field_validator("vocab")
    @classmethod
    def _unique_tokens(cls, vocab: list[str]) -> list[str]:
        duplicates = sorted({token for token in vocab if vocab.count(token) > 1})
        if duplicates:
            raise ValueError(f"tokens must be unique, but {duplicates} occur more than once")
        return vocab

    @model_validator(mode="after")
    def _rare_within_samples(self) -> "DatasetParams":
        if self.n_rare > self.n_samples:
            raise ValueError(
                f"n_rare ({self.n_rare}) must not exceed n_samples ({self.n_samples})"
            )
        return self


class ModelParams(_Section):
    init_seed: Seed
    embedding_dim: Annotated[int, Field(ge=1)]


class TrainParams(_Section):
    lr: PositiveFloat
    epochs: Annotated[int, Field(ge=1)]

    @field_validator("lr")
    @classmethod
    def _lr_fits_float32(cls, lr: float) -> float:
        if lr > MAX_LR:
            raise ValueError(f"Input should be at most {MAX_LR:.6g}, the largest float32 value")
        return lr


class ArmParams(_Section):
    max_norm: PositiveFloat | None

    @property
    def clips(self) -> bool:
        return self.max_norm is not None


class TrackingParams(_Section):
    experiment_name: Annotated[str, Field(min_length=1)]
    log_every_n_steps: Annotated[int, Field(ge=1)]


class PlotsParams(_Section):
    dpi: Annotated[int, Field(ge=10, le=1200)]
    mark_rare_steps: bool


class Params(_Section):
    dataset: DatasetParams
    model: ModelParams
    train: TrainParams
    arms: dict[str, ArmParams]
    tracking: TrackingParams
    plots: PlotsParams

    @field_validator("arms")
    @classmethod
    def _safe_arm_names(cls, arms: dict[str, ArmParams]) -> dict[str, ArmParams]:
        if not arms:
            raise ValueError("at least one arm is required, such as `clip: {max_norm: 1.0}`")
        for name in arms:
            if len(name) > MAX_ARM_NAME_LENGTH or not ARM_NAME_PATTERN.fullmatch(name):
                raise ValueError(f"arm name {name!r} is invalid: {ARM_NAME_RULE}")
        return arms

    def arm(self, name: str) -> ArmParams:
        if name not in self.arms:
            raise ParamsError(f"arms.{name}: no such arm in params.yaml; defined arms: {sorted(self.arms)}")
        return self.arms[name]


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate the whole params file; raise ParamsError naming the bad key."""
    path = Path(path)
    raw = _read_yaml_mapping(path)
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        raise ParamsError(_describe(path, error)) from None


def _read_yaml_mapping(path: Path) -> dict[str, Any]:
    try:
        with path.open(encoding="utf-8") as stream:
            raw = yaml.load(stream, Loader=_YamlLoader)
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found; run from the repository root") from None
    except OSError as error:
        raise ParamsError(f"{path}: cannot be read: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise ParamsError(f"{path}: not UTF-8 text: {error.reason}") from None
    except yaml.YAMLError as error:
        # The error's own text carries the file name, line and column.
        raise ParamsError(f"{path}: invalid YAML: {error}") from None

    if raw is None:
        raise ParamsError(f"{path}: file is empty; expected the sections {', '.join(Params.model_fields)}")
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    return raw


def _describe(path: Path, error: ValidationError) -> str:
    lines = [f"{path}: {error.error_count()} invalid value(s)"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        lines.append(f"  {key}: {_explain(item)}")
    return "\n".join(lines)


def _explain(item: dict[str, Any]) -> str:
    kind = item["type"]
    if kind == "extra_forbidden":
        allowed = ", ".join(_allowed_keys(item["loc"][:-1]))
        return f"unknown key; allowed keys here: {allowed}"
    if kind == "missing":
        return "required key is missing"

    message = item["msg"].removeprefix("Value error, ")
    value = item.get("input")
    if isinstance(value, dict):
        return message  # a whole section: the message already names the values
    if isinstance(value, float) and not math.isfinite(value):
        return f"{message} (got {value})"
    return f"{message} (got {value!r})"


def _allowed_keys(loc: tuple) -> list[str]:
    """Return the field names of the section at `loc`, stepping over arm names."""
    section: type[BaseModel] = Params
    for part in loc:
        if section is Params and part == "arms":
            section = ArmParams
            continue
        if section is ArmParams:
            continue  # the arm's own name
        section = section.model_fields[part].annotation
    return list(section.model_fields)


def main(argv: list[str] | None = None) -> None:
    """Check a params file and report every invalid value; exit 2 if there is one.

    `dvc repro` reads the arm names before any stage runs. For a name that is
    empty or contains '@' it stops with an error of its own that does not name
    the key, so `make repro` runs this check first.
    """
    import argparse
    import sys

    parser = argparse.ArgumentParser(description="Check a params file without running any stage.")
    parser.add_argument("params", nargs="?", default="params.yaml", help="params file (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
    except ParamsError as error:
        print(f"ERROR {error}", file=sys.stderr)
        sys.exit(2)
    print(f"{args.params}: valid; arms: {', '.join(params.arms)}")


if __name__ == "__main__":
    main()
