"""Reconstruction-aware neuron selection: optimal-brain-surgeon greedy removal with least-squares
compensation of what is left (SlimGPT's batched greedy pruning, Ling et al., NeurIPS 2024,
arXiv:2412.18110), one MLP layer at a time, and the functional-network variant ``fn-obs``.

Per layer, with down projection W [out, n], neuron covariance C (centered: the bias absorbs the
mean) and the ridge of funcnet's ``ls`` compensation, M = C + ridge diag(C): removing the set R and
compensating with the kept set K as ``ls`` does (W_K += W_R A, A = M_RK M_KK^-1) leaves the error
tr((W' - W) M (W' - W)^T), W' the compensated weights (zero on R). Removing one more neuron j from
K raises it by ||W'_j||^2 / P_jj, P = M_KK^-1 (optimal brain surgeon), after which
W' -= W'_j P_j,: / P_jj and P -= P_:,j P_j,: / P_jj. The greedy removes the cheapest neuron each
time; batched (SlimGPT's FFN groups), it takes the block of the cheapest neurons per step, their
errors in that order from one Cholesky factor of P_BB (as GPTQ), or with ``pool`` the exact
sequential greedy among a pool of the cheapest (float64, small), then one Schur-complement update
of P and W' with the block (GEMMs): P_KK -= P_KB P_BB^-1 P_BK, W'_K -= W'_B P_BB^-1 P_BK. The
cumulative error after each removal is exact for the order taken.

Everything runs on the covariance's device in ``dtype`` (float32 by default) on Jacobi-scaled
coordinates (C / sqrt(d d^T): unit diagonal, so M = corr + ridge I, eigenvalues >= ridge), with
the removed block swapped to the end of one buffer (no copies of P per step). Measured on
SmolLM2-135M: float32 gives the float64 curve to 1e-8 (docs/pruning.md)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from funcnet._defaults import DEFAULT_RIDGE
from funcnet.core.adapters import weight_out_in
from funcnet.core.models import LoadedModel
from funcnet.errors import FuncnetError
from funcnet.prune.calibration import CalibStats
from funcnet.prune.scores import Importance, _load_networks

#: neurons removed per batched step; the pool of cheapest candidates a step's exact greedy chooses
#: them from (0: the block's cheapest, in order of cost; ``pool > block`` re-ranks them one by one:
#: 1.4x the time for errors 1e-4 lower on SmolLM2)
DEFAULT_OBS_BLOCK = 32
DEFAULT_OBS_POOL = 0
#: cross-layer scale of the per-parameter error: "raw" (squared error in the residual stream),
#: "energy" (relative to the variance of the layer's MLP output, tr(W C W^T)) or "median" (relative
#: to the layer's median marginal error: scale-free, the lowest perplexity; docs/pruning.md)
OBS_NORMALIZATIONS = ("median", "raw", "energy")
DEFAULT_OBS_NORMALIZE = "median"
#: designs of "fn-obs": "prior" (the cost of removing a key neuron of the functional networks is
#: raised by 1 + beta max|z| / threshold), "group" (a network's key neurons may go as one block)
FN_OBS_DESIGNS = ("prior", "group")
DEFAULT_FN_OBS_DESIGN = "prior"
DEFAULT_FN_OBS_BETA = 0.1


@dataclass
class ObsPath:
    """The greedy's result on one layer: ``order`` (neurons in removal order), ``errors`` (the
    cumulative error after each removal, float64), and with ``weights=True`` the ``kept`` neurons
    (ascending) with their compensated down-projection columns ``weights`` [out, len(kept)]."""

    order: torch.Tensor
    errors: torch.Tensor
    kept: torch.Tensor | None = None
    weights: torch.Tensor | None = None


def _spd_inverse(M: torch.Tensor) -> torch.Tensor:
    """Inverse of a symmetric positive (semi)definite matrix; a small jitter when not definite."""
    jitter = 0.0
    scale = float(M.diagonal().mean()) if M.numel() else 1.0
    for _ in range(8):
        A = M
        if jitter:
            A = M.clone()
            A.diagonal().add_(jitter)
        L, info = torch.linalg.cholesky_ex(A)
        if int(info) == 0:
            return torch.cholesky_inverse(L)
        jitter = max(jitter * 100, 1e-10 * max(scale, 1e-30))
    return torch.linalg.pinv(M, hermitian=True)


def _pool_greedy(G: np.ndarray, Pp: np.ndarray, steps: int, prior: np.ndarray | None):
    """Exact sequential greedy on a candidate pool (float64, in place on copies): which ``steps``
    neurons go, in order, and the error each one adds (chosen by ``error * prior``). ``G`` is the
    Gram matrix W_p^T W_p of the pool's current weights, ``Pp`` its block of P: removing j maps
    W -> W - w_j p^T (p = P_j,: / P_jj), so G -> G - p g^T - g p^T + G_jj p p^T, g = G_:,j."""
    G, Pp = G.copy(), Pp.copy()
    gone = np.zeros(Pp.shape[0], dtype=bool)
    picks, costs = [], []
    for _ in range(steps):
        with np.errstate(invalid="ignore", divide="ignore"):  # 0 / 0 for the neurons already gone
            c = np.diagonal(G) / np.diagonal(Pp)
        s = c * prior if prior is not None else c.copy()
        s[gone] = np.inf
        j = int(np.argmin(s))
        picks.append(j)
        costs.append(max(float(c[j]), 0.0))
        gone[j] = True
        pj = Pp[j] / Pp[j, j]
        h = G[:, j] - 0.5 * G[j, j] * pj
        G -= np.outer(pj, h)
        G -= np.outer(h, pj)
        Pp -= np.outer(Pp[:, j], pj)
    return picks, costs


def _pool(Wt: torch.Tensor, P: torch.Tensor, idx: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(Gram matrix of the columns ``idx`` of Wt, block of P) as float64 numpy arrays."""
    Wp = Wt.index_select(1, idx).to("cpu", torch.float64)
    return (Wp.T @ Wp).numpy(), P.index_select(0, idx).index_select(1, idx).to("cpu", torch.float64).numpy()


