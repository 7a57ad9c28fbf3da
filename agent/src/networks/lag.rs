//! How far a mirror's replica is behind its source, measured from inside the mirror node:
//! the source's position now (through the replication import on 127.0.0.1), then how
//! long until the replica has replayed up to it. PostgreSQL: `pg_current_wal_lsn()` on
//! the source, `pg_last_wal_replay_lsn()` on the standby (the simple query protocol, trust
//! authentication, as the profile configures); Redis: `master_repl_offset` of the source,
//! `slave_repl_offset` of the replica (`INFO replication`).

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Longer than this, the lag is reported as "more than".
pub const LAG_BOUND: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    Postgres,
    Redis,
}

impl Server {
    pub fn of_image(image: &str) -> Option<Self> {
        if image.starts_with("postgres") {
            Some(Self::Postgres)
        } else if image.starts_with("redis") || image.starts_with("valkey") {
            Some(Self::Redis)
        } else {
            None
        }
    }
}

fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(s)
}

fn bad(what: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.into())
}

/// One value of `sql` (first column of the first row) as text.
fn pg_query(addr: SocketAddr, sql: &str) -> std::io::Result<String> {
    let mut s = connect(addr)?;
    let params = b"user\0postgres\0database\0postgres\0\0";
    let mut m = Vec::with_capacity(8 + params.len());
    m.extend_from_slice(&((8 + params.len()) as u32).to_be_bytes());
    m.extend_from_slice(&196_608u32.to_be_bytes());
    m.extend_from_slice(params);
    s.write_all(&m)?;
    let mut r = BufReader::new(s.try_clone()?);
    let mut read_msg = || -> std::io::Result<(u8, Vec<u8>)> {
        let mut head = [0u8; 5];
        r.read_exact(&mut head)?;
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if !(4..=1 << 20).contains(&len) {
            return Err(bad(format!("message length {len}")));
        }
        let mut body = vec![0u8; len - 4];
        r.read_exact(&mut body)?;
        Ok((head[0], body))
    };
    loop {
        match read_msg()? {
            (b'R', b) if b.get(..4) == Some(&[0, 0, 0, 0]) => {}
            (b'R', _) => return Err(bad("authentication required (the profile trusts)")),
            (b'E', b) => return Err(bad(String::from_utf8_lossy(&b).into_owned())),
            (b'Z', _) => break,
            _ => {}
        }
    }
    let mut q = vec![b'Q'];
    q.extend_from_slice(&((4 + sql.len() + 1) as u32).to_be_bytes());
    q.extend_from_slice(sql.as_bytes());
    q.push(0);
    s.write_all(&q)?;
    let mut value = None;
    loop {
        match read_msg()? {
            (b'D', b) if value.is_none() && b.len() >= 6 => {
                let len = i32::from_be_bytes([b[2], b[3], b[4], b[5]]);
                if len >= 0 {
                    let end = 6 + len as usize;
                    value =
                        Some(String::from_utf8_lossy(b.get(6..end).unwrap_or(&[])).into_owned());
                }
            }
            (b'E', b) => return Err(bad(String::from_utf8_lossy(&b).into_owned())),
            (b'Z', _) => break,
            _ => {}
        }
    }
    let _ = s.write_all(&[b'X', 0, 0, 0, 4]);
    value.ok_or_else(|| bad(format!("no value for {sql}")))
}

/// `0/3000148` -> a byte position.
fn lsn(text: &str) -> std::io::Result<u64> {
    let (hi, lo) = text
        .trim()
        .split_once('/')
        .ok_or_else(|| bad(format!("LSN {text:?}")))?;
    let hi = u64::from_str_radix(hi, 16).map_err(|_| bad(format!("LSN {text:?}")))?;
    let lo = u64::from_str_radix(lo, 16).map_err(|_| bad(format!("LSN {text:?}")))?;
    Ok(hi << 32 | lo)
}

/// A field of Redis `INFO replication`.
fn redis_info(addr: SocketAddr, field: &str) -> std::io::Result<u64> {
    let mut s = connect(addr)?;
    s.write_all(b"INFO replication\r\n")?;
    let mut r = BufReader::new(s);
    let mut first = String::new();
    r.read_line(&mut first)?;
    let len: usize = first
        .trim()
        .strip_prefix('$')
        .and_then(|n| n.parse().ok())
        .filter(|n| *n <= 1 << 20)
        .ok_or_else(|| bad(format!("INFO answered {first:?}")))?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    let text = String::from_utf8_lossy(&body);
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| bad(format!("no {field} in INFO replication")))
}

fn position(server: Server, addr: SocketAddr, source: bool) -> std::io::Result<u64> {
    match (server, source) {
        (Server::Postgres, true) => lsn(&pg_query(addr, "select pg_current_wal_lsn()::text")?),
        (Server::Postgres, false) => lsn(&pg_query(addr, "select pg_last_wal_replay_lsn()::text")?),
        (Server::Redis, true) => redis_info(addr, "master_repl_offset"),
        (Server::Redis, false) => redis_info(addr, "slave_repl_offset"),
    }
}

/// Blocking: the source's position through `source` (the import), then the time until
/// `replica` has reached it, at most [`LAG_BOUND`] (`Ok(None)`: not within it).
fn measure_here(
    server: Server,
    replica: SocketAddr,
    source: SocketAddr,
) -> std::io::Result<Option<Duration>> {
    let target = position(server, source, true)?;
    let start = Instant::now();
    loop {
        if position(server, replica, false)? >= target {
            return Ok(Some(start.elapsed()));
        }
        if start.elapsed() >= LAG_BOUND {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// [`measure_here`] from inside the namespace of `netns`.
pub async fn measure(
    netns: &Path,
    server: Server,
    replica: SocketAddr,
    source: SocketAddr,
) -> Result<Option<Duration>, String> {
    crate::hostevents::in_netns(netns, move || measure_here(server, replica, source))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_parse_to_byte_positions() {
        assert_eq!(lsn("0/3000148").unwrap(), 0x0300_0148);
        assert_eq!(lsn("1/0").unwrap(), 1 << 32);
        assert!(lsn("nope").is_err());
        assert!(lsn("0/zz").is_err());
    }

    #[test]
    fn servers_by_image() {
        assert_eq!(
            Server::of_image("postgres:16+replica"),
            Some(Server::Postgres)
        );
        assert_eq!(Server::of_image("redis:7+replica"), Some(Server::Redis));
        assert_eq!(Server::of_image("nginx"), None);
    }
}
