//! Small hand-written clients for the servers a stack runs: just enough of each wire protocol
//! to connect, authenticate and run one simple statement (readiness probes, creating and
//! dropping databases).
//!
//! They exist so that starting a stack needs no full database or broker client library. What
//! they leave out on purpose: TLS, prepared statements, pipelining, pools, and every reply a
//! probe does not need.
//!
//! Every connect, read and write waits at most [`IO_TIMEOUT`], and no message larger than
//! [`MAX_MESSAGE`] is accepted, so a server that stalls or sends garbage cannot hang or
//! exhaust the caller.

pub mod amqp;
pub mod mysql;
pub mod postgres;
pub mod redis;

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufStream};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// The longest a single connect, read or write waits before it fails with [`Error::Timeout`].
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest message (a Postgres message, an AMQP frame, a MySQL packet, a Redis line) the
/// clients accept; more is a [`Error::Protocol`] error rather than an allocation the server
/// chose.
pub const MAX_MESSAGE: usize = 16 << 20;

/// What went wrong, sorted by what the caller should do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The connection could not be made or broke (refused, reset, closed early): usually the
    /// server is not up yet, so worth retrying.
    #[error("connection failed: {0}")]
    Connect(#[source] std::io::Error),
    /// The server accepted the connection but did not answer within [`IO_TIMEOUT`].
    #[error("no answer within {} ms", .0.as_millis())]
    Timeout(Duration),
    /// The server refused the user name or password: retrying will not help.
    #[error("authentication failed: {message}")]
    Auth {
        /// The server's own message, verbatim when it sent one.
        message: String,
    },
    /// The server answered with an error of its own (Postgres `57P03` "the database system is
    /// starting up", Redis `LOADING`, a MySQL error number).
    #[error("the server answered {code}: {message}")]
    Server {
        /// The server's error code: a Postgres SQLSTATE, the first word of a Redis error, a
        /// MySQL error number, an AMQP reply code.
        code: String,
        /// The server's message, verbatim.
        message: String,
    },
    /// The server wants something these clients do not speak (an authentication plugin or
    /// mechanism they lack): retrying will not help.
    #[error("unsupported by this client: {0}")]
    Unsupported(String),
    /// The server sent bytes that do not fit the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// One result row: each column's value as text, `None` for NULL.
pub type Row = Vec<Option<String>>;

/// The result of every client call.
pub type Result<T> = std::result::Result<T, Error>;

/// A buffered TCP connection whose every operation has a deadline.
#[derive(Debug)]
pub(crate) struct Conn {
    io: BufStream<TcpStream>,
}

/// Runs one I/O operation under [`IO_TIMEOUT`], mapping failures onto [`Error`].
async fn deadline<T>(op: impl std::future::Future<Output = std::io::Result<T>>) -> Result<T> {
    match timeout(IO_TIMEOUT, op).await {
        Ok(r) => r.map_err(Error::Connect),
        Err(_) => Err(Error::Timeout(IO_TIMEOUT)),
    }
}

impl Conn {
    /// Connects to `host:port`.
    pub(crate) async fn connect(host: &str, port: u16) -> Result<Conn> {
        let tcp = deadline(TcpStream::connect((host, port))).await?;
        // Requests are small and answered one at a time: do not hold them back.
        tcp.set_nodelay(true).map_err(Error::Connect)?;
        Ok(Conn {
            io: BufStream::new(tcp),
        })
    }

    /// Reads exactly `n` bytes; `what` names them in the error if `n` is beyond
    /// [`MAX_MESSAGE`].
    pub(crate) async fn read_exact(&mut self, n: usize, what: &str) -> Result<Vec<u8>> {
        if n > MAX_MESSAGE {
            return Err(Error::Protocol(format!(
                "{what} of {n} bytes is larger than the {MAX_MESSAGE} bytes accepted"
            )));
        }
        let mut buf = vec![0; n];
        deadline(self.io.read_exact(&mut buf)).await?;
        Ok(buf)
    }

    /// Reads an array of `N` bytes.
    pub(crate) async fn read_array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut buf = [0; N];
        deadline(self.io.read_exact(&mut buf)).await?;
        Ok(buf)
    }

    /// Reads up to and including the next `\n`, at most [`MAX_MESSAGE`] bytes.
    pub(crate) async fn read_line(&mut self) -> Result<Vec<u8>> {
        let mut line = Vec::new();
        let limit = u64::try_from(MAX_MESSAGE).unwrap_or(u64::MAX);
        let mut bounded = (&mut self.io).take(limit);
        deadline(bounded.read_until(b'\n', &mut line)).await?;
        match line.last() {
            Some(b'\n') => Ok(line),
            _ if line.len() >= MAX_MESSAGE => Err(Error::Protocol(format!(
                "a line longer than the {MAX_MESSAGE} bytes accepted"
            ))),
            _ => Err(Error::Connect(closed())),
        }
    }

    /// Writes and flushes `bytes`.
    pub(crate) async fn send(&mut self, bytes: &[u8]) -> Result<()> {
        deadline(async {
            self.io.write_all(bytes).await?;
            self.io.flush().await
        })
        .await
    }

    /// Closes the sending side; the server sees the end of the stream.
    pub(crate) async fn shutdown(&mut self) {
        // The goodbye message is already sent; a failure here changes nothing for the caller.
        let _ = deadline(self.io.shutdown()).await;
    }
}

