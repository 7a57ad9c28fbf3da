//! Message bodies, streamed: only where a body ends is tracked (the bytes are passed on);
//! the one thing held is a chunk-size line (at most [`MAX_CHUNK_LINE`] bytes), to read it.

use crate::CutError;
use crate::head::is_ctl;

/// Longest chunk-size line accepted (size and extensions, CRLF not counted).
pub(crate) const MAX_CHUNK_LINE: usize = 1024;

/// Where a body is, and how it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Body {
    /// Bytes left of a `Content-Length` body (more than zero).
    Length(u64),
    /// A chunked body.
    Chunked(Chunked),
    /// A response body that ends when the server closes.
    UntilClose,
}

/// Where a chunked body is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Chunked {
    state: Chunk,
    /// The chunk-size line read so far.
    line: Vec<u8>,
    /// Bytes of the trailer section so far, and their limit.
    trailers: usize,
    max_trailers: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Reading a chunk-size line.
    Size,
    /// Data bytes left of a chunk.
    Data(u64),
    /// The CR, then the LF after a chunk's data.
    DataCr,
    DataLf,
    /// In the trailer section (after the last chunk): bytes of the current line, and
    /// whether its last byte is a CR.
    Trailer {
        len: usize,
        cr: bool,
    },
}

impl Chunked {
    /// At the start of a chunked body; `max_trailers`: the limit of its trailer section.
    pub fn new(max_trailers: usize) -> Self {
        Self {
            state: Chunk::Size,
            line: Vec::new(),
            trailers: 0,
            max_trailers,
        }
    }
}

impl Body {
    /// Takes body bytes from the start of `data`: how many, and whether the body is
    /// complete with the last of them; on an error, how many bytes came before the one
    /// that is wrong (they are body bytes: whatever the feeds, the same bytes are passed on).
    pub fn push(&mut self, data: &[u8]) -> (usize, Result<bool, CutError>) {
        match self {
            Body::Length(left) => {
                let n = usize::try_from(*left).unwrap_or(usize::MAX).min(data.len());
                *left -= n as u64;
                (n, Ok(*left == 0))
            }
            Body::UntilClose => (data.len(), Ok(false)),
            Body::Chunked(c) => c.push(data),
        }
    }
}

impl Chunked {
    fn push(&mut self, data: &[u8]) -> (usize, Result<bool, CutError>) {
        let mut at = 0;
        while at < data.len() {
            match self.step(data, at) {
                Ok(Some(n)) => at += n,
                Ok(None) => return (at + 1, Ok(true)),
                Err(e) => return (at, Err(e)),
            }
        }
        (at, Ok(false))
    }

    /// Reads from `data[at..]`: how many bytes it took (`None`: one, the body's last).
    fn step(&mut self, data: &[u8], at: usize) -> Result<Option<usize>, CutError> {
        let b = data[at];
        match &mut self.state {
            Chunk::Data(left) => {
                let n = usize::try_from(*left)
                    .unwrap_or(usize::MAX)
                    .min(data.len() - at);
                *left -= n as u64;
                if *left == 0 {
                    self.state = Chunk::DataCr;
                }
                return Ok(Some(n));
            }
            Chunk::Size => {
                if b == b'\n' {
                    self.state = self.size_line()?;
                    self.line.clear();
                } else if self.line.len() > MAX_CHUNK_LINE {
                    return Err(CutError::Malformed(format!(
                        "chunk-size line over {MAX_CHUNK_LINE} bytes"
                    )));
                } else {
                    self.line.push(b);
                }
            }
            Chunk::DataCr if b == b'\r' => self.state = Chunk::DataLf,
            Chunk::DataLf if b == b'\n' => self.state = Chunk::Size,
            Chunk::DataCr | Chunk::DataLf => {
                return Err(CutError::Malformed(
                    "chunk data not followed by CRLF".into(),
                ));
            }
            Chunk::Trailer { len, cr } => {
                self.trailers += 1;
                if self.trailers > self.max_trailers {
                    return Err(CutError::Malformed(format!(
                        "trailer section over {} bytes",
                        self.max_trailers
                    )));
                }
                match (b, *cr) {
                    (b'\n', true) if *len == 0 => return Ok(None),
                    (b'\n', true) => (*len, *cr) = (0, false),
                    (b'\r', false) => *cr = true,
                    (b'\n', false) => {
                        return Err(CutError::Malformed("bare LF in the trailer section".into()));
                    }
                    (_, true) => {
                        return Err(CutError::Malformed("bare CR in the trailer section".into()));
                    }
                    (_, false) => *len += 1,
                }
            }
        }
        Ok(Some(1))
    }

    /// Reads the chunk-size line held (its LF just came): the next state.
    fn size_line(&self) -> Result<Chunk, CutError> {
        let Some(line) = self.line.strip_suffix(b"\r") else {
            return Err(CutError::Malformed(
                "chunk-size line not ended by CRLF".into(),
            ));
        };
        let shown = || String::from_utf8_lossy(&line[..line.len().min(40)]).into_owned();
        if line.iter().any(|&b| is_ctl(b)) {
            return Err(CutError::Malformed(format!(
                "control character in chunk-size line {:?}",
                shown()
            )));
        }
        // chunk-size [ BWS ";" extensions ]
        let size = line.split(|&b| b == b';').next().unwrap_or_default();
        let size = size.trim_ascii_end();
        let digits = size
            .iter()
            .position(|&b| b != b'0')
            .map_or(&[][..], |i| &size[i..]);
        if size.is_empty() || !size.iter().all(u8::is_ascii_hexdigit) || digits.len() > 16 {
            return Err(CutError::Malformed(format!(
                "chunk size {:?} is not a hexadecimal number",
                shown()
            )));
        }
        let n = digits.iter().fold(0u64, |n, &d| {
            (n << 4) | u64::from((d as char).to_digit(16).unwrap_or(0))
        });
        Ok(if n == 0 {
            Chunk::Trailer { len: 0, cr: false }
        } else {
            Chunk::Data(n)
        })
    }
}
