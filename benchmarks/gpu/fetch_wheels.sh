#!/usr/bin/env bash
# Download the pure-Python wheels the GPU machine lacks into .whl/ (git-ignored), to be
# carried with the working tree: run(..., carry=[".whl"]); check.sh installs them there
# with `pip install --no-index --no-deps --target /tmp/site .whl/*.whl`.
#
# The machine has torch, numpy, opt-einsum, tqdm, pluggy, jax and numpyro; pyro-ppl 1.9.2
# needs numpy, opt_einsum, pyro-api, torch and tqdm, so pyro-ppl and pyro-api are what it
# lacks. funsor 0.4.8 (with makefun and multipledispatch) is NumPyro's TraceEnum_ELBO for the
# enumerated HMM. All pure Python, about 1.5 MB.
set -eu
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PY" ] || PY=$(command -v python3)
mkdir -p "$ROOT/.whl"
"$PY" -m pip download --no-deps --only-binary=:all: -d "$ROOT/.whl" \
    pyro-ppl==1.9.2 pyro-api==0.1.2 funsor==0.4.8 makefun multipledispatch
ls -l "$ROOT/.whl"
du -sh "$ROOT/.whl"
