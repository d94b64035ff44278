"""Build (and cache) the models the fingerprint robustness suite needs that cannot be made by a
few lines of weight surgery:

* ``tiny-s{seed}``: small models of the SmolLM2 architecture (4 layers, hidden 128, MLP 384,
  SmolLM2 tokenizer) trained from scratch with different random seeds on the same text (the
  built-in calibration corpus) -- the hardest negatives: same architecture, same data, same
  tokenizer, independent training.
* ``smollm2-ft-math-300``: SmolLM2-135M fine-tuned (AdamW, 300 steps of 2 x 64 tokens, lr 1e-4,
  every block trained, the tied embedding frozen) on different text (the built-in *math*
  calibration documents), a positive; ``fixture.json`` records held-out and probe losses before
  and after (2.34 -> 0.82 on held-out math; ~12 min with one thread on a shared 2-core machine).

Everything lands under ``$FUNCNET_CACHE/fingerprint/`` and is reused when present.

    python scripts/make_fingerprint_fixtures.py                   # what the suite uses
    python scripts/make_fingerprint_fixtures.py --time-steps 5    # time 5 fine-tuning steps, save nothing
    python scripts/make_fingerprint_fixtures.py --held-out        # the held-out suspects (tiny-s2-80, smollm2-ft-code-300)
    OMP_NUM_THREADS=1 nice -n 5 python scripts/make_fingerprint_fixtures.py --tiny 0   # only the fine-tune
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

TINY = dict(num_hidden_layers=4, hidden_size=128, intermediate_size=384, num_attention_heads=4,
            num_key_value_heads=2, head_dim=32, max_position_embeddings=2048, tie_word_embeddings=True)

#: Held-out fixtures (scripts/make_fingerprint_fixtures.py --held-out; benchmarks/fingerprint_suite.py
#: --held-out): built after the method was frozen, never used to choose anything.
HELD_OUT_TINY_SEEDS = (2,)
HELD_OUT_FT_TEXT = "builtin:code"


def fixture_dir() -> Path:
    from funcnet.core._io import cache_dir

    d = cache_dir() / "fingerprint"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _token_stream(tokenizer, spec: str, split: str, max_tokens: int, seq_len: int = 64) -> torch.Tensor:
    from funcnet.data.corpus import load_corpus, tokenize

    tok = tokenize(load_corpus(spec, split=split), tokenizer, max_length=seq_len, mode="packed",
                   max_tokens=max_tokens)
    return torch.as_tensor(np.stack([np.asarray(s.input_ids) for s in tok.sequences]), dtype=torch.long)


def _train(model, windows: torch.Tensor, *, steps: int, batch: int, lr: float, seed: int, log_every: int = 50,
           restrict_vocab: bool = False):
    """AdamW on random windows. ``restrict_vocab``: the softmax runs over the token ids that occur in
    ``windows`` only (tied embeddings; the full 49k-way head would dominate a tiny model's cost)."""
    g = torch.Generator().manual_seed(seed)
    if restrict_vocab:
        used = torch.unique(windows)
        remap = torch.full((int(windows.max()) + 1,), -100, dtype=torch.long)
        remap[used] = torch.arange(len(used))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
    model.train()
    t0 = time.time()
    losses = []
    for step in range(steps):
        idx = torch.randint(0, len(windows), (batch,), generator=g)
        x = windows[idx]
        if restrict_vocab:
            h = model.model(input_ids=x).last_hidden_state[:, :-1]
            logits = h @ model.get_input_embeddings().weight[used].T
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, len(used)), remap[x[:, 1:]].reshape(-1))
        else:
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if (step + 1) % log_every == 0:
            print(f"  step {step + 1}/{steps} loss {np.mean(losses[-log_every:]):.3f} ({time.time() - t0:.0f} s)", flush=True)
    model.eval()
    return float(np.mean(losses[-20:])), time.time() - t0


