"""The experiments of the first paper: recurrence, lesion, preservation, amplification and network
anatomy, each a function returning a JSON-ready result."""
from funcnet.experiments._experiments import (DOMAINS, amplification_experiment, anatomy, eval_domains,
                                              lesion_experiment, measure, preservation_experiment,
                                              recurrence_experiment, top_networks)

__all__ = ["DOMAINS", "amplification_experiment", "anatomy", "eval_domains", "lesion_experiment", "measure",
           "preservation_experiment", "recurrence_experiment", "top_networks"]
