#!/usr/bin/env bash
# A bench-only environment with the real peers (never a dependency of the package):
#   deep-river 0.3.x pins river<0.26 and torch<2.6, so it gets river 0.25 and is installed
#   with --no-deps beside our torch 2.13.0 (its code runs on 2.13 for LSTMForecaster and
#   the rolling regressors that the benches use).
# Usage: bash bench/peers_env.sh            -> bench/.venv-peers
#        bench/.venv-peers/bin/python -m bench.engine_speed ...
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${PEERS_VENV:-bench/.venv-peers}
PY=${PY:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q "torch==2.13.0"
"$VENV/bin/pip" install -q "river==0.25.*" "pandas>=2.2,<3" "scikit-learn>=1.5,<2" \
    "sortedcontainers>=2.4" "tqdm>=4.66" "psutil"
"$VENV/bin/pip" install -q --no-deps "deep-river==0.3.4"
# streamseq itself (its dependency floor river>=0.21 accepts 0.25)
"$VENV/bin/pip" install -q -e ".[dev]"
"$VENV/bin/python" - <<'PY'
import deep_river, river, torch
print(f"peers env ok: deep-river {deep_river.__version__}, river {river.__version__}, torch {torch.__version__}")
PY
