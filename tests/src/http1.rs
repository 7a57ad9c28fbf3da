//! A keep-alive HTTP/1.1 client of the controller's REST API for tests and tools that need
//! to know exactly what happened to a request: whether it was never sent (the connection
//! could not be made: safe to send elsewhere) or sent with its answer lost (the controller
//! may or may not have acted on it). Plain text, bearer token, one request at a time,
//! bodies with `Content-Length`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// One keep-alive connection.
pub struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    token: String,
}

impl Conn {
    /// Connects to `addr` (`host:port`); requests carry `Authorization: Bearer token`.
    /// An error here means nothing was sent.
    pub fn open(addr: &str, token: &str) -> std::io::Result<Self> {
        let s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(Self {
            reader: BufReader::new(s.try_clone()?),
            writer: s,
            token: token.to_owned(),
        })
    }

    /// Whether the server has closed this connection while it was idle (it was
    /// stopped, killed or timed the connection out): a request sent on it would be lost
    /// without the server ever reading it.
    pub fn closed_by_peer(&mut self) -> bool {
        if !self.reader.buffer().is_empty() {
            // Bytes nobody asked for: the connection is out of step; do not reuse it.
            return true;
        }
        let s = self.reader.get_ref();
        if s.set_nonblocking(true).is_err() {
            return true;
        }
        let mut byte = [0u8; 1];
        let closed = match s.peek(&mut byte) {
            Ok(_) => true, // 0: closed; more: unexpected bytes
            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
        };
        closed || s.set_nonblocking(false).is_err()
    }

    /// Sends one request and reads its answer: (status, body).
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        body: &str,
    ) -> std::io::Result<(u16, String)> {
        // One write per request: no small segments for Nagle and delayed ACKs to hold up.
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.token,
            body.len()
        );
        self.writer.write_all(request.as_bytes())?;
        let mut status = String::new();
        if self.reader.read_line(&mut status)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed",
            ));
        }
        let code: u16 = status
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let mut length = 0usize;
        loop {
            let mut h = String::new();
            if self.reader.read_line(&mut h)? == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "closed",
                ));
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body)?;
        Ok((code, String::from_utf8_lossy(&body).into_owned()))
    }
}
