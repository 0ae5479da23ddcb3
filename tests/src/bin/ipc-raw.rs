//! `ipc-raw SOCKET`: sends the bytes read from stdin to `passmeshd` at SOCKET as one frame and prints the reply
//! frame. For tests that speak to the daemon as another uid (under `setpriv`) with requests the typed client
//! would not write, e.g. JSON that claims a uid.

use std::io::{Read, Write};

fn main() -> anyhow::Result<()> {
    let socket = std::env::args_os()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: ipc-raw SOCKET < request.json"))?;
    let mut request = Vec::new();
    std::io::stdin().read_to_end(&mut request)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let reply = runtime.block_on(async {
        let mut client = passmesh_ipc::Client::connect(std::path::Path::new(&socket)).await?;
        client.call_raw(&request).await
    })?;
    std::io::stdout().write_all(&reply)?;
    Ok(())
}
