//! Test regions: network namespaces whose only paths out are relays the test controls.
//!
//! A [`Region`] owns a Linux network namespace with nothing but `lo` in it. Processes started
//! through [`Region::command`] live there and reach the test's own namespace only through
//! [`Forward`]s: TCP listeners bound inside the namespace that relay each connection to an
//! address in the test's namespace. A forward can add latency in both directions, and can be
//! cut (listener closed, open connections closed) and restored, so one region can lose its
//! path to a target while the others keep theirs. [`Region::expose`] opens the other way: a
//! door from the test's namespace to one port inside the region. [`Region::black_hole`]
//! drops a port's packets silently with nftables, for half-open paths.
//!
//! The listener is bound inside the namespace from a short-lived thread that has joined it
//! with `setns` (network namespaces are per thread); the relay tasks run on the tokio runtime
//! in the test's namespace, so their outbound connections reach the test's loopback.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// Bytes read from one side in one go, and so the largest chunk held in a delay queue.
const CHUNK_BYTES: usize = 16 * 1024;

/// Chunks a direction may hold while they wait out the delay. A full queue stops reading
/// from that side, so one direction holds at most `CHUNK_BYTES * QUEUE_CHUNKS` bytes.
const QUEUE_CHUNKS: usize = 64;

/// How long [`Region::connect_inside`] waits for a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A network namespace named `vrg<hex>` with only `lo`, up. Dropping it stops its forwards
/// and deletes the namespace; agents started in it should be dropped first.
pub struct Region {
    name: String,
    path: PathBuf,
    /// The forwards made through this region; dead entries are pruned on each new forward.
    forwards: Mutex<Vec<Weak<ForwardInner>>>,
}

impl Region {
    /// Creates a fresh namespace and brings its loopback up.
    ///
    /// # Errors
    /// `ip netns add` or `ip link set lo up` fails (e.g. the process is not root).
    pub fn new() -> anyhow::Result<Region> {
        let mut suffix = [0u8; 4];
        rand::fill(&mut suffix[..]);
        let name = format!("vrg{}", hex::encode(suffix));
        ip(&["netns", "add", &name])?;
        // From here on, Drop deletes the namespace should bringing lo up fail.
        let region = Region {
            path: namespace_path(&name),
            name,
            forwards: Mutex::new(Vec::new()),
        };
        ip(&["-n", &region.name, "link", "set", "lo", "up"])?;
        Ok(region)
    }

    /// The namespace's name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The command line that runs `program` inside the namespace, for
    /// [`crate::Agent::start_command`]. `ip netns exec` execs the program, so the child's
    /// pid is the program's.
    pub fn command(&self, program: &Path) -> Vec<PathBuf> {
        vec![
            PathBuf::from("ip"),
            PathBuf::from("netns"),
            PathBuf::from("exec"),
            PathBuf::from(&self.name),
            program.to_owned(),
        ]
    }

    /// Listens on `127.0.0.1:listen_port` inside the namespace and relays every connection
    /// to `to` in the test's namespace. Using the same port as `to` lets processes in the
    /// region use the usual address (e.g. the control plane's URLs) unchanged.
    ///
    /// # Errors
    /// Not called inside a tokio runtime, or the port cannot be bound in the namespace.
    pub fn forward(&self, listen_port: u16, to: SocketAddr) -> anyhow::Result<Forward> {
        let runtime = tokio::runtime::Handle::try_current()
            .context("Region::forward must be called inside a tokio runtime")?;
        let inner = Arc::new(ForwardInner {
            namespace: self.path.clone(),
            port: listen_port,
            to,
            runtime,
            counters: Arc::new(Counters::default()),
            session: Mutex::new(None),
        });
        inner
            .start()
            .with_context(|| format!("forward {} port {listen_port} to {to}", self.name))?;
        let mut forwards = lock(&self.forwards);
        forwards.retain(|weak| weak.strong_count() > 0);
        forwards.push(Arc::downgrade(&inner));
        Ok(Forward { inner })
    }