/// The error of a stream that ended where the protocol wants more.
pub(crate) fn closed() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        "the server closed the connection",
    )
}

/// Whether `e` is an established connection that the server ended (closed or reset).
pub(crate) fn is_closed(e: &Error) -> bool {
    use std::io::ErrorKind::{ConnectionReset, UnexpectedEof};
    matches!(e, Error::Connect(io) if matches!(io.kind(), UnexpectedEof | ConnectionReset))
}

/// Reads the fields of one received message, failing with [`Error::Protocol`] (never
/// panicking) when it is shorter than its fields say.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    /// What is being read, for error messages (`"a DataRow message"`).
    what: &'static str,
}

impl<'a> Reader<'a> {
    /// Reads `buf`, named `what` in errors.
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader { buf, what }
    }

    /// The next `n` bytes.
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.buf.len() {
            return Err(Error::Protocol(format!(
                "{} ends after {} bytes where {n} more were expected",
                self.what,
                self.buf.len()
            )));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// The next `N` bytes as an array.
    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// One byte.
    pub(crate) fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }

    /// A big-endian `u16`.
    pub(crate) fn be_u16(&mut self) -> Result<u16> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    /// A big-endian `u32`.
    pub(crate) fn be_u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// A little-endian `u16`.
    pub(crate) fn le_u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    /// A little-endian `u32`.
    pub(crate) fn le_u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    /// Bytes up to a NUL (consumed, not returned), or to the end if there is none.
    pub(crate) fn cstr(&mut self) -> &'a [u8] {
        let end = self.buf.iter().position(|&b| b == 0);
        let (head, tail) = self.buf.split_at(end.unwrap_or(self.buf.len()));
        self.buf = tail.get(1..).unwrap_or_default();
        head
    }

    /// Everything not read yet.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    /// The next byte, left unread.
    pub(crate) fn peek(&self) -> Option<u8> {
        self.buf.first().copied()
    }
}

/// Text the server sent, decoded as UTF-8 with any invalid bytes replaced (it is only shown).
pub(crate) fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A value of a result row: UTF-8 text, or a protocol error naming the bytes.
pub(crate) fn value(bytes: &[u8]) -> Result<String> {
    String::from_utf8(bytes.to_vec())
        .map_err(|_| Error::Protocol(format!("a value that is not UTF-8: {bytes:02x?}")))
}

#[cfg(test)]
pub(crate) mod testing {
    //! Real servers started for a test, on free loopback ports, stopped by pid when dropped.

    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use super::Row;

    /// Rows written as string slices, for comparing with query results.
    pub(crate) fn rows(values: &[&[Option<&str>]]) -> Vec<Row> {
        values
            .iter()
            .map(|r| r.iter().map(|v| v.map(String::from)).collect())
            .collect()
    }

    /// A port nothing listens on (bound and released at once).
    pub(crate) fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free loopback port")
    }

    /// A server process and its directory.
    #[derive(Debug)]
    pub(crate) struct Server {
        child: Child,
        /// The port it listens on.
        pub(crate) port: u16,
        /// Its data directory, removed after the process stopped.
        pub(crate) dir: tempfile::TempDir,
    }

    impl Server {
        /// Starts `cmd` (its output going to `log` in `dir`) and waits until `port` accepts.
        pub(crate) fn start(mut cmd: Command, port: u16, dir: tempfile::TempDir) -> Server {
            let log = std::fs::File::create(dir.path().join("server.log")).expect("a log file");
            let err = log.try_clone().expect("a log file");
            let child = cmd
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(err)
                .spawn()
                .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
            let mut server = Server { child, port, dir };
            let until = Instant::now() + Duration::from_secs(60);
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                if let Ok(Some(status)) = server.child.try_wait() {
                    panic!("{cmd:?} exited ({status}): {}", server.log());
                }
                assert!(
                    Instant::now() < until,
                    "{cmd:?} did not listen: {}",
                    server.log()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            server
        }

        /// What the server wrote so far.
        pub(crate) fn log(&self) -> String {
            std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            // Child::kill signals this child's own pid, nothing else.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// A temporary directory owned by the system user `name` (a server refusing to run as root)
    /// and that user's uid and gid, or `None` when this process is not root.
    pub(crate) fn dir_for(name: &str) -> (tempfile::TempDir, Option<(u32, u32)>) {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let ids = nix::unistd::geteuid()
            .is_root()
            .then(|| nix::unistd::User::from_name(name).ok().flatten())
            .flatten()
            .map(|u| (u.uid.as_raw(), u.gid.as_raw()));
        if let Some((uid, gid)) = ids {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown");
        }
        (dir, ids)
    }

    /// The first existing file among `/usr/lib/postgresql/*/bin/NAME` (newest version first)
    /// or `NAME` on the PATH.
    pub(crate) fn program(name: &str, versioned: &str) -> PathBuf {
        let mut found: Vec<PathBuf> = std::fs::read_dir(versioned)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join("bin").join(name))
            .filter(|p| p.is_file())
            .collect();
        found.sort();
        found.pop().unwrap_or_else(|| Path::new(name).to_path_buf())
    }
}
