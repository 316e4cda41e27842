//! Scenarios that boot L2 guests with kapsel inside the test bed, and the parser of their
//! output.
//!
//! [`PRELUDE`] defines two busybox-sh functions for a scenario script:
//!
//! - `vm NAME TIMEOUT ARGS…` runs `kapsel run ARGS…` with stdin from /dev/null;
//! - `vm_shell NAME TIMEOUT 'COMMANDS' ARGS…` runs `kapsel run ARGS…` with stdin from a FIFO
//!   (the guest's command line must hold `guest.exit=shell`), waits until the guest shell
//!   answers, then types COMMANDS.
//!
//! Both frame the guest console between `KTEST-BEGIN NAME` and
//! `KTEST-END NAME rc=N seconds=S` (S: wall time in L1), which [`boots`] splits apart.

use crate::GuestReport;

/// Shell functions for scenarios; prepend to the scenario text.
pub const PRELUDE: &str = r#"
ktest_now() { cut -d' ' -f1 /proc/uptime; }
ktest_since() { awk -v a="$1" -v b="$(ktest_now)" 'BEGIN{printf "%.2f", b-a}'; }
vm() {
  _name=$1 _to=$2; shift 2
  echo "KTEST-BEGIN $_name"
  _t0=$(ktest_now)
  timeout "$_to" kapsel run "$@" </dev/null 2>&1
  _rc=$?
  echo; echo "KTEST-END $_name rc=$_rc seconds=$(ktest_since "$_t0")"
}
vm_shell() {
  _name=$1 _to=$2 _cmds=$3; shift 3
  _in=/tmp/$_name.in _out=/tmp/$_name.out
  rm -f "$_in" "$_out"; mkfifo "$_in"; : > "$_out"
  echo "KTEST-BEGIN $_name"
  _t0=$(ktest_now)
  timeout "$_to" kapsel run "$@" <"$_in" >"$_out" 2>&1 &
  _pid=$!
  exec 3>"$_in"
  _i=0 _up=0
  while [ $_i -lt $((_to * 2)) ] && kill -0 $_pid 2>/dev/null; do
    if grep -q 'SHELL-UP-3' "$_out"; then _up=1; break; fi
    if [ $((_i % 4)) = 0 ] && grep -q 'guest: exit=shell' "$_out"; then
      printf 'echo SHELL-UP-$((1+2))\n' >&3
    fi
    sleep 0.5; _i=$((_i + 1))
  done
  echo "KTEST-SHELL $_name up=$_up after=$(ktest_since "$_t0")s"
  [ $_up = 1 ] && printf '%s\n' "$_cmds" >&3
  wait $_pid; _rc=$?
  exec 3>&-
  cat "$_out"
  echo; echo "KTEST-END $_name rc=$_rc seconds=$(ktest_since "$_t0")"
}
"#;

/// The marker lines, as they appear in the output.
const BEGIN: &str = "KTEST-BEGIN ";
const END: &str = "KTEST-END ";

/// One `vm`/`vm_shell` call of a scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct Boot {
    pub name: String,
    /// kapsel's exit code; `None` when the END marker is missing (the scenario died).
    pub rc: Option<i32>,
    /// Wall time in L1 from start to exit.
    pub seconds: Option<f64>,
    /// Everything between the markers: the L2 console and kapsel's messages.
    pub console: String,
}

impl Boot {
    /// The `guest:` report in this boot's console.
    pub fn report(&self) -> GuestReport {
        GuestReport::parse(&self.console)
    }

    /// The console shows `text`.
    pub fn shows(&self, text: &str) -> bool {
        self.console.contains(text)
    }
}

/// Splits a scenario's output into its boots, in order.
pub fn boots(output: &str) -> Vec<Boot> {
    let mut out: Vec<Boot> = Vec::new();
    let mut open: Option<Boot> = None;
    for raw in output.lines() {
        let line = raw.trim_end_matches('\r');
        if let Some(pos) = line.find(BEGIN) {
            out.extend(open.take());
            let name = line[pos + BEGIN.len()..].trim().to_string();
            open = Some(Boot {
                name,
                rc: None,
                seconds: None,
                console: String::new(),
            });
        } else if let Some(pos) = line.find(END) {
            let Some(mut boot) = open.take() else {
                continue;
            };
            let before = &line[..pos];
            if !before.is_empty() {
                boot.console.push_str(before);
                boot.console.push('\n');
            }
            let mut words = line[pos + END.len()..].split_whitespace();
            let _name = words.next();
            for word in words {
                match word.split_once('=') {
                    Some(("rc", v)) => boot.rc = v.parse().ok(),
                    Some(("seconds", v)) => boot.seconds = v.parse().ok(),
                    _ => {}
                }
            }
            out.push(boot);
        } else if let Some(boot) = open.as_mut() {
            boot.console.push_str(line);
            boot.console.push('\n');
        }
    }
    out.extend(open);
    out
}

/// The word after `key` on the last line of `text` that has it (`field(out, "rc=")`): how
/// scenarios report a value that a later line may repeat with the final one.
pub fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .rev()
        .find_map(|l| l.split_once(key).map(|(_, rest)| rest))
        .and_then(|rest| rest.split_whitespace().next())
}

/// Shell-quotes one word for busybox sh.
pub fn sh_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r#"'\''"#))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_takes_the_word_after_the_key_on_the_last_line_with_it() {
        let out = "DTEST a rc=1 up=0\nnoise\nDTEST a rc=0 up=1\nDTEST b rc=2\n";
        assert_eq!(field(out, "DTEST a rc="), Some("0"));
        assert_eq!(field(out, "up="), Some("1"));
        assert_eq!(field(out, "DTEST c rc="), None);
        assert_eq!(field("x=\n", "x="), None);
    }

    #[test]
    fn splits_boots_with_codes_and_times() {
        let out =
            "noise\nKTEST-BEGIN a\r\nGUEST-READY\nguest: cpus=1\n\nKTEST-END a rc=0 seconds=1.50\n\
                   KTEST-BEGIN b\npanic\nKTEST-END b rc=3 seconds=0.20\n";
        let b = boots(out);
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].name, "a");
        assert_eq!(b[0].rc, Some(0));
        assert_eq!(b[0].seconds, Some(1.5));
        assert_eq!(b[0].report().cpus(), Some(1));
        assert!(b[0].report().ready);
        assert_eq!(b[1].rc, Some(3));
        assert!(b[1].shows("panic"));
        assert!(!b[1].shows("noise"));
    }

    #[test]
    fn end_marker_glued_to_console_text() {
        let b = boots("KTEST-BEGIN x\nlast wordsKTEST-END x rc=0 seconds=1\n");
        assert_eq!(b[0].rc, Some(0));
        assert!(b[0].shows("last words"));
    }

    #[test]
    fn unterminated_boot_has_no_rc() {
        let b = boots("KTEST-BEGIN x\nhang\nKTEST-BEGIN y\n");
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].rc, None);
        assert!(b[0].shows("hang"));
        assert_eq!(b[1].name, "y");
    }

    #[test]
    fn stray_end_is_ignored() {
        assert!(boots("KTEST-END x rc=0\n").is_empty());
    }

    #[test]
    fn quoting() {
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), r#"'it'\''s'"#);
    }
}
