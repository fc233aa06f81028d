//! A TCP fault proxy for the fault tests: it listens on a loopback port and forwards every
//! connection to a real server, and on the test's command resets every open connection, stalls
//! (stops forwarding, connections stay open), cuts connections after a number of bytes, or
//! refuses new connections (stops listening). It runs on a runtime of its own in its own thread,
//! so a test blocked on a child process does not stop it, and it counts what it does (connections
//! opened, bytes forwarded, connections cut) for the test to wait on, instead of sleeping.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy has done so far, for the test to wait on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Connections accepted.
    pub opened: u64,
    /// Connections open now.
    pub open: u64,
    /// Bytes forwarded, both directions together.
    pub bytes: u64,
    /// Connections the proxy reset (by `reset_all` or a cut).
    pub resets: u64,
    /// Times [`FaultProxy::refuse`] closed the listener.
    pub refusals: u64,
    /// Whether the proxy's port listens now.
    pub listening: bool,
}

/// How the proxy treats traffic now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mode {
    /// Forwarding stopped on every connection, new or open.
    stalled: bool,
    /// Bumped by `reset_all`: every connection open at that moment is reset.
    reset_generation: u64,
}

/// The faults armed by the test and the counters, under one lock.
#[derive(Debug, Default)]
struct State {
    counters: Counters,
    /// Reset a connection once this many more bytes were forwarded (then disarmed, or re-armed
    /// while `cuts_left` says so).
    cut_after: Option<u64>,
    cut_every: u64,
    cuts_left: u64,
    /// Bytes forwarded since the cut was (re-)armed.
    since_armed: u64,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    mode: watch::Sender<Mode>,
    /// `true` while the proxy listens; `false` makes it close its listener (refusing).
    listening: watch::Sender<bool>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.state());
        self.changed.notify_all();
    }
}

