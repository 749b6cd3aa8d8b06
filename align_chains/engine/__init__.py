"""The decoding engine shared by every strategy."""

from align_chains.engine.counters import ComputeCounters
from align_chains.engine.decoder import Batch, Completion, Decoder
from align_chains.engine.sampling import SamplingParams, make_generator, sample_tokens

__all__ = [
    "Batch",
    "Completion",
    "ComputeCounters",
    "Decoder",
    "SamplingParams",
    "make_generator",
    "sample_tokens",
]
