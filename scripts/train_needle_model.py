#!/usr/bin/env python3
"""train_needle_model.py: trains the small retrieval reference model of issue 15 (a Llama-architecture
causal LM, GQA group 6, head_dim 64, context 8192, 11.85M parameters) with the byte-level BPE tokenizer of
freekv-ref-28m, so that full attention answers passkey and key-value needles that the KV modes can
then be told apart on. Runs where PyTorch, transformers and tokenizers are installed (the GPU machine);
CI never runs Python.

Training is planned in runs of a few minutes that checkpoint and resume (a GPU machine lasts minutes):
  train_needle_model.py train --corpus DIR --tokenizer tokenizer.json --work DIR [--minutes 8]
      resumes from DIR/ckpt_* when present; writes the checkpoint (fp32 weights in files of ~12 MB and
      progress.json) every --save-minutes and at the end;
  train_needle_model.py export --work DIR --tokenizer tokenizer.json --out HF_DIR [--eval-text FILE]
      writes config.json, model.safetensors (bf16), tokenizer.json, golden.json (transformers'
      outputs with the bf16 weights upcast to fp32, the layout of freekv-ref-28m's golden.json).
Everything is seeded: data order depends on (seed, step), so a resumed run draws what an unbroken one
would have drawn.

The data (per sequence of the step's context length):
  - book text from --corpus (LM loss on every token);
  - passkey and key-value needles with freekv needle's templates (engine/needle.cpp) on filler that
    cannot be memorised (random words, shuffled sentences) or book text, the answer tokens weighted
    ANSWER_WEIGHT in the loss and unpredictable filler not scored;
  - copy tasks (a random token run repeated: induction heads) at every length.
Contexts grow by stage (STAGES): short contexts learn retrieval first, longer ones extend it.
"""
import argparse
import glob
import json
import math
import os
import random
import re
import time

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

# 11.85M parameters: hidden 384, 6 query heads sharing 1 KV head (group 6), head_dim 64, 6 layers. --q-heads,
# --kv-heads and --ff change the shape (e.g. 8 query heads on 2 KV heads and --ff 832: 11.9M, two selections per layer).
MODEL = dict(vocab_size=8192, hidden_size=384, intermediate_size=960, num_hidden_layers=6, num_attention_heads=6,
             num_key_value_heads=1, head_dim=64, max_position_embeddings=8192, rms_norm_eps=1e-5,
             tie_word_embeddings=True, bos_token_id=0, eos_token_id=0, pad_token_id=1)
ROPE_THETA = 500000.0
TOKENS_PER_STEP = 65536
# (first step, context length): contexts grow as training goes on; short contexts learn retrieval first.
STAGES = [(0, 256), (800, 512), (1600, 1024), (2800, 2048), (4400, 4096), (6400, 8192)]
# Learning rate: linear warm-up, constant, then a cosine decay to DECAY_FLOOR of the peak over the last
# DECAY_STEPS steps (warm-up, stable, decay). Runs before the decay starts do not depend on TOTAL_STEPS,
# so the total can be fixed once the measured rates say how many 8K steps the time allows.
TOTAL_STEPS = 11700
DECAY_STEPS = 2500
PEAK_LR, DECAY_FLOOR, WARMUP, RESUME_WARMUP = 2e-3, 0.05, 300, 50
ANSWER_WEIGHT = 5.0
MIX = [("book", 0.5), ("passkey", 0.15), ("kv", 0.2), ("copy", 0.15)]

PASSKEY_INTRO = "There is an important pass key hidden inside a lot of irrelevant text. Find it and memorize it.\n\n"
PASSKEY_QUESTION = "\n\nWhat is the pass key? The pass key is"
KV_INTRO = "Extract the value corresponding to the specified key in the JSON object below.\n\nJSON data:\n{"


def stage_context(step):
    ctx = STAGES[0][1]
    for first, c in STAGES:
        if step >= first:
            ctx = c
    return ctx


def learning_rate(step, resumed_at):
    warm = min(1.0, (step + 1) / WARMUP) * min(1.0, (step - resumed_at + 1) / RESUME_WARMUP if resumed_at else 1.0)
    decay_start = TOTAL_STEPS - DECAY_STEPS
    if step < decay_start:
        return PEAK_LR * warm
    progress = min(1.0, (step - decay_start) / DECAY_STEPS)
    return PEAK_LR * warm * (DECAY_FLOOR + (1 - DECAY_FLOOR) * 0.5 * (1 + math.cos(math.pi * progress)))


