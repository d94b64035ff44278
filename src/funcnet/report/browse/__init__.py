"""The network browser: a static site with a page per functional network (anatomy, activity
histogram, top and quantile-sampled contexts, domains, direct effect on the output, lesion effect,
related networks, counterparts in another model) and a searchable, sortable index.

``build_site(networks, model, store, out)`` writes it; it opens from disk (no server needed) and
``serve(out, port)`` serves it on 127.0.0.1 with the standard library. See ``docs/browser.md``.
"""
from funcnet.report.browse._compute import (DEFAULT_QUANTILES, direct_effect_logits, network_activity,
                                            output_directions, quantile_rows, read_counterpart)
from funcnet.report.browse._site import (INDEX_FORMAT, MAX_PAGE_BYTES, NETWORK_FORMAT, NETWORK_SCHEMA, SEARCH_FORMAT,
                                         build_site, page_sizes, search_networks, serve, validate)

__all__ = ["DEFAULT_QUANTILES", "INDEX_FORMAT", "MAX_PAGE_BYTES", "NETWORK_FORMAT", "NETWORK_SCHEMA", "SEARCH_FORMAT",
           "build_site", "direct_effect_logits", "network_activity", "output_directions", "page_sizes",
           "quantile_rows", "read_counterpart", "search_networks", "serve", "validate"]
