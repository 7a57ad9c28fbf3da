//! A minimal PostgreSQL client for the lab's measurements: protocol 3.0, trust
//! authentication only, simple queries with text results. A benchmark that asks a server
//! every few milliseconds measures the server this way, not the start of a `psql` process
//! (tens of milliseconds of fork/exec and library start-up, and a CPU's worth of load when
//! done every 10 ms on a 2-CPU machine).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// Longest message accepted from the server.
const MAX_MESSAGE: usize = 1 << 20;

/// One connection, authenticated and ready for queries.
pub struct PgConn {
    stream: TcpStream,
}

/// Connects from inside network namespace `netns` (a path such as `/run/netns/x`; the
/// socket keeps its namespace afterwards) as user and database `postgres`.
pub fn connect_in(netns: &Path, addr: SocketAddr, timeout: Duration) -> Result<PgConn> {
    let ns = std::fs::File::open(netns).with_context(|| format!("open {}", netns.display()))?;
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
    c.startup()?;
    Ok(c)
}

impl PgConn {
    fn startup(&mut self) -> Result<()> {
        let mut body = 196_608u32.to_be_bytes().to_vec();
        for (k, v) in [("user", "postgres"), ("database", "postgres")] {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut msg = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        msg.extend_from_slice(&body);
        self.stream.write_all(&msg)?;
        loop {
            let (kind, body) = self.message()?;
            match kind {
                b'R' => {
                    let code = be_u32(&body, 0)?;
                    if code != 0 {
                        bail!(
                            "authentication method {code} asked for: this client does trust only"
                        );
                    }
                }
                b'E' => bail!("startup refused: {}", error_text(&body)),
                b'Z' => return Ok(()),
                // ParameterStatus, BackendKeyData, notices.
                _ => {}
            }
        }
    }

    /// Runs `sql` (one statement) and returns the rows' columns as text (`None`: NULL).
    pub fn query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
        let mut msg = vec![b'Q'];
        msg.extend_from_slice(&((sql.len() + 5) as u32).to_be_bytes());
        msg.extend_from_slice(sql.as_bytes());
        msg.push(0);
        self.stream.write_all(&msg)?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let (kind, body) = self.message()?;
            match kind {
                b'D' => rows.push(data_row(&body)?),
                b'E' => error = Some(error_text(&body)),
                b'Z' => break,
                // RowDescription, CommandComplete, notices.
                _ => {}
            }
        }
        match error {
            Some(e) => bail!("{sql:?}: {e}"),
            None => Ok(rows),
        }
    }

    /// One message: its type and body.
    fn message(&mut self) -> Result<(u8, Vec<u8>)> {
        let mut head = [0u8; 5];
        self.stream.read_exact(&mut head)?;
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if !(4..=MAX_MESSAGE).contains(&len) {
            bail!(
                "message {:?} of length {len}: not PostgreSQL's",
                head[0] as char
            );
        }
        let mut body = vec![0u8; len - 4];
        self.stream.read_exact(&mut body)?;
        Ok((head[0], body))
    }
}

impl Drop for PgConn {
    fn drop(&mut self) {
        // Terminate: the server logs no "unexpected EOF".
        let _ = self.stream.write_all(&[b'X', 0, 0, 0, 4]);
    }
}

fn be_u32(b: &[u8], at: usize) -> Result<u32> {
    let s = b.get(at..at + 4).context("message too short")?;
    Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

/// A DataRow's columns.
fn data_row(b: &[u8]) -> Result<Vec<Option<String>>> {
    let n = u16::from_be_bytes([*b.first().context("empty row")?, *b.get(1).context("row")?]);
    let mut at = 2;
    let mut out = Vec::with_capacity(usize::from(n));
    for _ in 0..n {
        let len = be_u32(b, at)? as i32;
        at += 4;
        if len < 0 {
            out.push(None);
            continue;
        }
        let v = b
            .get(at..at + len as usize)
            .context("column beyond the row")?;
        out.push(Some(String::from_utf8_lossy(v).into_owned()));
        at += len as usize;
    }
    Ok(out)
}

/// An ErrorResponse's SQLSTATE and message.
fn error_text(b: &[u8]) -> String {
    let (mut code, mut message) = (String::new(), String::new());
    for field in b.split(|c| *c == 0) {
        match field.split_first() {
            Some((b'C', v)) => code = String::from_utf8_lossy(v).into_owned(),
            Some((b'M', v)) => message = String::from_utf8_lossy(v).into_owned(),
            _ => {}
        }
    }
    format!("{message} (SQLSTATE {code})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_with_nulls_and_errors_are_read() {
        // Two columns: "42" and NULL.
        let mut row = 2u16.to_be_bytes().to_vec();
        row.extend_from_slice(&2u32.to_be_bytes());
        row.extend_from_slice(b"42");
        row.extend_from_slice(&(-1i32).to_be_bytes());
        assert_eq!(data_row(&row).unwrap(), vec![Some("42".into()), None]);
        // A length beyond the row is an error, not a panic.
        let mut bad = 1u16.to_be_bytes().to_vec();
        bad.extend_from_slice(&9u32.to_be_bytes());
        bad.extend_from_slice(b"ab");
        assert!(data_row(&bad).is_err());
        assert!(data_row(&[]).is_err());
        let e = error_text(b"SFATAL\0C57P03\0Mnot yet accepting connections\0\0");
        assert_eq!(e, "not yet accepting connections (SQLSTATE 57P03)");
    }
}
