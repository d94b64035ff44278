"""Functional networks: group ICA (CanICA with ICASSO stability) of recorded activations, maps
thresholded into key-neuron sets, saved and loaded with the model's identity."""
from funcnet.networks.canica import (CanICA, FastICAResult, ICAConvergenceWarning, NotFittedError, amari_distance,
                                     fastica, fit_many, initial_unmixing, match_maps, subspace_overlap)
from funcnet.networks.functional import (FORMAT, MODES, THRESHOLD_METHODS, Decomposition, FunctionalNetworks,
                                         decompose, ensure_store, iou, iou_matrix, make_groups)

__all__ = ["CanICA", "FastICAResult", "ICAConvergenceWarning", "NotFittedError", "amari_distance", "fastica",
           "fit_many", "initial_unmixing", "match_maps", "subspace_overlap", "FORMAT", "MODES", "THRESHOLD_METHODS",
           "Decomposition", "FunctionalNetworks", "decompose", "ensure_store", "iou", "iou_matrix", "make_groups"]
