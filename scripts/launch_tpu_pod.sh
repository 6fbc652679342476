#!/usr/bin/env bash
# Run one ilf command on every worker of a TPU VM pod slice (the same command on each worker).
# JAX discovers the pod by itself (jax.distributed.initialize with no arguments), builds the
# global mesh over all chips, and only process 0 writes shared artifacts.
#
#   scripts/launch_tpu_pod.sh TPU_NAME ZONE ilf run configs/paper/ilf.yaml run_dir=gs://.../run
#
# Setup once per pod: clone this repository to ~/ilf_jax on every worker and install it there
# (`pip install -e .` plus `pip install 'jax[tpu]'`). Run directories must be on storage every
# worker sees (a GCS bucket mounted with gcsfuse, or NFS).
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 TPU_NAME ZONE ilf SUBCOMMAND [ARGS...]" >&2
  exit 2
fi
tpu=$1 zone=$2
shift 2
cmd=$(printf '%q ' "$@")
exec gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all \
  --command "cd ~/ilf_jax && . .venv/bin/activate && $cmd"
