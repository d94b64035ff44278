"""Functional networks: group ICA (CanICA with ICASSO stability) of recorded activations, maps
thresholded into key-neuron sets, saved and loaded with the model's identity."""
from funcnet.networks.canica import (CanICA, ColumnBlocks, FastICAResult, ICAConvergenceWarning, NotFittedError,
                                     amari_distance, estimate_fit_bytes, fastica, fit_many, fit_seeds, initial_unmixing,
                                     match_maps, subspace_overlap)
from funcnet.networks.functional import (FORMAT, MODES, THRESHOLD_METHODS, Decomposition, FunctionalNetworks,
                                         decompose, ensure_store, iou, iou_matrix, make_groups)

__all__ = ["CanICA", "ColumnBlocks", "FastICAResult", "ICAConvergenceWarning", "NotFittedError", "amari_distance",
           "estimate_fit_bytes", "fastica", "fit_many", "fit_seeds", "initial_unmixing", "match_maps", "subspace_overlap", "FORMAT", "MODES", "THRESHOLD_METHODS",
           "Decomposition", "FunctionalNetworks", "decompose", "ensure_store", "iou", "iou_matrix", "make_groups"]

#: names that funcnet 0.1 had in ``funcnet.networks`` and that now belong to the pruning package
#: (pruning imports networks, never the reverse)
MOVED_TO_PRUNE = ("pruning_importance", "pruning_keep_masks", "networks_for_pruning", "FN_SCORES", "FN_STATS_SCORES",
                  "DEFAULT_FN_SCORE")


def __getattr__(name):
    if name in MOVED_TO_PRUNE:
        raise ImportError(f"funcnet.networks.{name} moved to funcnet.prune.{name}; import it from funcnet.prune")
    raise AttributeError(f"module 'funcnet.networks' has no attribute '{name}'")
