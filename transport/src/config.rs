//! Host configuration: addresses, discovery, relays and resource limits.

use std::collections::HashSet;
use std::time::Duration;

use libp2p::{Multiaddr, PeerId};

use crate::Error;

/// What a [`crate::Host`] listens on, whom it dials and how much it accepts.
#[derive(Debug, Clone)]
pub struct Config {
    /// Addresses to listen on, e.g. `/ip4/0.0.0.0/tcp/0` and `/ip4/0.0.0.0/udp/0/quic-v1`.
    pub listen: Vec<Multiaddr>,
    /// Discover peers on the local network by mDNS. Only paired peers found this way are dialled.
    pub mdns: bool,
    /// Explicit peer addresses, each ending in `/p2p/<peer id>`; paired ones are dialled and kept connected.
    pub peers: Vec<Multiaddr>,
    /// Relay servers (each ending in `/p2p/<peer id>`): the host reserves a slot on each and hole-punches
    /// (DCUtR) through relayed connections. Relays may stay connected but never get sync streams.
    pub relays: Vec<Multiaddr>,
    /// The initial paired set; [`crate::Handle::set_paired`] replaces it later.
    pub paired: HashSet<PeerId>,
    /// Bounds on connections, messages and queues.
    pub limits: Limits,
    /// Redial schedule for paired peers that went away.
    pub reconnect: Backoff,
    /// Interval between pings on every connection (each ping times out after twice this). A connection is closed
    /// once pings fail twice in a row (libp2p-ping forgives the first failure), so a silently dead link is noticed
    /// within about 2 × (interval + timeout) — 30 s with the default 5 s — and the peer is then redialled.
    pub ping_interval: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: vec![
                "/ip4/0.0.0.0/tcp/0"
                    .parse()
                    .expect("constant multiaddr parses"),
                "/ip4/0.0.0.0/udp/0/quic-v1"
                    .parse()
                    .expect("constant multiaddr parses"),
            ],
            mdns: true,
            peers: Vec::new(),
            relays: Vec::new(),
            paired: HashSet::new(),
            limits: Limits::default(),
            reconnect: Backoff::default(),
            ping_interval: Duration::from_secs(5),
        }
    }
}

/// Resource bounds, so that a slow or hostile peer cannot stall the others or exhaust memory.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Established connections in total.
    pub max_connections: u32,
    /// Established connections per peer (TCP and QUIC, or both sides dialling at once, give more than one).
    pub max_connections_per_peer: u32,
    /// Incoming connections still in their handshake.
    pub max_pending_incoming: u32,
    /// Largest sync message accepted or sent, in bytes (at most `u32::MAX`).
    pub max_message_size: usize,
    /// Messages queued per peer before [`crate::Handle::send`] fails with `QueueFull`.
    pub max_pending_outbound: usize,
    /// Concurrent sync streams per connection (inbound and outbound together).
    pub max_streams_per_connection: usize,
    /// Time for one message to be delivered and acknowledged, and for one inbound message to be read.
    pub request_timeout: Duration,
    /// Capacity of the event channel returned by [`crate::Host::start`].
    pub event_queue: usize,
    /// How long an unpaired peer may stay connected through the pairing slot, and how long one pairing
    /// request may wait for its answer (the inviter may be waiting for the person to confirm the code).
    pub pairing_deadline: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 64,
            max_connections_per_peer: 3,
            max_pending_incoming: 32,
            max_message_size: 4 * 1024 * 1024,
            max_pending_outbound: 64,
            max_streams_per_connection: 8,
            request_timeout: Duration::from_secs(30),
            event_queue: 256,
            pairing_deadline: Duration::from_secs(60),
        }
    }
}

/// Exponential backoff for redialling: starts at `initial`, doubles per failed attempt, never exceeds `max`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// Delay before the first redial after a disconnect, and after a successful connection.
    pub initial: Duration,
    /// Upper bound of the delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(250),
            max: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    pub(crate) fn next(&self, current: Duration) -> Duration {
        current.saturating_mul(2).min(self.max).max(self.initial)
    }
}

impl Config {
    pub(crate) fn validate(&self) -> Result<(), Error> {
        let l = &self.limits;
        if l.max_message_size == 0 || u32::try_from(l.max_message_size).is_err() {
            return Err(Error::InvalidConfig(
                "max_message_size must be in 1..=u32::MAX",
            ));
        }
        if l.max_connections == 0 || l.max_connections_per_peer == 0 {
            return Err(Error::InvalidConfig("connection limits must be at least 1"));
        }
        if l.max_pending_outbound == 0 || l.max_streams_per_connection == 0 || l.event_queue == 0 {
            return Err(Error::InvalidConfig("queue limits must be at least 1"));
        }
        if l.request_timeout.is_zero()
            || self.ping_interval.is_zero()
            || l.pairing_deadline.is_zero()
        {
            return Err(Error::InvalidConfig("timeouts must be non-zero"));
        }
        if self.reconnect.initial.is_zero() || self.reconnect.max < self.reconnect.initial {
            return Err(Error::InvalidConfig(
                "reconnect backoff needs 0 < initial <= max",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_bounded() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(700),
        };
        let mut d = b.initial;
        let mut seen = vec![];
        for _ in 0..5 {
            d = b.next(d);
            seen.push(d.as_millis());
        }
        assert_eq!(seen, vec![200, 400, 700, 700, 700]);
    }

    #[test]
    fn validate_rejects_nonsense() {
        assert!(Config::default().validate().is_ok());
        let mut c = Config::default();
        c.limits.max_message_size = 0;
        assert!(c.validate().is_err());
        let mut c = Config::default();
        c.reconnect.max = Duration::ZERO;
        assert!(c.validate().is_err());
    }
}
