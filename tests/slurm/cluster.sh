#!/usr/bin/env bash
# A one-node Slurm test cluster on this machine, all state in one directory.
#
#   tests/slurm/cluster.sh start DIR     install (root + apt-get) if missing, configure, start
#   tests/slurm/cluster.sh stop DIR      stop every daemon it started, by the PID it recorded
#   source DIR/env.sh                    then sbatch/squeue/sacct/snakemake talk to this cluster
#
# Debian's packages (munge, slurmctld, slurmd, slurm-client, slurmdbd, mariadb-server; Slurm
# 22.05 on Debian 12), started without systemd: a private munged, a private MariaDB on a TCP port
# of 127.0.0.1 (slurmdbd needs it: sacct, and so snakemake-executor-plugin-slurm, has no data
# without accounting), slurmdbd, slurmctld and slurmd. Partitions `cpu` (default) and `gpu`,
# both on this host with its real CPUs and memory (`slurmd -C`); the gpu partition's node has a
# count-only gres (Gres=gpu:4, gres.conf Count=4 without File=), so `--gpus` requests are
# accepted and scheduled although no CUDA device exists. Cluster `scfmtest`, account `scfm`,
# user root. Ports: SCFM_SLURM_PORT_BASE (default 26817) .. +3.
set -euo pipefail

cmd=${1:?usage: cluster.sh start|stop DIR}
D=$(realpath -m "${2:?usage: cluster.sh start|stop DIR}")
PORT=${SCFM_SLURM_PORT_BASE:-26817}
PKGS="munge slurmctld slurmd slurm-client slurmdbd mariadb-server"

