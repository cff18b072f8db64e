"""Run configuration: what a recipe file holds, how the command line overrides it, checks.

A recipe is a small TOML (or YAML) file::

    description = "LeNet-300-100 on MNIST, gradual magnitude pruning to 95%"
    model = "lenet300"
    data = "mnist"

    [method]
    name = "gmp"
    target = 0.95
    end_epoch = 15

    [train]
    epochs = 20
    batch_size = 100
    lr = 0.1

or, instead of ``epochs`` and the method's ``begin_epoch``/``end_epoch``, the phases of the
run (:mod:`learnprune.phases`: dense warm-up, mask learning, fine-tuning; ``epochs`` is their
sum)::

    [train]
    phases = {warmup = 2, learn = 12, finetune = 6}

Every field can be overridden from the command line (``--epochs 2``, ``--target 0.9``,
``--set train.weight_decay=5e-4``, ``--set method.end_epoch=10``).
"""

from __future__ import annotations

import copy
import difflib
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from learnprune import validation
from learnprune.errors import ConfigError
from learnprune.phases import TIMING_OPTIONS, Phases

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

OPTIMIZERS = ("sgd", "adam", "adamw")
LR_SCHEDULES = ("cosine", "step", "constant")
AUGMENTATIONS = ("auto", "none", "crop_flip")
DATA_OPTIONS: dict[str, type] = {"root": str, "pad_to_32": bool, "channels": int, "normalize": bool}
"""The keys of ``[data_options]`` (:func:`learnprune.data.load_dataset`'s options) and types."""
_KIND_NAMES = {str: "a path", bool: "true or false", int: "a whole number"}
MAX_SEED = 2**32 - 1
"""The largest seed every generator takes (numpy's ``np.random.seed`` is 32-bit)."""


@dataclass
class TrainConfig:
    """How the engine trains (every field is a recipe key under ``[train]``)."""

    epochs: int = None  # type: ignore[assignment]  # set in __post_init__
    """``None`` (not given): the sum of ``phases`` when given, else 10."""
    batch_size: int = 100
    lr: float = 0.1
    optimizer: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    lr_schedule: str = "cosine"
    milestones: list[float] = field(default_factory=list)
    gamma: float = 0.1
    seed: int = 0
    max_steps: int | None = None
    train_subset: int | None = None
    eval_batch_size: int = 1000
    augment: str = "auto"
    device: str = "auto"
    phases: dict[str, float] | None = None
    """``{"warmup": W, "learn": L, "finetune": F}`` in epochs (:mod:`learnprune.phases`)."""

    def __post_init__(self) -> None:
        if self.epochs is None:
            self.epochs = 10 if self.phases is None else int(Phases.parse(self.phases).epochs)

    @property
    def run_phases(self) -> Phases | None:
        """The phases of the run, checked (``None`` when the recipe gives none)."""
        return None if self.phases is None else Phases.parse(self.phases)

    def validate(self) -> TrainConfig:
        """Check every field; return self. Raises ConfigError on the first bad one."""
        self.epochs = validation.integer("epochs", self.epochs, minimum=1)
        phases = self.run_phases
        if phases is not None:
            phases.check_epochs(self.epochs)
            self.phases = phases.as_dict()
        self.batch_size = validation.integer("batch_size", self.batch_size, minimum=1)
        self.eval_batch_size = validation.integer(
            "eval_batch_size", self.eval_batch_size, minimum=1
        )
        self.lr = validation.positive("lr", self.lr)
        self.optimizer = validation.choice("optimizer", self.optimizer, OPTIMIZERS)
        self.momentum = validation.non_negative("momentum", self.momentum)
        if self.momentum >= 1:
            raise ConfigError(f"momentum must be < 1, got {self.momentum}")
        self.weight_decay = validation.non_negative("weight_decay", self.weight_decay)
        self.lr_schedule = validation.choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        if not isinstance(self.milestones, (list, tuple)):
            raise ConfigError(f"milestones must be a list of epochs, got {self.milestones!r}")
        self.milestones = [validation.positive("milestones", m) for m in self.milestones]
        self.gamma = validation.positive("gamma", self.gamma)
        self.seed = validation.integer("seed", self.seed, maximum=MAX_SEED)
        if self.max_steps is not None:
            self.max_steps = validation.integer("max_steps", self.max_steps, minimum=1)
        if self.train_subset is not None:
            self.train_subset = validation.integer("train_subset", self.train_subset, minimum=1)
        self.augment = validation.choice("augment", self.augment, AUGMENTATIONS)
        if not isinstance(self.nesterov, bool):
            raise ConfigError(f"nesterov must be true or false, got {self.nesterov!r}")
        self.device = validation.device("device", self.device)
        return self


