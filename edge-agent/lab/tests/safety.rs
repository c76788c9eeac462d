//! Safety kernel scenarios (docs/reliability.md, "safety" rows) on the virtual lab, each printing its figures.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use maosic_lab::config::{LabConfig, LinkLossPolicy, PAPER_VIRTUAL_TOML};
use maosic_lab::executor::ExecOptions;
use maosic_lab::lab::Lab;
use maosic_lab::safety::FaultKind;
use maosic_schema::program::{Program, RpcRequest, Step};
use tokio_util::sync::CancellationToken;

/// Speed of the scenarios whose limit is one control period: at 10x a period is 100 ms of wall
/// time, well above scheduling jitter on a loaded 2-core CI machine (at 50x it is 20 ms, which
/// a busy machine can exceed without any fault in the kernel).
const SAFETY_SPEED: f64 = 10.0;

async fn lab(speed: f64) -> Lab {
    lab_with(speed, maosic_lab::drivers::profiles::DEFAULT_PROFILE).await
}

/// The paper's virtual lab with its controller `H` speaking `profile`.
async fn lab_with(speed: f64, profile: &str) -> Lab {
    lab_on(speed, profile, maosic_lab::config::TwinClock::Event).await
}

/// The same on a given clock: `Scaled` (wall time × speed) for what only wall time shows, a
/// blocked runtime — on the event clock a stall stops lab time with it.
async fn lab_on(speed: f64, profile: &str, clock: maosic_lab::config::TwinClock) -> Lab {
    let mut c = LabConfig::from_toml_str(PAPER_VIRTUAL_TOML).unwrap();
    c.twin.speed = speed;
    c.twin.clock = clock;
    for d in c.devices.iter_mut().filter(|d| d.symbol == "H") {
        d.profile = Some(profile.to_string());
    }
    Lab::build(c).await.unwrap()
}

