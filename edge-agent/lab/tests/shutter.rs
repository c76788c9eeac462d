//! The laser and its beam shutter as two devices: the safety kernel closes the shutter on e-stop
//! and on link loss (and keeps it closed until the link is back); an irradiation interrupted by
//! the shutter stops dosing the sample and fails with an interlock error.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use maosic_lab::config::{DeviceConfig, LabConfig, PAPER_VIRTUAL_TOML};
use maosic_lab::devices::DeviceKind;
use maosic_lab::error::DeviceError;
use maosic_lab::lab::Lab;
use maosic_lab::sim::optics::Sample;

/// The paper's virtual lab with a beam shutter `SH` on the laser `L`, and a Cs-rich sample on the
/// laser stage.
async fn lab() -> Lab {
    let mut c = LabConfig::from_toml_str(PAPER_VIRTUAL_TOML).unwrap();
    c.twin.speed = 50.0;
    let mut sh: DeviceConfig = c.devices.iter().find(|d| d.symbol == "L").unwrap().clone();
    sh.symbol = "SH".into();
    sh.kind = DeviceKind::Shutter;
    c.devices.push(sh);
    for d in c.devices.iter_mut().filter(|d| d.symbol == "L") {
        d.shutter = Some("SH".into());
    }
    let lab = Lab::build(c).await.unwrap();
    lab.twin().unwrap().with_world(|w| {
        w.places.insert(
            "laser".into(),
            Sample {
                id: 1,
                t_c: 130.0,
                c: 0.8,
                handedness: 1.0,
                cd_scale: 1.0,
                abs_scale: 1.0,
                dose_800_s: 0.0,
            },
        )
    });
    lab
}

fn params(p: &[(&str, f64)]) -> BTreeMap<String, f64> {
    p.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

fn shutter_open(lab: &Lab) -> bool {
    lab.twin()
        .unwrap()
        .with_world(|w| w.shutters.get("SH").copied().unwrap_or(false))
}

fn dose(lab: &Lab) -> f64 {
    lab.twin()
        .unwrap()
        .with_world(|w| w.places["laser"].dose_800_s)
}

async fn wait_open(lab: &Lab) {
    for _ in 0..5000 {
        if shutter_open(lab) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("the shutter never opened");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn irradiation_opens_the_shutter_and_closes_it_after() {
    let lab = lab().await;
    assert!(!shutter_open(&lab), "closed at start");
    let p = params(&[("wavelength", 800.0), ("duration", 20.0)]);
    lab.call("L.irradiate", &p).await.unwrap();
    println!(
        "20 s at 800 nm: dose {} s, shutter open {}",
        dose(&lab),
        shutter_open(&lab)
    );
    assert_eq!(dose(&lab), 20.0);
    assert!(!shutter_open(&lab));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn estop_closes_the_shutter_mid_irradiation_and_the_dose_stops() {
    let lab = lab().await;
    let p = params(&[("wavelength", 800.0), ("duration", 250.0)]);
    let run = lab.call("L.irradiate", &p);
    let stop = async {
        wait_open(&lab).await;
        lab.clock.sleep(Duration::from_secs(10)).await;
        let r = lab.estop().await;
        let open_after = shutter_open(&lab);
        (r, open_after)
    };
    let (res, (report, open_after)) = tokio::join!(run, stop);
    println!(
        "e-stop during irradiation: shutter open {open_after} right after; irradiate -> {res:?}; dose {} s of 250",
        dose(&lab)
    );
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert!(!open_after);
    assert!(matches!(res, Err(DeviceError::Interlock(_))), "{res:?}");
    assert!(dose(&lab) < 60.0, "dose {}", dose(&lab));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_loss_closes_the_shutter_until_the_link_is_back() {
    let lab = lab().await;
    let p = params(&[("wavelength", 800.0), ("duration", 250.0)]);
    let run = lab.call("L.irradiate", &p);
    let cut = async {
        wait_open(&lab).await;
        lab.clock.sleep(Duration::from_secs(5)).await;
        // no program runs: no link-loss policy applies, the shutter closes anyway
        assert_eq!(lab.link_lost().await, None);
        shutter_open(&lab)
    };
    let (res, open_after) = tokio::join!(run, cut);
    println!("link lost during irradiation: shutter open {open_after}; irradiate -> {res:?}");
    assert!(!open_after);
    assert!(matches!(res, Err(DeviceError::Interlock(_))), "{res:?}");
    // while the link is down neither the laser nor the shutter opens
    let short = params(&[("wavelength", 800.0), ("duration", 5.0)]);
    for (method, p) in [("L.irradiate", &short), ("SH.open", &BTreeMap::new())] {
        let r = lab.call(method, p).await;
        assert!(
            matches!(r, Err(DeviceError::Interlock(_))),
            "{method}: {r:?}"
        );
    }
    assert!(!shutter_open(&lab));
    lab.link_restored();
    lab.call("SH.open", &BTreeMap::new()).await.unwrap();
    assert!(shutter_open(&lab));
    lab.call("SH.close", &BTreeMap::new()).await.unwrap();
    assert!(!shutter_open(&lab));
}

#[test]
fn a_laser_shutter_must_be_a_shutter_of_the_lab() {
    let mut c = LabConfig::from_toml_str(PAPER_VIRTUAL_TOML).unwrap();
    for d in c.devices.iter_mut().filter(|d| d.symbol == "L") {
        d.shutter = Some("UV".into());
    }
    let e = c.validate().unwrap_err().to_string();
    assert!(
        e.contains("L: shutter UV is not a device of kind \"shutter\""),
        "{e}"
    );
}
