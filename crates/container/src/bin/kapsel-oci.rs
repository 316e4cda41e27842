//! `kapsel-oci`: the OCI runtime verbs in a lean binary (no clap, no logging stack, none of
//! the VMM), for tools that exec a runtime per operation: runc's command line shape.
//!
//! ```text
//! kapsel-oci [--root DIR] create [--bundle DIR] [--console-socket PATH] [--pid-file PATH] ID
//! kapsel-oci [--root DIR] start|state|pause|resume ID
//! kapsel-oci [--root DIR] kill [--all] ID [SIGNAL]
//! kapsel-oci [--root DIR] delete [--force] ID
//! kapsel-oci [--root DIR] exec [--cwd DIR] [--env K=V]... ID -- CMD [ARG]...
//! kapsel-oci [--root DIR] list
//! ```
//! `--log`, `--log-format` and `--systemd-cgroup=false`, which container engines pass to
//! every runtime, are accepted; logs go to stderr.

use container::oci;
use container::DEFAULT_STATE_ROOT;
use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str =
    "usage: kapsel-oci [--root DIR] create|start|state|kill|delete|exec|pause|resume|list ...";

/// Command-line words with `--flag value` and `--flag=value` options.
struct Args {
    words: Vec<String>,
}

impl Args {
    /// Removes `--name VALUE` / `--name=VALUE` / `-s VALUE` and returns the value.
    fn value(&mut self, names: &[&str]) -> Result<Option<String>, String> {
        let mut found = None;
        let mut i = 0;
        while i < self.words.len() {
            let w = &self.words[i];
            if w == "--" {
                break;
            }
            if let Some((k, v)) = w.split_once('=') {
                if names.contains(&k) {
                    found = Some(v.to_string());
                    self.words.remove(i);
                    continue;
                }
            }
            if names.contains(&w.as_str()) {
                if i + 1 >= self.words.len() {
                    return Err(format!("{w} needs a value"));
                }
                found = Some(self.words.remove(i + 1));
                self.words.remove(i);
                continue;
            }
            i += 1;
        }
        Ok(found)
    }

    /// Every value of a repeatable option.
    fn values(&mut self, names: &[&str]) -> Result<Vec<String>, String> {
        let mut out = Vec::new();
        while let Some(v) = self.value(names)? {
            out.push(v);
        }
        Ok(out)
    }

    /// Removes a boolean flag, returning whether it was present.
    fn flag(&mut self, names: &[&str]) -> bool {
        let end = self
            .words
            .iter()
            .position(|w| w == "--")
            .unwrap_or(self.words.len());
        match self.words[..end]
            .iter()
            .position(|w| names.contains(&w.as_str()))
        {
            Some(i) => {
                self.words.remove(i);
                true
            }
            None => false,
        }
    }

    fn positional(&mut self, what: &str) -> Result<String, String> {
        if self.words.is_empty() || self.words[0] == "--" {
            return Err(format!("missing {what}"));
        }
        Ok(self.words.remove(0))
    }
}

fn main() -> ExitCode {
    let mut a = Args {
        words: std::env::args().skip(1).collect(),
    };
    match run(&mut a) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            oci::print_error(e.as_ref());
            ExitCode::from(1)
        }
    }
}

fn run(a: &mut Args) -> oci::VerbResult<u8> {
    let root = PathBuf::from(
        a.value(&["--root"])?
            .or_else(|| std::env::var("KAPSEL_STATE_ROOT").ok())
            .unwrap_or_else(|| DEFAULT_STATE_ROOT.to_string()),
    );
    // Options engines pass to every runtime.
    a.value(&["--log", "--log-format", "--criu"])?;
    a.flag(&["--debug", "--systemd-cgroup=false", "--rootless=false"]);
    let verb = a.positional("command")?;
    let root = root.as_path();
    match verb.as_str() {
        "create" => {
            let bundle = a.value(&["--bundle", "-b"])?.unwrap_or_else(|| ".".into());
            let console = a.value(&["--console-socket"])?.map(PathBuf::from);
            let pid_file = a.value(&["--pid-file"])?.map(PathBuf::from);
            a.flag(&["--no-pivot", "--no-new-keyring"]);
            let id = a.positional("container id")?;
            oci::create(root, &id, std::path::Path::new(&bundle), console, pid_file)?;
        }
        "start" => oci::start(root, &a.positional("container id")?)?,
        "state" => println!("{}", oci::state(root, &a.positional("container id")?)?),
        "kill" => {
            let all = a.flag(&["--all", "-a"]);
            let id = a.positional("container id")?;
            let sig = a.positional("signal").unwrap_or_else(|_| "SIGTERM".into());
            oci::kill(root, &id, &sig, all)?;
        }
        "delete" => {
            let force = a.flag(&["--force", "-f"]);
            oci::delete(root, &a.positional("container id")?, force)?;
        }
        "pause" | "resume" => oci::pause(root, &a.positional("container id")?, verb == "pause")?,
        "list" => print!("{}", oci::list(root)),
        "exec" => {
            let cwd = a.value(&["--cwd"])?.unwrap_or_else(|| "/".into());
            let env = a.values(&["--env", "-e"])?;
            let id = a.positional("container id")?;
            if a.words.first().is_some_and(|w| w == "--") {
                a.words.remove(0);
            }
            if a.words.is_empty() {
                return Err("exec needs a command".into());
            }
            let code = oci::exec(root, &id, cwd, env, std::mem::take(&mut a.words))?;
            return Ok(code.clamp(0, 255) as u8);
        }
        other => return Err(format!("unknown command {other:?}\n{USAGE}").into()),
    }
    Ok(0)
}
