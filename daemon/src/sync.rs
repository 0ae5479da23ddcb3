//! The network side of vault replication: runs the transport host and moves sync messages between it and the
//! vault actor.
//!
//! Two tasks: the *inbound* task turns transport events into [`PeerEvent`]s for the vault actor (waiting when
//! its inbox is full, which in turn stops the transport from reading more); the *outbound* task sends what the
//! actor produces and keeps the transport's paired set equal to the device table. The actor never waits for
//! the network and the network never touches the vault: all state is the actor's.

use std::collections::HashSet;

use passmesh_transport::{self as transport, Event, Identity, Multiaddr, PairRequestId, PeerId};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config;
use crate::vault::{self, Outbound, PeerEvent};

/// Inbound pairing requests waiting for the pairing service, at most.
const PAIR_QUEUE: usize = 8;

/// An inbound `/passmesh/pair/1` request: sender, id to answer, bytes.
pub type PairRequest = (PeerId, PairRequestId, Vec<u8>);

/// The running network: the transport handle and the two tasks.
#[derive(Debug)]
pub struct Network {
    handle: transport::Handle,
    inbound: JoinHandle<()>,
    outbound: JoinHandle<()>,
    pair_requests: Option<mpsc::Receiver<PairRequest>>,
}

/// Starts the transport host with this device's identity and wires it to the vault actor. `addrs` are
/// further peer addresses to dial (learnt at pairing).
pub async fn start(
    settings: &config::Network,
    identity: &Identity,
    paired: HashSet<PeerId>,
    addrs: Vec<Multiaddr>,
    vault: vault::Handle,
    mut from_vault: mpsc::Receiver<Outbound>,
) -> Result<Network, transport::Error> {
    let mut peers = settings.peers.clone();
    peers.extend(addrs);
    let config = transport::Config {
        listen: settings.listen.clone(),
        mdns: settings.mdns,
        peers,
        relays: settings.relays.clone(),
        paired: paired.clone(),
        ..transport::Config::default()
    };
    let (handle, mut events) = transport::Host::start(config, identity).await?;
    for a in handle.listen_addrs().await? {
        tracing::info!(addr = %a, peer = %identity.peer_id(), "listening for paired devices");
    }
    let to_vault = vault.clone();
    let (pair_tx, pair_rx) = mpsc::channel(PAIR_QUEUE);
    let inbound = tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            let event = match event {
                Event::Connected { peer, addr } => {
                    tracing::info!(%peer, %addr, "paired device connected");
                    PeerEvent::Connected {
                        peer,
                        addr: addr.to_string(),
                    }
                }
                Event::Disconnected { peer } => {
                    tracing::info!(%peer, "paired device disconnected");
                    PeerEvent::Disconnected { peer }
                }
                Event::Message { peer, bytes } => PeerEvent::Message { peer, bytes },
                Event::SendFailed { peer, reason } => {
                    tracing::debug!(%peer, ?reason, "a sync message was not acknowledged");
                    PeerEvent::Reset { peer }
                }
                Event::Refused { peer, reason } => {
                    tracing::warn!(%peer, ?reason, "refused a peer");
                    continue;
                }
                Event::PairRequest { peer, id, bytes } => {
                    // Never wait here: sync events must keep flowing while a pairing waits for a person.
                    if pair_tx.try_send((peer, id, bytes)).is_err() {
                        tracing::warn!(%peer, "pairing requests are piling up; one was dropped");
                    }
                    continue;
                }
                _ => continue,
            };
            if to_vault.peer_event(event).await.is_err() {
                break;
            }
        }
    });
    let transport = handle.clone();
    let outbound = tokio::spawn(async move {
        let mut current = paired;
        while let Some(o) = from_vault.recv().await {
            match o {
                Outbound::Send { peer, bytes } => {
                    if let Err(e) = transport.send(peer, bytes).await {
                        tracing::debug!(%peer, error = %e, "a sync message could not be queued");
                        // Never wait on the actor here: it may be waiting for this task.
                        if matches!(e, transport::Error::QueueFull(_))
                            && !vault.try_peer_event(PeerEvent::Reset { peer })
                        {
                            tracing::warn!(%peer, "the vault is busy; the exchange resumes on the next change");
                        }
                    }
                }
                Outbound::Paired(set) => {
                    current = set.clone();
                    if transport.set_paired(set).await.is_err() {
                        break;
                    }
                }
                Outbound::Drop(peer) => {
                    // Taking the peer out of the paired set closes its connections; putting it back lets
                    // it (or us) reconnect with a fresh exchange.
                    let mut without = current.clone();
                    without.remove(&peer);
                    if transport.set_paired(without).await.is_err()
                        || transport.set_paired(current.clone()).await.is_err()
                    {
                        break;
                    }
                }
            }
        }
    });
    Ok(Network {
        handle,
        inbound,
        outbound,
        pair_requests: Some(pair_rx),
    })
}

impl Network {
    /// This device's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.handle.peer_id()
    }

    /// The inbound pairing requests, for the pairing service (once; `None` afterwards).
    pub fn take_pair_requests(&mut self) -> Option<mpsc::Receiver<PairRequest>> {
        self.pair_requests.take()
    }

    /// A handle to the transport host (for `status`).
    pub fn handle(&self) -> transport::Handle {
        self.handle.clone()
    }

    /// The addresses the host listens on.
    pub async fn listen_addrs(&self) -> Vec<String> {
        self.handle
            .listen_addrs()
            .await
            .map(|l| l.iter().map(|a| a.to_string()).collect())
            .unwrap_or_default()
    }

    /// Stops both tasks (dropping their vault handles) and the transport host.
    pub async fn shutdown(self) {
        self.inbound.abort();
        self.outbound.abort();
        let _ = self.handle.shutdown().await;
        let _ = self.inbound.await;
        let _ = self.outbound.await;
    }
}
