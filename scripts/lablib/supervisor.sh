#!/bin/bash
# Supervisor of one lab host: joins the host's own cgroups (so that several hosts never
# share one), then runs systemd-nspawn, and boots the host again when it reboots from
# inside (nspawn exits 133). Started and stopped by scripts/lab only.
# Usage: supervisor.sh NODE_DIR CGROUP_DIRS(colon-separated, may be empty) NSPAWN_COMMAND...
set -u
node_dir=$1
cgroup_dirs=$2
shift 2
IFS=: read -ra cgroups <<<"$cgroup_dirs"
# No subshell here: $BASHPID must be this process, which systemd-nspawn then inherits the cgroups of.
for cgroup in "${cgroups[@]}"; do
  relative="/${cgroup#"${cgroup%/*/*}"/}"
  case "$cgroup" in
    */systemd/*) expected=":name=systemd:$relative\$" ;;
    *) expected="^0::$relative\$" ;;
  esac
  if ! echo "$BASHPID" >"$cgroup/cgroup.procs" || ! grep -q -- "$expected" "/proc/$BASHPID/cgroup"; then
    echo "supervisor: could not move into cgroup $cgroup; refusing to boot in a shared cgroup"
    echo 90 >"$node_dir/supervisor.rc"
    exit 90
  fi
done
while :; do
  "$@" </dev/null &
  echo "$!" >"$node_dir/nspawn.pid"
  wait "$!"
  rc=$?
  echo "supervisor: systemd-nspawn exited with $rc"
  echo "$rc" >"$node_dir/supervisor.rc"
  if [ "$rc" -ne 133 ] || [ -e "$node_dir/stopping" ]; then
    break
  fi
done
exit "$rc"