def _ordered_costs(Wt: torch.Tensor, P: torch.Tensor, idx: torch.Tensor) -> list[float]:
    """The error each neuron of ``idx`` adds when they are removed one after the other in that
    order: the squared column norms of W_B L^-T, L the lower Cholesky factor of P_BB (as GPTQ)."""
    Pbb = P.index_select(0, idx).index_select(1, idx).to("cpu", torch.float64)
    Wb = Wt.index_select(1, idx).to("cpu", torch.float64)
    L, info = torch.linalg.cholesky_ex(Pbb)
    if int(info) != 0:
        G, Pp = (Wb.T @ Wb).numpy(), Pbb.numpy()
        costs = []
        for t in range(len(idx)):  # sequential, the plain way
            c = G[t, t] / Pp[t, t]
            costs.append(max(float(c), 0.0))
            pj = Pp[t] / Pp[t, t]
            h = G[:, t] - 0.5 * G[t, t] * pj
            G = G - np.outer(pj, h) - np.outer(h, pj)
            Pp = Pp - np.outer(Pp[:, t], pj)
        return costs
    Y = torch.linalg.solve_triangular(L, Wb.T, upper=False)
    return Y.square().sum(1).clamp_min(0).tolist()


def _group_cost(G: np.ndarray, Pgg: np.ndarray) -> float:
    """Error of removing a group at once: tr(P_GG^-1 W_G^T W_G) (float64)."""
    try:
        L = np.linalg.cholesky(Pgg)
    except np.linalg.LinAlgError:
        return float("inf")
    Y = np.linalg.solve(L, np.linalg.solve(L, G).T)  # L^-1 G L^-T
    return float(np.trace(Y))


