#!/usr/bin/env python3
"""rerun_ref_golden.py: re-runs ../shared/models/freekv-ref-28m in transformers (fp32 weights,
eager attention, CPU) and writes last-position logits and 32 greedy tokens per golden case.
Why: golden.json's greedy_32 for the 1500-token case has a near-tie at step 5 (logit margin
0.005) that transformers 5.17 in fp32 resolves the other way; this file records what fp32
transformers gives today. Usage: python3 scripts/rerun_ref_golden.py MODEL_DIR OUT.json
"""
import sys
import json
import torch
import transformers
from transformers import AutoModelForCausalLM

MODEL_DIR = sys.argv[1]
g = json.load(open(MODEL_DIR + "/golden.json"))
m = AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float32, attn_implementation="eager").eval()
out = {"note": f"freekv-ref-28m re-run with transformers {transformers.__version__}, torch {torch.__version__}, fp32 weights, eager attention, CPU; by the command in tests/fixtures/ref_model_fp32/README.md", "cases": []}
for c in g["cases"]:
    ids = torch.tensor([c["prompt_ids"]])
    with torch.no_grad():
        lg = m(ids).logits[0, -1]
        gen = m.generate(ids, max_new_tokens=32, do_sample=False, eos_token_id=None, pad_token_id=1)
    greedy = gen[0, ids.shape[1]:].tolist()
    print("len", ids.shape[1], "greedy matches golden:", greedy == c["greedy_32"], "first diff:", next((i for i,(a,b) in enumerate(zip(greedy, c["greedy_32"])) if a!=b), None))
    out["cases"].append({"n_prompt": ids.shape[1], "greedy_32": greedy, "last_logits": [round(x, 5) for x in lg.tolist()]})
json.dump(out, open(sys.argv[2], "w"))
