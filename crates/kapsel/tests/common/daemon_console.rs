//! The shell helpers of `daemon_console.sh` for scenarios that drive `kapsel daemon` guests
//! through `kapsel console`, and the parsers of what they print.
#![allow(dead_code)]

use test_infra::scenario::field;

/// `say`, `step` and `console` (see `daemon_console.sh`); prepend to the scenario.
pub const HELPERS: &str = include_str!("daemon_console.sh");

/// The transcripts of every `console` call on `name`, in order.
pub fn transcripts<'a>(out: &'a str, name: &str) -> Vec<&'a str> {
    let begin = format!("DCONSOLE-BEGIN {name}\n");
    let end = format!("DCONSOLE-END {name}");
    out.match_indices(&begin)
        .filter_map(|(i, _)| {
            let rest = &out[i + begin.len()..];
            rest.find(&end).map(|j| &rest[..j])
        })
        .collect()
}

/// The output lines of step `tag`.
pub fn step_out<'a>(out: &'a str, tag: &str) -> Vec<&'a str> {
    let prefix = format!("DOUT {tag}: ");
    out.lines()
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .collect()
}

/// The `DTEST TAG rc=…` code of a step.
pub fn step_rc(out: &str, tag: &str) -> Option<i32> {
    field(out, &format!("DTEST {tag} rc=")).and_then(|s| s.parse().ok())
}
