//! Progress of long work on stderr (a pcap import, a migration `--wait`): a bar when
//! stderr is a terminal, nothing otherwise (logs and pipes get the commands' own lines).

use std::io::IsTerminal as _;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar on stderr, or nothing when stderr is not a terminal.
#[derive(Debug)]
pub struct Progress(Option<ProgressBar>);

/// Whether progress is drawn: stderr is a terminal.
pub fn shown() -> bool {
    std::io::stderr().is_terminal()
}

impl Progress {
    fn new(total: u64, template: &str) -> Self {
        if !shown() {
            return Self(None);
        }
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        // The templates are constants, checked by the unit test below.
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.enable_steady_tick(Duration::from_millis(120));
        Self(Some(bar))
    }

    /// Bytes of `total`, with throughput and time left.
    pub fn bytes(total: u64, what: &str) -> Self {
        let p = Self::new(total, BYTES);
        p.message(what);
        p
    }

    /// Items (workloads, observations) of `total`.
    pub fn items(total: u64, what: &str) -> Self {
        let p = Self::new(total, ITEMS);
        p.message(what);
        p
    }

    pub fn set(&self, position: u64) {
        if let Some(bar) = &self.0 {
            bar.set_position(position);
        }
    }

    pub fn set_total(&self, total: u64) {
        if let Some(bar) = &self.0 {
            bar.set_length(total);
        }
    }

    pub fn message(&self, message: &str) {
        if let Some(bar) = &self.0 {
            bar.set_message(message.to_owned());
        }
    }

    /// Takes the bar off the terminal.
    pub fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

const BYTES: &str =
    "{spinner} {msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}";
const ITEMS: &str = "{spinner} {msg} [{bar:30}] {pos}/{len} {elapsed}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_parse() {
        for template in [BYTES, ITEMS] {
            assert!(ProgressStyle::with_template(template).is_ok(), "{template}");
        }
    }
}