stop() {
  # reverse start order; each daemon by the PID file it wrote in $D
  for name in slurmd slurmctld slurmdbd mariadb munged; do
    f="$D/run/$name.pid"
    [ -s "$f" ] || continue
    pid=$(cat "$f")
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$f"
  done
  # the /etc/slurm/slurm.conf link, if it is still ours
  if [ -s "$D/run/etc-link" ]; then
    link=$(cat "$D/run/etc-link")
    [ -L "$link" ] && [ "$(readlink "$link")" = "$D/etc/slurm.conf" ] && rm -f "$link"
    rm -f "$D/run/etc-link"
  fi
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local n=$(( $1 * 10 )) what=$2; shift 2
  for _ in $(seq "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "cluster.sh: $what did not come up; logs in $D/log" >&2
  return 1
}

install() {
  if command -v slurmctld >/dev/null && command -v slurmdbd >/dev/null \
     && command -v munged >/dev/null && command -v mariadbd >/dev/null \
     && command -v sbatch >/dev/null && command -v slurmd >/dev/null; then
    return 0
  fi
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "cluster.sh: Slurm is not installed and installing it needs root and apt-get" >&2
    exit 3
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $PKGS >/dev/null
}

start() {
  [ "$(id -u)" = 0 ] || { echo "cluster.sh: must run as root" >&2; exit 3; }
  install
  mkdir -p "$D"/{etc,run,log,spool/ctld,spool/d,mysql}
  local node cpus mem
  node=$(slurmd -C | sed -n 's/^NodeName=\([^ ]*\).*/\1/p')
  cpus=$(slurmd -C | sed -n 's/.* CPUs=\([0-9]*\).*/\1/p')
  mem=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
  mem=$(( mem * 95 / 100 ))  # a node that claims more than it has is drained

  # munge: Slurm's clients (sacctmgr among them) use the default socket, so a munged already
  # running there is used as it is; otherwise one with this cluster's own key is started there
  local sock=/run/munge/munge.socket.2
  if ! munge -n --socket="$sock" >/dev/null 2>&1; then
    [ -s "$D/etc/munge.key" ] || dd if=/dev/urandom of="$D/etc/munge.key" bs=1024 count=1 2>/dev/null
    chmod 600 "$D/etc/munge.key"
    mkdir -p /run/munge
    munged --force --key-file="$D/etc/munge.key" --socket="$sock" \
      --pid-file="$D/run/munged.pid" --log-file="$D/log/munged.log" --seed-file="$D/run/munge.seed"
    wait_for 10 munged munge -n --socket="$sock"
  fi

  # MariaDB on 127.0.0.1:$((PORT+3)), data in $D/mysql
  if [ ! -d "$D/mysql/mysql" ]; then
    mariadb-install-db --user=root --datadir="$D/mysql" --auth-root-authentication-method=normal \
      --skip-test-db >"$D/log/mariadb-install.log" 2>&1
  fi
  mariadbd --user=root --datadir="$D/mysql" --socket="$D/run/mysql.sock" --port=$((PORT + 3)) \
    --bind-address=127.0.0.1 --pid-file="$D/run/mariadb.pid" --log-error="$D/log/mariadb.log" \
    --innodb-buffer-pool-size=64M >/dev/null 2>&1 &
  wait_for 60 mariadb mariadb --socket="$D/run/mysql.sock" -uroot -e 'select 1'
  mariadb --socket="$D/run/mysql.sock" -uroot -e "
    CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'scfm';
    GRANT ALL ON *.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;"

  cat >"$D/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdPort=$((PORT + 2))
SlurmUser=root
PidFile=$D/run/slurmdbd.pid
LogFile=$D/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$((PORT + 3))
StorageUser=slurm
StoragePass=scfm
StorageLoc=scfm_slurm_acct
EOF
  chmod 600 "$D/etc/slurmdbd.conf"

  cat >"$D/etc/slurm.conf" <<EOF
ClusterName=scfmtest
SlurmctldHost=$node
SlurmUser=root
AuthType=auth/munge
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
StateSaveLocation=$D/spool/ctld
SlurmdSpoolDir=$D/spool/d
SlurmctldPidFile=$D/run/slurmctld.pid
SlurmdPidFile=$D/run/slurmd.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
GresTypes=gpu
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$((PORT + 2))
AccountingStorageTRES=gres/gpu
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
ReturnToService=2
# slurmd finds no GPU device for the count-only gres; take the node as configured here
SlurmdParameters=config_overrides
# jobs stay visible to squeue for 10 minutes after they end; sacct keeps them for good
MinJobAge=600
KillWait=30
SchedulerParameters=sched_interval=2
# a requested node configuration no node has is refused at submission
EnforcePartLimits=ALL
NodeName=$node CPUs=$cpus RealMemory=$mem Gres=gpu:4 State=UNKNOWN
PartitionName=cpu Nodes=$node Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$node MaxTime=INFINITE State=UP
EOF
  # slurmd 22.05 reports 0 GPUs for a Count-only line; four placeholder files stand in as the
  # devices (task/none: nothing opens or constrains them; CUDA_VISIBLE_DEVICES is set as usual)
  mkdir -p "$D/dev"
  touch "$D"/dev/gpu{0,1,2,3}
  cat >"$D/etc/gres.conf" <<EOF
AutoDetect=off
NodeName=$node Name=gpu File=$D/dev/gpu[0-3]
EOF
  echo "# no cgroup plugins: proctrack/linuxproc, task/none" >"$D/etc/cgroup.conf"
  cat >"$D/env.sh" <<EOF
export SLURM_CONF=$D/etc/slurm.conf
EOF
  export SLURM_CONF=$D/etc/slurm.conf
  # snakemake-executor-plugin-slurm-jobstep (0.6.1) drops SLURM_CONF (every SLURM_* but the job
  # id) before its srun inside the job, so srun reads the default /etc/slurm/slurm.conf: point it
  # here while the cluster runs, unless a real configuration is there (left alone; then stop)
  local sys=/etc/slurm/slurm.conf
  if [ -e "$sys" ] && [ ! -L "$sys" ]; then
    echo "cluster.sh: $sys exists (a real Slurm configuration): not starting a test cluster over it" >&2
    exit 3
  fi
  mkdir -p /etc/slurm
  ln -sfn "$SLURM_CONF" "$sys"
  echo "$sys" >"$D/run/etc-link"

  slurmdbd
  wait_for 30 slurmdbd sacctmgr -n list cluster
  sacctmgr -i add cluster scfmtest >/dev/null 2>&1 || true
  sacctmgr -i add account scfm Cluster=scfmtest Description=tests Organization=scfm >/dev/null 2>&1 || true
  sacctmgr -i add user root Account=scfm Cluster=scfmtest >/dev/null 2>&1 || true
  slurmctld
  wait_for 30 slurmctld scontrol ping
  slurmd
  wait_for 30 "slurmd (node $node idle)" sh -c "sinfo -h -n $node -o %T | grep -qE '^(idle|mixed|allocated)'"
  echo "cluster scfmtest up: node $node ($cpus CPUs, $mem MB, gres gpu:4); source $D/env.sh"
}

case "$cmd" in
  start) trap 'stop' EXIT; start; trap - EXIT ;;
  stop) stop ;;
  *) echo "usage: cluster.sh start|stop DIR" >&2; exit 2 ;;
esac
