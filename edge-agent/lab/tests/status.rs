//! The read-only calls the cloud's live readings use (`<pump>.status`, `<heater>.read`) on the
//! virtual lab: declared in the descriptor, and the pump's flow follows what it was told to do.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use maosic_lab::config::{LabConfig, PAPER_VIRTUAL_TOML};
use maosic_lab::lab::Lab;

fn params(p: &[(&str, f64)]) -> BTreeMap<String, f64> {
    p.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pump_status_reports_rate_and_flow_and_the_heater_reads() {
    let mut c = LabConfig::from_toml_str(PAPER_VIRTUAL_TOML).unwrap();
    c.twin.speed = 50.0;
    let lab = Lab::build(c).await.unwrap();
    let d = lab.descriptor();
    assert!(d.method("P1.status").is_some(), "P1.status is declared");
    assert!(d.method("H.read").is_some(), "H.read is declared");

    let none = BTreeMap::new();
    let idle = lab.call("P1.status", &none).await.unwrap().result;
    assert_eq!(idle["state"], "stopped", "{idle}");
    assert_eq!(idle["flow_ul_min"], 0.0, "{idle}");

    lab.call("P1.set_rate", &params(&[("rate", 30.0)]))
        .await
        .unwrap();
    let running = lab.call("P1.status", &none).await.unwrap().result;
    println!("P1 running: {running}");
    assert_eq!(running["state"], "infusing", "{running}");
    assert_eq!(running["rate_ul_min"], 30.0, "{running}");
    assert_eq!(running["flow_ul_min"], 30.0, "{running}");

    lab.call("P1.stop", &none).await.unwrap();
    let stopped = lab.call("P1.status", &none).await.unwrap().result;
    assert_eq!(stopped["state"], "stopped", "{stopped}");
    assert_eq!(
        stopped["rate_ul_min"], 30.0,
        "the programmed rate stays: {stopped}"
    );
    assert_eq!(stopped["flow_ul_min"], 0.0, "{stopped}");
    assert!(stopped["infused_ul"].as_f64().unwrap() >= 0.0, "{stopped}");

    let h = lab.call("H.read", &none).await.unwrap().result;
    println!("H: {h}");
    assert!(h["pv_c"].as_f64().is_some_and(f64::is_finite), "{h}");
    assert!(h["sp_c"].as_f64().is_some(), "{h}");
}
