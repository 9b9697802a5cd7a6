"""Graph metanetworks: networks as jraph graphs of neurons and weights."""