def obs_layer_path(C, W, *, ridge: float = DEFAULT_RIDGE, block: int = DEFAULT_OBS_BLOCK,
                   pool: int | None = None, n_remove: int | None = None, dtype: torch.dtype = torch.float32,
                   prior=None, groups=None, group_bonus: float = 0.0, weights: bool = False) -> ObsPath:
    """Greedy OBS removal on one layer (see the module docstring): ``C`` [n, n] the neurons'
    centered covariance (any device; numpy or torch), ``W`` [out, n] the down projection. Removes
    ``n_remove`` neurons (default all but one), ``block`` per step chosen by the exact greedy among
    the ``pool`` cheapest when ``pool > block`` (else the ``block`` cheapest in order of cost;
    ``block=1`` is the unbatched greedy). ``prior`` [n]: a neuron's cost counts ``prior_j`` times when choosing (the recorded
    errors stay the true ones). ``groups``: index arrays of neurons that may be removed as one block
    when their joint error per neuron is at most ``(1 + group_bonus)`` times the step's. With
    ``weights`` also the compensated columns of the kept neurons, equal to ``ls`` compensation's
    W_K + W_R A for the same kept set. Dead neurons (zero variance) go first at no cost."""
    C = torch.as_tensor(C)
    dev = C.device
    W = torch.as_tensor(W).to(dev)
    n = C.shape[0]
    if C.shape != (n, n) or W.dim() != 2 or W.shape[1] != n:
        raise FuncnetError(f"obs needs a square covariance and weights [out, {n}], got {tuple(C.shape)} and "
                           f"{tuple(W.shape)}")
    n_remove = n - 1 if n_remove is None else int(n_remove)
    if not 0 <= n_remove <= n:
        raise FuncnetError(f"obs can remove 0..{n} neurons of this layer, not {n_remove}")
    block = max(1, int(block))
    pool = DEFAULT_OBS_POOL if pool is None else max(0, int(pool))
    d = C.diagonal().to(torch.float64).clamp_min(0)
    dmax = float(d.max()) if n else 0.0
    dead = d <= 1e-12 * dmax if dmax > 0 else torch.ones(n, dtype=torch.bool, device=dev)
    dead_idx = torch.nonzero(dead).flatten().cpu()
    alive = torch.nonzero(~dead).flatten()
    order = [int(j) for j in dead_idx[:n_remove]]
    errs = [0.0] * len(order)
    pr = None if prior is None else torch.as_tensor(prior, dtype=torch.float64).cpu()
    # Jacobi-scaled problem on the live neurons: M = C / sqrt(d d^T) + ridge I, P = M^-1
    s = d[alive].sqrt()
    sw = s.to(dtype)
    if len(alive) < n:
        M = C.index_select(0, alive).index_select(1, alive).to(dtype)
    else:
        M = C.to(dtype, copy=True)  # never the caller's covariance: scaled in place below
    M.div_(sw[:, None]).div_(sw[None, :])
    M.diagonal().add_(float(ridge))
    Pf = _spd_inverse(M)  # the buffer: the current neurons' P is its leading k x k block
    del M
    Wf = W[:, alive].to(dtype) * sw
    alive_cpu = alive.cpu()
    loc = torch.arange(len(alive))  # the live-neuron index of each current position
    k = len(alive)
    gsets = None
    if groups is not None:
        gsets = [np.unique(np.asarray(g, dtype=np.int64)) for g in groups]
        gsets = [g for g in gsets if len(g) >= 2]
    while len(order) < n_remove:
        P, Wt = Pf[:k, :k], Wf[:, :k]
        pos = alive_cpu[loc[:k]]
        b = min(block, n_remove - len(order))
        cost = (Wt.square().sum(0).to(torch.float64) / P.diagonal().to(torch.float64)).cpu()
        cpu_prior = None if pr is None else pr[pos]
        sel = cost * cpu_prior if cpu_prior is not None else cost
        if pool > b:  # the exact greedy among the pool's cheapest
            cand = torch.topk(sel, min(k, pool), largest=False).indices.sort().values
            G, Pp = _pool(Wt, P, cand.to(dev))
            picks, costs = _pool_greedy(G, Pp, b, None if cpu_prior is None else cpu_prior[cand].numpy())
            B = cand[torch.as_tensor(picks)]
        else:  # the b cheapest, removed in that order: their errors from one Cholesky factor
            B = torch.topk(sel, b, largest=False, sorted=True).indices
            costs = _ordered_costs(Wt, P, B.to(dev))
        if gsets and b > 1:  # a functional network's kept key neurons as one block, when cheap enough
            wc = torch.as_tensor(costs, dtype=torch.float64)
            per = float((wc if cpu_prior is None else wc * cpu_prior[B]).sum()) / b
            members = [g for g in (_current(g, pos) for g in gsets)
                       if 2 <= len(g) <= min(2 * block, k - 1, n_remove - len(order))]
            if members:
                avg = torch.stack([sel[torch.as_tensor(g)].mean() for g in members])
                best, best_cost = None, float("inf")
                for j in torch.argsort(avg)[:16].tolist():  # the groups cheapest one by one: exact joint cost
                    g = torch.as_tensor(members[j])
                    gc = _group_cost(*_pool(Wt, P, g.to(dev)))
                    if cpu_prior is not None:
                        gc *= float(cpu_prior[g].mean())
                    if gc / len(g) < best_cost:
                        best, best_cost = g, gc / len(g)
                if best is not None and best_cost <= (1.0 + group_bonus) * per:
                    gp, gcosts = _pool_greedy(*_pool(Wt, P, best.to(dev)), len(best),
                                              None if cpu_prior is None else cpu_prior[best].numpy())
                    B, costs = best[torch.as_tensor(gp)], gcosts
        order += pos[B].tolist()
        errs += costs
        # move the block to the tail [k2, k) by swaps (no k x k copy), then the Schur-complement
        # update of the leading k2 x k2 block: P_KK -= P_KB P_BB^-1 P_BK, W_K -= W_B P_BB^-1 P_BK
        k2 = k - len(B)
        in_b = torch.zeros(k, dtype=torch.bool)
        in_b[B] = True
        head = B[B < k2]
        tail = torch.nonzero(~in_b[k2:]).flatten() + k2
        if len(head):
            src = torch.cat([head, tail])
            dst = torch.cat([tail, head])
            sd, dd = src.to(dev), dst.to(dev)
            Pf[sd, :k] = Pf[dd, :k]
            Pf[:k, sd] = Pf[:k, dd]
            Wf[:, sd] = Wf[:, dd]
            loc[src] = loc[dst]
        PBK = Pf[k2:k, :k2].clone()
        PBB = Pf[k2:k, k2:k].to(torch.float64)
        L, info = torch.linalg.cholesky_ex(PBB)
        X = (torch.cholesky_solve(PBK.to(torch.float64), L) if int(info) == 0
             else torch.linalg.pinv(PBB, hermitian=True) @ PBK.to(torch.float64)).to(dtype)
        WB = Wf[:, k2:k].clone()
        Pf[:k2, :k2].addmm_(PBK.T, X, alpha=-1.0)
        Wf[:, :k2].addmm_(WB, X, alpha=-1.0)
        k = k2
    out = ObsPath(torch.as_tensor(order, dtype=torch.long), torch.as_tensor(np.cumsum(errs), dtype=torch.float64))
    if weights:
        removed = set(order)
        kept_dead = [int(j) for j in dead_idx if int(j) not in removed]
        live = loc[:k].to(dev)
        cols = Wf[:, :k] / sw[live][None, :]
        if kept_dead:
            cols = torch.cat([cols, W[:, torch.as_tensor(kept_dead, device=dev)].to(dtype)], 1)
        idx = torch.cat([alive_cpu[loc[:k]], torch.as_tensor(kept_dead, dtype=torch.long)])
        srt = torch.argsort(idx)
        out.kept, out.weights = idx[srt], cols[:, srt.to(dev)]
    return out


