//! A minimal PostgreSQL client for the lab's measurements: protocol 3.0, trust
//! authentication only, simple queries answering one value. A benchmark that asks a
//! server every few milliseconds measures the server this way, not the start of a `psql`
//! process (tens of milliseconds of fork/exec and library start-up, and a CPU's worth of
//! load when done every 10 ms on a 2-CPU machine). The messages are the agent's own
//! (`weft_noderun::replies`, fuzzed by `node_pg_reply`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{Result, bail};
use weft_noderun::replies::{self, PgMessage};

/// One connection, authenticated and ready for queries.
pub struct PgConn {
    stream: TcpStream,
}

/// Connects from inside network namespace `netns` (a path such as `/run/netns/x`; the
/// socket keeps its namespace afterwards) as user and database `postgres`.
pub fn connect_in(netns: &Path, addr: SocketAddr, timeout: Duration) -> Result<PgConn> {
    let ns =
        std::fs::File::open(netns).map_err(|e| anyhow::anyhow!("open {}: {e}", netns.display()))?;
    let stream = std::thread::scope(|s| {
        s.spawn(|| -> Result<TcpStream> {
            // SAFETY: setns on an open namespace fd, for this scoped thread only.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("setns: {}", std::io::Error::last_os_error());
            }
            Ok(TcpStream::connect_timeout(&addr, timeout)?)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("connect thread panicked"))?
    })?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;
    let mut c = PgConn { stream };
    c.stream.write_all(&replies::pg_startup())?;
    loop {
        match c.message()? {
            PgMessage::AuthRequired(m) => {
                bail!("authentication method {m} asked for: this client does trust only")
            }
            PgMessage::Error(e) => bail!("startup refused: {e}"),
            PgMessage::Ready => return Ok(c),
            _ => {}
        }
    }
}

impl PgConn {
    /// Runs `sql` (one statement) and returns the first column of its first row
    /// (`None`: no row, or NULL).
    pub fn query(&mut self, sql: &str) -> Result<Option<String>> {
        self.stream.write_all(&replies::pg_query(sql))?;
        let mut value = None;
        let mut error = None;
        loop {
            match self.message()? {
                PgMessage::Row(v) if value.is_none() => value = Some(v),
                PgMessage::Error(e) => error = Some(e),
                PgMessage::Ready => break,
                _ => {}
            }
        }
        match error {
            Some(e) => bail!("{sql:?}: {e}"),
            None => Ok(value.flatten()),
        }
    }

    fn message(&mut self) -> Result<PgMessage> {
        let mut head = [0u8; 5];
        self.stream.read_exact(&mut head)?;
        let (tag, len) = replies::pg_header(&head)?;
        let mut body = vec![0u8; len];
        self.stream.read_exact(&mut body)?;
        Ok(replies::pg_message(tag, &body)?)
    }
}

impl Drop for PgConn {
    fn drop(&mut self) {
        // Terminate: the server logs no "unexpected EOF".
        let _ = self.stream.write_all(&replies::PG_TERMINATE);
    }
}
