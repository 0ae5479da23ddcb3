//! `passmeshd`: the Passmesh daemon. Serves the invoking user's passkeys on a local Unix socket (or, with
//! `--system`, every local user's, each from their own vault), and tells systemd (`Type=notify`) when it
//! serves and when it stops.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use passmesh_daemon::config::{Config, Flags};
use passmesh_daemon::custody::keystore::Choice;
use passmesh_daemon::notify::Notifier;
use passmesh_daemon::service::Reload;
use tokio_util::sync::CancellationToken;

/// Passmesh daemon: keeps your passkeys and answers WebAuthn requests on a local socket.
#[derive(Debug, Parser)]
#[command(name = "passmeshd", version)]
struct Args {
    /// Serve every local user through one socket, each from the vault of their uid (the system service);
    /// changes the defaults to $STATE_DIRECTORY or /var/lib/passmesh and $RUNTIME_DIRECTORY/ipc.sock or
    /// /run/passmesh/ipc.sock
    #[arg(long)]
    system: bool,
    /// Directory for vaults and device state [default: $XDG_DATA_HOME/passmesh]
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// IPC socket path [default: $XDG_RUNTIME_DIR/passmesh/ipc.sock]
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// TOML config file; flags override it
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Where device secrets are sealed: auto (TPM if present, else software with a warning), tpm, software
    #[arg(long, value_name = "KIND")]
    keystore: Option<Choice>,
    /// TCTI of the TPM, e.g. swtpm:host=127.0.0.1,port=2321 [default: device:/dev/tpmrm0]
    #[arg(long, value_name = "TCTI")]
    tpm_tcti: Option<String>,
    /// Listen for paired devices on this multiaddr (repeatable; replaces `network.listen`), e.g.
    /// /ip4/0.0.0.0/tcp/4001
    #[arg(long, value_name = "MULTIADDR")]
    listen: Vec<String>,
    /// Write the passmeshd(8) man page into DIR and exit (for packagers)
    #[arg(long, value_name = "DIR", hide = true)]
    generate_man: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(dir) = &args.generate_man {
        use clap::CommandFactory;
        let mut page = Vec::new();
        clap_mangen::Man::new(Args::command())
            .section("8")
            .render(&mut page)?;
        std::fs::create_dir_all(dir)?;
        let path = dir.join("passmeshd.8");
        std::fs::write(&path, page).with_context(|| format!("cannot write {}", path.display()))?;
        return Ok(());
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PASSMESH_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tss_esapi=off")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let flags = Flags {
        config: args.config,
        state_dir: args.state_dir,
        socket: args.socket,
        keystore: args.keystore,
        tpm_tcti: args.tpm_tcti,
        listen: args.listen,
        system: args.system,
    };
    let config = Config::resolve(&flags)?;
    let notifier = match Notifier::from_env() {
        Ok(n) => n,
        Err(e) => {
            // A broken service manager setup must not keep the passkeys from being served.
            tracing::warn!("{e}");
            None
        }
    };
    let notifier = Arc::new(notifier);
    notify(&notifier, |n| n.status("opening the vault"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(stop_on_signal(shutdown.clone(), Arc::clone(&notifier)));
        let (reload_tx, reloads) = tokio::sync::mpsc::channel(1);
        tokio::spawn(reload_on_hangup(flags, reload_tx, Arc::clone(&notifier)));
        passmesh_daemon::service::run(config, shutdown, reloads, |config| {
            notify(&notifier, |n| {
                n.ready(&format!("serving {}", config.socket.display()))
            });
        })
        .await
    });
    // Everything worth keeping is flushed when `run` returns; a task still blocked in a system call
    // must not hold the exit past the service manager's patience.
    runtime.shutdown_timeout(RUNTIME_GRACE);
    if let Err(e) = &result {
        notify(&notifier, |n| n.status(&format!("failed: {e}")));
    }
    result?;
    Ok(())
}

/// How long the runtime waits for leftover tasks after the service has stopped.
const RUNTIME_GRACE: Duration = Duration::from_millis(300);

/// Cancels `shutdown` on the first SIGTERM or SIGINT, after telling the service manager.
async fn stop_on_signal(shutdown: CancellationToken, notifier: Arc<Option<Notifier>>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("shutting down");
    notify(&notifier, |n| {
        n.stopping("flushing the vault and shutting down")
    });
    shutdown.cancel();
}

/// On every SIGHUP: reads the config again (same flags, same file) and hands it to the service, which applies
/// what can change while running. A config that does not resolve is reported and changes nothing.
async fn reload_on_hangup(
    flags: Flags,
    service: tokio::sync::mpsc::Sender<Reload>,
    notifier: Arc<Option<Notifier>>,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hangup) = signal(SignalKind::hangup()) else {
        tracing::error!("cannot install the SIGHUP handler");
        return;
    };
    while hangup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading the config");
        notify(&notifier, |n| n.reloading("reloading the config"));
        let status = match Config::resolve(&flags) {
            Ok(config) => {
                let (done, applied) = tokio::sync::oneshot::channel();
                if service.send(Reload { config, done }).await.is_err() {
                    return;
                }
                let _ = applied.await;
                "config reloaded".to_owned()
            }
            Err(e) => {
                tracing::error!("cannot reload the config; the running one stays: {e}");
                format!("config reload failed, running on the previous one: {e}")
            }
        };
        notify(&notifier, |n| n.ready(&status));
    }
}

/// Sends a notification if a service manager listens; a failure is logged, never fatal.
fn notify(
    notifier: &Option<Notifier>,
    send: impl FnOnce(&Notifier) -> Result<(), passmesh_daemon::notify::Error>,
) {
    if let Some(n) = notifier
        && let Err(e) = send(n)
    {
        tracing::warn!("{e}");
    }
}
