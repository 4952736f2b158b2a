#!/usr/bin/env bash
# One command on the GPU machine: bash bench/device_run.sh OUT_DIR [extra device_run.py flags]
# Uses the machine's python3 (its PyTorch); our package comes from this checkout's src/. Wheels
# carried in .whl/ (see the device README) are installed to /tmp/site first when present.
set -euo pipefail
out="${1:?usage: bench/device_run.sh OUT_DIR [flags]}"
shift
here="$(cd "$(dirname "$0")/.." && pwd)"
if compgen -G "$here/.whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$here"/.whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$here/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 - <<'PY' || echo "[device_run] WARNING: some required packages are missing (above); sections needing them will fail and say so"
import importlib.util, sys
missing = [m for m in ("torch", "transformers", "peft", "accelerate", "safetensors", "rich")
           if importlib.util.find_spec(m) is None]
print("[device_run] missing packages:", missing or "none")
sys.exit(1 if missing else 0)
PY
exec timeout 480 python3 "$here/bench/device_run.py" "$out" "$@"