fn params(p: &[(&str, f64)]) -> BTreeMap<String, f64> {
    p.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// Step `id` of a test program: `method` with `p`, after the steps `after`.
fn step(id: u32, method: &str, p: &[(&str, f64)], after: Vec<u32>) -> Step {
    Step {
        id,
        request: RpcRequest {
            jsonrpc: "2.0".into(),
            id: u64::from(id),
            method: method.into(),
            params: params(p),
        },
        after,
        start_ms: 0,
        duration_ms: 1000,
        yields: vec![],
        line: 1,
    }
}

fn output(lab: &Lab) -> f64 {
    lab.twin().unwrap().with_world(|w| w.heater.output_pct)
}

/// Poll (wall clock, 1 ms) until `f` holds; returns lab seconds waited.
async fn until(lab: &Lab, limit_lab_s: f64, f: impl Fn(&Lab) -> bool) -> Option<f64> {
    let t0 = lab.clock.now_s();
    while lab.clock.now_s() - t0 < limit_lab_s {
        if f(lab) {
            return Some(lab.clock.now_s() - t0);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    None
}

async fn heat_to(lab: &Lab, t: f64) {
    if let Err(e) = lab.call("H.set_temperature", &params(&[("T", t)])).await {
        panic!("{e}: faults {:?}", lab.kernel().faults());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_cut_with_safe_stop_cuts_heater_within_3_s() {
    let lab = lab(50.0).await;
    let program = Program {
        format: 1,
        recipe: None,
        lab: "paper-lab".into(),
        variables: Default::default(),
        steps: vec![Step {
            id: 1,
            request: RpcRequest {
                jsonrpc: "2.0".into(),
                id: 1,
                method: "H.set_temperature".into(),
                params: params(&[("T", 150.0)]),
            },
            after: vec![],
            start_ms: 0,
            duration_ms: 120_000,
            yields: vec!["temperature".into()],
            line: 1,
        }],
        estimated_duration_ms: 120_000,
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let run = async {
        lab.run_program(
            &program,
            ExecOptions {
                program_id: None,
                link_loss: Some(LinkLossPolicy::SafeStop),
            },
            tx,
            CancellationToken::new(),
        )
        .await
    };
    let cut = async {
        until(&lab, 60.0, |l| output(l) > 50.0).await.unwrap();
        let t0 = lab.clock.now_s();
        assert_eq!(lab.link_lost().await, Some(LinkLossPolicy::SafeStop));
        let dt = until(&lab, 10.0, |l| output(l) == 0.0).await.unwrap();
        (t0, dt)
    };
    let (report, (_, dt)) = tokio::join!(run, cut);
    println!(
        "link cut while heating (safe_stop): heater output 0 after {dt:.2} s lab; program {:?}",
        report.outcome
    );
    assert!(dt <= 3.0);
    assert_eq!(report.outcome, maosic_lab::record::Outcome::Canceled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sensor_above_max_and_sensor_break_cut_output_within_one_period_and_latch() {
    let lab = lab(SAFETY_SPEED).await;
    let period = lab.config.safety.control_period_s;
    heat_to(&lab, 130.0).await;
    lab.twin()
        .unwrap()
        .with_world(|w| w.heater.faults.offset_c = 100.0);
    let dt = until(&lab, 10.0, |l| output(l) == 0.0).await.unwrap();
    let _dt_fault = until(&lab, 10.0, |l| !l.kernel().faults().is_empty())
        .await
        .unwrap();
    let faults = lab.kernel().faults();
    println!(
        "sensor reads 230 °C (> 200): output 0 after {dt:.2} s lab (period {period} s); fault {:?}",
        faults[0].kind
    );
    assert!(dt <= period);
    assert_eq!(faults[0].kind, FaultKind::OverTemperature);
    // latched: calls refused, reset restarts nothing
    assert!(lab
        .call("H.set_temperature", &params(&[("T", 100.0)]))
        .await
        .is_err());
    lab.twin()
        .unwrap()
        .with_world(|w| w.heater.faults.offset_c = 0.0);
    lab.clock.sleep(Duration::from_secs(2)).await; // the sensor reads normal again
    let reset = lab.reset_faults("the test's operator").await.unwrap();
    assert_eq!(
        reset.cleared[0].kind,
        FaultKind::OverTemperature,
        "{reset:?}"
    );
    assert!(reset.latched.is_empty(), "{reset:?}");
    let enabled = lab.twin().unwrap().with_world(|w| w.heater.enabled);
    println!("after reset: heater enabled = {enabled}");
    assert!(!enabled);

    drop(lab);
    let lab = self::lab(SAFETY_SPEED).await;
    heat_to(&lab, 120.0).await;
    lab.twin()
        .unwrap()
        .with_world(|w| w.heater.faults.broken = true);
    let dt = until(&lab, 10.0, |l| output(l) == 0.0).await.unwrap();
    until(&lab, 10.0, |l| {
        l.kernel()
            .faults()
            .iter()
            .any(|f| f.kind == FaultKind::SensorBreak)
    })
    .await
    .unwrap();
    println!("sensor break: output 0 after {dt:.2} s lab, fault latched");
    assert!(dt <= period);
    // A reset while the sensor is still broken: cleared, and latched again at once.
    let reset = lab.reset_faults("the test's operator").await.unwrap();
    assert!(
        reset
            .cleared
            .iter()
            .any(|f| f.kind == FaultKind::SensorBreak),
        "{reset:?}"
    );
    assert!(
        reset
            .latched
            .iter()
            .any(|f| f.kind == FaultKind::SensorBreak),
        "{reset:?}"
    );
    assert!(lab
        .call("H.set_temperature", &params(&[("T", 100.0)]))
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detached_sensor_is_caught_as_runaway() {
    let lab = lab(50.0).await;
    let period = lab.config.safety.control_period_s;
    // start heating towards 170 °C, detach the thermocouple 5 s in
    let l2 = &lab;
    let heat = async { l2.call("H.set_temperature", &params(&[("T", 170.0)])).await };
    let inject = async {
        lab.clock.sleep(Duration::from_secs(5)).await;
        lab.twin()
            .unwrap()
            .with_world(|w| w.heater.faults.detached = true);
        let t0 = lab.clock.now_s();
        let detect = until(&lab, 120.0, |l| {
            l.kernel()
                .faults()
                .iter()
                .any(|f| f.kind == FaultKind::Runaway)
        })
        .await
        .unwrap();
        let off = until(&lab, 10.0, |l| output(l) == 0.0).await.unwrap();
        (t0, detect, off)
    };
    let (r, (_, detect, off)) = tokio::join!(heat, inject);
    println!("detached sensor: runaway detected {detect:.1} s after detaching (window 20 s), output 0 {off:.2} s later; set_temperature -> {}", r.is_err());
    assert!(detect <= 20.0 + 2.0 * period + 5.0);
    assert!(off <= period);
    assert!(r.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn estop_reaches_safe_state_within_one_period() {
    let lab = lab(SAFETY_SPEED).await;
    heat_to(&lab, 100.0).await;
    lab.call("P1.set_rate", &params(&[("rate", 50.0)]))
        .await
        .unwrap();
    let r = lab.estop().await;
    let (out, running) = lab
        .twin()
        .unwrap()
        .with_world(|w| (w.heater.output_pct, w.pumps.values().any(|p| p.running)));
    println!("e-stop: safe state in {:.3} s lab / {:.1} ms wall; heater output {out}, pumps running {running}", r.lab_s, r.wall_ms);
    assert!(r.lab_s <= lab.config.safety.control_period_s);
    assert!(r.failures.is_empty());
    assert!(!running);
    // The controller's output follows the disabled loop within one control period.
    let period = lab.config.safety.control_period_s;
    let off = until(&lab, period, |l| output(l) == 0.0).await;
    println!("e-stop: heater output 0 after {off:?} s lab (period {period} s)");
    assert!(
        off.is_some(),
        "heater output {} after one period",
        output(&lab)
    );
}

/// The agent's runtime is blocked (a current-thread runtime sleeping) while a pump moves and the
/// heater runs: the wall-clock watchdog writes the safe-state frames to the ports itself. Once per
/// controller profile: each profile's stop frame must stop its emulated controller.
#[test]
fn blocked_runtime_during_pump_move_reaches_safe_state_within_watchdog_period() {
    for profile in maosic_lab::drivers::profiles::known_names() {
        println!("profile {profile}");
        blocked_runtime_reaches_safe_state(profile);
    }
}

fn blocked_runtime_reaches_safe_state(profile: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let lab = lab_on(10.0, profile, maosic_lab::config::TwinClock::Scaled).await;
        let wd = lab.config.safety.watchdog_ms;
        lab.call("H.set_temperature", &params(&[("T", 60.0)])).await.unwrap();
        lab.call("P1.set_rate", &params(&[("rate", 20.0)])).await.unwrap();
        let world = lab.twin().unwrap().world.clone();
        let running = |w: &std::sync::Mutex<maosic_lab::sim::world::World>| {
            let w = w.lock().unwrap();
            w.pumps.get("P1").unwrap().running || w.heater.enabled
        };
        assert!(running(&world));
        // observer thread measures when the devices became safe
        let w2 = world.clone();
        let t0 = Instant::now();
        let observer = std::thread::spawn(move || {
            while t0.elapsed() < Duration::from_secs(5) {
                if !running(&w2) {
                    return Some(t0.elapsed());
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            None
        });
        std::thread::sleep(Duration::from_millis(wd * 2)); // block the agent runtime
        let safe_after = observer.join().unwrap().expect("devices never reached the safe state");
        println!("runtime blocked: pump stopped and heater off {safe_after:?} after the block (watchdog {wd} ms)");
        assert!(safe_after <= Duration::from_millis(wd + 300));
        // the kernel latches the watchdog fault once it runs again
        let latched = until(&lab, 100.0, |l| l.kernel().faults().iter().any(|f| f.kind == FaultKind::Watchdog)).await;
        assert!(latched.is_some());
    });
}

/// Shutdown or panic: `Drop` writes the raw safe-state frames to the serial ports without a
/// runtime. Checked here through the same path, with the lab still alive to observe the twin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emergency_frames_stop_pumps_and_heater_without_the_runtime() {
    let lab = lab(20.0).await;
    emergency_frames_reach_safe_state(lab).await;
}

/// The same e-stop path (e-stop, then the raw frames) with each real controller's profile: the
/// heater stops and its setpoint and alarm threshold are untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn estop_and_emergency_frames_stop_each_real_controller_profile() {
    for profile in ["eurotherm-3200", "omron-e5cc"] {
        let lab = lab_with(SAFETY_SPEED, profile).await;
        heat_to(&lab, 70.0).await;
        let before = lab
            .twin()
            .unwrap()
            .with_world(|w| (w.heater.sp_c, w.heater.high_alarm_c));
        let r = lab.estop().await;
        let (after, enabled) = lab
            .twin()
            .unwrap()
            .with_world(|w| ((w.heater.sp_c, w.heater.high_alarm_c), w.heater.enabled));
        println!("{profile}: e-stop in {:.3} s lab, failures {:?}; heater enabled {enabled}; (SP, alarm) {before:?} -> {after:?}", r.lab_s, r.failures);
        assert!(r.failures.is_empty(), "{profile}");
        assert!(!enabled, "{profile}");
        assert_eq!(before, after, "{profile}");
        drop(lab);
        let lab = lab_with(20.0, profile).await;
        emergency_frames_reach_safe_state(lab).await;
    }
}

async fn emergency_frames_reach_safe_state(lab: Lab) {
    heat_to(&lab, 80.0).await;
    lab.call("P1.set_rate", &params(&[("rate", 30.0)]))
        .await
        .unwrap();
    lab.call("P3.set_rate", &params(&[("rate", 30.0)]))
        .await
        .unwrap();
    let written = std::thread::scope(|s| s.spawn(|| lab.kernel().emergency_all()).join().unwrap());
    let dt = until(&lab, 10.0, |l| {
        l.twin()
            .unwrap()
            .with_world(|w| !w.heater.enabled && w.pumps.values().all(|p| !p.running))
    })
    .await;
    println!("emergency frames written to {written} ports; heater off and pumps stopped after {dt:?} s lab");
    assert_eq!(written, 4);
    assert!(dt.is_some());
}

/// Link lost with policy "hold": dosing stops, the heater keeps its setpoint, no new step starts
/// until the link is back; then the program completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_loss_hold_pauses_and_resumes() {
    let lab = lab(50.0).await;
    let program = Program {
        format: 1,
        recipe: None,
        lab: "paper-lab".into(),
        variables: Default::default(),
        steps: vec![
            step(1, "H.set_temperature", &[("T", 60.0)], vec![]),
            step(2, "P1.set_rate", &[("rate", 30.0)], vec![1]),
            step(
                3,
                "UV.acquire",
                &[("integration", 10_000.0), ("averages", 10.0)],
                vec![2],
            ),
            step(4, "P1.stop", &[], vec![3]),
        ],
        estimated_duration_ms: 10_000,
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let run = lab.run_program(
        &program,
        ExecOptions {
            program_id: Some("hold".into()),
            link_loss: Some(LinkLossPolicy::Hold),
        },
        tx,
        CancellationToken::new(),
    );
    let ctl = async {
        until(&lab, 600.0, |l| {
            l.twin().unwrap().with_world(|w| w.pumps["P1"].running)
        })
        .await
        .unwrap();
        assert_eq!(lab.link_lost().await, Some(LinkLossPolicy::Hold));
        let (pump, heater) = lab
            .twin()
            .unwrap()
            .with_world(|w| (w.pumps["P1"].running, w.heater.enabled));
        lab.clock.sleep(Duration::from_secs(200)).await;
        lab.link_restored();
        (pump, heater)
    };
    let (report, (pump, heater)) = tokio::join!(run, ctl);
    println!(
        "hold: pump running {pump}, heater enabled {heater} while held; program {:?}",
        report.outcome
    );
    assert!(!pump && heater);
    assert_eq!(report.outcome, maosic_lab::record::Outcome::Succeeded);
}

/// Link lost with policy "hold" while a step is part-way through a pump command sequence (a
/// refill before an infusion): the step must not start the pump the kernel stopped. It waits,
/// and finishes the refill and the infusion once the link is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_during_a_refill_keeps_the_pump_stopped_until_the_link_is_back() {
    let lab = lab(50.0).await;
    // 300 of the 500 µL go out first; the second set_rate (300 µL, more than the 200 left) then
    // refills (300 µL at 400 µL/min, 45 s of lab time) before it infuses.
    let program = Program {
        format: 1,
        recipe: None,
        lab: "paper-lab".into(),
        variables: Default::default(),
        steps: vec![
            step(
                1,
                "P1.set_rate",
                &[("rate", 400.0), ("volume", 300.0)],
                vec![],
            ),
            step(2, "H.hold", &[("time", 60.0)], vec![1]),
            step(
                3,
                "P1.set_rate",
                &[("rate", 30.0), ("volume", 300.0)],
                vec![2],
            ),
            step(4, "H.hold", &[("time", 5.0)], vec![3]),
            step(5, "P1.stop", &[], vec![4]),
        ],
        estimated_duration_ms: 200_000,
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let run = lab.run_program(
        &program,
        ExecOptions {
            program_id: Some("hold-refill".into()),
            link_loss: Some(LinkLossPolicy::Hold),
        },
        tx,
        CancellationToken::new(),
    );
    let p1 = |l: &Lab| {
        l.twin().unwrap().with_world(|w| {
            let p = &w.pumps["P1"];
            (p.running, p.direction, p.content_ul)
        })
    };
    let ctl = async {
        // the refill's withdrawal is under way
        until(&lab, 600.0, |l| {
            let (running, dir, _) = p1(l);
            running && dir == maosic_lab::ne1000::Direction::Withdraw
        })
        .await
        .unwrap();
        lab.clock.sleep(Duration::from_secs(5)).await;
        assert_eq!(lab.link_lost().await, Some(LinkLossPolicy::Hold));
        // held for 200 s of lab time (the withdrawal would have ended after 45 s): the pump
        // must stay stopped throughout
        let t0 = lab.clock.now_s();
        let mut ran_while_held = 0u32;
        let mut samples = 0u32;
        while lab.clock.now_s() - t0 < 200.0 {
            if p1(&lab).0 {
                ran_while_held += 1;
            }
            samples += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let content_held = p1(&lab).2;
        lab.link_restored();
        (ran_while_held, samples, content_held)
    };
    let (report, (ran_while_held, samples, content_held)) = tokio::join!(run, ctl);
    let content_end = p1(&lab).2;
    println!(
        "hold during refill: pump seen running in {ran_while_held}/{samples} samples while held; \
         syringe {content_held:.0} µL while held, {content_end:.0} µL at the end; program {:?}",
        report.outcome
    );
    assert_eq!(ran_while_held, 0, "a step restarted a pump during the hold");
    assert!(
        content_held < 490.0,
        "the hold did not interrupt the refill"
    );
    assert_eq!(
        report.outcome,
        maosic_lab::record::Outcome::Succeeded,
        "{report:?}"
    );
    // the refill was completed after the hold (500 µL), then 30 µL/min for ≥ 5 s went out
    assert!(
        (400.0..499.0).contains(&content_end),
        "syringe {content_end} µL at the end"
    );
}
