//! A headless Chromium driven over WebDriver (W3C, JSON over HTTP) by `chromedriver` on a
//! free loopback port: just what the console's browser tests and the demo's screenshots
//! need (open a page, run a script, read the DOM, type, take a screenshot). The driver,
//! and the browser in its process group, are stopped when [`Browser`] drops.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::process::Child;
use crate::weft::free_port;

/// Where Debian's `chromium` and `chromium-driver` put them (`cargo xtask setup`).
pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The element reference key of W3C WebDriver.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Why there is no browser here, if there is none.
pub fn missing() -> Option<String> {
    [CHROMIUM, CHROMEDRIVER]
        .iter()
        .find(|p| !Path::new(p).is_file())
        .map(|p| {
            format!(
                "{p} is not installed (`cargo xtask setup` installs chromium and chromium-driver)"
            )
        })
}

pub struct Browser {
    base: String,
    session: String,
    http: ureq::Agent,
    /// Dropped after the session is deleted.
    _driver: Child,
}

impl Browser {
    /// Starts chromedriver (logs in `log_dir`) and a headless Chromium session with a
    /// fresh profile in `log_dir`, `width` x `height` pixels. `insecure_certs`: accept the
    /// lab's own CA.
    pub fn start(log_dir: &Path, width: u32, height: u32) -> Result<Browser> {
        if let Some(why) = missing() {
            bail!("{why}");
        }
        let port = free_port("127.0.0.1")?;
        let mut cmd = Command::new(CHROMEDRIVER);
        cmd.arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .arg(format!(
                "--log-path={}",
                log_dir.join("chromedriver.log").display()
            ));
        let mut driver = Child::spawn(cmd, log_dir, "chromedriver")?;
        let base = format!("http://127.0.0.1:{port}");
        let http = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(60))
            .build();
        let started = Instant::now();
        loop {
            let ready = http
                .get(&format!("{base}/status"))
                .call()
                .ok()
                .and_then(|r| r.into_json::<Value>().ok())
                .is_some_and(|v| v["value"]["ready"] == json!(true));
            if ready {
                break;
            }
            if !driver.is_running() || started.elapsed() > Duration::from_secs(20) {
                bail!("chromedriver did not get ready: {}", driver.tail(20));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let profile: PathBuf = log_dir.join(format!("chromium-profile-{port}"));
        let args = vec![
            "--headless".to_owned(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            format!("--window-size={width},{height}"),
            format!("--user-data-dir={}", profile.display()),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "acceptInsecureCerts": true,
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
        }}});
        let answer: Value = http
            .post(&format!("{base}/session"))
            .send_json(caps)
            .map_err(|e| anyhow::anyhow!("starting a Chromium session: {}", error_text(e)))?
            .into_json()?;
        let session = answer["value"]["sessionId"]
            .as_str()
            .context("no sessionId in the new session's answer")?
            .to_owned();
        Ok(Browser {
            base,
            session,
            http,
            _driver: driver,
        })
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let request = self.http.request(method, &url);
        let result = match body {
            Some(b) => request.send_json(b),
            None => request.call(),
        };
        let answer: Value = result
            .map_err(|e| anyhow::anyhow!("WebDriver {method} {path}: {}", error_text(e)))?
            .into_json()?;
        Ok(answer["value"].clone())
    }

    pub fn goto(&self, url: &str) -> Result<()> {
        self.call("POST", "/url", Some(json!({ "url": url })))?;
        Ok(())
    }

    pub fn url(&self) -> Result<String> {
        Ok(self
            .call("GET", "/url", None)?
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    /// Runs `script` (a function body; `arguments` holds `args`) and answers its value.
    pub fn execute(&self, script: &str, args: Vec<Value>) -> Result<Value> {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
    }

    /// Runs `script`, which calls its last argument with its result (e.g. after an
    /// `import()`), and answers that result.
    pub fn execute_async(&self, script: &str, args: Vec<Value>) -> Result<Value> {
        self.call(
            "POST",
            "/execute/async",
            Some(json!({ "script": script, "args": args })),
        )
    }

    /// Polls `script` until it returns something other than null/false/empty, at most
    /// `timeout`; answers that value, or fails with `what` and the last value seen.
    pub fn wait_for(&self, what: &str, timeout: Duration, script: &str) -> Result<Value> {
        let started = Instant::now();
        let mut last = Value::Null;
        while started.elapsed() < timeout {
            match self.execute(script, vec![]) {
                Ok(v)
                    if !(v.is_null() || v == json!(false) || v == json!([]) || v == json!("")) =>
                {
                    return Ok(v);
                }
                Ok(v) => last = v,
                Err(e) => last = json!(e.to_string()),
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        bail!("{what}: not within {timeout:?} (last: {last})")
    }

    /// The first element matching `css`.
    pub fn find(&self, css: &str) -> Result<String> {
        let v = self.call(
            "POST",
            "/element",
            Some(json!({ "using": "css selector", "value": css })),
        )?;
        v[ELEMENT]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("no element {css}: {v}"))
    }

    pub fn click(&self, element: &str) -> Result<()> {
        self.call(
            "POST",
            &format!("/element/{element}/click"),
            Some(json!({})),
        )?;
        Ok(())
    }

    /// Types `text` into `element` (WebDriver key codes, e.g. "\u{E007}" for Enter).
    pub fn send_keys(&self, element: &str, text: &str) -> Result<()> {
        self.call(
            "POST",
            &format!("/element/{element}/value"),
            Some(json!({ "text": text })),
        )?;
        Ok(())
    }

    /// The element that has the focus.
    pub fn active(&self) -> Result<String> {
        let v = self.call("GET", "/element/active", None)?;
        v[ELEMENT]
            .as_str()
            .map(str::to_owned)
            .context("no active element")
    }

    /// A PNG of the viewport.
    pub fn screenshot(&self) -> Result<Vec<u8>> {
        let v = self.call("GET", "/screenshot", None)?;
        base64_decode(v.as_str().context("screenshot is not a string")?)
    }

    /// A PNG of the whole page, however long (the window is made as tall as the page,
    /// at most `max_height`, for the shot).
    pub fn screenshot_page(&self, width: u32, max_height: u32) -> Result<Vec<u8>> {
        let height = self
            .execute("return document.documentElement.scrollHeight;", vec![])?
            .as_u64()
            .unwrap_or(900)
            .clamp(600, u64::from(max_height));
        self.call(
            "POST",
            "/window/rect",
            Some(json!({ "width": width, "height": height + 120 })),
        )?;
        std::thread::sleep(Duration::from_millis(300));
        self.screenshot()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Closes Chromium; the driver's guard then stops the driver and its group.
        let _ = self
            .http
            .delete(&format!("{}/session/{}", self.base, self.session))
            .timeout(Duration::from_secs(10))
            .call();
    }
}

fn error_text(e: ureq::Error) -> String {
    match e {
        ureq::Error::Status(code, r) => format!("{code} {}", r.into_string().unwrap_or_default()),
        other => other.to_string(),
    }
}

/// Standard base64 (with padding), as WebDriver sends screenshots.
pub fn base64_decode(text: &str) -> Result<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let bytes: Vec<u8> = text.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for chunk in bytes.chunks(4) {
        let data: Vec<u8> = chunk.iter().copied().filter(|c| *c != b'=').collect();
        let mut n = 0u32;
        for (i, c) in data.iter().enumerate() {
            let v = value(*c).with_context(|| format!("not base64: byte {c:#x}"))?;
            n |= v << (18 - 6 * i);
        }
        let take = match data.len() {
            4 => 3,
            3 => 2,
            2 => 1,
            _ => bail!("not base64: a group of {} characters", data.len()),
        };
        out.extend_from_slice(&n.to_be_bytes()[1..1 + take]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::base64_decode;

    #[test]
    fn base64_groups_with_and_without_padding() {
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64_decode("aGVsbG8h").unwrap(), b"hello!");
        assert_eq!(base64_decode("aGk=").unwrap(), b"hi");
        assert_eq!(
            base64_decode("iVBORw0KGgo=").unwrap()[..4],
            [0x89, b'P', b'N', b'G']
        );
        assert!(base64_decode("a$==").is_err());
    }
}
