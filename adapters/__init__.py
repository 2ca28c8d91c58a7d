"""What an adapter is and how it runs: the catalogue of adapter specs and weights, and the runtime
that serves one base model with several LoRA adapters (used by training, the CLI and the app)."""

from .openmp import set_spin_count

set_spin_count()  # before anything loads PyTorch (adapters/openmp.py says why)

from .base_models import DEFAULT_BASE, LoadOptions
from .catalog import CATALOG_DIR, UnknownAdapterError, load_catalog
from .fields import Extraction
from .runtime import (AdapterNotTrainedError, Classification, Generation, InputError, Runtime)
from .spec import AdapterSpec, SpecError, load_spec

__all__ = [
    "AdapterNotTrainedError", "AdapterSpec", "CATALOG_DIR", "Classification", "DEFAULT_BASE",
    "Extraction", "Generation", "InputError", "LoadOptions", "Runtime", "SpecError",
    "UnknownAdapterError", "load_catalog", "load_spec",
]