/// A running proxy; dropping it stops it and closes every connection.
pub struct FaultProxy {
    /// Where offload should connect (`127.0.0.1:PORT`).
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// How long any wait of the test on the proxy may take before the test fails.
const WAIT_LIMIT: Duration = Duration::from_secs(120);

impl FaultProxy {
    /// A proxy on a free loopback port in front of `upstream` (`host:port`), passing through.
    pub fn start(upstream: &str) -> FaultProxy {
        let upstream: SocketAddr = upstream
            .parse()
            .or_else(|_| {
                std::net::ToSocketAddrs::to_socket_addrs(upstream)
                    .map(|mut a| a.next().expect("an address"))
            })
            .unwrap_or_else(|e| panic!("fault proxy upstream {upstream}: {e}"));
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let (mode, _) = watch::channel(Mode {
            stalled: false,
            reset_generation: 0,
        });
        let (listening, _) = watch::channel(true);
        let state = State {
            counters: Counters {
                listening: true,
                ..Counters::default()
            },
            ..State::default()
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            changed: Condvar::new(),
            mode,
            listening,
        });
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let thread = {
            let shared = shared.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build()
                    .expect("the proxy's runtime");
                rt.block_on(async move {
                    let listener = TcpListener::from_std(std_listener).unwrap();
                    tokio::select! {
                        _ = serve(listener, addr, upstream, shared) => {}
                        _ = stopped => {}
                    }
                });
                // Open connections end with the runtime.
                rt.shutdown_timeout(Duration::from_secs(1));
            })
        };
        FaultProxy {
            addr,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// `host:port` of the proxy, for a URL.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    pub fn counters(&self) -> Counters {
        self.shared.state().counters
    }

    /// Reset (TCP RST) every connection open now; new ones pass through.
    pub fn reset_all(&self) {
        self.shared.mode.send_modify(|m| m.reset_generation += 1);
    }

    /// Stop forwarding on every connection, open or new, until [`FaultProxy::resume`]:
    /// connections stay open and silent, as behind a dead link.
    pub fn stall(&self) {
        self.shared.mode.send_modify(|m| m.stalled = true);
    }

    /// Forward again after [`FaultProxy::stall`].
    pub fn resume(&self) {
        self.shared.mode.send_modify(|m| m.stalled = false);
    }

    /// Reset the connection that carries the `bytes`-th byte from now (either direction); once.
    pub fn cut_after(&self, bytes: u64) {
        self.cut_repeatedly(bytes, 1);
    }

    /// Reset a connection every `bytes` bytes forwarded, `times` times.
    pub fn cut_repeatedly(&self, bytes: u64, times: u64) {
        assert!(bytes > 0);
        self.shared.update(|s| {
            s.cut_after = Some(bytes);
            s.cut_every = bytes;
            s.cuts_left = times;
            s.since_armed = 0;
        });
    }

    /// Stop listening: new connections are refused (ECONNREFUSED) until [`FaultProxy::accept`];
    /// open ones go on.
    pub fn refuse(&self) {
        self.shared.listening.send_replace(false);
        self.wait_for("the listener closed", |c| !c.listening);
    }

    /// Listen again on the same port after [`FaultProxy::refuse`].
    pub fn accept(&self) {
        self.shared.listening.send_replace(true);
        self.wait_for("the listener open again", |c| c.listening);
    }

    /// Wait until the counters satisfy `done` (woken by each change); fails the test after two
    /// minutes, naming `what`.
    pub fn wait_for(&self, what: &str, done: impl Fn(&Counters) -> bool) -> Counters {
        let deadline = Instant::now() + WAIT_LIMIT;
        let mut state = self.shared.state();
        loop {
            if done(&state.counters) {
                return state.counters;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "fault proxy: waited two minutes for {what}; counters {:?}",
                state.counters
            );
            state = self
                .shared
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Accept while listening; close the listener while refusing and bind the same port again after.
async fn serve(
    mut listener: TcpListener,
    addr: SocketAddr,
    upstream: SocketAddr,
    shared: Arc<Shared>,
) {
    let mut listening = shared.listening.subscribe();
    loop {
        if !*listening.borrow_and_update() {
            drop(listener);
            shared.update(|s| {
                s.counters.refusals += 1;
                s.counters.listening = false;
            });
            while !*listening.borrow_and_update() {
                if listening.changed().await.is_err() {
                    return;
                }
            }
            listener = TcpListener::bind(addr)
                .await
                .expect("the proxy's port again");
            shared.update(|s| s.counters.listening = true);
        }
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                shared.update(|s| {
                    s.counters.opened += 1;
                    s.counters.open += 1;
                });
                tokio::spawn(forward(client, upstream, shared.clone()));
            }
            changed = listening.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

/// One connection: forward both ways until either side closes, a reset is asked for, or a cut
/// falls in it.
async fn forward(client: TcpStream, upstream: SocketAddr, shared: Arc<Shared>) {
    let server = match TcpStream::connect(upstream).await {
        Ok(s) => s,
        Err(_) => {
            let _ = client.set_zero_linger();
            shared.update(|s| s.counters.open -= 1);
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let mut mode = shared.mode.subscribe();
    let generation = mode.borrow_and_update().reset_generation;
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let (mut up, mut down) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    let reset = loop {
        let stalled = mode.borrow().stalled;
        tokio::select! {
            changed = mode.changed() => {
                if changed.is_err() {
                    break false;
                }
                if mode.borrow_and_update().reset_generation != generation {
                    break true;
                }
            }
            n = client_read.read(&mut up), if !stalled => {
                match n {
                    Ok(0) | Err(_) => break false,
                    Ok(n) => match pass(&shared, &up[..n], &mut server_write).await {
                        Some(false) => {}
                        Some(true) => break true,
                        None => break false,
                    },
                }
            }
            n = server_read.read(&mut down), if !stalled => {
                match n {
                    Ok(0) | Err(_) => break false,
                    Ok(n) => match pass(&shared, &down[..n], &mut client_write).await {
                        Some(false) => {}
                        Some(true) => break true,
                        None => break false,
                    },
                }
            }
        }
    };
    let client = client_read.reunite(client_write).ok();
    let server = server_read.reunite(server_write).ok();
    if reset {
        for s in [&client, &server].into_iter().flatten() {
            let _ = s.set_zero_linger();
        }
    }
    drop((client, server));
    shared.update(|s| {
        s.counters.open -= 1;
        if reset {
            s.counters.resets += 1;
        }
    });
}

/// Write `chunk` on, counting it: `Some(true)` when a cut falls in it (only the part before the
/// cut is written), `Some(false)` when it all went, `None` when the write failed.
async fn pass(
    shared: &Shared,
    chunk: &[u8],
    to: &mut tokio::net::tcp::OwnedWriteHalf,
) -> Option<bool> {
    let (allowed, cut) = {
        let mut s = shared.state();
        match s.cut_after {
            Some(limit) if s.since_armed + chunk.len() as u64 >= limit => {
                let allowed = (limit - s.since_armed) as usize;
                s.cuts_left -= 1;
                s.since_armed = 0;
                if s.cuts_left == 0 {
                    s.cut_after = None;
                }
                (allowed.min(chunk.len()), true)
            }
            Some(_) => {
                s.since_armed += chunk.len() as u64;
                (chunk.len(), false)
            }
            None => (chunk.len(), false),
        }
    };
    if to.write_all(&chunk[..allowed]).await.is_err() {
        return None;
    }
    shared.update(|s| s.counters.bytes += allowed as u64);
    Some(cut)
}
