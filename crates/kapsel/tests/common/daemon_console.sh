# Shell helpers for test-bed scenarios that drive `kapsel daemon` guests through
# `kapsel console` in L1 (busybox sh).
#
# `console NAME TIMEOUT MARK COMMANDS`: attaches `kapsel console NAME` with stdin from a
# FIFO, waits until the guest shell answers (`UP-MARK-3`: the VMM replays recent console
# output to a new client, so every session needs its own marks), types COMMANDS, waits until
# the guest printed MARK at the start of a line, detaches with Ctrl-] and prints the
# transcript between `DCONSOLE-BEGIN/END NAME` and `DTEST console-NAME rc=… up=… detached=…`.
# `step TAG CMD…` runs a command and prints its output as `DOUT TAG: …` and `DTEST TAG rc=…`.
trap '' PIPE  # a console that ended early must fail its step, not kill the scenario
say() { echo "DTEST $*"; }
step() { _tag=$1; shift; _o=$("$@" 2>&1); _rc=$?; printf '%s\n' "$_o" | sed "s/^/DOUT $_tag: /"; say "$_tag rc=$_rc"; }
console() {
  _n=$1 _to=$2 _mark=$3 _cmds=$4
  _in=/tmp/c.$_n.in _out=/tmp/c.$_n.out
  rm -f "$_in"; mkfifo "$_in"; : > "$_out"
  kapsel console "$_n" <"$_in" >"$_out" 2>"/tmp/c.$_n.err" &
  _pid=$!
  exec 3>"$_in"
  _i=0 _up=0
  while [ $_i -lt $((_to * 2)) ] && kill -0 $_pid 2>/dev/null; do
    if grep -q "UP-$_mark-3" "$_out"; then _up=1; break; fi
    [ $((_i % 4)) = 0 ] && printf 'echo UP-%s-$((1+2))\n' "$_mark" >&3
    sleep 0.5; _i=$((_i + 1))
  done
  [ $_up = 1 ] && printf '%s\n' "$_cmds" >&3
  while [ $_i -lt $((_to * 2)) ] && ! grep -q "^$_mark" "$_out"; do sleep 0.5; _i=$((_i + 1)); done
  printf '\035' >&3
  _j=0; while kill -0 $_pid 2>/dev/null && [ $_j -lt 20 ]; do sleep 0.5; _j=$((_j + 1)); done
  _det=1; if kill -0 $_pid 2>/dev/null; then _det=0; kill $_pid; fi
  wait $_pid; _rc=$?
  exec 3>&-
  echo "DCONSOLE-BEGIN $_n"; tr -d '\r' < "$_out"; echo; echo "DCONSOLE-END $_n"
  sed "s/^/DERR $_n: /" "/tmp/c.$_n.err"
  say "console-$_n rc=$_rc up=$_up detached=$_det"
}
