"""Build (and cache) the models the fingerprint robustness suite needs that cannot be made by a
few lines of weight surgery:

* ``tiny-s{seed}``: small models of the SmolLM2 architecture (4 layers, hidden 128, MLP 384,
  SmolLM2 tokenizer) trained from scratch with different random seeds on the same text (the
  built-in calibration corpus) -- the hardest negatives: same architecture, same data, same
  tokenizer, independent training.
* ``smollm2-ft``: SmolLM2-135M fine-tuned (full AdamW) on different text (the built-in *math*
  calibration documents), a positive.

Everything lands under ``$FUNCNET_CACHE/fingerprint/`` and is reused when present.

    python scripts/make_fingerprint_fixtures.py            # all
    python scripts/make_fingerprint_fixtures.py --tiny 3   # only three tiny models
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


def fixture_dir() -> Path:
    from funcnet._io import cache_dir

    d = cache_dir() / "fingerprint"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _token_stream(tokenizer, spec: str, split: str, max_tokens: int) -> torch.Tensor:
    from funcnet.corpus import load_corpus, tokenize

    tok = tokenize(load_corpus(spec, split=split), tokenizer, max_length=64, mode="packed",
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


def finetuned_smollm2(*, steps: int = 40, batch: int = 4, lr: float = 1e-4, force: bool = False) -> Path:
    """SmolLM2-135M fine-tuned (full, AdamW) on the built-in math documents (cached folder)."""
    import funcnet

    out = fixture_dir() / f"smollm2-ft-math-{steps}"
    if (out / "config.json").exists() and not force:
        return out
    lm = funcnet.load_model("smollm2-135m")
    windows = _token_stream(lm.tokenizer, "builtin:math", "calib", 200_000)
    print(f"fine-tuning SmolLM2-135M on {len(windows)} math windows, {steps} steps", flush=True)
    loss, secs = _train(lm.model, windows, steps=steps, batch=batch, lr=lr, seed=0, log_every=10)
    lm.model.save_pretrained(out)
    lm.tokenizer.save_pretrained(out)
    (out / "fixture.json").write_text(json.dumps({"steps": steps, "batch": batch, "lr": lr, "final_loss": loss,
                                                  "train_s": round(secs, 1), "text": "builtin:math calib"}))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", type=int, default=3, help="number of independently trained tiny models")
    ap.add_argument("--tiny-steps", type=int, default=200)
    ap.add_argument("--ft-steps", type=int, default=40)
    ap.add_argument("--no-finetune", action="store_true")
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args(argv)
    torch.set_num_threads(2)
    for s in range(a.tiny):
        print(tiny_model(s, steps=a.tiny_steps, force=a.force))
    if not a.no_finetune:
        print(finetuned_smollm2(steps=a.ft_steps, force=a.force))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
