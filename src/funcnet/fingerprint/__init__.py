"""Fingerprints: is a suspect model derived from a victim? Profiles of functional networks over a
few probe texts (``_profile``: probes, recording, text units, :class:`Profile`, :func:`profile`, the
profile file), compared with a score, p-values and a verdict (``_compare``: matching, nulls,
p-values, :class:`FingerprintResult`, :func:`compare`, :func:`plot_matched`); the score's statistic
is pluggable (``statistics``: :func:`register_statistic`); perturbation builders for tests and
benchmarks (``perturb``). Import the public names from this package."""
from funcnet.fingerprint._compare import (ALPHA, CONTROLS, REFERENCE_INDEPENDENT, REFERENCE_STATISTIC, T_HIGH, T_LOW,
                                          FingerprintResult, compare, plot_matched, reference_p)
from funcnet.fingerprint._profile import (DEFAULT_PROBES, FORMAT_NAME, FORMAT_VERSION, SIGNAL_CHOICES, Profile,
                                          profile, read_probes, tokens_to_units, unit_spans)
from funcnet.fingerprint.perturb import (permute_heads, permute_neurons, prune_lowest_norm, quantize_int8,
                                         rescale_neurons)
from funcnet.fingerprint.statistics import (DEFAULT_STATISTIC, available_statistics, get_statistic, mean_statistic,
                                            median_statistic, register_statistic)

__all__ = ["ALPHA", "CONTROLS", "DEFAULT_PROBES", "REFERENCE_INDEPENDENT", "FORMAT_NAME", "FORMAT_VERSION", "SIGNAL_CHOICES", "T_HIGH", "T_LOW",
           "FingerprintResult", "Profile", "compare", "plot_matched", "profile", "read_probes", "reference_p",
           "tokens_to_units", "unit_spans", "permute_heads", "permute_neurons", "prune_lowest_norm", "quantize_int8",
           "rescale_neurons", "REFERENCE_STATISTIC", "DEFAULT_STATISTIC", "available_statistics", "get_statistic",
           "mean_statistic", "median_statistic", "register_statistic"]
