"""Latent relevance and what builds on it: the relevance of every layer's residual stream, MLP neurons and
attention heads from the same backward pass as the token relevance (``relevance``), and steering by switching
off or scaling MLP neurons (``steering``)."""

from .relevance import (
    HeadScore,
    LatentRecorder,
    LatentRelevance,
    LayerSites,
    NeuronScore,
    layer_sites,
    transformer_layers,
)
from .steering import (
    Comparison,
    NeuronEdit,
    Outcome,
    Steering,
    SteeringError,
    build_edits,
    compare,
    parse_neuron,
    parse_neuron_value,
    steer,
)

__all__ = [
    "Comparison",
    "HeadScore",
    "LatentRecorder",
    "LatentRelevance",
    "LayerSites",
    "NeuronEdit",
    "NeuronScore",
    "Outcome",
    "Steering",
    "SteeringError",
    "build_edits",
    "compare",
    "layer_sites",
    "parse_neuron",
    "parse_neuron_value",
    "steer",
    "transformer_layers",
]