    /// Connects to `127.0.0.1:port` from inside the namespace, as a process in the region
    /// would. The returned socket belongs to the namespace.
    ///
    /// # Errors
    /// The connection fails (refused when nothing listens on `port` in the namespace).
    pub fn connect_inside(&self, port: u16) -> anyhow::Result<TcpStream> {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        self.run_inside(move || TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT))?
            .with_context(|| format!("connect to {addr} inside {}", self.name))
    }

    /// Listens on `127.0.0.1` (a free port) in the test's namespace and relays every
    /// connection to `127.0.0.1:port` inside the region: the one door through which a
    /// process outside (a Zabbix server) reaches a listener that lives in the region.
    ///
    /// # Errors
    /// Not called inside a tokio runtime, or no port can be bound.
    pub async fn expose(&self, port: u16) -> anyhow::Result<Exposed> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let path = self.path.clone();
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((mut outside, _)) = listener.accept().await {
                let path = path.clone();
                connections.spawn(async move {
                    let target = SocketAddr::from(([127, 0, 0, 1], port));
                    let inside = tokio::task::spawn_blocking(move || {
                        run_in_namespace(&path, move || {
                            TcpStream::connect_timeout(&target, CONNECT_TIMEOUT)
                        })
                    })
                    .await;
                    let Ok(Ok(Ok(inside))) = inside else {
                        return;
                    };
                    if inside.set_nonblocking(true).is_err() {
                        return;
                    }
                    let Ok(mut inside) = tokio::net::TcpStream::from_std(inside) else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut outside, &mut inside).await;
                });
                while connections.try_join_next().is_some() {}
            }
        });
        Ok(Exposed { addr, task })
    }

    /// Runs `work` on a short-lived thread that has joined the namespace, so sockets it
    /// creates belong to the namespace.
    ///
    /// # Errors
    /// The thread cannot join the namespace, or `work` panics.
    pub fn run_inside<T, F>(&self, work: F) -> anyhow::Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        run_in_namespace(&self.path, work)
    }

    /// Drops every packet to and from `port` inside the namespace with nftables, silently (no
    /// reset, no close): connections through it go half-open and new ones get no answer to
    /// their SYN, until the returned [`BlackHole`] is dropped. Both ends of a connection to a
    /// forward are on the namespace's `lo`, so the output hook sees both directions.
    ///
    /// # Errors
    /// `nft` is missing (scripts/test installs Debian's nftables) or refuses the rules.
    pub fn black_hole(&self, port: u16) -> anyhow::Result<BlackHole> {
        let table = format!("vantage_hole_{port}");
        let rules = format!(
            "add table inet {table}; \
             add chain inet {table} out {{ type filter hook output priority 0; policy accept; }}; \
             add rule inet {table} out tcp dport {port} drop; \
             add rule inet {table} out tcp sport {port} drop"
        );
        ip(&["netns", "exec", &self.name, "nft", &rules])?;
        Ok(BlackHole {
            namespace: self.name.clone(),
            table,
        })
    }
}

/// Packets dropped in a region ([`Region::black_hole`]); dropping this lets them through again.
pub struct BlackHole {
    namespace: String,
    table: String,
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        let delete = [
            "netns",
            "exec",
            &self.namespace,
            "nft",
            "delete",
            "table",
            "inet",
            &self.table,
        ];
        if let Err(error) = ip(&delete) {
            eprintln!("region {}: {error:#}", self.namespace);
        }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        let forwards = std::mem::take(&mut *lock(&self.forwards));
        for forward in forwards.iter().filter_map(Weak::upgrade) {
            forward.stop();
        }
        if let Err(error) = ip(&["netns", "del", &self.name]) {
            eprintln!("region {}: {error:#}", self.name);
        }
    }
}

