"""learnprune: learn sparse neural networks in PyTorch.

Quick start::

    import learnprune as lp

    data = lp.load_dataset("mnist")
    model = lp.build_model("lenet300")
    steps = data.steps_per_epoch(100) * 10
    gmp = lp.GMP(model, target=0.95, end_step=int(0.75 * steps))
    lp.train(model, gmp, data, lp.TrainConfig(epochs=10, batch_size=100, lr=0.1))
    print(lp.count(model))        # params, nonzero_params, flops, effective_flops, ...
    gmp.finalize()                # masks baked in, a plain nn.Module again
    lp.export(model, "lenet300-gmp", model_name="lenet300")   # safetensors + model.json
    again = lp.load("lenet300-gmp")                            # rebuilt, no unpickling
"""

__version__ = "0.1.0"

from learnprune.accounting import Counts, count, format_table
from learnprune.compact import CompactResult, compact
from learnprune.config import RunConfig, TrainConfig
from learnprune.data import Dataset, load_dataset
from learnprune.engine import evaluate, train
from learnprune.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    LearnpruneError,
    TrainingDivergedError,
    UnsupportedModelError,
)
from learnprune.export import export as export_model
from learnprune.export import load as load_export
from learnprune.groups import GroupSet, build_groups, custom_group_set
from learnprune.inspection import PrunabilityReport, prunability_report
from learnprune.masking import finalize, read_masks
from learnprune.methods import (
    GMP,
    METHODS,
    SCL,
    Dense,
    DessiLBI,
    DessiLBIMethod,
    DiffPrune,
    HardConcrete,
    Magnitude,
    PruningMethod,
)
from learnprune.models import build_model, list_models
from learnprune.runner import run

# The names users try first. Importing the submodule ``learnprune.export`` (above) set the
# package's ``export`` attribute to that module; it is set once, on the first import, so
# binding the function after every import keeps ``lp.export`` the function, also after a
# later ``import learnprune.export`` (the module stays in ``sys.modules``).
export = export_model
load = load_export

__all__ = [
    "GMP",
    "METHODS",
    "SCL",
    "CheckpointError",
    "CompactResult",
    "ConfigError",
    "Counts",
    "DataError",
    "Dataset",
    "Dense",
    "DessiLBI",
    "DessiLBIMethod",
    "DiffPrune",
    "GroupSet",
    "HardConcrete",
    "LearnpruneError",
    "Magnitude",
    "PrunabilityReport",
    "PruningMethod",
    "RunConfig",
    "TrainConfig",
    "TrainingDivergedError",
    "UnsupportedModelError",
    "__version__",
    "build_groups",
    "build_model",
    "compact",
    "count",
    "custom_group_set",
    "evaluate",
    "export",
    "export_model",
    "finalize",
    "format_table",
    "list_models",
    "load",
    "load_dataset",
    "load_export",
    "prunability_report",
    "read_masks",
    "run",
    "train",
]