def tiny_model(seed: int, *, steps: int = 200, batch: int = 8, lr: float = 3e-3, force: bool = False) -> Path:
    """A small SmolLM2-architecture model trained from scratch with ``seed`` (cached folder)."""
    import transformers as T

    import funcnet

    out = fixture_dir() / f"tiny-s{seed}-{steps}"
    if (out / "config.json").exists() and not force:
        return out
    lm = funcnet.load_model("smollm2-135m")
    torch.manual_seed(seed)
    cfg = T.LlamaConfig(vocab_size=len(lm.tokenizer), bos_token_id=lm.config.bos_token_id,
                        eos_token_id=lm.config.eos_token_id, pad_token_id=lm.config.pad_token_id, **TINY)
    model = T.LlamaForCausalLM(cfg)
    windows = _token_stream(lm.tokenizer, "builtin", "calib", 200_000)
    print(f"training tiny model seed {seed}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M params, "
          f"{len(windows)} windows", flush=True)
    loss, secs = _train(model, windows, steps=steps, batch=batch, lr=lr, seed=seed, restrict_vocab=True)
    model.save_pretrained(out)
    lm.tokenizer.save_pretrained(out)
    (out / "fixture.json").write_text(json.dumps({"seed": seed, "steps": steps, "batch": batch, "lr": lr,
                                                  "final_loss": loss, "train_s": round(secs, 1)}))
    return out


def _eval_loss(model, windows: torch.Tensor, batch: int = 4) -> float:
    """Mean next-token loss of ``model`` on ``windows`` (no gradients)."""
    model.eval()
    tot = 0.0
    with torch.no_grad():
        for i in range(0, len(windows), batch):
            x = windows[i:i + batch]
            tot += float(model(input_ids=x, labels=x).loss) * len(x)
    return tot / max(len(windows), 1)


def _probe_loss(model, tokenizer) -> float:
    """Mean next-token loss on the fingerprint's default probe texts (did the fine-tune move the
    model on the very texts the fingerprint uses?)."""
    from funcnet.fingerprint import DEFAULT_PROBES

    model.eval()
    vals = []
    with torch.no_grad():
        for t in DEFAULT_PROBES:
            x = torch.as_tensor([tokenizer(t)["input_ids"]], dtype=torch.long)
            vals.append(float(model(input_ids=x, labels=x).loss))
    return float(np.mean(vals))