/// A door from the test's namespace to a port inside a region ([`Region::expose`]); dropping
/// it closes the door and its connections.
pub struct Exposed {
    /// The address to connect to in the test's namespace.
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Exposed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A relay from a port inside a region to an address in the test's namespace. Clones share
/// the relay; dropping the last clone stops it and closes its connections.
#[derive(Clone)]
pub struct Forward {
    inner: Arc<ForwardInner>,
}

impl Forward {
    /// Adds `delay` of one-way latency to data in both directions, for data read from now
    /// on. Chunks keep their order, and connections are not serialised behind one another.
    pub fn set_delay(&self, delay: Duration) {
        let nanos = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
        self.inner
            .counters
            .delay_nanos
            .store(nanos, Ordering::Relaxed);
    }

    /// The added one-way latency.
    pub fn delay(&self) -> Duration {
        self.inner.counters.delay()
    }

    /// Removes the path: the listener closes, so new connections are refused, and every
    /// open relayed connection is shut down on both sides. Cutting a cut forward does
    /// nothing.
    pub fn cut(&self) {
        self.inner.stop();
    }

    /// Binds the port inside the namespace again and relays as before. Restoring a forward
    /// that is not cut does nothing.
    ///
    /// # Errors
    /// The port cannot be bound in the namespace (e.g. the region is gone).
    pub fn restore(&self) -> anyhow::Result<()> {
        self.inner.start()
    }

    /// Whether the forward is cut.
    pub fn is_cut(&self) -> bool {
        lock(&self.inner.session).is_none()
    }

    /// The port listened on inside the namespace.
    pub fn port(&self) -> u16 {
        self.inner.port
    }

    /// Connections accepted inside the namespace so far, across cuts and restores.
    pub fn accepted(&self) -> u64 {
        self.inner.counters.accepted.load(Ordering::Relaxed)
    }

    /// Relayed connections open now.
    pub fn open_connections(&self) -> u64 {
        self.inner.counters.open.load(Ordering::Relaxed)
    }
}

/// The state of one forward, shared by its handles.
struct ForwardInner {
    namespace: PathBuf,
    port: u16,
    to: SocketAddr,
    runtime: tokio::runtime::Handle,
    counters: Arc<Counters>,
    /// The listener and its connections while not cut.
    session: Mutex<Option<Session>>,
}

impl ForwardInner {
    /// Binds the listener in the namespace and starts accepting, unless already running.
    fn start(&self) -> anyhow::Result<()> {
        let mut session = lock(&self.session);
        if session.is_some() {
            return Ok(());
        }
        let port = self.port;
        let listener = run_in_namespace(&self.namespace, move || -> io::Result<TcpListener> {
            let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port)))?;
            listener.set_nonblocking(true)?;
            Ok(listener)
        })?
        .with_context(|| format!("bind 127.0.0.1:{port} in the namespace"))?;
        // A second descriptor of the listening socket, so cut() can close the socket at
        // once, whenever the runtime gets to drop the accept task.
        let control = listener.as_fd().try_clone_to_owned()?;
        let listener = {
            let _entered = self.runtime.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        let connections = Arc::new(Connections::default());
        let task = self.runtime.spawn(accept_loop(
            listener,
            self.to,
            Arc::clone(&self.counters),
            Arc::clone(&connections),
        ));
        *session = Some(Session {
            listener: control,
            connections,
            task,
        });
        Ok(())
    }

    /// Closes the listener and every open connection, and stops the tasks.
    fn stop(&self) {
        if let Some(session) = lock(&self.session).take() {
            session.close();
        }
    }
}

