#!/usr/bin/env bash
# Rebuild tests/assets/tiny-dpo: the tiny recipe's DPO-stage model (SFT -> DPO, ~5 min on 2 CPU
# cores) and its held-out eval, the starting point of tests/test_rl_async.py's accuracy test.
# Rerun when the tiny recipe's SFT or DPO stage, the tiny model or the tokenizer changes.
set -euo pipefail
cd "$(dirname "$0")/.."
run=$(mktemp -d)
posttrain run tiny --stage sft "output_dir=$run"
posttrain run tiny --stage dpo "output_dir=$run"
rm -rf tests/assets/tiny-dpo && mkdir -p tests/assets/tiny-dpo
cp "$run"/dpo/model/* tests/assets/tiny-dpo/
cp "$run"/dpo/evals.json tests/assets/tiny-dpo/evals.json
rm -rf "$run"
du -sh tests/assets/tiny-dpo
