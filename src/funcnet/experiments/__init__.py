"""The experiments of the first paper: recurrence, lesion, preservation, amplification and network
anatomy, one module each, each a function returning a typed result (:mod:`funcnet.experiments.schema`)
whose ``to_dict()`` is the JSON written into a results folder.

Note: the module ``funcnet.experiments.anatomy`` is shadowed here by the function :func:`anatomy`;
reach the module with ``importlib.import_module("funcnet.experiments.anatomy")`` when needed.
"""
from funcnet.experiments.amplification import amplification_experiment
from funcnet.experiments.anatomy import anatomy
from funcnet.experiments.common import (DOMAINS, eval_domains, measure, random_control, selection_size, summarize,
                                        top_networks, total_neurons)
from funcnet.experiments.lesion import lesion_experiment
from funcnet.experiments.preservation import preservation_experiment
from funcnet.experiments.recurrence import recurrence_experiment
from funcnet.experiments.schema import (EXPERIMENTS, NETWORKS_FILE, RESULT_FILES, RUN_FILE, AmplificationResult,
                                        AnatomyResult, ExperimentSpec, LesionResult, PreservationResult,
                                        RecurrenceResult, Result, RunInfo, load_results, read_result, result_file,
                                        write_result)

__all__ = ["DOMAINS", "amplification_experiment", "anatomy", "eval_domains", "lesion_experiment", "measure",
           "preservation_experiment", "recurrence_experiment", "top_networks", "random_control", "selection_size",
           "summarize", "total_neurons",
           "EXPERIMENTS", "ExperimentSpec", "NETWORKS_FILE", "RESULT_FILES", "RUN_FILE", "Result", "RunInfo",
           "AnatomyResult", "LesionResult", "PreservationResult", "AmplificationResult", "RecurrenceResult",
           "load_results", "read_result", "result_file", "write_result"]
