#!/usr/bin/env bash
# Build mamba-ssm's CUDA selective scan on a GPU machine without network, for sm_90 only, into /tmp/site — the
# second oracle (and speed reference) for the project's Mamba kernels: tests/test_mamba_ssm_oracle.py,
# tools/bench_scan.py --mamba. Needs in .whl/: mamba_ssm-2.3.2.post1.tar.gz (PyPI sdist), ninja and einops wheels.
# Takes ~2.5 min with 16 cores.
#   bash tools/build_mamba_ssm.sh && export PYTHONPATH=/tmp/site:$PYTHONPATH
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
python3 -m pip install -q --no-index --no-deps --target /tmp/site "$repo"/.whl/ninja-*.whl "$repo"/.whl/einops-*.whl
export PATH=/tmp/site/bin:$PATH PYTHONPATH=/tmp/site:${PYTHONPATH:-}
work=$(mktemp -d)
tar xzf "$repo"/.whl/mamba_ssm-*.tar.gz -C "$work"
cd "$work"/mamba_ssm-*/
# one architecture (sm_90): the arch list in setup.py is kept as is, filtered just before it is used
python3 - <<'PY'
import re
src = open("setup.py").read()
hook = "    if FORCE_CXX11_ABI:"
assert hook in src
src = src.replace(hook, '    cc_flag = [f for f in cc_flag if f != "-gencode" and not f.startswith("arch=")]'
                  ' + ["-gencode", "arch=compute_90,code=sm_90"]\n' + hook, 1)
open("setup.py", "w").write(src)
PY
MAMBA_FORCE_BUILD=TRUE MAX_JOBS=16 python3 -m pip install -q --no-build-isolation --no-deps --no-index --target /tmp/site .
python3 -c "import torch, selective_scan_cuda, mamba_ssm; print('mamba-ssm', mamba_ssm.__version__, 'built')"