class Corpus:
    """The books as one token stream, their sentences, and a word list (each word as token ids)."""

    def __init__(self, corpus_dir, tok, holdout=()):
        files = [f for f in sorted(glob.glob(os.path.join(corpus_dir, "*.txt")))
                 if not any(h in os.path.basename(f) for h in holdout)]
        if holdout:
            print(f"corpus: held out {sorted(set(glob.glob(os.path.join(corpus_dir, '*.txt'))) - set(files))}", flush=True)
        texts = [open(f, encoding="utf-8").read() for f in files]
        ids = []
        for enc in tok.encode_batch(texts):
            ids.extend(enc.ids)
            ids.append(0)
        self.stream = np.array(ids, dtype=np.int32)
        sentences = []
        for t in texts:
            sentences.extend(s.strip() for s in re.split(r"(?<=[.!?])\s+", t) if 20 <= len(s.strip()) <= 300)
        self.sentences = [np.array(e.ids, dtype=np.int32) for e in tok.encode_batch([" " + s for s in sentences])]
        words = sorted({w for t in texts for w in re.findall(r"[A-Za-z]+", t) if 2 <= len(w) <= 12})
        self.words = [np.array(e.ids, dtype=np.int32) for e in tok.encode_batch([" " + w for w in words])]
        print(f"corpus: {len(files)} books, {len(self.stream)} tokens, {len(self.sentences)} sentences, "
              f"{len(self.words)} words", flush=True)


