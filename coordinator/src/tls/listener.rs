//! The TLS listener `axum::serve` takes, and the connection info it hands to handlers.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// How long a client gets to complete its TLS handshake before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; past this, accepting waits for one to finish.
const MAX_HANDSHAKES: usize = 1024;
/// Handshakes in progress at once from one client address; a connection past this is dropped at
/// once, so one host that opens connections and never speaks cannot hold every slot.
const MAX_HANDSHAKES_PER_PEER: usize = 8;
/// Finished handshakes waiting for `axum::serve` to take them.
const READY_QUEUE: usize = 64;

/// A TCP listener whose connections are TLS streams, for `axum::serve`.
///
/// A background task accepts TCP connections and runs each handshake in a task of its own (at most
/// [`MAX_HANDSHAKES`] at once and [`MAX_HANDSHAKES_PER_PEER`] from one address, each for at most
/// [`HANDSHAKE_TIMEOUT`]); failed handshakes are logged at debug level and dropped. Dropping the listener stops that task and closes the socket.
#[derive(Debug)]
pub struct TlsListener {
    local: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    acceptor: JoinHandle<()>,
}

impl TlsListener {
    /// Serves TLS with `config` on `listener`'s connections.
    pub fn new(listener: TcpListener, config: Arc<ServerConfig>) -> io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(READY_QUEUE);
        let acceptor = tokio::spawn(accept_loop(listener, TlsAcceptor::from(config), tx));
        Ok(TlsListener {
            local,
            ready,
            acceptor,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        // Closes the listening socket now, not at the next incoming connection.
        self.acceptor.abort();
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accepting task only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    let per_peer = PerPeer::default();
    loop {
        let permit = tokio::select! {
            _ = ready.closed() => return,
            p = handshakes.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let (tcp, peer) = tokio::select! {
            _ = ready.closed() => return,
            r = listener.accept() => match r {
                Ok(conn) => conn,
                Err(e) => {
                    accept_error(e).await;
                    continue;
                }
            },
        };
        let Some(slot) = per_peer.take(peer.ip()) else {
            tracing::debug!(%peer, "too many TLS handshakes in progress from this address; dropped");
            continue;
        };
        let (acceptor, ready) = (acceptor.clone(), ready.clone());
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
            drop((permit, slot));
            match handshake {
                Ok(Ok(stream)) => {
                    // Fails only when the server is shutting down: the connection is dropped.
                    let _ = ready.send((stream, peer)).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

/// Handshakes in progress per client address.
#[derive(Debug, Default, Clone)]
struct PerPeer(Arc<Mutex<HashMap<IpAddr, usize>>>);

/// One handshake's place in [`PerPeer`], given back on drop.
struct PeerSlot {
    counts: PerPeer,
    ip: IpAddr,
}

impl PerPeer {
    /// A slot for a handshake from `ip`, unless it has [`MAX_HANDSHAKES_PER_PEER`] already.
    fn take(&self, ip: IpAddr) -> Option<PeerSlot> {
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = counts.entry(ip).or_default();
        if *n >= MAX_HANDSHAKES_PER_PEER {
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            counts: self.clone(),
            ip,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// As axum does for plain TCP: connection errors are the client's business; anything else (such as
/// running out of file descriptors) is logged and accepting pauses a moment.
async fn accept_error(e: io::Error) {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accept error");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// What a handler may know about the connection a request came on (as axum `ConnectInfo<Peer>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// The client's address.
    pub addr: SocketAddr,
    /// Whether the client presented a certificate that the `--client-ca` verifier accepted (a
    /// certificate that does not verify fails the handshake, so presented means verified).
    pub client_cert: bool,
}

impl Connected<IncomingStream<'_, TcpListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Self {
        Peer {
            addr: *stream.remote_addr(),
            client_cert: false,
        }
    }
}

impl Connected<IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        let (_, session) = stream.io().get_ref();
        Peer {
            addr: *stream.remote_addr(),
            client_cert: session
                .peer_certificates()
                .is_some_and(|certs| !certs.is_empty()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_address_gets_a_bounded_share_of_handshakes() {
        let peers = PerPeer::default();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let held: Vec<PeerSlot> = (0..MAX_HANDSHAKES_PER_PEER)
            .map(|_| peers.take(a).expect("a slot"))
            .collect();
        assert!(
            peers.take(a).is_none(),
            "a ninth handshake from one address"
        );
        assert!(peers.take(b).is_some(), "another address is not affected");
        drop(held);
        assert!(
            peers.take(a).is_some(),
            "slots come back when handshakes end"
        );
        assert!(
            peers.0.lock().unwrap().get(&b).is_none(),
            "finished addresses are forgotten"
        );
    }
}
