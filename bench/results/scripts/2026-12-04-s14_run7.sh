#!/usr/bin/env bash
# session-14 device run 7: smoke test of scripts/train_needle_model.py: train ~40 s, resume ~10 s, export, load the export with freekv
B=/tmp/b; mkdir -p $B /tmp/c /tmp/w && tar -xJf .devpack/bins.tar.xz -C $B && tar -xJf .devpack/corpus.tar.xz -C /tmp/c
export LD_LIBRARY_PATH=$B:/usr/local/cuda/lib64 PYTHONUNBUFFERED=1
T="python3 scripts/train_needle_model.py"
timeout 80 $T train --corpus /tmp/c/corpus --tokenizer .devpack/tokenizer.json --work /tmp/w --eval-text .devpack/eval_wp_tail.txt --minutes 0.6 --save-minutes 0.3 --workers 8 > $OUT/train.log 2>&1
echo "train rc $?"; tail -8 $OUT/train.log
timeout 50 $T train --corpus /tmp/c/corpus --tokenizer .devpack/tokenizer.json --work /tmp/w --minutes 0.1 --workers 8 >> $OUT/train.log 2>&1
echo "resume rc $?"; tail -4 $OUT/train.log; cp /tmp/w/progress.json $OUT/
timeout 40 $T export --work /tmp/w --tokenizer .devpack/tokenizer.json --out $OUT/hf >> $OUT/train.log 2>&1
echo "export rc $?"; tail -2 $OUT/train.log; ls -la $OUT/hf
timeout 20 $B/freekv generate -m $OUT/hf -p "The pass key is" -n 8 --device cpu 2>&1 | tail -4
