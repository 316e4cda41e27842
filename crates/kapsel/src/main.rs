//! `kapsel`: the command-line edge. Parses arguments, sets up logging and hands each
//! subcommand to the library crate that does the work. `anyhow` lives here only.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::main()
}