@dataclass
class RunConfig:
    """Everything that defines a run: model, data, method and training."""

    model: str
    data: str
    method: str = "dense"
    method_options: dict[str, Any] = field(default_factory=dict)
    model_options: dict[str, Any] = field(default_factory=dict)
    data_options: dict[str, Any] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    init: str | None = None
    description: str = ""

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary (what ``config.json`` of a run holds)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> RunConfig:
        """Inverse of :meth:`as_dict`, and the reader of recipe dictionaries."""
        raw = dict(raw)
        for table in ("train", "method_options", "model_options", "data_options"):
            if not isinstance(raw.get(table, {}), Mapping):
                raise ConfigError(f"{table} must be a table of keys, got {raw[table]!r}")
        for key in ("model", "data", "init", "description"):
            if raw.get(key) is not None and not isinstance(raw[key], str):
                raise ConfigError(f"{key} must be a string, got {raw[key]!r}")
        method = raw.pop("method", "dense")
        method_options = dict(raw.pop("method_options", {}) or {})
        if not isinstance(method, (str, Mapping)):
            raise ConfigError(f"method must be a name or a table, got {method!r}")
        if isinstance(method, Mapping):
            method_options = {**{k: v for k, v in method.items() if k != "name"}, **method_options}
            method = method.get("name")
            if not method:
                raise ConfigError('the [method] table needs a name, e.g. name = "gmp"')
        train_raw = dict(raw.pop("train", {}) or {})
        known_train = {f.name for f in fields(TrainConfig)}
        unknown = sorted(set(train_raw) - known_train)
        if unknown:
            raise ConfigError(
                f"unknown [train] key {', '.join(unknown)}; known: {', '.join(sorted(known_train))}"
            )
        known = {f.name for f in fields(cls)} - {"method", "method_options", "train"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(
                f"unknown recipe key {', '.join(unknown)}; known: model, data, "
                "method, train, model_options, data_options, init, description"
            )
        for required in ("model", "data"):
            if not raw.get(required):
                raise ConfigError(f"the recipe needs a {required} (e.g. --{required} ...)")
        return cls(
            method=str(method),
            method_options=method_options,
            train=TrainConfig(**train_raw),
            **raw,
        )

    def validate(self) -> RunConfig:
        """Check names and numbers that can be checked without building anything."""
        from learnprune.data import canonical_name
        from learnprune.methods import METHODS
        from learnprune.models import list_models

        self.model = self.model.strip().lower()
        self.data = self.data.strip().lower()
        self.method = self.method.strip().lower()
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.model not in _aliases(list_models()):
            from learnprune.models import build_model

            build_model(self.model)  # raises a ConfigError that lists the models
        self.data = canonical_name(self.data)  # raises a ConfigError listing the data sets
        for key in ("target", "initial"):
            value = self.method_options.get(key)
            if value is not None and not isinstance(value, Mapping):  # budgets are tables
                validation.fraction(key, value)
        for key, value in self.method_options.items():
            if isinstance(value, float):
                validation.real(key, value)
        unknown = sorted(set(self.data_options) - set(DATA_OPTIONS))
        if unknown:
            raise ConfigError(
                f"unknown data_options key {', '.join(unknown)}; known: {', '.join(DATA_OPTIONS)}"
            )
        for key, kind in DATA_OPTIONS.items():
            value = self.data_options.get(key)
            if value is not None and (
                isinstance(value, bool) != (kind is bool) or not isinstance(value, kind)
            ):
                raise ConfigError(f"data_options {key} must be {_KIND_NAMES[kind]}, got {value!r}")
        self.train.validate()
        phases = self.train.run_phases
        if phases is not None:
            phases.refuse_timing(self.method_options)
        return self


def apply_phases(
    raw: Mapping[str, Any], phases: Phases, epochs: int | None = None
) -> dict[str, Any]:
    """A copy of the recipe dictionary run in ``phases``: they replace the recipe's
    ``epochs`` (unless ``epochs`` is given, which must then match) and its method's own
    timing (``begin_epoch``, ``end_epoch``, ``prune_epoch``)."""

    result = copy.deepcopy(dict(raw))
    train = dict(result.get("train") or {})
    train["phases"] = phases.as_dict()
    train.pop("epochs", None)
    if epochs is not None:
        train["epochs"] = epochs
    result["train"] = train
    for table in ("method", "method_options"):
        options = result.get(table)
        if isinstance(options, dict):
            result[table] = {k: v for k, v in options.items() if k not in TIMING_OPTIONS}
    return result


def _aliases(names: Sequence[str]) -> set[str]:
    return {name.lower() for name in names}


RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
"""The recipes shipped inside the package, one ``<name>.toml`` each."""


def shipped_recipes() -> list[str]:
    """The names of the shipped recipes, sorted (``lenet300-scl`` is ``lenet300-scl.toml``)."""
    return sorted(path.stem for path in RECIPES_DIR.glob("*.toml"))


def find_recipe(name_or_path: str | Path) -> Path:
    """The recipe file that ``name_or_path`` names, from any working directory.

    An existing file is taken as it is. Otherwise a bare name (``lenet300-scl``), a file name
    (``lenet300-scl.toml``) or a checkout's path (``recipes/lenet300-scl.toml``) names the
    shipped recipe. Raises :class:`ConfigError` for a missing file or an unknown name (with
    the shipped names closest to it).
    """
    given = Path(name_or_path)
    if given.is_file():
        return given
    if given.parent not in (Path("."), Path("recipes")) or given.suffix not in ("", ".toml"):
        raise ConfigError(f"recipe {name_or_path} does not exist")
    name = given.name.removesuffix(".toml")
    shipped = RECIPES_DIR / f"{name}.toml"
    if shipped.is_file():
        return shipped
    names = shipped_recipes()
    close = [known for known in names if name and name in known]
    close = close or difflib.get_close_matches(name, names, n=4, cutoff=0.5)
    hint = f"did you mean {', '.join(close[:4])}?" if close else "`learnprune list` shows them"
    raise ConfigError(f"no recipe file {name_or_path} and no shipped recipe {name!r}; {hint}")


def read_recipe(path: str | Path) -> dict[str, Any]:
    """The raw dictionary of a TOML or YAML recipe: a file, or a shipped recipe's name
    (see :func:`find_recipe`)."""
    recipe = find_recipe(path)
    try:
        text = recipe.read_bytes().decode("utf-8")
    except OSError as err:
        raise ConfigError(f"recipe {path} cannot be read ({err.strerror or err})") from err
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"recipe {path} is not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset "
            f"{err.start})"
        ) from err
    if recipe.suffix in (".yaml", ".yml"):
        loaded = _load_yaml(text, path)
    else:
        try:
            loaded = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(
                f"recipe {path} is not valid {recipe.suffix or 'TOML'}: {err}"
            ) from err
    if not isinstance(loaded, dict):
        raise ConfigError(f"recipe {path} must hold a table of keys")
    return loaded


