//! The demo's screenshots of the web console: headless Chromium (WebDriver) opens `/ui`
//! on the demo's controller, gives the admin token to the console's token form, and
//! writes a PNG of each page once it shows what the demo made.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use weft_lab::browser::Browser;
use weft_lab::weft::Controller;

const WAIT: Duration = Duration::from_secs(30);
const WIDTH: u32 = 1400;

pub struct Console {
    browser: Browser,
}

impl Console {
    /// Chromium on the console, signed in with the controller's admin token.
    pub fn open(controller: &Controller, log_dir: &Path) -> Result<Console> {
        let browser = Browser::start(log_dir, WIDTH, 900).context("starting headless Chromium")?;
        browser.goto(&controller.http_url("/ui"))?;
        browser.wait_for(
            "the console's token form",
            WAIT,
            "return document.getElementById('token-dialog').open;",
        )?;
        let input = browser.find("#token-input")?;
        browser.send_keys(&input, &format!("{}\u{E007}", controller.token))?;
        Ok(Console { browser })
    }

    /// Opens `hash`, waits until `ready` (a script) holds, and writes a PNG of the whole
    /// page to `path`.
    pub fn shoot(&self, hash: &str, ready: &str, path: &Path) -> Result<PathBuf> {
        self.browser.execute(
            &format!("location.hash = {};", serde_json::json!(hash)),
            vec![],
        )?;
        self.browser
            .wait_for(&format!("the console's {hash}"), WAIT, ready)?;
        // Let charts and late rows settle; no focus ring in the picture.
        std::thread::sleep(Duration::from_millis(500));
        self.browser.execute(
            "document.activeElement && document.activeElement.blur();",
            vec![],
        )?;
        let png = self.browser.screenshot_page(WIDTH, 2400)?;
        std::fs::write(path, png).with_context(|| format!("writing {}", path.display()))?;
        Ok(path.to_path_buf())
    }
}

/// The map, and web's service page.
pub const MAP_READY: &str = "return document.querySelectorAll('svg.map [data-edge]').length >= 4 && location.hash === '#/map';";
pub const SERVICE_READY: &str =
    "const r = document.querySelector(\"figure[data-chart='requests']\");
     return location.hash === '#/service/web' && r && +r.dataset.nonzero >= 1
            && document.querySelectorAll('[data-dependency]').length >= 2;";
pub const INFRA_READY: &str =
    "return location.hash === '#/infra' && !!document.querySelector('tr[data-shard]')
     && !!document.querySelector('tr[data-network]');";
pub const EVENTS_READY: &str =
    "return location.hash === '#/events' && document.querySelectorAll('.feed li').length >= 4;";