impl Drop for ForwardInner {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A forward's delay and counters, shared with its tasks.
#[derive(Default)]
struct Counters {
    delay_nanos: AtomicU64,
    accepted: AtomicU64,
    open: AtomicU64,
}

impl Counters {
    fn delay(&self) -> Duration {
        Duration::from_nanos(self.delay_nanos.load(Ordering::Relaxed))
    }
}

/// One listening period of a forward, from start or restore to cut.
struct Session {
    /// A duplicate descriptor of the listening socket.
    listener: OwnedFd,
    connections: Arc<Connections>,
    /// The accept loop; its connection tasks are aborted with it.
    task: JoinHandle<()>,
}

impl Session {
    /// Shuts the sockets down now (new connects are refused, peers read end of stream)
    /// and aborts the tasks, which close the sockets when the runtime drops them.
    fn close(self) {
        shutdown(&self.listener);
        self.connections.close();
        self.task.abort();
    }
}

/// Duplicate descriptors of the open connections' sockets, so they can be shut down from
/// outside their tasks.
#[derive(Default)]
struct Connections {
    next_id: AtomicU64,
    sockets: Mutex<Sockets>,
}

/// The open connections' duplicate descriptors, by connection id.
#[derive(Default)]
struct Sockets {
    /// Set by [`Connections::close`]; later sockets are shut down as they come.
    closed: bool,
    open: HashMap<u64, Vec<OwnedFd>>,
}

impl Connections {
    /// Records a socket of connection `id`; shuts it down at once when already closed.
    fn register(&self, id: u64, socket: &impl AsFd) {
        let Ok(fd) = socket.as_fd().try_clone_to_owned() else {
            return;
        };
        let mut sockets = lock(&self.sockets);
        if sockets.closed {
            shutdown(&fd);
        } else {
            sockets.open.entry(id).or_default().push(fd);
        }
    }

    /// Forgets connection `id`, closing the duplicate descriptors.
    fn forget(&self, id: u64) {
        lock(&self.sockets).open.remove(&id);
    }

    /// Shuts every open connection down and refuses later registrations.
    fn close(&self) {
        let mut sockets = lock(&self.sockets);
        sockets.closed = true;
        for fd in std::mem::take(&mut sockets.open).into_values().flatten() {
            shutdown(&fd);
        }
    }

    /// Whether [`Self::close`] has run.
    fn is_closed(&self) -> bool {
        lock(&self.sockets).closed
    }
}

/// Holds a connection's place in [`Connections`] and the open count while it relays.
struct Registration {
    id: u64,
    connections: Arc<Connections>,
    counters: Arc<Counters>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.connections.forget(self.id);
        self.counters.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Accepts connections inside the namespace and relays each to `to`. Aborting it aborts
/// the relays too (they live in its `JoinSet`).
async fn accept_loop(
    listener: tokio::net::TcpListener,
    to: SocketAddr,
    counters: Arc<Counters>,
    connections: Arc<Connections>,
) {
    let mut relays = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((inside, _)) => {
                    let id = connections.next_id.fetch_add(1, Ordering::Relaxed);
                    connections.register(id, &inside);
                    counters.accepted.fetch_add(1, Ordering::Relaxed);
                    counters.open.fetch_add(1, Ordering::Relaxed);
                    let registration = Registration {
                        id,
                        connections: Arc::clone(&connections),
                        counters: Arc::clone(&counters),
                    };
                    relays.spawn(relay(inside, to, registration, Arc::clone(&counters)));
                }
                Err(_) if connections.is_closed() => return,
                // Out of descriptors and the like: try again shortly.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            },
            // Reaps finished relays so the set holds only open connections.
            Some(_) = relays.join_next(), if !relays.is_empty() => {}
        }
    }
}

/// Relays one accepted connection to `to` until both directions end or one fails.
async fn relay(
    inside: tokio::net::TcpStream,
    to: SocketAddr,
    registration: Registration,
    counters: Arc<Counters>,
) {
    let Ok(outside) = tokio::net::TcpStream::connect(to).await else {
        // Dropping `inside` closes it: the target is down, as seen from the region.
        return;
    };
    registration.connections.register(registration.id, &outside);
    let _ = inside.set_nodelay(true);
    let _ = outside.set_nodelay(true);
    let (inside_read, inside_write) = inside.into_split();
    let (outside_read, outside_write) = outside.into_split();
    let _ = tokio::try_join!(
        pipe(inside_read, outside_write, &counters),
        pipe(outside_read, inside_write, &counters),
    );
    drop(registration);
}