class Builder:
    """Builds training sequences of an exact length: ids and per-token loss weights (for predicting ids[i+1])."""

    def __init__(self, tok, corpus):
        self.tok, self.c = tok, corpus
        enc = lambda s: np.array(tok.encode(s).ids, dtype=np.int32)
        self.passkey_intro, self.passkey_question = enc(PASSKEY_INTRO), enc(PASSKEY_QUESTION)
        self.kv_intro = enc(KV_INTRO)
        self.space = enc(" ")[0]
        self.enc = enc

    def filler(self, rng, n):
        kind = rng.random()
        if kind < 0.4:  # random words: nothing to memorise, not scored
            out, total = [], 0
            while total < n:
                w = self.c.words[rng.randrange(len(self.c.words))]
                out.append(w)
                total += len(w)
            return np.concatenate(out)[:n], 0.0
        if kind < 0.7:  # sentences from anywhere, shuffled
            out, total = [], 0
            while total < n:
                s = self.c.sentences[rng.randrange(len(self.c.sentences))]
                out.append(s)
                total += len(s)
            return np.concatenate(out)[:n], 0.5
        start = rng.randrange(len(self.c.stream) - n - 1)
        return self.c.stream[start:start + n].copy(), 1.0

    def book(self, rng, n):
        start = rng.randrange(len(self.c.stream) - n - 1)
        w = np.ones(n, dtype=np.float32)
        w[-1] = 0.0  # weights[i] scores the prediction of ids[i + 1]: the last has none
        return self.c.stream[start:start + n].copy(), w

    def passkey(self, rng, n):
        digits = 5 + rng.randrange(4)
        key = str(1 + rng.randrange(9)) + "".join(str(rng.randrange(10)) for _ in range(digits - 1))
        needle = self.enc("\nThe pass key is " + key + ". Remember it. " + key + " is the pass key.\n")
        answer = self.enc(" " + key + ".")
        fixed = len(self.passkey_intro) + len(needle) + len(self.passkey_question) + len(answer)
        n_fill = n - fixed
        if n_fill < 1:
            return self.book(rng, n)
        fill, fill_weight = self.filler(rng, n_fill)
        at = int(round(rng.random() * n_fill))
        parts = [(self.passkey_intro, 1.0), (fill[:at], fill_weight), (needle, 1.0), (fill[at:], fill_weight),
                 (self.passkey_question, 1.0), (answer, ANSWER_WEIGHT)]
        return self.join(parts, answer_len=len(answer))

    def kv(self, rng, n):
        ident = lambda: "".join("0123456789abcdef"[rng.randrange(16)] + ("-" if i in (7, 11, 15, 19) else "") for i in range(32))
        question_of = lambda key: self.enc('}\n\nKey: "' + key + '"\nThe value associated with the specified key is: "')
        # Pairs while an estimate fits, then exact counts: drop pairs until intro + pairs + question + answer <= n.
        per_pair = len(self.enc('"' + ident() + '": "' + ident() + '", '))
        budget = n - len(self.kv_intro) - len(question_of(ident())) - per_pair // 2  # the answer: about half a pair
        texts = [(ident(), ident()) for _ in range(max(0, budget // per_pair) + 1)]  # one more than fits: trimmed below
        encoded = [np.array(e.ids, dtype=np.int32) for e in self.tok.encode_batch(['"' + k + '": "' + v + '", ' for k, v in texts])]
        while encoded:
            asked = int(round(rng.random() * (len(encoded) - 1)))
            question = question_of(texts[asked][0])
            answer = self.enc(texts[asked][1] + '"')
            total = len(self.kv_intro) + sum(len(e) for e in encoded) + len(question) + len(answer)
            if total <= n:
                break
            encoded.pop()
            texts.pop()
        if not encoded:
            return self.book(rng, n)
        # As freekv needle does: spaces pad the object so that the sequence has exactly n tokens.
        parts = [(self.kv_intro, 1.0), (np.full(n - total, self.space, dtype=np.int32), 0.0)]
        parts += [(e, 0.0) for e in encoded]  # random identifiers: nothing to predict
        parts += [(question, 1.0), (answer, ANSWER_WEIGHT)]
        return self.join(parts, answer_len=len(answer))

    def copy(self, rng, n):
        m = max(8, min(n // 3, 8 + rng.randrange(max(1, n // 3))))
        run = np.array([rng.randrange(2, MODEL["vocab_size"]) for _ in range(m)], dtype=np.int32)
        fill, fill_weight = self.filler(rng, n - 2 * m)
        parts = [(run, 0.0), (fill, fill_weight), (run, 2.0)]
        return self.join(parts, answer_len=0)

    @staticmethod
    def join(parts, answer_len):
        ids = np.concatenate([p for p, _ in parts])
        w = np.concatenate([np.full(len(p), wt, dtype=np.float32) for p, wt in parts])
        # weights[i] scores the prediction of ids[i + 1]: shift by one
        weights = np.concatenate([w[1:], np.zeros(1, dtype=np.float32)])
        return ids, weights

    def sequence(self, rng, n):
        r, acc = rng.random(), 0.0
        for kind, share in MIX:
            acc += share
            if r < acc:
                return getattr(self, kind)(rng, n)
        return self.book(rng, n)


class Batches(torch.utils.data.IterableDataset):
    def __init__(self, builder, seed, first_step):
        self.b, self.seed, self.first_step = builder, seed, first_step

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        step = self.first_step + wid
        while True:
            rng = random.Random(self.seed * 1_000_003 + step)
            n = stage_context(step)
            rows = [self.b.sequence(rng, n) for _ in range(TOKENS_PER_STEP // n)]
            ids = torch.from_numpy(np.stack([r[0] for r in rows]).astype(np.int64))
            w = torch.from_numpy(np.stack([r[1] for r in rows]))
            yield step, ids, w
            step += nw


def make_model():
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(**MODEL, rope_theta=ROPE_THETA, attn_implementation="sdpa")
    return LlamaForCausalLM(cfg), cfg


def save_checkpoint(work, model, step):
    """fp32 weights in files of at most ~12 MB (a device run brings back files of at most 16 MiB) and
    progress.json; the optimizer state is not kept: with beta2 = 0.95 Adam's moments span ~20 steps
    and rebuild during RESUME_WARMUP."""
    sd = {k: v.detach().float().cpu() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    parts, cur, size = [], {}, 0
    for k in sorted(sd):
        nbytes = sd[k].numel() * 4
        if cur and size + nbytes > 12e6:
            parts.append(cur)
            cur, size = {}, 0
        cur[k] = sd[k]
        size += nbytes
    parts.append(cur)
    for old in glob.glob(os.path.join(work, "ckpt_weights_*.pt")):
        os.remove(old)
    for i, part in enumerate(parts):
        torch.save(part, os.path.join(work, f"ckpt_weights_{i}.pt.tmp"))
        os.replace(os.path.join(work, f"ckpt_weights_{i}.pt.tmp"), os.path.join(work, f"ckpt_weights_{i}.pt"))
    with open(os.path.join(work, "progress.json"), "w") as f:
        json.dump({"step": step, "parts": len(parts), "time": time.time()}, f)


def load_checkpoint(work, model):
    path = os.path.join(work, "progress.json")
    if not os.path.exists(path):
        return 0
    progress = json.load(open(path))
    sd = {}
    for i in range(progress["parts"]):
        sd.update(torch.load(os.path.join(work, f"ckpt_weights_{i}.pt"), map_location="cpu"))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected and all(k == "lm_head.weight" for k in missing), (missing, unexpected)
    return progress["step"]


@torch.no_grad()
def evaluate(model, builder, eval_ids, device, n):
    """Held-out perplexity on eval_ids windows of n tokens, and answer-token accuracy of passkey and
    kv needles on held-out filler (teacher-forced: the share of answer tokens predicted exactly)."""
    model.eval()
    nll, count = 0.0, 0
    for start in range(0, min(len(eval_ids) - n - 1, 4 * n), n):
        x = torch.tensor(eval_ids[start:start + n + 1], device=device)[None]
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(x[:, :-1]).logits.float()
        nll += F.cross_entropy(logits[0], x[0, 1:], reduction="sum").item()
        count += n
    held_out = builder.c.stream
    builder.c.stream = np.asarray(eval_ids, dtype=np.int32)  # book filler from the held-out text only
    acc = {}
    for task in ("passkey", "kv"):
        rng = random.Random(7)
        hit = tot = 0
        for _ in range(16):
            ids, w = getattr(builder, task)(rng, n)
            x = torch.tensor(ids, device=device, dtype=torch.long)[None]
            with torch.autocast("cuda", dtype=torch.bfloat16):
                pred = model(x).logits[0].argmax(-1)
            mask = torch.tensor(w, device=device) >= ANSWER_WEIGHT
            hit += (pred[:-1][mask[:-1]] == x[0, 1:][mask[:-1]]).sum().item()
            tot += mask[:-1].sum().item()
        acc[task] = hit / max(tot, 1)
    # Exact match, greedy, as freekv needle scores it: the prompt up to the answer, then generation.
    exact = {}
    for task in ("passkey", "kv"):
        rng = random.Random(11)
        hit = 0
        for _ in range(8):
            ids, w = getattr(builder, task)(rng, n)
            answer_at = int(np.argmax(w >= ANSWER_WEIGHT)) + 1  # first answer token
            x = torch.tensor(ids[:answer_at], device=device, dtype=torch.long)[None]
            want = ids[answer_at:].tolist()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = model.generate(x, max_new_tokens=len(want), do_sample=False, eos_token_id=None, pad_token_id=1)
            hit += out[0, answer_at:].tolist() == want
        exact[task] = hit / 8
    builder.c.stream = held_out
    model.train()
    return math.exp(nll / max(count, 1)), acc, exact


def check_builders(builder):
    """Every kind of sequence has the exact length at every stage, and a needle's answer ends it."""
    for _, n in STAGES:
        rng = random.Random(n)
        for kind, _ in MIX:
            for _ in range(4):
                ids, w = getattr(builder, kind)(rng, n)
                assert len(ids) == n and len(w) == n and w[-1] == 0, (kind, n, len(ids))
                if kind in ("passkey", "kv"):
                    answer = np.nonzero(w >= ANSWER_WEIGHT)[0]
                    assert len(answer) > 0 and answer[-1] == n - 2, (kind, n)
    print("builders: exact lengths and answers at every stage", flush=True)


def probe_rates(model, cfg, device, step):
    """Times a forward and backward pass at each stage's context on random ids (speed does not depend
    on content; no weight changes), and what the remaining steps would take at those rates: the
    numbers that TOTAL_STEPS is fixed from."""
    remaining = 0.0
    for i, (first, n) in enumerate(STAGES):
        last = STAGES[i + 1][0] if i + 1 < len(STAGES) else TOTAL_STEPS
        ids = torch.randint(2, cfg.vocab_size, (TOKENS_PER_STEP // n, n), device=device)
        for rep in range(4):
            if rep == 1:
                torch.cuda.synchronize()
                t = time.time()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                logits = model(ids).logits
            F.cross_entropy(logits.float().reshape(-1, cfg.vocab_size), ids.reshape(-1)).backward()
        torch.cuda.synchronize()
        per_step = (time.time() - t) / 3
        remaining += max(0, last - max(first, step)) * per_step
        print(f"probe: context {n}: {per_step * 1e3:.1f} ms per step (forward and backward); steps {first}-{last}", flush=True)
    model.zero_grad(set_to_none=True)
    print(f"probe: steps {step}-{TOTAL_STEPS} would take {remaining / 60:.1f} min at these rates", flush=True)


def train(args):
    torch.manual_seed(args.seed)
    tok = Tokenizer.from_file(args.tokenizer)
    corpus = Corpus(args.corpus, tok, args.holdout)
    builder = Builder(tok, corpus)
    eval_ids = tok.encode(open(args.eval_text, encoding="utf-8").read()).ids if args.eval_text else None
    check_builders(builder)
    device = "cuda"
    model, cfg = make_model()
    model.to(device)
    print(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters", flush=True)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=PEAK_LR, betas=(0.9, 0.95), eps=1e-8, fused=True)
    os.makedirs(args.work, exist_ok=True)
    step = load_checkpoint(args.work, model)
    if args.probe:
        probe_rates(model, cfg, device, step)
    resumed_at = step
    print(f"starting at step {step} (context {stage_context(step)})", flush=True)
    loader = torch.utils.data.DataLoader(Batches(builder, args.seed, step), batch_size=None, num_workers=args.workers,
                                         prefetch_factor=4, persistent_workers=False)
    t0 = last_save = last_log = time.time()
    loss_sum = ans_sum = 0.0
    n_log = 0
    for got_step, ids, w in loader:
        assert got_step == step, (got_step, step)
        for g in opt.param_groups:
            g["lr"] = learning_rate(step, resumed_at)
        ids, w = ids.to(device, non_blocking=True), w.to(device, non_blocking=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(ids).logits
        per_tok = F.cross_entropy(logits[:, :-1].float().reshape(-1, cfg.vocab_size), ids[:, 1:].reshape(-1),
                                  reduction="none").view(ids.shape[0], -1)
        wt = w[:, :-1]
        loss = (per_tok * wt).sum() / wt.sum().clamp(min=1.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        loss_sum += loss.item()
        ans = wt >= ANSWER_WEIGHT
        if ans.any():
            ans_sum += (logits[:, :-1].argmax(-1) == ids[:, 1:])[ans].float().mean().item()
        n_log += 1
        now = time.time()
        if now - last_log > 30:
            print(f"step {step} ctx {ids.shape[1]} loss {loss_sum / n_log:.3f} answer-token acc {ans_sum / n_log:.3f} "
                  f"lr {learning_rate(step, resumed_at):.2e} {(now - t0) / 60:.1f} min {n_log / (now - last_log):.2f} steps/s",
                  flush=True)
            loss_sum = ans_sum = 0.0
            n_log = 0
            last_log = now
        done = now - t0 > args.minutes * 60 or step >= TOTAL_STEPS
        if done or now - last_save > args.save_minutes * 60:
            save_checkpoint(args.work, model, step)
            last_save = now
        if done:
            break
    if eval_ids is not None:
        ctx = stage_context(step)
        lengths = {min(ctx, 2048), ctx} if step < TOTAL_STEPS else {n for n in (2048, 4096, 8192) if n <= ctx}
        for n in sorted(lengths):
            ppl, acc, exact = evaluate(model, builder, eval_ids, device, n)
            print(f"eval at {n}: held-out perplexity {ppl:.2f}, answer-token accuracy passkey {acc['passkey']:.3f} "
                  f"kv {acc['kv']:.3f}, greedy exact match passkey {exact['passkey']:.2f} kv {exact['kv']:.2f}", flush=True)
    print(f"stopped at step {step} of {TOTAL_STEPS}", flush=True)


def export(args):
    import transformers
    from safetensors.torch import save_file
    from transformers import LlamaForCausalLM
    model, cfg = make_model()
    step = load_checkpoint(args.work, model)
    model.tie_weights()
    os.makedirs(args.out, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(args.out, safe_serialization=True)
    with open(args.tokenizer, "rb") as src, open(os.path.join(args.out, "tokenizer.json"), "wb") as dst:
        dst.write(src.read())
    ref = LlamaForCausalLM.from_pretrained(args.out, dtype=torch.float32, attn_implementation="eager").eval()
    tok = Tokenizer.from_file(args.tokenizer)
    prompts = ["The pass key is 48291. Remember it. What is the pass key? The pass key is",
               "It was the best of times, it was the worst of times,"]
    cases = []
    with torch.no_grad():
        for text in prompts:
            ids = tok.encode(text).ids
            x = torch.tensor([ids])
            logits = ref(x).logits[0, -1].tolist()
            greedy = ref.generate(x, max_new_tokens=32, do_sample=False, eos_token_id=None, pad_token_id=1)
            cases.append({"prompt_text": text, "prompt_ids": ids, "last_logits": [round(v, 5) for v in logits],
                          "greedy_32": greedy[0, len(ids):].tolist()})
    golden = {"note": f"scripts/train_needle_model.py export at step {step}, transformers {transformers.__version__}, "
                      f"torch {torch.__version__}, bf16 weights upcast to fp32", "cases": cases}
    with open(os.path.join(args.out, "golden.json"), "w") as f:
        json.dump(golden, f)
    n_params = sum(p.numel() for p in model.parameters())
    with open(os.path.join(args.out, "TRAINING.md"), "w") as f:
        f.write(f"""# How this model was made (written by scripts/train_needle_model.py export)

- parameters: {n_params} ({n_params / 1e6:.2f}M); config: {json.dumps(MODEL)}, rope_theta {ROPE_THETA}
- trained {step} of {TOTAL_STEPS} planned steps of {TOKENS_PER_STEP} tokens; contexts by stage (first step, length):
  {STAGES}; peak learning rate {PEAK_LR}, warm-up {WARMUP} steps ({RESUME_WARMUP} after each resume), constant, then
  a cosine decay to {DECAY_FLOOR} of the peak over the last {DECAY_STEPS} steps,
  AdamW (0.9, 0.95), weight decay 0.1 on matrices, gradient clip 1.0, bf16 autocast
- data per sequence: {MIX}; needles use freekv needle's templates; answer tokens weighted {ANSWER_WEIGHT}; filler of
  random words or shuffled sentences from the books, or book text; random identifiers and words not scored
- books: the public-domain corpus beside the repository (../shared/text/corpus, 41 books, not War and Peace);
  held-out evaluation text: ../shared/text/eval_wp_tail.txt
- weights stored in bf16; golden.json: transformers {transformers.__version__}, torch {torch.__version__}, the bf16
  weights upcast to fp32
""")
    print("exported", args.out, sorted(os.listdir(args.out)), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--corpus", required=True)
    t.add_argument("--tokenizer", required=True)
    t.add_argument("--work", required=True)
    t.add_argument("--eval-text")
    t.add_argument("--minutes", type=float, default=8.0)
    t.add_argument("--save-minutes", type=float, default=2.0)
    t.add_argument("--workers", type=int, default=12)
    t.add_argument("--seed", type=int, default=1234)
    t.add_argument("--probe", action="store_true", help="time each stage's context before training")
    t.add_argument("--holdout", action="append", default=[],
                   help="leave the corpus books whose file name contains this out of training (repeatable), so that "
                        "`freekv perplexity` on them measures text of the training distribution the model never saw")
    e = sub.add_parser("export")
    e.add_argument("--work", required=True)
    e.add_argument("--tokenizer", required=True)
    e.add_argument("--out", required=True)
    for p in (t, e):  # the shape; train and export must be given the same
        p.add_argument("--q-heads", type=int, default=MODEL["num_attention_heads"], help="query heads (6)")
        p.add_argument("--kv-heads", type=int, default=MODEL["num_key_value_heads"], help="KV heads (1)")
        p.add_argument("--ff", type=int, default=MODEL["intermediate_size"], help="MLP width (960)")
    args = ap.parse_args()
    if args.q_heads % args.kv_heads != 0 or args.q_heads // args.kv_heads < 4:
        ap.error(f"--q-heads {args.q_heads} over --kv-heads {args.kv_heads}: the group must be whole and at least 4")
    MODEL.update(num_attention_heads=args.q_heads, num_key_value_heads=args.kv_heads, intermediate_size=args.ff)
    train(args) if args.cmd == "train" else export(args)


if __name__ == "__main__":
    main()
