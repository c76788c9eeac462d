//! The NE-1000's Safe mode and its model table, against the virtual pump on a real
//! pseudo-terminal: Safe mode is switched on at start (from basic mode, or when the pump already
//! speaks it), the keep-alive holds the communications time-out off while the agent lives, the
//! pump stops by itself with a `?T` alarm when the agent goes silent, the next command sees the
//! alarm, the watchdog's stop bytes stop a pump in either protocol, a pump of another model is
//! refused at start, and a running pump never has its rate units changed.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use maosic_lab::clock::Clock;
use maosic_lab::devices::{Direction, PumpLimits, PumpState, SyringePump};
use maosic_lab::drivers::ne1000_pump::{Ne1000Bus, Ne1000Pump};
use maosic_lab::drivers::SerialTiming;
use maosic_lab::error::DeviceError;
use maosic_lab::pump_models::{NE_1000, NE_1600};
use maosic_lab::sim::pump::PumpSim;
use maosic_lab::sim::thermal::ThermalParams;
use maosic_lab::sim::twin::{TwinHandle, TwinPortKind};
use maosic_lab::sim::world::{Chemistry, World};
use tokio::io::AsyncWriteExt;

/// A twin with two NE-1000 pumps (addresses 1 and 2) on one network port, `P`.
fn twin() -> TwinHandle {
    let mut w = World::new(
        maosic_landscape::Landscape::paper(),
        Chemistry {
            cs_mmol_per_ml: Default::default(),
            reactor_volume_ul: 100.0,
        },
        ThermalParams::default(),
        1,
    );
    for (sym, a) in [("P1", 1), ("P2", 2)] {
        w.pumps.insert(
            sym.into(),
            PumpSim::new(a, 500.0).with_model(&NE_1000, 3.26),
        );
    }
    TwinHandle::start(
        Arc::new(Mutex::new(w)),
        Clock::new(10.0).unwrap(),
        vec![(
            "P".into(),
            TwinPortKind::PumpNetwork(vec!["P1".into(), "P2".into()]),
        )],
    )
    .unwrap()
}

fn timing() -> SerialTiming {
    SerialTiming {
        timeout_ms: 200,
        retries: 2,
    }
}

fn pump(bus: &Arc<Ne1000Bus>, name: &str, address: u8, safe_s: u8) -> Arc<Ne1000Pump> {
    let mut p = Ne1000Pump::on_bus(name, bus.clone(), address, PumpLimits::default(), timing())
        .with_model(&NE_1000, 3.26);
    if safe_s > 0 {
        p = p.with_safe_mode(safe_s);
    }
    Arc::new(p)
}

