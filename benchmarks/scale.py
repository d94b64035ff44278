"""funcnet at the widths of the models people use: random-init models with 2 and 4 layers at real widths.

Builds (once, cached under ~/.cache/funcnet/scale) random-init Llama-architecture models at the widths
of Llama-3.1-8B (hidden 4096, MLP 14336, 32 heads / 8 KV heads), Qwen2.5-7B (3584 / 18944, 28 / 4) and
Llama-3-70B (8192 / 28672, 64 / 8) with 2 and 4 decoder layers, bf16, with SmolLM2's tokenizer (vocab
49152 instead of the real 128k / 152k: the embeddings are not what grows with depth), and runs the
pipeline on the built-in corpus, each step in a fresh process:

    record (neurons, bf16 store) -> networks per-layer -> networks whole -> prune 20% of the MLP (flap,
    least-squares compensation, layer by layer) -> save -> load -> fingerprint profile

For every step it prints wall time, peak anonymous RSS of the step (sampled every 50 ms; on CUDA also
the peak GPU memory), the forward passes each layer made over the step's text, and the growth from 2 to
4 layers next to the two extra layers' weights (the target: growth <= those weights + 10%).

    python benchmarks/scale.py --models llama3-8b --layers 2,4 --tokens 2048
    python benchmarks/scale.py --models llama3-8b --layers 32 --device cuda   # full depth on a GPU

Compared in the same run: the earlier least-squares path (``layerwise=False``: the covariance in chunks
of layers under a 2 GiB budget, one calibration pass per chunk) with ``--compare-old``; the step
``prune-uniform`` (in ``--steps``) prunes with a uniform allocation, in one layer-by-layer pass.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ica_speed import _AnonPeak  # noqa: E402

WIDTHS = {  # hidden, intermediate, heads, kv heads
    "llama3-8b": (4096, 14336, 32, 8),
    "qwen2.5-7b": (3584, 18944, 28, 4),
    "llama3-70b": (8192, 28672, 64, 8),
    "smoke": (256, 512, 4, 2),  # a quick check of the script itself
}
CACHE = Path(os.environ.get("FUNCNET_SCALE_CACHE", Path.home() / ".cache" / "funcnet" / "scale"))


def build(name: str, n_layers: int) -> Path:
    """A random-init bf16 model folder at ``name``'s widths with ``n_layers`` layers (cached)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    import funcnet

    folder = CACHE / f"{name}-L{n_layers}"
    if (folder / "config.json").exists():
        return folder
    hidden, inter, heads, kv = WIDTHS[name]
    tok = funcnet.load_model("smollm2-135m").tokenizer
    cfg = LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_attention_heads=heads, num_key_value_heads=kv,
                      num_hidden_layers=n_layers, vocab_size=len(tok), max_position_embeddings=4096,
                      rope_theta=500000.0, tie_word_embeddings=False, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    model = LlamaForCausalLM(cfg)
    torch.set_default_dtype(torch.float32)
    tmp = folder.with_name(folder.name + ".tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(folder)
    return folder


def _layer_bytes(folder: Path) -> int:
    """Bytes of one decoder layer's weights (bf16)."""
    cfg = json.loads((folder / "config.json").read_text())
    h, i, nh, kv = (cfg["hidden_size"], cfg["intermediate_size"], cfg["num_attention_heads"],
                    cfg["num_key_value_heads"])
    hd = h // nh
    return 2 * (3 * h * i + h * (nh * hd) * 2 + 2 * h * kv * hd + 2 * h)


class _PassCounter:
    """Tokens through each layer's MLP (recorders and captures skip it): forward passes per layer."""

    def __init__(self, lm):
        self.tokens = [0] * lm.n_layers
        self.handles = [lm.adapter.down_proj(l).register_forward_pre_hook(self._hook(i))
                        for i, l in enumerate(lm.layers)]

    def _hook(self, i):
        def f(m, args):
            self.tokens[i] += int(args[0].shape[:-1].numel())
        return f

    def passes(self, per_pass: int) -> float:
        return max(self.tokens) / max(per_pass, 1)


def _peak_gpu() -> float | None:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return None


def _step(step: str, folder: str, work: str, args: dict, q) -> None:
    """One step in its own process; puts a result dict on ``q``."""
    import torch

    import funcnet
    from funcnet.prune import load_pruned, prune, save_pruned

    torch.set_num_threads(args["threads"])
    dtype = torch.bfloat16
    dev = args["device"]
    res: dict = {"step": step}
    work = Path(work)
    store = work / "store"
    t0 = time.time()
    with _AnonPeak() as peak:
        if step == "record":
            from funcnet.data.record import record
            import inspect

            lm = funcnet.load_model(folder, dtype=dtype, device=dev)
            kw = {"store_dtype": "bfloat16"} if "store_dtype" in inspect.signature(record).parameters \
                else {"dtype": "bfloat16"}
            cnt = _PassCounter(lm)
            st = record(lm, "builtin", out=store, max_tokens=args["tokens"], max_length=128, mode="packed",
                        split="all", progress=False, **kw)
            res["passes"] = cnt.passes(st.n_tokens) if hasattr(st, "n_tokens") else None
            res["store_gb"] = sum(f.stat().st_size for f in store.rglob("*.npy")) / 2**30
        elif step in ("networks-per-layer", "networks-whole"):
            from funcnet.data.store import ActivationStore
            from funcnet.networks import decompose

            st = ActivationStore.open(store)
            mode = step.split("-", 1)[1]
            nets = decompose(st, mode=mode, n_components=args["k"], n_init=1, device=dev, progress=False)
            res["maps"] = int(sum(m.shape[0] for m in getattr(nets, "maps", {}).values())) \
                if isinstance(getattr(nets, "maps", None), dict) else None
        elif step in ("prune", "prune-old", "prune-uniform"):
            lm = funcnet.load_model(folder, dtype=dtype, device=dev)
            cnt = _PassCounter(lm)
            r = prune(lm, 0.2, method="flap", calib="builtin", calib_tokens=args["tokens"],
                      layerwise=(step != "prune-old"), protect=(0, 0),
                      allocation="uniform" if step == "prune-uniform" else None)
            res["passes"] = cnt.passes(r.report["calibration"]["tokens"])
            res["achieved"] = round(r.report["achieved_ratio"], 4)
            t1 = time.time()
            if step == "prune":
                save_pruned(r.lm, lm.tokenizer, work / "pruned")
                res["save_s"] = round(time.time() - t1, 1)
        elif step == "load":
            lm = load_pruned(work / "pruned", dtype=dtype, device=dev)
            res["params"] = sum(p.numel() for p in lm.model.parameters())
        elif step == "fingerprint":
            from funcnet.fingerprint import profile

            lm = funcnet.load_model(folder, dtype=dtype, device=dev)
            cnt = _PassCounter(lm)
            profile(lm, n_seeds=1)
            res["passes"] = None  # probe text, not the calibration text
        else:
            raise ValueError(step)
    res["seconds"] = round(time.time() - t0, 1)
    res["peak_rss_gb"] = round(peak.peak / 1024, 2)
    g = _peak_gpu()
    if g is not None:
        res["peak_gpu_gb"] = round(g, 2)
    q.put(res)


def run_steps(folder: Path, steps: list[str], args: dict) -> list[dict]:
    ctx = mp.get_context("spawn")
    out = []
    with tempfile.TemporaryDirectory(prefix="funcnet-scale-", dir=args.get("tmp")) as work:
        for step in steps:
            q = ctx.Queue()
            p = ctx.Process(target=_step, args=(step, str(folder), work, args, q))
            p.start()
            p.join()
            if p.exitcode != 0:
                out.append({"step": step, "error": f"exit code {p.exitcode}"})
                continue
            out.append(q.get())
            print(f"  {folder.name:>16} {step:<20} {json.dumps(out[-1])}", flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="llama3-8b", help=f"comma list of {', '.join(WIDTHS)}")
    ap.add_argument("--layers", default="2,4")
    ap.add_argument("--tokens", type=int, default=2048, help="calibration / recording tokens")
    ap.add_argument("-k", type=int, default=16, help="ICA components")
    ap.add_argument("--steps", default="record,networks-per-layer,networks-whole,prune,load,fingerprint")
    ap.add_argument("--compare-old", action="store_true", help="also prune with the earlier path (layerwise=False)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", default=None, help="JSON results file")
    a = ap.parse_args(argv)
    steps = a.steps.split(",") + (["prune-old"] if a.compare_old else [])
    args = {"tokens": a.tokens, "k": a.k, "device": a.device, "threads": a.threads}
    results = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                          f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB",
               "device": a.device, "tokens": a.tokens, "k": a.k, "runs": {}}
    for name in a.models.split(","):
        for n in (int(x) for x in a.layers.split(",")):
            folder = build(name, n)
            print(f"{name} with {n} layers ({folder})", flush=True)
            results["runs"][f"{name}-L{n}"] = {"layer_gb": _layer_bytes(folder) / 2**30,
                                               "steps": run_steps(folder, steps, args)}
            if a.out:
                Path(a.out).write_text(json.dumps(results, indent=1))
    print_table(results)
    return 0


