#!/usr/bin/env bash
# device_train_needle.sh: one training run of scripts/train_needle_model.py on the GPU machine, where a
# machine lasts only as long as a call: resume from the checkpoint carried in, train MINUTES, and bring
# back what the next step needs under $OUT (at most 8 files of 16 MiB, 64 MiB in all, come back).
# Usage (from the repository root, on the device, with .devpack carried):
#   scripts/device_train_needle.sh MINUTES          the checkpoint is written straight into $OUT (fp32
#                                                   weights in files of <= 12.6 MB, progress.json), so a
#                                                   run stopped at the call's limit still returns its last save
#   scripts/device_train_needle.sh MINUTES export   the last run: trains (to TOTAL_STEPS at most), exports
#                                                   the Hugging Face folder and brings back that folder as
#                                                   $OUT/needle-model.tar.part-* (the fp32 checkpoint stays there)
# .devpack must hold corpus.tar.xz (tar -cJf .devpack/corpus.tar.xz -C ../shared/text corpus),
# tokenizer.json and eval_wp_tail.txt (from ../shared), and the previous run's checkpoint files under
# .devpack/ckpt/ (none for the first run); carry those paths alone. Afterwards, here: copy the
# checkpoint files that came back into .devpack/ckpt/ for the next run; after export, join the parts
# (cat needle-model.tar.part-* | tar -x). NEEDLE_SHAPE (e.g. "--q-heads 8 --kv-heads 2 --ff 832") passes the
# shape to both steps; every run of one model must be given the same. NEEDLE_TRAIN_ARGS goes to training only
# (e.g. "--holdout austen_emma" keeps a book out of training for a held-out perplexity of the same distribution).
set -uo pipefail
minutes="${1:?minutes}"
final="${2:-}"
out="${OUT:?OUT}"
work="$out"
[ "$final" = export ] && work=/tmp/needle-work
mkdir -p /tmp/needle-corpus "$work"
tar -xJf .devpack/corpus.tar.xz -C /tmp/needle-corpus
[ -d .devpack/ckpt ] && cp .devpack/ckpt/ckpt_weights_*.pt .devpack/ckpt/progress.json "$work"/ 2>/dev/null
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 scripts/train_needle_model.py train --corpus /tmp/needle-corpus/corpus --tokenizer .devpack/tokenizer.json \
    --work "$work" --eval-text .devpack/eval_wp_tail.txt --minutes "$minutes" --workers 12 --probe ${NEEDLE_SHAPE:-} ${NEEDLE_TRAIN_ARGS:-} 2>&1 | tee "$out/train.log"
status=${PIPESTATUS[0]}
if [ "$final" = export ] && [ "$status" -eq 0 ]; then
    python3 scripts/train_needle_model.py export --work "$work" --tokenizer .devpack/tokenizer.json \
        --out /tmp/needle-model ${NEEDLE_SHAPE:-} 2>&1 | tee "$out/export.log"
    status=${PIPESTATUS[0]}
    tar -cf - -C /tmp needle-model | split -b 15M - "$out/needle-model.tar.part-"
fi
exit "$status"
