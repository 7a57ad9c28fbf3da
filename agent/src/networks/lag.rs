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

use weft_noderun::replies::{self, PgMessage};

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

fn bad(what: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string())
}

/// One value of `sql` (first column of the first row) as text.
fn pg_query(addr: SocketAddr, sql: &str) -> std::io::Result<String> {
    let mut s = connect(addr)?;
    s.write_all(&replies::pg_startup())?;
    let mut r = BufReader::new(s.try_clone()?);
    let mut read_msg = || -> std::io::Result<PgMessage> {
        let mut head = [0u8; 5];
        r.read_exact(&mut head)?;
        let (tag, len) = replies::pg_header(&head).map_err(bad)?;
        let mut body = vec![0u8; len];
        r.read_exact(&mut body)?;
        replies::pg_message(tag, &body).map_err(bad)
    };
    loop {
        match read_msg()? {
            PgMessage::AuthOk => {}
            PgMessage::AuthRequired(_) => {
                return Err(bad("authentication required (the profile trusts)"));
            }
            PgMessage::Error(e) => return Err(bad(e)),
            PgMessage::Ready => break,
            _ => {}
        }
    }
    s.write_all(&replies::pg_query(sql))?;
    let mut value = None;
    loop {
        match read_msg()? {
            PgMessage::Row(v) if value.is_none() => value = Some(v),
            PgMessage::Error(e) => return Err(bad(e)),
            PgMessage::Ready => break,
            _ => {}
        }
    }
    let _ = s.write_all(&replies::PG_TERMINATE);
    value
        .flatten()
        .ok_or_else(|| bad(format!("no value for {sql}")))
}

fn lsn(text: &str) -> std::io::Result<u64> {
    replies::lsn(text).map_err(bad)
}

/// A field of Redis `INFO replication`.
fn redis_info(addr: SocketAddr, field: &str) -> std::io::Result<u64> {
    let mut s = connect(addr)?;
    s.write_all(b"INFO replication\r\n")?;
    let mut r = BufReader::new(s);
    let mut first = Vec::new();
    r.by_ref().take(64).read_until(b'\n', &mut first)?;
    let len = replies::redis_bulk_len(&first).map_err(bad)?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    replies::redis_info_field(&body, field).map_err(bad)
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
    fn servers_by_image() {
        assert_eq!(
            Server::of_image("postgres:16+replica"),
            Some(Server::Postgres)
        );
        assert_eq!(Server::of_image("redis:7+replica"), Some(Server::Redis));
        assert_eq!(Server::of_image("nginx"), None);
    }
}