def _load_yaml(text: str, path: str | Path) -> Any:
    """``yaml.safe_load``; a syntax error is one line ``FILE:LINE:COLUMN: reason``."""
    try:
        import yaml
    except ImportError as err:
        raise ConfigError("YAML recipes need PyYAML: pip install 'learnprune[yaml]'") from err
    try:
        return yaml.safe_load(text) or {}
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else f"{path}"
        reason = " ".join(str(err.problem or err.context or "syntax error").split())
        raise ConfigError(f"recipe {where}: not valid YAML: {reason}") from err
    except yaml.YAMLError as err:
        reason = " ".join(str(err).split())
        raise ConfigError(f"recipe {path}: not valid YAML: {reason}") from err


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=0.05"`` -> ``(["train", "lr"], 0.05)``; values are TOML literals."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    key, _, value = text.partition("=")
    path = [part for part in key.strip().split(".") if part]
    if not path:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    try:
        parsed = tomllib.loads(f"value = {value.strip()}")["value"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()  # a bare word: a string
    return path, parsed


def apply_overrides(
    raw: dict[str, Any], overrides: Mapping[tuple[str, ...], Any]
) -> dict[str, Any]:
    """A copy of the recipe dictionary with dotted-path overrides applied.

    ``("method", "target")`` writes into the ``[method]`` table (created if the recipe gave
    the method as a plain name).
    """
    result = copy.deepcopy(raw)
    for path, value in overrides.items():
        if value is None:
            continue
        node = result
        for part in path[:-1]:
            child = node.get(part)
            if part == "method" and isinstance(child, str):
                child = {"name": child}
            if child is None:
                child = {}
            if not isinstance(child, dict):
                raise ConfigError(f"cannot set {'.'.join(path)}: {part} is not a table")
            node[part] = child
            node = child
        if path == ("method",) and isinstance(node.get("method"), dict):
            node["method"]["name"] = value
        else:
            node[path[-1]] = value
    return result
