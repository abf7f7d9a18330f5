#!/usr/bin/env bash
# The shakespeare-long preset: three character-level LSTM language models (2 x 512, bf16) trained
# on Tiny Shakespeare one after another, 60 minutes of training in all, then averaged.
#
#   benchmarks/presets/shakespeare_long.sh OUT [DATA]
#
# OUT   folder for the three runs (OUT/member-1, -2, -3) and the ensemble (OUT/ensemble)
# DATA  the text (default: the named dataset tinyshakespeare, found through $RNNKIT_DATA)
# RNNKIT (environment) the command to run, default `rnnkit` (e.g. RNNKIT=".venv/bin/rnnkit")
#
# Members that trained for different lengths make different errors, so their average gains more
# than that of equal members: the lead member gets half of the hour, the other two a quarter each
# (the split of the former in-run preset, lead share 0.5). Each member is a plain run with its own
# config file: its own seed (so its own initialisation and data order) and time budget.
# A step that fails stops the script; its run can be continued with `rnnkit resume OUT/member-N`.
set -euo pipefail

out=${1:?usage: shakespeare_long.sh OUT [DATA]}
data=${2:-tinyshakespeare}
configs=$(cd "$(dirname "$0")/../../configs" && pwd)
rnnkit=${RNNKIT:-rnnkit}

# 1. the lead member: seed 0, 1800 s (at most 20,000 steps)
$rnnkit train textgen --config "$configs/shakespeare-long-1.json" --data "$data" --out "$out/member-1"
# 2. second member: seed 1, 900 s (at most 10,000 steps)
$rnnkit train textgen --config "$configs/shakespeare-long-2.json" --data "$data" --out "$out/member-2"
# 3. third member: seed 2, 900 s (at most 10,000 steps)
$rnnkit train textgen --config "$configs/shakespeare-long-3.json" --data "$data" --out "$out/member-3"
# 4. the ensemble: the mean of the three next-token distributions (equal weights, as before),
#    scored on the validation text; sample with `rnnkit sample OUT/ensemble --prime ROMEO:`
$rnnkit ensemble "$out/member-1" "$out/member-2" "$out/member-3" --out "$out/ensemble" --weights equal
