//! `passmeshd`: the Passmesh daemon. Serves the invoking user's passkeys on a local Unix socket.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use passmesh_daemon::config::{Config, Flags};
use passmesh_daemon::keystore::Choice;
use tokio_util::sync::CancellationToken;

/// Passmesh daemon: keeps your passkeys and answers WebAuthn requests on a local socket.
#[derive(Debug, Parser)]
#[command(name = "passmeshd", version)]
struct Args {
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
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PASSMESH_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tss_esapi=off")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let config = Config::resolve(&Flags {
        config: args.config,
        state_dir: args.state_dir,
        socket: args.socket,
        keystore: args.keystore,
        tpm_tcti: args.tpm_tcti,
        listen: args.listen,
    })?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        let signals = shutdown.clone();
        tokio::spawn(async move {
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
            signals.cancel();
        });
        passmesh_daemon::service::run(config, shutdown, |_| {}).await
    })?;
    Ok(())
}
