#!/usr/bin/env bash
# Everything a session with a CUDA device should run first, in one go; the
# output is the GPU section of benchmarks/RESULTS.md. No GPU has been lent to
# this project yet: nothing below has run on one.
#
#   bash benchmarks/gpu_session.sh 2>&1 | tee gpu_session.log
set -uo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
python -c "import flowtie_fast as ft; print('gpu_available', ft.gpu_available())"
python -m pytest -q -m gpu -rs                          # kernels, backends, plans on the device
python -m pytest -q                                     # and everything else
python -m benchmarks.ratios --backend gpu --repeats 30  # tie vs its cuFFTs, vs NumPy
python -m benchmarks.ratios --stem --backend gpu        # 4D reduction vs reading once
python -m benchmarks.ratios --flow --backend gpu --sizes 256 1024
python -m benchmarks.ratios --flow --backend gpu --sizes 256 --model fast
python benchmarks/end_to_end.py --backend gpu --repeats 5
python benchmarks/first_call.py --backend gpu --methods tie flowtie
asv machine --yes && asv run --python=same --quick --bench "Solvers|Reduce4D|PlanSolve|FlowTIE" || true
