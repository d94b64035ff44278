"""Fingerprints: is a suspect model derived from a victim? Profiles of functional networks over a
few probe texts, compared with a score, p-values and a verdict; perturbation builders for tests."""
from funcnet.fingerprint._fingerprint import (ALPHA, CONTROLS, DEFAULT_PROBES, REFERENCE_INDEPENDENT, FORMAT_NAME, FORMAT_VERSION, SIGNAL_CHOICES, T_HIGH,
                                              T_LOW, FingerprintResult, Profile, compare, plot_matched, profile,
                                              read_probes, reference_p, tokens_to_units, unit_spans)
from funcnet.fingerprint.perturb import (permute_heads, permute_neurons, prune_lowest_norm, quantize_int8,
                                         rescale_neurons)

__all__ = ["ALPHA", "CONTROLS", "DEFAULT_PROBES", "REFERENCE_INDEPENDENT", "FORMAT_NAME", "FORMAT_VERSION", "SIGNAL_CHOICES", "T_HIGH", "T_LOW",
           "FingerprintResult", "Profile", "compare", "plot_matched", "profile", "read_probes", "reference_p",
           "tokens_to_units", "unit_spans", "permute_heads", "permute_neurons", "prune_lowest_norm", "quantize_int8",
           "rescale_neurons"]