def print_table(results: dict) -> None:
    runs = results["runs"]
    print(f"\nmachine: {results['machine']}, device {results['device']}, {results['tokens']} tokens")
    print(f"{'model':<14} {'step':<20} " + " ".join(f"{'L=' + k.rsplit('-L', 1)[1] + ' s':>9} {'GB':>6} {'passes':>6}"
                                                     for k in runs if k.startswith(next(iter(runs)).rsplit('-L', 1)[0])))
    names = sorted({k.rsplit("-L", 1)[0] for k in runs})
    for name in names:
        keys = sorted((k for k in runs if k.rsplit("-L", 1)[0] == name), key=lambda k: int(k.rsplit("-L", 1)[1]))
        steps = [s["step"] for s in runs[keys[0]]["steps"]]
        for step in steps:
            cells, peaks = [], []
            for k in keys:
                s = next((x for x in runs[k]["steps"] if x["step"] == step), {})
                cells.append(f"{s.get('seconds', float('nan')):>9} {s.get('peak_rss_gb', float('nan')):>6} "
                             f"{(s.get('passes') if s.get('passes') is not None else '-')!s:>6}")
                peaks.append((int(k.rsplit('-L', 1)[1]), s.get("peak_rss_gb"), runs[k]["layer_gb"]))
            growth = ""
            if len(peaks) >= 2 and all(p[1] is not None for p in peaks[:2]):
                (n0, p0, lg), (n1, p1, _) = peaks[0], peaks[1]
                allowed = p0 + (n1 - n0) * lg + 0.1 * p0
                growth = f"  growth {p1 - p0:+.2f} GB (extra layers' weights {(n1 - n0) * lg:.2f} GB; " \
                         f"{'within' if p1 <= allowed else 'OVER'} target)"
            print(f"{name:<14} {step:<20} " + " ".join(cells) + growth)


if __name__ == "__main__":
    sys.exit(main())
