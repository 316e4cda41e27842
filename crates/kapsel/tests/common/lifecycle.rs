//! The shell helpers of `lifecycle.sh` for scenarios that run VMMs in the background in L1
//! (start, pause, snapshot, restore), and the parsers of what those scenarios print.
#![allow(dead_code)]

use test_infra::TestBedRun;

/// Shell helpers for the scenario (busybox sh in L1). A VMM runs in the background with its
/// stdin on a FIFO held open on a numbered fd and its stdout+stderr in `/tmp/NAME.out`.
pub const HELPERS: &str = include_str!("lifecycle.sh");

/// The value of `key=` on the first line starting with `prefix`.
pub fn field(run: &TestBedRun, prefix: &str, key: &str) -> Option<String> {
    let line = run.output.lines().find(|l| l.starts_with(prefix))?;
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .map(|v| v.trim_end_matches('\r').to_string())
}

/// Whether the scenario printed `line` (trailing white space aside).
pub fn has_line(run: &TestBedRun, line: &str) -> bool {
    run.output.lines().any(|l| l.trim_end() == line)
}

/// Every `count-N` on a console, in order (also inside other text).
pub fn counts(console: &str) -> Vec<u64> {
    let mut out = Vec::new();
    let mut rest = console;
    while let Some(pos) = rest.find("count-") {
        rest = &rest[pos + "count-".len()..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if let Ok(n) = digits.parse() {
            out.push(n);
        }
    }
    out
}
