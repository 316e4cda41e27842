# Shell helpers for the lifecycle test-bed scenarios (busybox sh in L1), included by
# testbed_lifecycle.rs and testbed_snapshot_devices.rs.
export NO_COLOR=1
lc_now() { cut -d' ' -f1 /proc/uptime; }
lc_since() { awk -v a="$1" -v b="$(lc_now)" 'BEGIN{printf "%.2f", b-a}'; }
lc_time() { echo "LC-TIME $1=$(lc_since "$2")s"; }
# lc_start NAME FD KAPSEL-ARGS...: start kapsel with stdin from a FIFO written through FD
lc_start() {
  _n=$1 _fd=$2; shift 2
  rm -f /tmp/$_n.in /tmp/$_n.out /tmp/$_n.sock; mkfifo /tmp/$_n.in; : > /tmp/$_n.out
  kapsel "$@" </tmp/$_n.in >/tmp/$_n.out 2>&1 &
  echo $! > /tmp/$_n.pid
  eval "exec $_fd>/tmp/$_n.in"
  lc_now > /tmp/$_n.t0
}
lc_alive() { kill -0 "$(cat /tmp/$1.pid)" 2>/dev/null; }
# lc_wait NAME PATTERN SECONDS: poll the console for a fixed string
lc_wait() {
  _i=0
  while [ $_i -lt $(($3 * 10)) ]; do
    grep -qF -- "$2" /tmp/$1.out && return 0
    lc_alive "$1" || { grep -qF -- "$2" /tmp/$1.out && return 0; echo "LC-DIED $1 waiting for $2"; return 1; }
    usleep 100000; _i=$((_i + 1))
  done
  echo "LC-TIMEOUT $1 waiting for $2"; return 1
}
# lc_last NAME: the last complete count on the console
lc_last() { grep -o 'count-[0-9][0-9]*' /tmp/$1.out | tail -1 | cut -d- -f2; }
# lc_wait_count NAME N SECONDS: wait for count-N or a later one
lc_wait_count() {
  _i=0
  while [ $_i -lt $(($3 * 10)) ]; do
    _c=$(lc_last "$1"); [ -n "$_c" ] && [ "$_c" -ge "$2" ] && return 0
    usleep 100000; _i=$((_i + 1))
  done
  echo "LC-TIMEOUT $1 waiting for count-$2 (last ${_c:-none})"; return 1
}
# lc_shell NAME FD: wait for the guest shell, switch its echo off
lc_shell() {
  lc_wait "$1" 'guest: exit=shell' 300 || return 1
  _i=0
  while [ $_i -lt 60 ] && ! grep -q 'SHELL-UP-3' /tmp/$1.out; do
    echo 'echo SHELL-UP-$((1+2))' >&"$2"; sleep 1; _i=$((_i + 1))
  done
  echo 'stty -echo; echo ECHO-$((2*5))-OFF' >&"$2"
  lc_wait "$1" 'ECHO-10-OFF' 30
}
lc_api() { _n=$1; shift; kapsel vm "$@" --api-socket /tmp/$_n.sock; }
# lc_stop NAME FD: forced shutdown through the API, then the exit code
lc_stop() {
  lc_api "$1" shutdown --timeout-ms 0 >/dev/null 2>&1 || echo "LC-SHUTDOWN-FAILED $1"
  _i=0
  while lc_alive "$1" && [ $_i -lt 100 ]; do usleep 100000; _i=$((_i + 1)); done
  lc_alive "$1" && { echo "LC-KILL $1"; kill -9 "$(cat /tmp/$1.pid)"; }
  lc_reap "$1"
  eval "exec $2>&-"
}
# lc_reap NAME: wait for the VMM, keep its exit code and wall time for lc_dump
lc_reap() {
  wait "$(cat /tmp/$1.pid)"; _rc=$?
  echo "LC-EXIT $1 rc=$_rc"; echo $_rc > /tmp/$1.rc; lc_since "$(cat /tmp/$1.t0)" > /tmp/$1.secs
}
# lc_dump NAME: the console as a KTEST block (rc and seconds: from lc_reap)
lc_dump() {
  echo "KTEST-BEGIN $1"; cat /tmp/$1.out; echo
  echo "KTEST-END $1 rc=$(cat /tmp/$1.rc) seconds=$(cat /tmp/$1.secs)"
}
