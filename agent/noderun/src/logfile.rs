//! A node's log file: appended to, rotated at a size cap keeping one old file (`.1`).

use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::io::AsyncReadExt as _;

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    max_bytes: u64,
    file: Option<File>,
    size: u64,
}

/// Shared by the output copiers of a node's processes and the supervisor's own lines.
#[derive(Debug, Clone)]
pub(crate) struct LogFile(Arc<Mutex<Inner>>);

fn open(path: &Path) -> io::Result<(File, u64)> {
    let f = OpenOptions::new().create(true).append(true).open(path)?;
    let size = f.metadata()?.len();
    Ok((f, size))
}

impl LogFile {
    pub fn open(path: &Path, max_bytes: u64) -> io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let (file, size) = open(path)?;
        Ok(LogFile(Arc::new(Mutex::new(Inner {
            path: path.to_owned(),
            max_bytes: max_bytes.max(4096),
            file: Some(file),
            size,
        }))))
    }

    pub fn path(&self) -> PathBuf {
        self.0.lock().map(|i| i.path.clone()).unwrap_or_default()
    }

    /// Appends `buf`; rotates first if it would pass the cap. Errors are dropped (a full
    /// disk must not stop the node), but the file is reopened on the next write.
    pub fn write(&self, buf: &[u8]) {
        let Ok(mut i) = self.0.lock() else { return };
        if i.size > 0 && i.size + buf.len() as u64 > i.max_bytes {
            i.file = None;
            let mut old = i.path.clone().into_os_string();
            old.push(".1");
            let _ = std::fs::rename(&i.path, &old);
            i.size = 0;
        }
        if i.file.is_none() {
            match open(&i.path) {
                Ok((f, size)) => {
                    i.file = Some(f);
                    i.size = size;
                }
                Err(_) => return,
            }
        }
        let ok = i
            .file
            .as_mut()
            .map(|f| f.write_all(buf).is_ok())
            .unwrap_or(false);
        if ok {
            i.size += buf.len() as u64;
        } else {
            i.file = None;
        }
    }

    /// A supervisor line, marked as such.
    pub fn note(&self, line: &str) {
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        self.write(
            format!("[weft {}.{:03}] {line}\n", ts.as_secs(), ts.subsec_millis()).as_bytes(),
        );
    }

    /// Copies a child's pipe into the log until it closes.
    pub fn spawn_copier<R>(&self, mut r: R)
    where
        R: tokio::io::AsyncRead + Unpin + Send + 'static,
    {
        let log = self.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match r.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => log.write(&buf[..n]),
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_keeping_one_old_file() {
        let dir = std::env::temp_dir().join(format!("wft-{:x}-logtest", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("x.log");
        let log = LogFile::open(&path, 4096).unwrap();
        for i in 0..100 {
            log.write(format!("line {i:04} {}\n", "x".repeat(80)).as_bytes());
        }
        let cur = std::fs::metadata(&path).unwrap().len();
        let old = std::fs::metadata(dir.join("x.log.1")).unwrap().len();
        assert!(cur <= 4096 && old <= 4096 && old > 3000, "{cur} {old}");
        assert!(
            std::fs::read_to_string(&path)
                .unwrap()
                .contains("line 0099")
        );
        assert!(!dir.join("x.log.2").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
