#!/usr/bin/env bash
# Every AutoAttack measurement that docs/attacks.md and benchmarks/README.md quote, in one resumable
# sequence on the demo model (2-core CPU: about 3.5-4 hours; run it in the background, alone):
#   1. 1,000 images, attack seed 0: ours, the reference implementation (pyautoattack), torchattacks'
#      AutoAttack, FMN curves                                                          (~90 min)
#   2. 1,000 images, attack seed 1: ours and torchattacks                              (~35 min)
#   3. 2,000 images: our AutoAttack (members' marginal flips), then PGD-20, APGD-CE, FMN and Square
#      alone with both p schedules on every image (benchmarks/attack_members.py)
#      (measured 2026-11-28, 2 threads: 38 min + 33 min)
# Each step writes under runs/autoattack/ after every batch and resumes where a kill left it; copy
# the finished records to benchmarks/results/ and re-render the tables (see benchmarks/README.md).
#
#   nohup benchmarks/autoattack_runs.sh > runs/autoattack.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
OUT=runs/autoattack
mkdir -p "$OUT"
"$PY" -c "import pyautoattack, torchattacks" 2>/dev/null \
  || { echo "autoattack_runs: pip install --no-deps pyautoattack torchattacks first" >&2; exit 2; }
[ -f runs/demo/model.safetensors ] || { echo "autoattack_runs: no demo model; run make demo first" >&2; exit 2; }
"$PY" benchmarks/autoattack_speed.py --limit 1000 --seeds 0 --sides ours,reference,torchattacks,curves \
  --out "$OUT/autoattack_1000_seed0.json"
"$PY" benchmarks/autoattack_speed.py --limit 1000 --seeds 1 --sides ours,torchattacks \
  --out "$OUT/autoattack_1000_seed1.json"
"$PY" benchmarks/autoattack_speed.py --limit 2000 --seeds 0 --sides ours --out "$OUT/autoattack_2000_seed0.json"
"$PY" benchmarks/attack_members.py --limit 2000 --square-limit 2000 --out "$OUT/attack_members_2000.json"
echo "autoattack_runs: done"
