"""Graph metanetworks: networks as jraph graphs of neurons and weights.

Submodules: `graph_topology` (the static graph of a target: nodes per neuron, edges per weight),
`graph` (a population <-> `GraphsTuple`, exactly), `batching` (padded mixed batches,
`GraphBank`, sharding), `probes` (probe features), `layers` (masked PNA message passing),
`models` (`GraphMetanet`), `transformer` (the graph transformer, model ``"gmn_t"``),
`probegen` (learned probes, model ``"probes"``), `augment` (canonicalised and augmented
datasets), `baselines` (StatNN, flat vectors), `datasets` (weight datasets from zoos,
run-wise splits), `metrics` (Kendall tau, R²), `training` (best-epoch, resumable training
loop), `predict` (property prediction from weights; `model_kinds`, `gmn_fit` and `mlp_fit`
hold its model names and its fitting loops), `metaprune`
(MetaPruning: a metanet that edits networks so they prune well; it plugs into
`hyper.prune.prune_pipeline`), `cli` (``weightspace metanet``, ``weightspace prune``).
"""

from metanets.batching import GraphBank, batch_graphs, pad_graphs, shard_graphs
from metanets.datasets import WeightDataset, load_zoos, split_by_run
from metanets.graph import graphs_to_population, graphs_to_populations, population_to_graphs
from metanets.graph_topology import GraphTopology, kernel_window, topology
from metanets.metaprune import MetaPruneConfig, MetaPruner, load_metapruner, meta_train
from metanets.metrics import kendall_tau, r2_score
from metanets.models import GraphMetanet
from metanets.predict import Predictor, evaluate, fit, load_predictor, save_predictor
from metanets.probes import probe_features, probe_inputs

__all__ = [
    "GraphBank",
    "GraphMetanet",
    "GraphTopology",
    "MetaPruneConfig",
    "MetaPruner",
    "Predictor",
    "WeightDataset",
    "batch_graphs",
    "evaluate",
    "fit",
    "graphs_to_population",
    "graphs_to_populations",
    "kendall_tau",
    "kernel_window",
    "load_metapruner",
    "load_predictor",
    "load_zoos",
    "meta_train",
    "pad_graphs",
    "population_to_graphs",
    "probe_features",
    "probe_inputs",
    "r2_score",
    "save_predictor",
    "shard_graphs",
    "split_by_run",
    "topology",
]
