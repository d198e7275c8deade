"""GPT-2 in PyTorch: the model (`torch_impl.model`) and its conformance contract (`torch_impl.contract`)."""

from torch_impl.model import GPT2, KVCache

__all__ = ["GPT2", "KVCache"]
