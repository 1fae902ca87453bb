//! `unionfs run`: its arguments (named after docker's) and the wiring to `unionfs::run`.
//!
//! Every value is parsed by `unionfs::run::spec`, not by clap, so that an invalid limit or
//! volume exits with docker's 125 like every other failure of ours instead of clap's 2.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use unionfs::run::{self, spec, LayerDir, Limits, RunConfig};

/// Arguments of `unionfs run`.
#[derive(Debug, Args)]
#[command(after_help = "\
Exit status: COMMAND's own (128+N when killed by signal N); 125 when unionfs fails, 126 when
COMMAND cannot be executed, 127 when it is not found.

Examples:
  unionfs run --rm --lower /srv/app:/srv/base -- /bin/sh -c 'echo hi'
  unionfs run --rm -it --memory 256m --pids-limit 100 --lower /srv/base -- /bin/sh")]
pub struct RunArgs {
    /// Image layers, top-most first, separated by ':'
    #[arg(long, value_name = "DIR[:DIR...]", required = true)]
    lower: OsString,
    /// Remove the read/write layer afterwards (default: keep it and print where)
    #[arg(long, conflicts_with = "upper")]
    rm: bool,
    /// Reuse a read/write layer directory kept by an earlier run
    #[arg(long, value_name = "DIR")]
    upper: Option<PathBuf>,
    /// Where new read/write layers are created
    #[arg(long, value_name = "DIR", default_value = run::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Keep stdin open (pass it on to COMMAND)
    #[arg(short, long)]
    interactive: bool,
    /// Allocate a pseudo-terminal inside the container
    #[arg(short, long)]
    tty: bool,
    /// Hostname inside the container [default: the first 12 digits of its id]
    #[arg(long)]
    hostname: Option<String>,
    /// Set an environment variable (KEY=VALUE, or KEY to pass the caller's value)
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    env: Vec<OsString>,
    /// Working directory inside the container (created if missing)
    #[arg(short = 'w', long = "workdir", value_name = "DIR", default_value = "/")]
    workdir: PathBuf,
    /// Run as UID[:GID]
    #[arg(short = 'u', long = "user", value_name = "UID[:GID]")]
    user: Option<String>,
    /// Bind mount a host directory or file
    #[arg(short = 'v', long = "volume", value_name = "HOST:CONTAINER[:ro]")]
    volumes: Vec<OsString>,
    /// none: a private network with loopback only; host: the host's network
    #[arg(long, default_value = "none")]
    network: String,
    /// Memory limit, swap included (e.g. 64m, 1g)
    #[arg(long, value_name = "SIZE")]
    memory: Option<String>,
    /// Maximum number of processes (-1: unlimited)
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pids_limit: Option<String>,
    /// CPU bandwidth in CPUs (e.g. 0.5)
    #[arg(long, value_name = "N")]
    cpus: Option<String>,
    /// Mount the container's root read-only
    #[arg(long)]
    read_only: bool,
    /// The command and its arguments
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<OsString>,
}

/// Runs the container and returns the exit status for the caller.
pub fn main(args: RunArgs) -> ExitCode {
    let cfg = match config(args) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    match run::run(&cfg) {
        Ok(outcome) => {
            if outcome.oom_killed {
                eprintln!(
                    "unionfs: container {} was killed: out of memory (limit {} bytes)",
                    outcome.id,
                    cfg.limits.memory.unwrap_or(0)
                );
            }
            if let Some(dir) = &outcome.kept {
                eprintln!(
                    "unionfs: read/write layer kept in {} (reuse with --upper {0})",
                    dir.display()
                );
            }
            ExitCode::from(u8::try_from(outcome.status).unwrap_or(255))
        }
        Err(e) => fail(&e),
    }
}

fn fail(e: &run::Error) -> ExitCode {
    eprintln!("unionfs: {}", run::init::error_chain(e));
    ExitCode::from(e.exit_code())
}

fn config(a: RunArgs) -> Result<RunConfig, run::Error> {
    let lowers = unionfs::config::parse_lowerdir(std::os::unix::ffi::OsStrExt::as_bytes(
        a.lower.as_os_str(),
    ))
    .map_err(|e| spec::SpecError::Lower(e.to_string()))?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let limits = Limits {
        memory: a.memory.as_deref().map(spec::parse_memory).transpose()?,
        pids: match a.pids_limit.as_deref() {
            Some(p) => spec::parse_pids(p)?,
            None => None,
        },
        cpu: a
            .cpus
            .as_deref()
            .map(|c| spec::parse_cpus(c, cpus))
            .transpose()?,
    };
    let mut env = Vec::new();
    for e in &a.env {
        env.extend(spec::parse_env(e, |k| std::env::var_os(k))?);
    }
    let layer = match a.upper {
        Some(dir) => LayerDir::Reuse(dir),
        None => LayerDir::Fresh {
            parent: a.state_dir,
            remove: a.rm,
        },
    };
    Ok(RunConfig {
        lowers,
        layer,
        command: a.command,
        interactive: a.interactive,
        tty: a.tty,
        hostname: a
            .hostname
            .as_deref()
            .map(spec::parse_hostname)
            .transpose()?,
        env,
        workdir: spec::parse_workdir(&a.workdir)?,
        user: a.user.as_deref().map(spec::parse_user).transpose()?,
        volumes: a
            .volumes
            .iter()
            .map(|v| spec::parse_volume(v))
            .collect::<Result<_, _>>()?,
        network: spec::parse_network(&a.network)?,
        limits,
        read_only: a.read_only,
    })
}