def finetuned_smollm2(*, steps: int = 300, batch: int = 2, seq_len: int = 64, lr: float = 1e-4,
                      text: str = "builtin:math", freeze_embeddings: bool = True, force: bool = False,
                      time_steps: int = 0) -> Path:
    """SmolLM2-135M fine-tuned (full, AdamW, every parameter) on ``text`` (default: the built-in
    math calibration documents, unlike the fingerprint's probes), cached under
    ``$FUNCNET_CACHE/fingerprint/smollm2-ft-<domain>-<steps>``. ``fixture.json`` records the loss on
    held-out windows of the same domain (its *eval* split) and on the probe texts, before and after,
    so one can see that it is a real fine-tune. ``freeze_embeddings`` (default): every transformer
    block and norm is trained, the (tied) token embedding is not -- its 28 M-parameter gradient
    would cost a third of each step on 2 CPU cores. ``time_steps`` > 0: only time that many steps and
    return (nothing saved)."""
    import funcnet

    dom = text.split(":")[-1]
    out = fixture_dir() / f"smollm2-ft-{dom}-{steps}"
    if (out / "config.json").exists() and not force:
        return out
    lm = funcnet.load_model("smollm2-135m")
    model = lm.model.float()
    if freeze_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    windows = _token_stream(lm.tokenizer, text, "calib", 200_000, seq_len)
    held = _token_stream(lm.tokenizer, text, "eval", 16 * seq_len, seq_len)[:16]
    if time_steps:
        _, secs = _train(model, windows, steps=time_steps, batch=batch, lr=lr, seed=0, log_every=1)
        print(f"{time_steps} steps of {batch}x{seq_len} tokens: {secs:.1f} s wall "
              f"({secs / time_steps:.2f} s/step)", flush=True)
        return out
    before = _eval_loss(model, held)
    probe_before = _probe_loss(model, lm.tokenizer)
    print(f"fine-tuning SmolLM2-135M on {len(windows)} windows of {text} ({seq_len} tokens), {steps} steps x "
          f"{batch}, lr {lr}; held-out loss before {before:.3f}, probe loss before {probe_before:.3f}", flush=True)
    cpu0 = time.process_time()
    loss, secs = _train(model, windows, steps=steps, batch=batch, lr=lr, seed=0, log_every=25)
    cpu = time.process_time() - cpu0
    after = _eval_loss(model, held)
    probe_after = _probe_loss(model, lm.tokenizer)
    print(f"held-out loss {before:.3f} -> {after:.3f}; probe loss {probe_before:.3f} -> {probe_after:.3f}; "
          f"{secs:.0f} s wall, {cpu:.0f} s CPU", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    lm.tokenizer.save_pretrained(out)
    (out / "fixture.json").write_text(json.dumps({
        "steps": steps, "batch": batch, "seq_len": seq_len, "lr": lr, "text": f"{text} calib",
        "trained": "all but the token embedding" if freeze_embeddings else "all parameters",
        "train_loss_last20": loss, "heldout_loss_before": before, "heldout_loss_after": after,
        "probe_loss_before": probe_before, "probe_loss_after": probe_after,
        "train_s": round(secs, 1), "train_cpu_s": round(cpu, 1), "threads": torch.get_num_threads()}, indent=1))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", type=int, default=2, help="number of independently trained tiny models")
    ap.add_argument("--tiny-steps", type=int, default=80, help="training steps (the suite uses tiny-s{0,1}-80)")
    ap.add_argument("--tiny-seeds", type=int, nargs="+", default=None,
                    help="train exactly these tiny seeds instead of range(--tiny) (held-out negative: --tiny-seeds 2)")
    ap.add_argument("--ft-steps", type=int, default=300)
    ap.add_argument("--ft-batch", type=int, default=2)
    ap.add_argument("--ft-seq-len", type=int, default=64)
    ap.add_argument("--ft-lr", type=float, default=1e-4)
    ap.add_argument("--ft-text", default="builtin:math")
    ap.add_argument("--ft-train-embeddings", action="store_true", help="train the token embedding too")
    ap.add_argument("--time-steps", type=int, default=0, help="only time this many fine-tuning steps")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: $OMP_NUM_THREADS or 2)")
    ap.add_argument("--no-finetune", action="store_true")
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--held-out", action="store_true",
                    help="build the held-out suspects of `fingerprint_suite.py --held-out` (never used to choose the "
                         "score, thresholds or F.REFERENCE_INDEPENDENT): tiny-s2-80 and smollm2-ft-code-300 "
                         "(same recipes as tiny-s{0,1}-80 and smollm2-ft-math-300, other seed / other text)")
    a = ap.parse_args(argv)
    if a.held_out:
        a.tiny_seeds, a.ft_text = list(HELD_OUT_TINY_SEEDS), HELD_OUT_FT_TEXT
    import os

    torch.set_num_threads(a.threads or int(os.environ.get("OMP_NUM_THREADS", 2)))
    if a.time_steps:
        finetuned_smollm2(steps=a.ft_steps, batch=a.ft_batch, seq_len=a.ft_seq_len, lr=a.ft_lr, text=a.ft_text,
                          freeze_embeddings=not a.ft_train_embeddings, time_steps=a.time_steps)
        return 0
    for s in (a.tiny_seeds if a.tiny_seeds is not None else range(a.tiny)):
        print(tiny_model(s, steps=a.tiny_steps, force=a.force))
    if not a.no_finetune:
        print(finetuned_smollm2(steps=a.ft_steps, batch=a.ft_batch, seq_len=a.ft_seq_len, lr=a.ft_lr,
                                text=a.ft_text, freeze_embeddings=not a.ft_train_embeddings, force=a.force))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
