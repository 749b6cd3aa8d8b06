#!/usr/bin/env bash
# The GPU benchmark, in about 10 minutes on one CUDA GPU. From the repository root:
#
#     bash benchmarks/gpu.sh [OUT_DIR] [--policy DIR|random] [--dtype bf16] [--sections ...]
#     bash benchmarks/gpu.sh /tmp/smoke --device cpu --smoke     # the script path on CPU, tiny
#     bash benchmarks/gpu.sh /tmp/decode --sections decode_limit # the decode step vs the bound
#
# OUT_DIR (default bench-results/gpu) gets gpu_bench.json and gpu_bench.md. Without CUDA (and
# without --device cpu) it stops at once with exit code 2 and says why. If align_chains' Python
# dependencies are missing and .whl/ holds wheels (benchmarks/gpu_prepare.sh writes them), they
# are installed into /tmp/site first, offline. See benchmarks/gpu_bench.py for the sections.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
PYTHON="${PYTHON:-python3}"

out="bench-results/gpu"
if (($#)) && [[ "$1" != -* ]]; then  # the output folder comes first, if given
    out="$1"
    shift
fi
device="cuda"
previous=""
for arg in "$@"; do  # everything else goes to gpu_bench.py; only --device matters here
    [[ "$previous" == --device ]] && device="$arg"
    [[ "$arg" == --device=* ]] && device="${arg#--device=}"
    previous="$arg"
done

if [[ "$device" == cuda* ]]; then
    if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)' 2>/dev/null; then
        echo "gpu.sh: no CUDA device is visible (torch.cuda.is_available() is False, or torch is missing)." >&2
        echo "gpu.sh: run this on a machine with an NVIDIA GPU, or test the script path on CPU with:" >&2
        echo "gpu.sh:     bash benchmarks/gpu.sh /tmp/smoke --device cpu --smoke" >&2
        exit 2
    fi
fi

if ! "$PYTHON" -c 'import langchain_core, pydantic, tenacity, jsonschema' 2>/dev/null; then
    if compgen -G ".whl/*.whl" >/dev/null; then
        echo "gpu.sh: installing the carried wheels from .whl/ into /tmp/site (offline)" >&2
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site .whl/*.whl
        export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
    else
        echo "gpu.sh: align_chains' dependencies (langchain-core, pydantic, tenacity, jsonschema) are" >&2
        echo "gpu.sh: missing and .whl/ is empty: run bash benchmarks/gpu_prepare.sh where pip works." >&2
        exit 2
    fi
fi

export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
exec "$PYTHON" benchmarks/gpu_bench.py "$out" "$@"
