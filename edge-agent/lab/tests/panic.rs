//! A panic anywhere in the agent puts the serial devices in their safe state (panic hook).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use maosic_lab::config::{LabConfig, PAPER_VIRTUAL_TOML};
use maosic_lab::lab::Lab;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_hook_stops_pumps_and_heater() {
    let mut c = LabConfig::from_toml_str(PAPER_VIRTUAL_TOML).unwrap();
    c.twin.speed = 20.0;
    let lab = Lab::build(c).await.unwrap();
    let p: BTreeMap<String, f64> = [("T".to_string(), 60.0)].into();
    lab.call("H.set_temperature", &p).await.unwrap();
    let r: BTreeMap<String, f64> = [("rate".to_string(), 40.0)].into();
    lab.call("P2.set_rate", &r).await.unwrap();
    assert!(lab
        .twin()
        .unwrap()
        .with_world(|w| w.pumps["P2"].running && w.heater.enabled));
    lab.kernel().install_panic_hook();
    let joined = std::thread::spawn(|| panic!("simulated agent bug")).join();
    assert!(joined.is_err());
    let mut safe = false;
    for _ in 0..200 {
        if lab
            .twin()
            .unwrap()
            .with_world(|w| !w.pumps["P2"].running && !w.heater.enabled)
        {
            safe = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!("after a panic: pumps stopped and heater off = {safe}");
    assert!(safe);
}