/// Copies `from` to `to`, holding each chunk for the delay current when it was read, then
/// passes the end of stream on. Reading runs ahead of writing by at most the queue.
async fn pipe<R, W>(mut from: R, mut to: W, counters: &Counters) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (queue, mut due) = mpsc::channel::<(Instant, Vec<u8>)>(QUEUE_CHUNKS);
    let reader = async move {
        let mut buffer = vec![0u8; CHUNK_BYTES];
        loop {
            let read = from.read(&mut buffer).await?;
            if read == 0 {
                // Dropping the sender lets the writer drain the queue, then shut down.
                drop(queue);
                return Ok::<(), io::Error>(());
            }
            let at = Instant::now() + counters.delay();
            if queue.send((at, buffer[..read].to_vec())).await.is_err() {
                return Ok(());
            }
        }
    };
    let writer = async move {
        while let Some((at, chunk)) = due.recv().await {
            if at > Instant::now() {
                tokio::time::sleep_until(at).await;
            }
            to.write_all(&chunk).await?;
        }
        to.shutdown().await
    };
    tokio::try_join!(reader, writer).map(|_| ())
}

/// Shuts a socket down in both directions. On a listening socket this stops it listening,
/// so connects are refused even while another descriptor keeps it open.
fn shutdown(socket: &OwnedFd) {
    // SAFETY: `socket` is an open descriptor owned by the caller for the whole call, and
    // shutdown(2) neither keeps nor invalidates it.
    unsafe {
        libc::shutdown(socket.as_raw_fd(), libc::SHUT_RDWR);
    }
}

/// Runs `work` on a new thread that has joined the network namespace at `path`.
fn run_in_namespace<T, F>(path: &Path, work: F) -> anyhow::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let namespace =
        File::open(path).with_context(|| format!("open namespace {}", path.display()))?;
    let thread = std::thread::Builder::new()
        .name("netns".to_owned())
        .spawn(move || -> io::Result<T> {
            // SAFETY: `namespace` is an open descriptor of a network namespace for the whole
            // call; setns(2) changes only this thread's namespace, and the thread ends
            // after `work`.
            let entered = unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) };
            if entered != 0 {
                return Err(io::Error::last_os_error());
            }
            drop(namespace);
            Ok(work())
        })
        .context("spawn a thread for the namespace")?;
    match thread.join() {
        Ok(result) => result.with_context(|| format!("setns {}", path.display())),
        Err(_) => bail!("the thread in namespace {} panicked", path.display()),
    }
}

/// Where `ip netns add` mounts namespace `name`.
fn namespace_path(name: &str) -> PathBuf {
    let run = Path::new("/run/netns").join(name);
    if run.exists() {
        run
    } else {
        Path::new("/var/run/netns").join(name)
    }
}

