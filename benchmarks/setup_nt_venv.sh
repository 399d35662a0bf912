#!/usr/bin/env bash
# Create benchmarks/.venv-nt: neural-tangents 0.6.5 on JAX (CPU), the peer that
# benchmarks/ntk_methods.py measures ntkit against. Idempotent: does nothing when the
# venv already imports and computes a tiny kernel. Takes ~1.5-3 minutes from scratch.
#
#   bash benchmarks/setup_nt_venv.sh            # create / check
#   FORCE=1 bash benchmarks/setup_nt_venv.sh    # rebuild from scratch
#   PYTHON=python3.11 bash benchmarks/setup_nt_venv.sh
#
# Pins (see shared/PEERS.md): jaxlib 0.4.23 needs NumPy 1.x; `import neural_tangents`
# imports TensorFlow unconditionally (via tf2jax), hence tensorflow 2.15.1 + tf2jax 0.3.5.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${NT_VENV:-$HERE/.venv-nt}"
PYTHON="${PYTHON:-python3}"
PINS=(jax==0.4.23 jaxlib==0.4.23 numpy==1.26.4 tensorflow==2.15.1 tf2jax==0.3.5 neural-tangents==0.6.5)

check() {
  [ -x "$VENV/bin/python" ] || return 1
  TF_CPP_MIN_LOG_LEVEL=3 JAX_PLATFORMS=cpu "$VENV/bin/python" - <<'PY'
import numpy as np
import jax, jax.numpy as jnp
import neural_tangents as nt
from neural_tangents import stax

init_fn, apply_fn, _ = stax.serial(stax.Dense(8), stax.Relu(), stax.Dense(3))
x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 5)), jnp.float32)
_, params = init_fn(jax.random.PRNGKey(0), x.shape)
kernels = []
for impl in (nt.NtkImplementation.JACOBIAN_CONTRACTION,
             nt.NtkImplementation.NTK_VECTOR_PRODUCTS,
             nt.NtkImplementation.STRUCTURED_DERIVATIVES):
    fn = jax.jit(nt.empirical_ntk_fn(apply_fn, trace_axes=(), vmap_axes=0, implementation=impl))
    kernels.append(np.asarray(fn(x, None, params)))
assert kernels[0].shape == (4, 4, 3, 3), kernels[0].shape
for k in kernels[1:]:
    np.testing.assert_allclose(k, kernels[0], rtol=1e-4, atol=1e-5)
print("neural-tangents", nt.__version__ if hasattr(nt, "__version__") else "?",
      "jax", jax.__version__, "numpy", np.__version__, "devices", jax.devices())
PY
}

if [ -z "${FORCE:-}" ] && check 2>/dev/null; then
  echo "ok: $VENV already works (FORCE=1 to rebuild)"
  exit 0
fi

echo "creating $VENV with ${PINS[*]}"
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
# (this machine's pip config names local indexes that may be absent: drop those warnings)
quiet_pip() {
  "$VENV/bin/python" -m pip install --quiet "$@" 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; }
}
quiet_pip --upgrade pip
quiet_pip "${PINS[@]}"
"$VENV/bin/python" -m pip freeze > "$VENV/freeze.txt"

if check; then
  echo "ok: $VENV"
else
  echo "error: $VENV was built but neural-tangents does not compute a kernel" >&2
  exit 1
fi
