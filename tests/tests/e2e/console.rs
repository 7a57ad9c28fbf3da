//! The web console in a real headless Chromium (WebDriver) against a live lab: real
//! servers and clients, the agent on hv1, the controller over HTTPS with its tokens. The
//! map shows the services and edges the traffic made; a dependency that starts after the
//! page loaded appears without a reload; a service page charts its buckets; the shards
//! page and the events feed render what the controller holds.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use weft_lab::browser::{self, Browser};
use weft_lab::servers::{self, Site};
use weft_lab::weft::{Agent, Controller, free_port};
use weft_lab::{skip_unless_root, traffic};

use crate::support;

const ENTER: &str = "\u{E007}";
const WAIT: Duration = Duration::from_secs(30);

/// The `data-edge` keys of the map.
fn map_edges(b: &Browser) -> Result<Vec<String>> {
    let v = b.execute(
        "return [...document.querySelectorAll('svg.map [data-edge]')].map(e => e.dataset.edge).sort();",
        vec![],
    )?;
    Ok(serde_json::from_value(v)?)
}

#[test]
fn the_console_shows_the_live_lab_in_a_real_browser() -> Result<()> {
    if skip_unless_root("the_console_shows_the_live_lab_in_a_real_browser") {
        return Ok(());
    }
    if let Some(why) = browser::missing() {
        bail!("the browser test needs Chromium: {why}");
    }
    let lab = support::lab(&["client", "web", "api", "worker", "cache"])?;
    let api = servers::nginx(lab.workload("api")?, support::static_site())?;
    let web = servers::nginx(
        lab.workload("web")?,
        Site::Proxy {
            upstream: api.addr(),
        },
    )?;
    let cache = servers::redis(lab.workload("cache")?)?;
    let ip = lab.hypervisor().uplink_root_addr.clone();
    let grpc = format!("{ip}:{}", free_port(&ip)?);
    let http = format!("127.0.0.1:{}", free_port("127.0.0.1")?);
    let pool = format!("198.19.{}.128/25", lab.x());
    // Two-second buckets: a few seconds of traffic make several points of a chart.
    let controller = Controller::start_with(
        &lab,
        &grpc,
        &http,
        &["--bucket-width", "2s", "--shard-pool", &pool],
    )?;
    let _agent = Agent::start(&lab, 0, &controller.grpc_url())?;
    let logs = || controller.child.tail(30);
    controller
        .json(
            "POST",
            "/shards",
            Some(&json!({"prefix_len": 28, "network_id": "console"})),
        )
        .context("POST /shards")?;

    let client = &lab.workload("client")?.netns;
    let url = format!("{}/small.json", web.url());
    for round in 0..3 {
        if round > 0 {
            std::thread::sleep(Duration::from_secs(2));
        }
        traffic::curl_each(client, &url, 10, &[])?;
    }
    support::wait_edge_of(&controller, "client", "web")?;
    support::wait_edge_of(&controller, "web", "api")?;

    let browser = Browser::start(lab.dir(), 1400, 900)?;
    browser.goto(&controller.http_url("/ui"))?;
    // No token yet: the console asks for one.
    browser
        .wait_for(
            "the token form",
            WAIT,
            "return document.getElementById('token-dialog').open;",
        )
        .with_context(logs)?;
    let input = browser.find("#token-input")?;
    browser.send_keys(&input, &format!("{}{ENTER}", controller.token))?;

    // The map: the services and edges the traffic made, no others.
    browser
        .wait_for(
            "the map's edges client->web and web->api",
            WAIT,
            "const e = new Set([...document.querySelectorAll('svg.map [data-edge]')].map(e => e.dataset.edge));
             return e.has('client->web') && e.has('web->api');",
        )
        .with_context(logs)?;
    let edges = map_edges(&browser)?;
    ensure!(
        edges == ["client->web", "web->api"],
        "the map's edges: {edges:?}"
    );
    let labels = browser.execute(
        "return [...document.querySelectorAll('svg.map [data-edge-label]')].map(e => e.textContent).sort();",
        vec![],
    )?;
    ensure!(
        labels.as_array().is_some_and(|l| l.len() == 2
            && l.iter()
                .all(|t| t.as_str().is_some_and(|t| t.starts_with("http · ")))),
        "the edges' labels: {labels}"
    );
    let nodes: Vec<Value> = serde_json::from_value(browser.execute(
        "return [...document.querySelectorAll('svg.map .node')].map(n => ({
            name: n.dataset.service, type: n.dataset.type, fill: n.querySelector('rect').getAttribute('fill'),
            legend: (() => { const l = document.querySelector(`[data-legend-type='${n.dataset.type}'] .swatch`);
                             return l ? getComputedStyle(l).backgroundColor : null; })(),
            focusable: n.tabIndex === 0 }));",
        vec![],
    )?)?;
    let mut names: Vec<&str> = nodes.iter().filter_map(|n| n["name"].as_str()).collect();
    names.sort();
    ensure!(
        names == ["api", "client", "web"],
        "the map's services: {nodes:?}"
    );
    for n in &nodes {
        ensure!(n["focusable"] == json!(true), "not focusable: {n}");
        let fill = n["fill"].as_str().unwrap_or_default();
        let legend = n["legend"]
            .as_str()
            .context("a type without a legend entry")?;
        // #rrggbb against the legend's rgb(r, g, b).
        let rgb = (1..7)
            .step_by(2)
            .map(|i| u8::from_str_radix(&fill[i..i + 2], 16).map(|v| v.to_string()))
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("fill {fill}"))?
            .join(", ");
        ensure!(
            legend == format!("rgb({rgb})"),
            "{n}: node colour is not its type's legend colour"
        );
    }
    // Keyboard: the skip link comes first in the tab order and focuses the content.
    let first = browser.execute(
        "return [...document.querySelectorAll('a[href], button, input, select, [tabindex]')]
             .find(e => e.tabIndex >= 0 && !e.hidden && !e.closest('dialog'))?.id;",
        vec![],
    )?;
    ensure!(first == json!("skip"), "first in the tab order: {first}");
    let skip = browser.find("#skip")?;
    browser.send_keys(&skip, ENTER)?;
    ensure!(
        browser.execute("return document.activeElement.id;", vec![])? == json!("main"),
        "the skip link did not focus the content"
    );
    let client_web = browser.execute(
        "const e = document.querySelector(\"svg.map [data-edge='client->web']\");
         return { requests: +e.dataset.requests, width: +e.querySelector('path').getAttribute('stroke-width'),
                  colour: e.querySelector('path').getAttribute('stroke') };",
        vec![],
    )?;
    ensure!(
        client_web["requests"].as_u64() >= Some(30),
        "client->web on the map: {client_web}"
    );
    ensure!(client_web["width"].as_f64() > Some(1.5), "{client_web}");

    // The layout is the same whatever order the services and dependencies come in: by
    // depth (a cycle cut where it closes), then callers, type and name.
    let layers = browser.execute_async(
        "const done = arguments[arguments.length - 1];
         import('/ui/js/layout.js').then(({ layered }) => {
           const nodes = [['api', 'microservice'], ['cache', 'cache'], ['client', 'client'], ['db', 'database'], ['web', 'web_server']]
             .map(([name, type]) => ({ name, type }));
           const edges = [['client', 'web'], ['web', 'api'], ['web', 'cache'], ['api', 'db'], ['db', 'api']]
             .map(([source, target]) => ({ source, target }));
           const a = layered(nodes, edges).layers, b = layered([...nodes].reverse(), [...edges].reverse()).layers;
           done(JSON.stringify(a) === JSON.stringify(b) ? a : { differs: [a, b] });
         }, (e) => done({ error: String(e) }));",
        vec![],
    )?;
    ensure!(
        layers == json!([["client"], ["web"], ["api", "cache"], ["db"]]),
        "layout: {layers}"
    );

    // A new dependency after the page loaded appears without a reload.
    browser.execute("window.__loadedOnce = true;", vec![])?;
    let worker = &lab.workload("worker")?.netns;
    traffic::redis_benchmark(worker, &cache.ipv4, 2_000, 2)?;
    browser
        .wait_for(
            "the new edge worker->cache on the map",
            WAIT,
            "return !!document.querySelector(\"svg.map [data-edge='worker->cache']\");",
        )
        .with_context(logs)?;
    ensure!(
        browser.execute("return window.__loadedOnce === true;", vec![])? == json!(true),
        "the page was reloaded"
    );

    // Keyboard: Enter on the web node opens its page, with charts that have data.
    let node = browser.find("svg.map .node[data-service='web']")?;
    browser.send_keys(&node, ENTER)?;
    browser
        .wait_for(
            "web's page with its charts",
            WAIT,
            "const r = document.querySelector(\"figure[data-chart='requests']\");
             const l = document.querySelector(\"figure[data-chart='latency']\");
             return location.hash === '#/service/web' && r && l && +r.dataset.nonzero >= 2 && +l.dataset.nonzero >= 2;",
        )
        .with_context(logs)?;
    let deps = browser.execute(
        "return [...document.querySelectorAll('[data-dependency]')].map(r => r.dataset.dependency).sort();",
        vec![],
    )?;
    ensure!(
        deps.as_array().is_some_and(|d| d.len() == 2
            && d[0].as_str().is_some_and(|s| s.starts_with("client->web:"))
            && d[1].as_str().is_some_and(|s| s.starts_with("web->api:"))),
        "web's dependencies on its page: {deps}"
    );
    ensure!(
        browser.execute(
            "return document.querySelectorAll(\"figure[data-chart='errors']\").length;",
            vec![]
        )? == json!(1),
        "no error chart"
    );

    // Shards, networks and migrations.
    browser.execute("location.hash = '#/infra';", vec![])?;
    browser
        .wait_for(
            "the shard on the shards page",
            WAIT,
            "const r = document.querySelector('tr[data-shard]');
             return r && r.querySelector('progress') && document.getElementById('h-networks')
                    && document.getElementById('h-migrations') && r.innerText.includes('console');",
        )
        .with_context(logs)?;

    // The events feed: the new dependency's event, from the stream.
    browser.execute("location.hash = '#/events';", vec![])?;
    let event = browser
        .wait_for(
            "worker->cache's event in the feed",
            WAIT,
            "const e = [...document.querySelectorAll('.feed li')].find(li =>
                 li.dataset.eventType.includes('dependency') && li.innerText.includes('worker → cache'));
             return e ? e.dataset.eventType : null;",
        )
        .with_context(logs)?;
    ensure!(
        event.as_str().is_some_and(|t| t.starts_with("weft.")),
        "{event}"
    );
    // The token went in headers only: no URL the page loaded holds it, and the tab keeps
    // it in sessionStorage.
    let token_check = browser.execute(
        "const t = arguments[0];
         return { in_urls: performance.getEntriesByType('resource').filter(e => e.name.includes(t)).length
                          + (location.href.includes(t) ? 1 : 0),
                  kept: Object.keys(sessionStorage).some(k => sessionStorage.getItem(k) === t),
                  loaded: performance.getEntriesByType('resource').length };",
        vec![json!(controller.token)],
    )?;
    ensure!(
        token_check["in_urls"] == json!(0)
            && token_check["kept"] == json!(true)
            && token_check["loaded"].as_u64() > Some(5),
        "the token's whereabouts: {token_check}"
    );
    ensure!(
        browser.execute("return window.__loadedOnce === true;", vec![])? == json!(true),
        "the page was reloaded on the way"
    );
    Ok(())
}