def _current(g: np.ndarray, pos: torch.Tensor) -> list[int]:
    """Current positions (in ``pos``) of the neurons of ``g`` that are still kept."""
    hit = torch.isin(pos, torch.as_tensor(g))
    return torch.nonzero(hit).flatten().tolist()


def obs_layer_order(C, W, *, ridge: float = DEFAULT_RIDGE, block: int = DEFAULT_OBS_BLOCK, **kw
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(order of removal, cumulative error after each removal) of the greedy OBS removal on one
    layer (:func:`obs_layer_path`, whose options it takes)."""
    p = obs_layer_path(C, W, ridge=ridge, block=block, **kw)
    return p.order, p.errors


def curve_scores(order, errors, n: int, *, unit: float = 1.0) -> np.ndarray:
    """Per-neuron scores (higher = keep) from a layer's removal order and cumulative error: the
    marginal error at the step the neuron goes, divided by ``unit`` (parameters per neuron x the
    layer's normalization), made strictly increasing along the order by a running max, so that a
    global ranking removes the layer's neurons in greedy order. Neurons never removed rank above."""
    order = np.asarray(order, dtype=np.int64)
    err = np.asarray(errors, dtype=np.float64)
    marg = np.maximum(np.diff(err, prepend=0.0), 0.0) / unit
    t = np.arange(len(marg), dtype=np.float64)
    s = np.maximum.accumulate(marg) * (1.0 + 1e-12 * t) + 1e-300 * t if len(marg) else marg
    out = np.empty(n, dtype=np.float64)
    out[order] = s
    rest = np.setdiff1d(np.arange(n), order)
    if len(rest):
        top = float(s[-1]) if len(s) else 0.0
        out[rest] = 2.0 * top + 1e-300 + 1e-12 * max(top, 1e-300) * np.arange(1, len(rest) + 1)
    return out


def _has_cov(stats: CalibStats, i: int) -> bool:
    return stats.has_cov(i) if hasattr(stats, "has_cov") else i in stats.neuron_xtx


def _obs_layers(lm: LoadedModel, stats: CalibStats | None, layers, method: str) -> list[int]:
    """The layers to score: ``layers`` (each must exist), or every layer whose covariance ``stats``
    holds (at least one)."""
    if stats is None:
        raise FuncnetError(f"method '{method}' needs calibration statistics with covariance (calib=...)")
    if layers is None:
        todo = [i for i in range(lm.n_layers) if _has_cov(stats, i)]
        if not todo:
            raise FuncnetError(f"method '{method}' needs calibration statistics recorded with covariance=True")
        return todo
    todo = sorted({int(i) for i in layers})
    for i in todo:
        if not 0 <= i < lm.n_layers:
            raise FuncnetError(f"layer {i} does not exist (0..{lm.n_layers - 1})")
    return todo


def _independent_path(var: np.ndarray, w2: np.ndarray, ridge: float, n_remove: int) -> tuple[np.ndarray, np.ndarray]:
    """The greedy's path when the covariance is unknown (a layer scored without it, e.g. a protected
    layer in the layer-by-layer pass): neurons taken as uncorrelated, so removing j costs
    (1 + ridge) Var(x_j) ||W_j||^2 (FLAP's fluctuation), whatever else is gone."""
    cost = (1.0 + ridge) * np.maximum(var, 0.0) * w2
    order = np.argsort(cost, kind="stable")[:n_remove]
    return order, np.cumsum(cost[order])


def _obs_scores(lm: LoadedModel, stats: CalibStats, todo, *, ridge, block, pool, normalize, dtype, device,
                max_fraction, priors=None, groups=None, group_bonus=0.0) -> dict[int, np.ndarray]:
    if normalize not in OBS_NORMALIZATIONS:
        raise FuncnetError(f"unknown obs normalization '{normalize}'; choose from {', '.join(OBS_NORMALIZATIONS)}")
    if not 0.0 < float(max_fraction) <= 1.0:
        raise FuncnetError(f"max_fraction must be in (0, 1], got {max_fraction}")
    ad = lm.adapter
    out = {}
    for i in todo:
        layer = lm.layers[i]
        W = weight_out_in(layer.get_submodule(ad.down)).detach()
        n = W.shape[1]
        n_remove = min(n - 1, int(np.ceil(float(max_fraction) * n)))
        if _has_cov(stats, i):
            C = torch.as_tensor(stats.cov(i))
            if device is not None:
                C = C.to(device)
            W = W.to(C.device)
            path = obs_layer_path(C, W, ridge=ridge, block=block, pool=pool, dtype=dtype, n_remove=n_remove,
                                  prior=None if priors is None else priors[i],
                                  groups=None if groups is None else groups.get(i), group_bonus=group_bonus)
            order, errors = path.order.numpy(), path.errors.numpy()
            energy = float(((W.to(torch.float64) @ C.to(torch.float64)) * W.to(torch.float64)).sum()) \
                if normalize == "energy" else 0.0
        else:
            var = stats.var(i)
            w2 = W.to("cpu", torch.float64).square().sum(0).numpy()
            order, errors = _independent_path(var * (1.0 if priors is None else priors[i]), w2, ridge, n_remove)
            energy = float((var * w2).sum())
        unit = float(ad.params_per_neuron(layer))
        if normalize == "energy":
            unit *= max(energy, 1e-30)
        elif normalize == "median" and len(errors) > 1:
            marg = np.maximum.accumulate(np.maximum(np.diff(errors, prepend=0.0), 0.0))
            unit *= max(float(np.median(marg)), 1e-30)
        out[i] = curve_scores(order, errors, n, unit=unit)
    return out


def _dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in ("float32", "float64"):
        return getattr(torch, dtype)
    raise FuncnetError(f"obs dtype must be float32 or float64, got {dtype!r}")


def imp_obs(lm: LoadedModel, stats: CalibStats | None = None, *, layers=None, ridge: float = DEFAULT_RIDGE,
            block: int = DEFAULT_OBS_BLOCK, pool: int | None = None, normalize: str | None = None,
            score: str | None = None, dtype="float32", device=None, max_fraction: float = 1.0,
            heads: bool = False, **_) -> Importance:
    """Reconstruction-aware scores (SlimGPT's batched greedy OBS with ``ls`` compensation's ridge):
    per layer, the greedy removal order and its cumulative error (:func:`obs_layer_path`), turned
    into the marginal error per parameter at the step each neuron goes (:func:`curve_scores`),
    relative to the layer's median marginal error (``normalize="median"``, the default), in the
    residual stream's squared units (``"raw"``) or relative to the variance of the layer's MLP
    output (``"energy"``); ``score=`` is a synonym (the benchmark's ``obs:raw``). The scores are
    ranked across layers as they are (allocation ``global-raw``); within a layer they follow the
    greedy order. ``layers``: score only these (default: every layer whose covariance ``stats``
    holds; a requested layer without one is scored as if its neurons were uncorrelated, by FLAP's
    fluctuation). ``max_fraction``: stop each layer's greedy after this fraction of its neurons
    (the rest rank above); ``dtype`` / ``device``: where the greedy runs (default: float32, the
    covariance's device)."""
    if heads:
        raise FuncnetError("method 'obs' scores MLP neurons only: run it without heads")
    todo = _obs_layers(lm, stats, layers, "obs")
    norm = normalize or score or DEFAULT_OBS_NORMALIZE
    neurons = _obs_scores(lm, stats, todo, ridge=ridge, block=int(block), pool=None if pool is None else int(pool),
                          normalize=norm, dtype=_dtype(dtype), device=device, max_fraction=max_fraction)
    return Importance(neurons, None, method="obs")


def network_groups(networks, layer: int, width: int, *, threshold: float = 3.6, min_size: int = 2,
                   max_size: int | None = None) -> list[np.ndarray]:
    """The key neurons (|z| > threshold) of every map of ``layer`` as index arrays (duplicates
    dropped; sizes ``min_size`` .. ``max_size``)."""
    seen, out = set(), []
    for dec in networks.decompositions:
        sel = dec.columns[:, 0] == layer
        if not sel.any():
            continue
        cols = dec.columns[sel, 2]
        for z in np.abs(dec.maps[:, sel]):
            g = np.unique(cols[z > threshold]).astype(np.int64)
            g = g[g < width]
            key = g.tobytes()
            if len(g) >= min_size and (max_size is None or len(g) <= max_size) and key not in seen:
                seen.add(key)
                out.append(g)
    return out


def imp_fn_obs(lm: LoadedModel, stats: CalibStats | None = None, *, networks=None, layers=None,
               design: str | None = None, score: str | None = None, beta: float = DEFAULT_FN_OBS_BETA,
               threshold: float = 3.6, group_bonus: float = 0.0, ridge: float = DEFAULT_RIDGE,
               block: int = DEFAULT_OBS_BLOCK, pool: int | None = None, normalize: str = DEFAULT_OBS_NORMALIZE,
               dtype="float32", device=None, max_fraction: float = 1.0, heads: bool = False, **_) -> Importance:
    """:func:`imp_obs` with the functional networks in the greedy (``design``, or ``score=``):
    "prior" multiplies the cost of removing neuron j by 1 + ``beta`` max|z|_j / ``threshold``
    (max|z| over every map: key neurons of the networks are protected in proportion to how key they
    are), "group" lets the greedy remove the kept key neurons of one map together when their joint
    reconstruction error per neuron is at most (1 + ``group_bonus``) times the step's."""
    if heads:
        raise FuncnetError("method 'fn-obs' scores MLP neurons only: run it without heads")
    design = design or score or DEFAULT_FN_OBS_DESIGN
    if design not in FN_OBS_DESIGNS:
        raise FuncnetError(f"unknown fn-obs design '{design}'; choose from {', '.join(FN_OBS_DESIGNS)}")
    todo = _obs_layers(lm, stats, layers, "fn-obs")
    networks = _load_networks(networks, lm)
    priors = groups = None
    if design == "prior":
        mx = networks.score_per_neuron()
        priors = {i: 1.0 + float(beta) * np.asarray(mx[i], dtype=np.float64) / float(threshold) for i in todo}
    else:
        groups = {i: network_groups(networks, i, lm.adapter.n_neurons(lm.layers[i]), threshold=threshold)
                  for i in todo}
    neurons = _obs_scores(lm, stats, todo, ridge=ridge, block=int(block), pool=None if pool is None else int(pool),
                          normalize=normalize, dtype=_dtype(dtype), device=device, max_fraction=max_fraction,
                          priors=priors, groups=groups, group_bonus=float(group_bonus))
    return Importance(neurons, None, method="fn-obs")
