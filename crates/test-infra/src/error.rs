//! Errors of the test helpers.

use std::path::PathBuf;

/// What went wrong while preparing or running a test bed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A helper program could not be started.
    #[error("cannot run {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    /// A helper program ran and failed.
    #[error("{program} failed ({status}){}", tail_note(.output))]
    Failed {
        program: String,
        status: String,
        output: String,
    },
    /// A file operation failed.
    #[error("{}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The test bed itself did not come up, so the scenario never ran.
    #[error("test bed did not start: {reason} (exit {code}){}", tail_note(.output))]
    TestBedStart {
        code: i32,
        reason: &'static str,
        output: String,
    },
    /// The test bed timed out twice in a row.
    #[error("test bed timed out twice{}", tail_note(.output))]
    TimedOut { output: String },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// The last lines of a program's output, for error messages.
fn tail_note(output: &str) -> String {
    const LINES: usize = 40;
    if output.trim().is_empty() {
        return String::new();
    }
    let lines: Vec<&str> = output.lines().collect();
    let start = lines.len().saturating_sub(LINES);
    format!(
        "; last {} lines:\n{}",
        lines.len() - start,
        lines[start..].join("\n")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_note_keeps_the_last_forty_lines() {
        let text: String = (0..100).map(|i| format!("line {i}\n")).collect();
        let note = tail_note(&text);
        assert!(note.contains("line 99"));
        assert!(note.contains("line 60"));
        assert!(!note.contains("line 59\n"));
    }

    #[test]
    fn tail_note_is_empty_for_no_output() {
        assert_eq!(tail_note("  \n"), "");
    }
}
