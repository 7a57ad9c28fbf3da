//! Readiness probes: whether a node's server answers, by its own protocol where a bare
//! TCP accept would say "up" too early.
//!
//! PostgreSQL listens while it recovers from a crash (a weave's clone of a live data
//! directory starts with one) and refuses every session then with SQLSTATE 57P03
//! ("the database system is not yet accepting connections"); Redis answers `-LOADING`
//! while it loads its dataset. Their probes send the protocol's first message and count
//! the server ready once it would serve a client: PostgreSQL answers a startup message
//! with anything but 57P03 (an authentication request, or another error such as a
//! missing role: it is serving), Redis answers `PING` with anything but `-LOADING`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::profiles::Ready;

/// How long one attempt may take (connect, then each read and write).
const ATTEMPT: Duration = Duration::from_millis(500);

/// One attempt of `kind`'s probe at `addr`: true when the server is ready.
pub fn attempt(kind: Ready, addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, ATTEMPT) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(ATTEMPT));
    let _ = s.set_write_timeout(Some(ATTEMPT));
    let _ = s.set_nodelay(true);
    match kind {
        Ready::Tcp => true,
        Ready::Postgres => postgres(&mut s).unwrap_or(false),
        Ready::Redis => redis(&mut s).unwrap_or(false),
    }
}

/// A StartupMessage (protocol 3.0, user and database `postgres`); the first byte of the
/// answer says: `R` authentication (ready), `E` an error (ready unless 57P03), anything
/// else or nothing not ready.
fn postgres(s: &mut TcpStream) -> std::io::Result<bool> {
    s.write_all(&crate::replies::pg_startup())?;
    let mut head = [0u8; 5];
    s.read_exact(&mut head)?;
    let ready = match head[0] {
        b'R' => true,
        b'E' => {
            let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
            // An ErrorResponse is small; a length beyond this is not PostgreSQL's.
            if !(4..=8192).contains(&len) {
                return Ok(false);
            }
            let mut fields = vec![0u8; len - 4];
            s.read_exact(&mut fields)?;
            sqlstate(&fields).is_some_and(|c| c != b"57P03")
        }
        _ => false,
    };
    // Terminate: the server logs no "incomplete startup packet" for it.
    let _ = s.write_all(&crate::replies::PG_TERMINATE);
    Ok(ready)
}

/// The `C` (SQLSTATE) field of an ErrorResponse's fields.
fn sqlstate(fields: &[u8]) -> Option<&[u8]> {
    let mut rest = fields;
    while let Some((&code, tail)) = rest.split_first() {
        if code == 0 {
            return None;
        }
        let end = tail.iter().position(|b| *b == 0)?;
        if code == b'C' {
            return Some(&tail[..end]);
        }
        rest = &tail[end + 1..];
    }
    None
}

/// `PING`: ready unless the answer is `-LOADING` (or nothing).
fn redis(s: &mut TcpStream) -> std::io::Result<bool> {
    s.write_all(b"PING\r\n")?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf)?;
    Ok(n > 0 && !buf[..n].starts_with(b"-LOADING"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A one-connection server on loopback that reads what the probe sends and answers
    /// `reply`; returns its address and what it received.
    fn serve(reply: Vec<u8>) -> (SocketAddr, std::thread::JoinHandle<Vec<u8>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut got = vec![0u8; 256];
            let n = c.read(&mut got).unwrap_or(0);
            got.truncate(n);
            let _ = c.write_all(&reply);
            // Keep the socket until the probe has read.
            let mut rest = [0u8; 16];
            let _ = c.read(&mut rest);
            got
        });
        (addr, t)
    }

    fn error_response(code: &str) -> Vec<u8> {
        let mut f = Vec::new();
        for (k, v) in [(b'S', "FATAL"), (b'C', code), (b'M', "no")] {
            f.push(k);
            f.extend_from_slice(v.as_bytes());
            f.push(0);
        }
        f.push(0);
        let mut m = vec![b'E'];
        m.extend_from_slice(&((f.len() + 4) as u32).to_be_bytes());
        m.extend_from_slice(&f);
        m
    }

    #[test]
    fn postgres_in_recovery_is_not_ready_and_an_auth_request_is() {
        let (a, t) = serve(error_response("57P03"));
        assert!(!attempt(Ready::Postgres, a), "57P03: still recovering");
        let sent = t.join().unwrap();
        // A StartupMessage of protocol 3.0 naming the user.
        assert_eq!(&sent[4..8], &196_608u32.to_be_bytes());
        assert!(sent.windows(9).any(|w| w == b"user\0post"), "{sent:?}");

        let (a, t) = serve(vec![b'R', 0, 0, 0, 8, 0, 0, 0, 0]);
        assert!(attempt(Ready::Postgres, a), "AuthenticationOk");
        t.join().unwrap();
        // Another error (no such role): it serves, so it is ready.
        let (a, t) = serve(error_response("28000"));
        assert!(attempt(Ready::Postgres, a));
        t.join().unwrap();
        // Not PostgreSQL at all.
        let (a, t) = serve(b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec());
        assert!(!attempt(Ready::Postgres, a));
        t.join().unwrap();
    }

    #[test]
    fn redis_loading_is_not_ready_and_pong_is() {
        let (a, t) = serve(b"-LOADING Redis is loading the dataset in memory\r\n".to_vec());
        assert!(!attempt(Ready::Redis, a));
        assert_eq!(t.join().unwrap(), b"PING\r\n");
        let (a, t) = serve(b"+PONG\r\n".to_vec());
        assert!(attempt(Ready::Redis, a));
        t.join().unwrap();
    }

    #[test]
    fn nothing_listening_is_not_ready_for_any_kind() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = l.local_addr().unwrap();
        drop(l);
        for k in [Ready::Tcp, Ready::Postgres, Ready::Redis] {
            assert!(!attempt(k, a), "{k:?}");
        }
    }
}
