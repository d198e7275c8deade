"""GPT-2 checkpoints, config and tokenizer: the one definition every backend shares.

The contract between backends is a plain ``dict[str, np.ndarray]`` of parameters in the
layout of `weights.layout` (gradients use the same names). Nothing else is shared.
"""

from weights.checkpoint import CheckpointError, atomic_write, load, read_metadata, save
from weights.config import ConfigError, GPT2Config
from weights.layout import (
    TENSOR_KINDS,
    activation_names,
    block_activations,
    block_shapes,
    infer_config,
    num_params,
    param_names,
    param_shapes,
    tensor_kind,
    validate_params,
)
from weights.synthetic import SYNTHETIC_LABEL, synthetic

__all__ = [
    "CheckpointError",
    "atomic_write",
    "ConfigError",
    "GPT2Config",
    "SYNTHETIC_LABEL",
    "TENSOR_KINDS",
    "activation_names",
    "block_activations",
    "block_shapes",
    "infer_config",
    "load",
    "num_params",
    "param_names",
    "param_shapes",
    "read_metadata",
    "save",
    "synthetic",
    "tensor_kind",
    "validate_params",
]
