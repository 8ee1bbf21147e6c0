#!/usr/bin/env python3
"""hf_prefill_peer.py: the Python peer for freekv's prefill numbers (issue 14): Hugging Face
transformers' LlamaForCausalLM at the Llama-3.1-8B shape with random bf16 weights on one GPU,
attention by torch's scaled_dot_product_attention ("sdpa"), timing one forward of an N-token
prompt (batch 1, logits of the last token only), as `freekv bench --kv-fill prefill` times its own.

Runs only where PyTorch and transformers are installed (the GPU machine); nothing is downloaded.
Usage: scripts/hf_prefill_peer.py [--lengths 8192,32768] [--reps 3] [--attn sdpa]
Prints one JSON object per length: {"peer", "n", "seconds", "tokens_per_s", "attn", versions}.
"""
import argparse
import json
import time

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", default="8192,32768")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--attn", default="sdpa")
    args = ap.parse_args()
    cfg = LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=8, vocab_size=128256, max_position_embeddings=131072, rope_theta=500000.0,
                      rms_norm_eps=1e-5, attn_implementation=args.attn)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    for n in [int(x) for x in args.lengths.split(",")]:
        ids = torch.randint(0, cfg.vocab_size, (1, n), device="cuda")
        times = []
        with torch.inference_mode():
            model(input_ids=ids, use_cache=False, logits_to_keep=1)  # warm-up
            for _ in range(args.reps):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                model(input_ids=ids, use_cache=False, logits_to_keep=1)
                torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
        best = sorted(times)[len(times) // 2]
        print(json.dumps({"peer": "transformers", "n": n, "seconds": round(best, 4), "tokens_per_s": round(n / best, 1),
                          "attn": args.attn, "torch": torch.__version__, "transformers": transformers.__version__,
                          "gpu": torch.cuda.get_device_name(0)}), flush=True)


if __name__ == "__main__":
    main()
