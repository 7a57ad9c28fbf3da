//! The lab itself (no weft binaries): namespaces, bridge, addresses, cleanup.

use weft_lab::{Lab, netns, skip_unless_root, traffic};

#[test]
fn lab_connects_workloads_over_ipv4_and_ipv6_and_removes_everything_on_drop() {
    if skip_unless_root("lab_connects_workloads_over_ipv4_and_ipv6_and_removes_everything_on_drop") {
        return;
    }
    let lab = Lab::builder().hypervisor("hv1").workload("alpha").workload("beta").build().unwrap();
    let a = lab.workload("alpha").unwrap();
    let b = lab.workload("beta").unwrap();
    assert_eq!(traffic::ping_loss(&a.netns, &b.ipv4, 3).unwrap(), 0.0);
    assert_eq!(traffic::ping_loss(&a.netns, &b.ipv6, 3).unwrap(), 0.0);
    // The gateway and the controller uplink answer too.
    let hv = lab.hypervisor();
    assert_eq!(traffic::ping_loss(&a.netns, &hv.gateway4, 1).unwrap(), 0.0);
    assert_eq!(traffic::ping_loss(&hv.netns, &hv.uplink_root_addr, 1).unwrap(), 0.0);

    let names = lab.netns_names();
    assert_eq!(names.len(), 3);
    let listed = netns::list().unwrap();
    for n in &names {
        assert!(listed.contains(n), "{n} missing from {listed:?}");
    }
    let uplink = hv.uplink_root_if.clone();
    let dir = lab.dir().to_path_buf();
    drop(lab);

    let listed = netns::list().unwrap();
    for n in &names {
        assert!(!listed.contains(n), "{n} still exists after drop: {listed:?}");
    }
    assert!(!weft_lab::links::root_link_exists(&uplink), "{uplink} still exists");
    assert!(!dir.exists(), "{} still exists", dir.display());
}

#[test]
fn servers_answer_inside_the_lab() {
    if skip_unless_root("servers_answer_inside_the_lab") {
        return;
    }
    use weft_lab::servers::{self, Site};
    let lab = Lab::builder().workload("client").workload("web").workload("api").workload("db").workload("cache").build().unwrap();
    let api = servers::nginx(lab.workload("api").unwrap(), Site::Static(vec![("data.json".into(), b"{\"ok\":true}\n".to_vec()), ("blob.bin".into(), servers::blob(200 * 1024))])).unwrap();
    let web = servers::nginx(lab.workload("web").unwrap(), Site::Proxy { upstream: api.addr() }).unwrap();
    let client = &lab.workload("client").unwrap().netns;
    let t = traffic::curl_keepalive(client, &format!("{}/blob.bin", web.url()), 3, &[]).unwrap();
    assert_eq!(traffic::total_download(&t), 3 * 200 * 1024);
    assert_eq!(t.iter().map(|t| t.num_connects).sum::<u64>(), 1);
    let t6 = traffic::curl_each(client, &format!("http://[{}]/data.json", web.ipv6), 2, &["-6"]).unwrap();
    assert_eq!(t6.len(), 2);

    let db = servers::postgres(lab.workload("db").unwrap()).unwrap();
    traffic::pgbench_init(client, &db.ipv4).unwrap();
    assert!(traffic::pgbench_run(client, &db.ipv4, 2, 2).unwrap() > 0);
    let cache = servers::redis(lab.workload("cache").unwrap()).unwrap();
    let out = traffic::redis_benchmark(client, &cache.ipv4, 200, 2).unwrap();
    assert!(out.contains("SET") && out.contains("GET"), "{out}");
}
