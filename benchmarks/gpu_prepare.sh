#!/usr/bin/env bash
# Prepare the GPU benchmark (benchmarks/gpu.sh) on a machine WITH internet, before copying the
# repository to a GPU machine that has none. Run from anywhere inside the repository:
#
#     bash benchmarks/gpu_prepare.sh
#
# It writes two git-ignored folders (added to .git/info/exclude), about 20 MB together:
#   .whl/         wheels (CPython 3.12, manylinux x86_64) of the Python packages align_chains
#                 needs that a bare CUDA image usually lacks: langchain-core and its dependencies,
#                 pydantic, tenacity, jsonschema, gguf. gpu.sh installs them with --no-index.
#   .gpu_assets/  SmolLM2-135M-Instruct's tokenizer, chat template and config (no weights, ~3 MB):
#                 where the embedded policy (a 98 MB GGUF package) is not installed, gpu.sh builds
#                 a SmolLM2-135M-shaped model with random weights from it. Timings need the shape,
#                 not the weights; pass --policy DIR to benchmark real weights.
# Versions are the ones installed here, so the GPU run uses what the test suite ran against.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
exclude="$(git rev-parse --git-common-dir)/info/exclude"
mkdir -p "$(dirname "$exclude")"
for path in /.whl/ /.gpu_assets/; do
    grep -qxF "$path" "$exclude" 2>/dev/null || echo "$path" >>"$exclude"
done

PYTHON="${PYTHON:-python3}"
# packages missing on the GPU image (see the device notes), with their own missing dependencies
PACKAGES=(
    langchain-core langchain-protocol langsmith jsonpatch jsonpointer orjson zstandard uuid-utils
    requests-toolbelt httpx2 httpcore2 truststore websockets distro sniffio
    pydantic pydantic-core annotated-types typing-inspection
    tenacity jsonschema jsonschema-specifications referencing rpds-py gguf
)
# one interpreter for every version (pip show takes seconds per package)
mapfile -t pinned < <("$PYTHON" -c '
import sys
from importlib.metadata import PackageNotFoundError, version
for name in sys.argv[1:]:
    try:
        print(f"{name}=={version(name)}")
    except PackageNotFoundError:
        print(f"gpu_prepare: {name} is not installed here; skipped", file=sys.stderr)
' "${PACKAGES[@]}")
if [[ "${SKIP_DOWNLOAD:-0}" != 1 ]]; then  # SKIP_DOWNLOAD=1: keep .whl/ as it is
    rm -rf .whl && mkdir -p .whl
    platforms=()
    for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
        manylinux2014_x86_64 manylinux1_x86_64; do
        platforms+=(--platform "$p")
    done
    for spec in "${pinned[@]}"; do  # one at a time: a wheel missing for one package names that package
        "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            "${platforms[@]}" -d .whl "$spec"
    done
fi

# every dependency of a downloaded wheel is either downloaded too or on the GPU image
"$PYTHON" - <<'EOF'
import sys, zipfile
from pathlib import Path

from packaging.requirements import Requirement

GPU_PYTHON = {  # the GPU image's interpreter, for environment markers
    "extra": "", "python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
    "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
    "implementation_name": "cpython", "platform_python_implementation": "CPython",
}

on_image = set("""accelerate aiohttp anyio attrs certifi charset-normalizer click filelock fsspec h11 httpcore
httpx huggingface-hub idna jinja2 markupsafe numpy packaging psutil pyyaml regex requests rich safetensors
scipy sentence-transformers tokenizers torch tqdm transformers typing-extensions urllib3 xxhash""".split())
have, missing = set(), []
wheels = sorted(Path(".whl").glob("*.whl"))
for wheel in wheels:
    have.add(wheel.name.split("-")[0].lower().replace("_", "-"))
for wheel in wheels:
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        for line in z.read(meta).decode().splitlines():
            if not line.startswith("Requires-Dist:"):
                continue
            requirement = Requirement(line.split(":", 1)[1].strip())
            if requirement.marker is not None and not requirement.marker.evaluate(GPU_PYTHON):
                continue  # an extra, or another platform's dependency
            dep = requirement.name.lower().replace("_", "-")
            if dep not in have and dep not in on_image:
                    missing.append(f"{wheel.name} needs {dep}")
if missing:
    sys.exit("gpu_prepare: dependencies neither downloaded nor on the GPU image:\n  " + "\n  ".join(missing))
print(f"gpu_prepare: {len(wheels)} wheels in .whl/, dependencies complete")
EOF

# the policy's tokenizer and config, without weights
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" - <<'EOF'
from pathlib import Path

from transformers import AutoConfig, AutoTokenizer, GenerationConfig

from align_chains.models.embedded import converted_policy_dir

source = converted_policy_dir()
target = Path(".gpu_assets/smollm2-135m-instruct")
target.mkdir(parents=True, exist_ok=True)
AutoTokenizer.from_pretrained(str(source)).save_pretrained(target)
AutoConfig.from_pretrained(str(source)).save_pretrained(target)
GenerationConfig.from_pretrained(str(source)).save_pretrained(target)
print(f"gpu_prepare: tokenizer and config of the embedded policy in {target}/ (no weights)")
EOF
du -sh .whl .gpu_assets
