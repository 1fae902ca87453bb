//! `cargo xtask <task>`: the project's developer commands, written in Rust so that they run the
//! same on every machine that has a Rust toolchain (the alias lives in `.cargo/config.toml`).
//!
//! Each task is one module; this file only parses the task name and reports the outcome. The
//! crate uses the standard library alone, so that running a task never waits on a download of
//! its own dependencies, and it never changes anything outside the workspace's `target/` except
//! installing the Debian packages the tests need (see [`host`]).

mod bench;
mod conformance;
mod demo;
mod host;
mod test;

use std::ffi::OsString;
use std::process::ExitCode;

use host::Error;

const USAGE: &str = "\
usage: cargo xtask <task> [args...]

tasks:
  bench [--quick] [--only ROW,...] [--reps N] [--no-build]
                build unionfs (release) and compare it with kernel overlayfs and fuse-overlayfs
                on generated stacks (cached in target/bench/stacks/), interleaving targets in
                every repetition; table on stdout, results.json and results.svg in
                target/bench/ (root, /dev/fuse)
  conformance [--quick] [--only SUITE,...]
                pjdfstest, fsx and stress-ng on unionfs and on kernel overlayfs over the same
                layers; lists cases failing only on unionfs (root, /dev/fuse)
  demo          build unionfs, mount a generated example stack under target/demo/ and show
                the merged view, a copy-up, a delete and a directory rename (root, /dev/fuse)
  test [args]   install what the tests need, then run
                `cargo test --workspace --no-fail-fast [args]` with UNIONFS_STRICT=1,
                so that tests which cannot mount fail instead of skipping
  help          print this message";

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let task = args.next();
    let rest: Vec<OsString> = args.collect();
    let outcome = match task.as_ref().and_then(|t| t.to_str()) {
        Some("test") => test::run(&rest),
        Some("bench") => bench::run(&rest),
        Some("conformance") => conformance::run(&rest),
        Some("demo") if rest.is_empty() => demo::run(),
        Some("demo") => Err(Error::Usage("demo takes no arguments".into())),
        Some("help" | "-h" | "--help") => {
            println!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        Some(other) => Err(Error::Usage(format!("unknown task `{other}`"))),
        None => Err(Error::Usage("no task given".into())),
    };
    match outcome {
        Ok(code) => code,
        Err(err @ Error::Usage(_)) => {
            eprintln!("error: {err}\n\n{USAGE}");
            ExitCode::from(2)
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
