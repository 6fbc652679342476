#!/usr/bin/env bash
# Run one ilf command on every node of a multi-GPU cluster: one process per node, each seeing its
# local GPUs. Under SLURM (`srun --ntasks-per-node=1 scripts/launch_gpu_cluster.sh ilf run ...`)
# JAX reads the job layout itself. Elsewhere, start it on every node with:
#
#   ILF_COORDINATOR=node0:12345 ILF_NUM_PROCESSES=4 ILF_PROCESS_ID=<0..3> \
#     scripts/launch_gpu_cluster.sh ilf run configs/paper/ilf.yaml run_dir=/shared/run
#
# The run directory must be on a file system every node sees; only process 0 writes to it.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 ilf SUBCOMMAND [ARGS...]" >&2
  exit 2
fi
if [ -z "${SLURM_JOB_ID:-}" ] && [ -z "${ILF_COORDINATOR:-}" ]; then
  echo "$0: set ILF_COORDINATOR, ILF_NUM_PROCESSES and ILF_PROCESS_ID, or run under SLURM" >&2
  exit 2
fi
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}
exec "$@"
