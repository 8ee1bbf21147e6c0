#!/usr/bin/env bash
# device_train_needle.sh: one training run of scripts/train_needle_model.py on the GPU machine, where a
# machine lasts only as long as a call: resume from the checkpoint carried in, train MINUTES, bring
# the checkpoint back under $OUT (at most 8 files of 16 MiB come back; the checkpoint is ~47 MB of
# fp32 weights in files of <= 12.6 MB plus progress.json, and the log).
# Usage (from the repository root, on the device, with .devpack carried):
#   scripts/device_train_needle.sh MINUTES
# .devpack must hold corpus.tar.xz (tar -cJf .devpack/corpus.tar.xz -C ../shared/text corpus),
# tokenizer.json and eval_wp_tail.txt (from ../shared), and the previous run's checkpoint files under
# .devpack/ckpt/ (none for the first run); carry those four paths alone (with the binaries and the
# reference model the 64 MiB limit is passed). Afterwards, here: copy the files that came back into
# .devpack/ckpt/ for the next run.
set -uo pipefail
minutes="${1:?minutes}"
out="${OUT:?OUT}"
work=/tmp/needle-work
mkdir -p /tmp/needle-corpus "$work"
tar -xJf .devpack/corpus.tar.xz -C /tmp/needle-corpus
[ -d .devpack/ckpt ] && cp .devpack/ckpt/ckpt_weights_*.pt .devpack/ckpt/progress.json "$work"/ 2>/dev/null
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 scripts/train_needle_model.py train --corpus /tmp/needle-corpus/corpus --tokenizer .devpack/tokenizer.json \
    --work "$work" --eval-text .devpack/eval_wp_tail.txt --minutes "$minutes" --workers 12 2>&1 | tee "$out/train.log"
status=${PIPESTATUS[0]}
cp "$work"/ckpt_weights_*.pt "$work"/progress.json "$out"/
exit "$status"
