#!/usr/bin/env python3
"""make_golden.py: builds tiny random-weight checkpoints of other Llama-family configurations with
Hugging Face transformers and saves, for each, config.json, model.safetensors and golden.json
(prompt ids, logits of the last 4 prompt positions, 16 greedy tokens) under tests/fixtures/models/.

Run by hand on a machine with torch and transformers (the GPU machine has them); CI never runs
Python. Usage: python3 scripts/make_golden.py OUT_DIR
Each configuration covers something the reference model does not:
  qwen2-g7-bf16      Qwen2 (q/k/v bias), GQA group size 7, tied embeddings, bf16
  llama31-hd128-f16  Llama-3.1 rope scaling (llama3, small original context so it matters),
                     head_dim 128, untied output head, f16
  mistral-g2-f32     Mistral, group size 2, rope_theta 1e6, f32, sharded into two files
"""
import json
import os
import sys

import torch
import transformers
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config


def build(name, config, dtype, out_dir, shard_size=None):
    torch.manual_seed(1234)
    model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
    # Larger-than-default init so that logits are far from uniform and errors show.
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "norm" in pname:
                p.normal_(1.0, 0.1)
            elif p.dim() >= 2:
                p.normal_(0.0, 0.08)
            else:
                p.normal_(0.0, 0.05)  # q/k/v biases
    model = model.to(dtype)
    path = os.path.join(out_dir, name)
    os.makedirs(path, exist_ok=True)
    kwargs = {"max_shard_size": shard_size} if shard_size else {}
    model.save_pretrained(path, safe_serialization=True, **kwargs)
    # Reference: the stored weights upcast to fp32.
    ref = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32, attn_implementation="eager")
    ref.eval()
    g = torch.Generator().manual_seed(99)
    prompt = torch.randint(2, config.vocab_size, (1, 150), generator=g)
    with torch.no_grad():
        logits = ref(prompt).logits[0, -4:].tolist()
        greedy = ref.generate(prompt, max_new_tokens=16, do_sample=False, eos_token_id=None, pad_token_id=0)
    golden = {
        "note": f"made by scripts/make_golden.py with transformers {transformers.__version__}, torch {torch.__version__}",
        "prompt_ids": prompt[0].tolist(),
        "last4_logits": [[round(x, 5) for x in row] for row in logits],
        "greedy_16": greedy[0, prompt.shape[1]:].tolist(),
    }
    with open(os.path.join(path, "golden.json"), "w") as f:
        json.dump(golden, f)
    print(name, "ok", sorted(os.listdir(path)))


def main():
    out = sys.argv[1]
    common = dict(vocab_size=512, num_hidden_layers=2, max_position_embeddings=4096, rms_norm_eps=1e-5,
                  bos_token_id=0, eos_token_id=1)
    build("qwen2-g7-bf16", Qwen2Config(hidden_size=112, intermediate_size=160, num_attention_heads=7,
                                       num_key_value_heads=1, tie_word_embeddings=True, rope_theta=10000.0,
                                       use_sliding_window=False, **common), torch.bfloat16, out)
    build("llama31-hd128-f16", LlamaConfig(hidden_size=128, intermediate_size=128, num_attention_heads=2,
                                           num_key_value_heads=1, head_dim=128, tie_word_embeddings=False,
                                           rope_theta=500000.0,
                                           rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                         "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
                                           **common), torch.float16, out)
    build("mistral-g2-f32", MistralConfig(hidden_size=64, intermediate_size=96, num_attention_heads=4,
                                          num_key_value_heads=2, head_dim=16, tie_word_embeddings=False,
                                          rope_theta=1e6, sliding_window=None, **common),
          torch.float32, out, shard_size="200KB")


if __name__ == "__main__":
    main()