/// Runs `ip` with `args`.
fn ip(args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .context("cannot run ip")?;
    if !output.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Locks `mutex`, carrying on after a panic elsewhere (the guarded state stays valid).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::io::{ErrorKind, Read, Write};
    use std::time::Instant;

    use super::*;
    use crate::free_port;

    /// An echo server on the test's loopback, and its address.
    async fn echo_server() -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut read, mut write) = stream.into_split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                });
            }
        });
        addr
    }

    /// Sends `bytes` and reads them back.
    fn echo(stream: &mut TcpStream, bytes: &[u8]) {
        stream.write_all(bytes).unwrap();
        let mut back = vec![0u8; bytes.len()];
        stream.read_exact(&mut back).unwrap();
        assert_eq!(back, bytes);
    }

    /// Whether `result` is a refused connection.
    fn refused(result: anyhow::Result<TcpStream>) -> bool {
        result
            .err()
            .and_then(|e| e.downcast_ref::<io::Error>().map(io::Error::kind))
            == Some(ErrorKind::ConnectionRefused)
    }

    /// The output of `ip netns list`.
    fn namespaces() -> String {
        let output = Command::new("ip").args(["netns", "list"]).output().unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    // The blocking socket calls in these tests run on the test's own thread; the relays run
    // on the runtime's workers.

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn forward_relays_and_the_namespace_is_otherwise_isolated() {
        let target = echo_server().await;
        let region = Region::new().unwrap();
        let port = free_port();
        let forward = region.forward(port, target).unwrap();

        let mut stream = region.connect_inside(port).unwrap();
        echo(&mut stream, b"hello from the region");
        assert_eq!(forward.accepted(), 1);
        assert_eq!(forward.open_connections(), 1);

        // The target's own port exists only in the test's namespace.
        assert!(refused(region.connect_inside(target.port())));

        // The region's loopback is up, and only it.
        let mut command = region.command(Path::new("ip"));
        let program = command.remove(0);
        let output = Command::new(program)
            .args(&command)
            .args(["-o", "link"])
            .output()
            .unwrap();
        let links = String::from_utf8_lossy(&output.stdout).into_owned();
        assert_eq!(links.lines().count(), 1, "{links}");
        assert!(links.contains("lo:") && links.contains("UP"), "{links}");

        drop(stream);
        crate::wait_for("the relay to end", Duration::from_secs(5), || async {
            (forward.open_connections() == 0).then_some(())
        })
        .await
        .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn delay_applies_to_both_directions_without_serialising() {
        let target = echo_server().await;
        let region = Region::new().unwrap();
        let port = free_port();
        let forward = region.forward(port, target).unwrap();
        let mut stream = region.connect_inside(port).unwrap();
        echo(&mut stream, b"warm");

        forward.set_delay(Duration::from_millis(150));
        assert_eq!(forward.delay(), Duration::from_millis(150));
        let started = Instant::now();
        echo(&mut stream, b"ping");
        let round_trip = started.elapsed();
        assert!(
            round_trip >= Duration::from_millis(300) && round_trip < Duration::from_secs(2),
            "{round_trip:?}"
        );

        // Two chunks 50 ms apart both travel at once: the second arrives about 50 ms after
        // the first, not a full round trip later.
        let started = Instant::now();
        stream.write_all(b"a").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        stream.write_all(b"b").unwrap();
        let mut back = [0u8; 2];
        stream.read_exact(&mut back).unwrap();
        let both = started.elapsed();
        assert_eq!(&back, b"ab");
        assert!(
            both >= Duration::from_millis(350) && both < Duration::from_millis(550),
            "{both:?}"
        );

        forward.set_delay(Duration::ZERO);
        let started = Instant::now();
        echo(&mut stream, b"fast again");
        assert!(started.elapsed() < Duration::from_millis(100));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cut_closes_and_refuses_and_restore_relays_again() {
        let target = echo_server().await;
        let region = Region::new().unwrap();
        let port = free_port();
        let forward = region.forward(port, target).unwrap();
        let mut stream = region.connect_inside(port).unwrap();
        echo(&mut stream, b"before the cut");

        forward.cut();
        forward.cut();
        assert!(forward.is_cut());
        stream
            .set_read_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        let mut buffer = [0u8; 16];
        match stream.read(&mut buffer) {
            Ok(0) => {}
            Ok(n) => panic!("read {n} bytes after the cut"),
            Err(e) => assert!(
                !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
                "still open a second after the cut: {e}"
            ),
        }
        assert!(refused(region.connect_inside(port)));
        crate::wait_for("the relays to end", Duration::from_secs(5), || async {
            (forward.open_connections() == 0).then_some(())
        })
        .await
        .unwrap();

        forward.restore().unwrap();
        forward.restore().unwrap();
        assert!(!forward.is_cut());
        let mut stream = region.connect_inside(port).unwrap();
        echo(&mut stream, b"after the restore");
        assert_eq!(forward.accepted(), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropping_the_region_deletes_the_namespace_and_stops_forwards() {
        let target = echo_server().await;
        let region = Region::new().unwrap();
        let name = region.name().to_owned();
        assert!(namespaces().contains(&name));
        let forward = region.forward(free_port(), target).unwrap();

        // Dropping a forward's last handle closes it.
        let port = free_port();
        let dropped = region.forward(port, target).unwrap();
        let copy = dropped.clone();
        drop(dropped);
        region.connect_inside(port).unwrap();
        drop(copy);
        assert!(refused(region.connect_inside(port)));

        drop(region);
        assert!(!namespaces().contains(&name), "{}", namespaces());
        assert!(forward.is_cut());
        assert!(forward.restore().is_err());
    }
}
