"""Graph metanetworks: networks as jraph graphs of neurons and weights.

Submodules: `graph` (Target + population <-> GraphsTuple, padded mixed batches), `layers`
(masked PNA message passing), `models` (`GraphMetanet`), `baselines` (StatNN, flat
vectors), `predict` (property prediction from weights), `prune` (MetaPruning: a metanet
that edits networks so they prune well; progressive structured pruning with compact
export), `cli` (``weightspace metanet``, ``weightspace prune``).
"""

from metanets.graph import (
    GraphBank,
    GraphTopology,
    batch_graphs,
    graphs_to_population,
    graphs_to_populations,
    population_to_graphs,
    probe_features,
    probe_inputs,
    topology,
)
from metanets.models import GraphMetanet

__all__ = [
    "GraphBank",
    "GraphMetanet",
    "GraphTopology",
    "batch_graphs",
    "graphs_to_population",
    "graphs_to_populations",
    "population_to_graphs",
    "probe_features",
    "probe_inputs",
    "topology",
]
