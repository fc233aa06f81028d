//! The `offload` binary: parse arguments, set up logging, run the command, turn the outcome into
//! an exit code (0 ok, 1 differences found, 2 error, 130 interrupted). The only place that exits.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio_util::sync::CancellationToken;

use offload::cli::Cli;
use offload::commands::{interrupted, run, Outcome};

fn init_logging(verbose: u8, quiet: bool, json: bool) {
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, _) => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("OFFLOAD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("offload={level},warn")));
    // Colour only for a person at a terminal who has not asked for none (NO_COLOR set and not
    // empty): logs sent to a file or a pipe stay plain text.
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    // `--log-format json`: one JSON object per line, like the progress lines.
    if json {
        logs.json().with_ansi(false).init();
    } else {
        logs.with_ansi(colour).init();
    }
}

/// The MySQL driver keeps up to 128 spent packet buffers of up to 4 MiB each for reuse, which
/// after a few multi-megabyte statements is hundreds of MiB held for nothing. A small pool of
/// small buffers keeps offload's memory flat (a user's own setting wins).
fn bound_driver_buffers() {
    for (name, value) in [
        ("MYSQL_ASYNC_BUFFER_POOL_CAP", "32"),
        ("MYSQL_ASYNC_BUFFER_SIZE_CAP", "262144"),
    ] {
        if std::env::var_os(name).is_none() {
            std::env::set_var(name, value);
        }
    }
}

/// glibc raises its mmap threshold after large frees, after which every multi-megabyte statement
/// buffer lands in (and stays in) a per-thread arena. A fixed threshold hands them back to the
/// system when freed, so peak memory follows what is in flight, not what ever was.
fn bound_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 4);
    }
}

/// The signals that ask offload to stop: SIGINT (Ctrl-C), SIGTERM (`kill`, `timeout`, systemd,
/// `docker stop`, Kubernetes) and SIGHUP (the terminal closed), all handled alike.
struct StopSignals {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
}

impl StopSignals {
    fn listen(runtime: &tokio::runtime::Runtime) -> std::io::Result<StopSignals> {
        let _in_runtime = runtime.enter();
        Ok(StopSignals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    /// The next stop signal's name.
    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT (Ctrl-C)",
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.hangup.recv() => "SIGHUP",
        }
    }

    /// The first signal cancels the command (it saves its checkpoint, releases what it holds
    /// and exits 130); a second one exits 130 at once.
    async fn stop(mut self, cancel: CancellationToken) {
        let first = self.next().await;
        eprintln!("\n{first} received: finishing the batches in flight, saving the checkpoint and releasing what is held (send a second signal, or Ctrl-C again, to stop at once)");
        cancel.cancel();
        let second = self.next().await;
        eprintln!("{second} received: stopping at once");
        std::process::exit(130);
    }
}

fn main() -> ExitCode {
    // Before any thread exists: setting the environment is only sound while single-threaded.
    bound_driver_buffers();
    bound_allocator();
    let cli = Cli::parse();
    init_logging(
        cli.verbose,
        cli.quiet,
        cli.log_format == offload::cli::LogFormat::Json,
    );
    let json = cli.json;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let cancel = CancellationToken::new();
    // Handlers in place before any work starts, so a stop request is never the default exit.
    match StopSignals::listen(&runtime) {
        Ok(signals) => {
            runtime.spawn(signals.stop(cancel.clone()));
        }
        Err(e) => eprintln!("warning: cannot listen for stop signals ({e}); a stop request ends offload without saving its checkpoint"),
    }
    let result = runtime.block_on(run(cli, cancel));
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(Outcome::Clean) => ExitCode::SUCCESS,
        Ok(Outcome::Differs) => ExitCode::from(1),
        Err(e) => {
            let interrupted = interrupted(&e);
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "error": format!("{e:#}"), "interrupted": interrupted })
                );
            }
            eprintln!("error: {e:#}");
            if interrupted {
                ExitCode::from(130)
            } else {
                ExitCode::from(2)
            }
        }
    }
}