async fn infuse(p: &Ne1000Pump, rate: f64) {
    p.set_diameter(3.26).await.unwrap();
    p.set_direction(Direction::Infuse).await.unwrap();
    p.set_rate(rate).await.unwrap();
    p.set_volume(0.0).await.unwrap(); // continuous
    p.run().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_agent_lets_the_safe_mode_pump_stop_itself_and_the_next_command_sees_it() {
    let t = twin();
    let path = t.path("P").unwrap().to_string();
    let bus = Ne1000Bus::open("P1", &path, 19200).unwrap();
    let p1 = pump(&bus, "P1", 1, 1);
    let p2 = pump(&bus, "P2", 2, 0); // the basic protocol, on the same wire
    p1.start().await.unwrap();
    p2.start().await.unwrap();
    assert!(p1.safe_mode() && !p2.safe_mode());
    assert_eq!(t.with_world(|w| w.pumps["P1"].safe_timeout_s), 1);
    infuse(&p1, 10.0).await;
    infuse(&p2, 10.0).await;
    // the keep-alive holds the 1 s time-out off for three times as long with no command sent
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        t.with_world(|w| w.pumps["P1"].running),
        "stopped while the agent lived"
    );
    assert_eq!(p1.status().await.unwrap().state, PumpState::Infusing);

    // the agent goes silent (its pump object and keep-alive are gone; the wire stays)
    drop(p1);
    let silent = Instant::now();
    let stopped = loop {
        if !t.with_world(|w| w.pumps["P1"].running) {
            break silent.elapsed();
        }
        assert!(
            silent.elapsed() < Duration::from_secs(5),
            "P1 never stopped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!("P1 stopped {stopped:?} after the agent went silent");
    assert!(stopped >= Duration::from_millis(900), "{stopped:?}");
    // the basic-mode pump has no time-out: it keeps pumping
    assert!(t.with_world(|w| w.pumps["P2"].running));

    // a new agent: the pump is already in Safe mode (the basic SAF line goes unanswered, the
    // packet is answered); the alarm kept from before is reported, not taken for a fault
    let p1 = pump(&bus, "P1", 1, 1);
    let e = p1.run().await.unwrap_err();
    assert!(
        matches!(e, DeviceError::Timeout { .. }),
        "basic line to a Safe pump: {e:?}"
    );
    p1.start().await.unwrap();
    assert!(p1.safe_mode());
    infuse(&p1, 10.0).await;
    assert_eq!(p1.status().await.unwrap().state, PumpState::Infusing);
    // a keep-alive that reads an alarm keeps it for the next command: stall the pump
    t.with_world(|w| {
        let p = w.pumps.get_mut("P1").unwrap();
        p.content_ul = 0.0;
    });
    tokio::time::sleep(Duration::from_millis(1500)).await; // only keep-alives on the wire
    assert!(!t.with_world(|w| w.pumps["P1"].running));
    assert_eq!(
        t.with_world(|w| w.pumps["P1"].alarm),
        None,
        "the keep-alive read the alarm"
    );
    let e = p1.run().await.unwrap_err().to_string();
    assert!(e.contains("motor stalled"), "{e}");
    drop(p2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watchdogs_stop_bytes_stop_a_pump_in_either_protocol() {
    let t = twin();
    let path = t.path("P").unwrap().to_string();
    let bus = Ne1000Bus::open("P1", &path, 19200).unwrap();
    let p1 = pump(&bus, "P1", 1, 30);
    let p2 = pump(&bus, "P2", 2, 0);
    p1.start().await.unwrap();
    p2.start().await.unwrap();
    infuse(&p1, 10.0).await;
    infuse(&p2, 10.0).await;
    // the watchdog thread opens the port itself and writes each pump's stop bytes
    let mut raw = maosic_lab::pty::open_serial(&path, 19200).unwrap();
    // a pump configured for Safe mode but still in basic mode must stop too
    let p2_if_safe = pump(&bus, "P2", 2, 30);
    for bytes in [p1.emergency_stop_bytes(), p2_if_safe.emergency_stop_bytes()] {
        raw.write_all(&bytes).await.unwrap();
        raw.flush().await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while t.with_world(|w| w.pumps["P1"].running || w.pumps["P2"].running) {
        assert!(Instant::now() < deadline, "a pump kept running");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pump_of_another_model_is_refused_at_start() {
    let t = twin();
    let bus = Ne1000Bus::open("P1", t.path("P").unwrap(), 19200).unwrap();
    let p = Arc::new(
        Ne1000Pump::on_bus("P1", bus, 1, PumpLimits::default(), timing())
            .with_model(&NE_1600, 3.26),
    );
    let e = p.start().await.unwrap_err().to_string();
    assert!(
        e.contains("configured as ne-1600") && e.contains("NE1000V"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_pump_keeps_its_rate_units_and_slow_rates_go_in_microlitres_per_hour() {
    let t = twin();
    let bus = Ne1000Bus::open("P1", t.path("P").unwrap(), 19200).unwrap();
    let p = pump(&bus, "P1", 1, 0);
    p.start().await.unwrap();
    // 1/3 µL/min is exactly 20.00 µL/h, not 0.333 µL/min
    infuse(&p, 1.0 / 3.0).await;
    let set = t.with_world(|w| w.pumps["P1"].rate_ul_min);
    assert!((set - 1.0 / 3.0).abs() < 1e-12, "{set}");
    assert!((p.rate().await.unwrap() - 1.0 / 3.0).abs() < 1e-12);
    // 200 µL/min is 12,000 µL/h: not writable without changing units, which a running pump
    // refuses, so nothing is sent
    let e = p.set_rate(200.0).await.unwrap_err().to_string();
    assert!(e.contains("cannot change while it pumps"), "{e}");
    p.set_rate(100.0).await.unwrap(); // 6000 µL/h
    assert!((t.with_world(|w| w.pumps["P1"].rate_ul_min) - 100.0).abs() < 1e-9);
    // stopped, the most exact units are free again
    p.stop().await.unwrap();
    p.set_rate(200.0).await.unwrap();
    assert_eq!(t.with_world(|w| w.pumps["P1"].rate_ul_min), 200.0);
    // below the model's slowest speed for this syringe: refused locally
    let e = p.set_rate(1e-6).await.unwrap_err().to_string();
    assert!(e.contains("outside what an ne-1000 pumps"), "{e}");
}
