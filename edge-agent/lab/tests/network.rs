//! Several NE-1000 pumps on one RS-232 port (a pump network), driven through a lab whose ports are
//! "real" paths: the pseudo-terminals of a separately started virtual lab, one for the pump
//! network and one for the controller.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use maosic_lab::clock::Clock;
use maosic_lab::config::LabConfig;
use maosic_lab::drivers::profiles::MAOSIC_TWIN;
use maosic_lab::lab::Lab;
use maosic_lab::sim::pump::PumpSim;
use maosic_lab::sim::thermal::ThermalParams;
use maosic_lab::sim::twin::{TwinHandle, TwinPortKind};
use maosic_lab::sim::world::{Chemistry, World};

/// The "hardware": pumps at addresses 1, 2, 3 on one port (`NET`) and a controller (`H`).
fn hardware() -> TwinHandle {
    let mut w = World::new(
        maosic_landscape::Landscape::paper(),
        Chemistry {
            cs_mmol_per_ml: Default::default(),
            reactor_volume_ul: 100.0,
        },
        ThermalParams::default(),
        1,
    );
    for (s, a) in [("P1", 1), ("P2", 2), ("P3", 3)] {
        w.pumps.insert(s.into(), PumpSim::new(a, 500.0));
    }
    TwinHandle::start(
        Arc::new(Mutex::new(w)),
        Clock::new(1.0).unwrap(),
        vec![
            (
                "NET".into(),
                TwinPortKind::PumpNetwork(vec!["P1".into(), "P2".into(), "P3".into()]),
            ),
            (
                "H".into(),
                TwinPortKind::Pid {
                    slave: 1,
                    profile: &MAOSIC_TWIN,
                    decimals: 1,
                },
            ),
        ],
    )
    .unwrap()
}

fn lab_toml(net: &str, h: &str) -> String {
    let mut s = String::from("[lab]\nname = \"net\"\n");
    for (sym, a) in [("P1", 1), ("P2", 2), ("P3", 3)] {
        s += &format!(
            "[[devices]]\nsymbol = \"{sym}\"\nkind = \"syringe_pump\"\ndriver = \"ne1000\"\nport = \"{net}\"\naddress = {a}\nlimits = {{ max_rate_ul_min = 400.0, syringe_volume_ul = 500.0 }}\n"
        );
    }
    s += &format!(
        "[[devices]]\nsymbol = \"H\"\nkind = \"temperature_controller\"\ndriver = \"modbus-pid\"\nport = \"{h}\"\nbaud = 9600\naddress = 1\n"
    );
    s
}

fn params(p: &[(&str, f64)]) -> BTreeMap<String, f64> {
    p.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_pumps_on_one_port_are_driven_concurrently_each_at_its_address() {
    let hw = hardware();
    let cfg = LabConfig::from_toml_str(&lab_toml(hw.path("NET").unwrap(), hw.path("H").unwrap()))
        .unwrap();
    let lab = Lab::build(cfg).await.unwrap();
    assert!(
        lab.twin().is_none(),
        "no device is virtual: the lab runs on its ports"
    );
    let (p1, p2, p3) = (
        params(&[("rate", 100.0)]),
        params(&[("rate", 200.0)]),
        params(&[("rate", 300.0)]),
    );
    let none = BTreeMap::new();
    // the three calls run at once; the bus serialises them on the wire
    for _ in 0..3 {
        let (a, b, c) = tokio::join!(
            lab.call("P1.set_rate", &p1),
            lab.call("P2.set_rate", &p2),
            lab.call("P3.set_rate", &p3),
        );
        a.unwrap();
        b.unwrap();
        c.unwrap();
        let (sa, sb, sc) = tokio::join!(
            lab.call("P1.status", &none),
            lab.call("P2.status", &none),
            lab.call("P3.status", &none),
        );
        let rates: Vec<f64> = [sa, sb, sc]
            .into_iter()
            .map(|r| r.unwrap().result["rate_ul_min"].as_f64().unwrap())
            .collect();
        assert_eq!(rates, vec![100.0, 200.0, 300.0]);
    }
    let (r1, r2, r3) = hw.with_world(|w| {
        let r = |s: &str| (w.pumps[s].rate_ul_min, w.pumps[s].running);
        (r("P1"), r("P2"), r("P3"))
    });
    println!("pump network: P1 {r1:?}, P2 {r2:?}, P3 {r3:?}");
    assert_eq!([r1, r2, r3], [(100.0, true), (200.0, true), (300.0, true)]);
    // e-stop stops every pump on the network
    let report = lab.estop().await;
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert!(hw.with_world(|w| w.pumps.values().all(|p| !p.running)));
}
