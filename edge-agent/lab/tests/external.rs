//! External drivers (JSON-RPC over stdio): the example Python spectrometer driver on the virtual
//! lab's optical bench runs the paper recipe in place of the built-in spectrometer, and the agent
//! supervises driver processes (range checks before sending, timeouts, restart with backoff after
//! a crash or a hang, descriptions and measurements validated).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use maosic_lab::config::{LabConfig, PAPER_VIRTUAL_TOML};
use maosic_lab::error::DeviceError;
use maosic_lab::executor::ExecOptions;
use maosic_lab::lab::{Device, Lab};
use maosic_lab::probe::find_exciton;
use maosic_lab::record::{Measurement, Outcome, RecordBody};
use maosic_schema::program::Program;
use tokio_util::sync::CancellationToken;

const CHIRALITY: &str = include_str!("../../../examples/chirality.recipe");

fn driver_path() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../drivers/spectrometer.py")
        .display()
        .to_string()
}

/// A fresh path for the driver's saved reference (one per lab: a lab's blank is its own).
fn reference_file() -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let p = std::env::temp_dir().join(format!(
        "maosic-external-test-{}-{n}-reference.json",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&p);
    p.display().to_string()
}

/// The paper's virtual lab with the inline spectrometer `UV` run by the external Python driver
/// on the twin's optical bench.
fn external_uv_config(extra: &str) -> LabConfig {
    let uv_virtual = "symbol = \"UV\"\nkind = \"absorption_spectrometer\"\ndriver = \"virtual\"\n";
    assert!(PAPER_VIRTUAL_TOML.contains(uv_virtual));
    let uv_external = format!(
        "symbol = \"UV\"\nkind = \"absorption_spectrometer\"\ndriver = \"external\"\nport = \"virtual\"\ncommand = [\"python3\", \"{}\", \"--backend\", \"bench\", \"--port\", \"{{port}}\", \"--reference-at-start\", \"--reference-file\", \"{}\"]\n{extra}",
        driver_path(),
        reference_file()
    );
    let mut c =
        LabConfig::from_toml_str(&PAPER_VIRTUAL_TOML.replace(uv_virtual, &uv_external)).unwrap();
    c.twin.speed = 1000.0;
    c
}

async fn virtual_lab() -> Lab {
    let mut c = LabConfig::from_toml_str(PAPER_VIRTUAL_TOML).unwrap();
    c.twin.speed = 1000.0;
    Lab::build(c).await.unwrap()
}

/// Run the paper recipe at (t, c); the inline spectrum's exciton (nm, absorbance).
async fn exciton(lab: &Lab, t: f64, c: f64) -> (f64, f64, usize) {
    let b: BTreeMap<String, f64> = [("T".to_string(), t), ("C".to_string(), c)].into();
    let program: Program =
        maosic_schema::lang::compile_recipe(&lab.descriptor(), CHIRALITY, &b).unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let collect = tokio::spawn(async move {
        let mut uv = None;
        while let Some(r) = rx.recv().await {
            let r: maosic_lab::record::Record = r;
            if let RecordBody::Measurement {
                measurement:
                    Measurement::AbsorptionSpectrum {
                        wavelength_nm,
                        absorbance,
                        ..
                    },
                ..
            } = r.body
            {
                uv = Some((wavelength_nm, absorbance));
            }
        }
        uv.unwrap()
    });
    let rep = lab
        .run_program(
            &program,
            ExecOptions::default(),
            tx,
            CancellationToken::new(),
        )
        .await;
    assert_eq!(rep.outcome, Outcome::Succeeded, "{:?}", rep.error);
    let (w, a) = collect.await.unwrap();
    let (x, h) = find_exciton(&w, &a).unwrap();
    (x, h, a.len())
}

fn external(lab: &Lab) -> std::sync::Arc<maosic_lab::drivers::external::ExternalDriver> {
    match lab.device("UV") {
        Some(Device::External(x)) => x.clone(),
        _ => panic!("UV is not an external device"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_driver_on_the_optical_bench_measures_what_the_built_in_spectrometer_measures() {
    let ext = Lab::build(external_uv_config("")).await.unwrap();
    let builtin = virtual_lab().await;
    // the driver's methods are in the lab's descriptor, as declared by the driver
    let d = ext.descriptor();
    let uv = d.device("UV").unwrap();
    let names: Vec<&str> = uv.methods.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["acquire", "reference", "dark"]);
    assert!(uv.flow, "the stream flows through the inline cell");
    assert!(
        uv.description.contains("optical bench"),
        "{}",
        uv.description
    );
    for (t, c) in [(110.0, 0.5), (150.0, 0.9), (175.0, 0.3)] {
        let (xe, he, pixels) = exciton(&ext, t, c).await;
        let (xb, hb, _) = exciton(&builtin, t, c).await;
        println!(
            "T {t} C {c}: external driver exciton {xe:.1} nm A {he:.3} ({pixels} px); built-in {xb:.1} nm A {hb:.3}"
        );
        assert_eq!(pixels, 2048);
        assert!((xe - xb).abs() <= 1.0, "exciton {xe} vs {xb}");
        assert!((he / hb - 1.0).abs() < 0.05, "height {he} vs {hb}");
    }
    assert_eq!(external(&ext).starts(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_parameters_are_refused_by_the_agent_before_the_driver_sees_them() {
    let lab = Lab::build(external_uv_config("")).await.unwrap();
    let p: BTreeMap<String, f64> = [("integration".to_string(), 0.0)].into();
    let e = lab.call("UV.acquire", &p).await.unwrap_err();
    assert!(matches!(e, DeviceError::OutOfRange { .. }), "{e}");
    let p: BTreeMap<String, f64> = [("exposure".to_string(), 10.0)].into();
    let e = lab.call("UV.acquire", &p).await.unwrap_err();
    assert!(matches!(e, DeviceError::BadParameter { .. }), "{e}");
    let e = lab.call("UV.explode", &BTreeMap::new()).await.unwrap_err();
    assert!(matches!(e, DeviceError::UnknownMethod(_)), "{e}");
    // the driver is untouched and still works
    lab.call("UV.acquire", &BTreeMap::new()).await.unwrap();
    assert_eq!(external(&lab).starts(), 1);
}

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_driver_is_restarted_after_a_backoff() {
    let lab = Lab::build(external_uv_config("")).await.unwrap();
    let x = external(&lab);
    let none = BTreeMap::new();
    lab.call("UV.acquire", &none).await.unwrap();
    let pid = x.pid().await.unwrap();
    signal(pid, "-KILL");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let e = lab.call("UV.acquire", &none).await.unwrap_err();
    assert!(matches!(e, DeviceError::Disconnected { .. }), "{e}");
    // during the backoff: refused at once, no process started
    let e = lab.call("UV.acquire", &none).await.unwrap_err();
    assert!(e.to_string().contains("restarting"), "{e}");
    assert_eq!(x.starts(), 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let out = lab.call("UV.acquire", &none).await.unwrap();
    assert_eq!(out.measurements.len(), 1);
    assert_eq!(x.starts(), 2);
    assert_ne!(x.pid().await, Some(pid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_driver_times_out_is_killed_and_replaced() {
    let lab = Lab::build(external_uv_config("rpc_timeout_ms = 1500\n"))
        .await
        .unwrap();
    let x = external(&lab);
    let none = BTreeMap::new();
    lab.call("UV.acquire", &none).await.unwrap();
    let pid = x.pid().await.unwrap();
    signal(pid, "-STOP");
    let e = lab.call("UV.acquire", &none).await.unwrap_err();
    assert!(matches!(e, DeviceError::Timeout { .. }), "{e}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    lab.call("UV.acquire", &none).await.unwrap();
    assert_eq!(x.starts(), 2);
    // the hung process was killed, not left behind
    tokio::time::sleep(Duration::from_millis(200)).await;
    let alive = std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ");
    assert!(!alive, "the hung driver {pid} is still running");
}

/// A lab whose external driver is an inline Python program.
fn inline_driver_config(program: &str) -> LabConfig {
    let toml = format!(
        "[lab]\nname = \"x\"\n[[devices]]\nsymbol = \"X\"\nkind = \"absorption_spectrometer\"\ndriver = \"external\"\ncommand = [\"python3\", \"-c\", '''{program}''']\nrpc_timeout_ms = 3000\n"
    );
    LabConfig::from_toml_str(&toml).unwrap()
}

const SERVE: &str = r#"
import json, sys
def serve(describe, calls):
    for line in sys.stdin:
        r = json.loads(line)
        res = describe if r["method"] == "describe" else calls(r)
        print(json.dumps({"jsonrpc": "2.0", "id": r["id"], "result": res}), flush=True)
M = {"name": "acquire", "params": [{"name": "n", "min": 1, "max": 5, "default": 1}], "yields": ["absorption_spectrum"]}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_descriptions_and_missing_programs_fail_the_lab_at_start_with_a_reason() {
    let cases = [
        (
            "min above max",
            r#"serve({"protocol": 1, "methods": [{"name": "acquire", "params": [{"name": "n", "min": 5, "max": 1}]}]}, None)"#,
            "describe",
        ),
        (
            "reserved name",
            r#"serve({"protocol": 1, "methods": [{"name": "safe_state"}]}, None)"#,
            "reserved",
        ),
        (
            "protocol version",
            r#"serve({"protocol": 9, "methods": [M]}, None)"#,
            "protocol version",
        ),
        (
            "no methods",
            r#"serve({"protocol": 1, "methods": []}, None)"#,
            "no methods",
        ),
        ("exits at once", "sys.exit(3)", "disconnected"),
        (
            "says nothing",
            "import time; time.sleep(30)",
            "no complete reply",
        ),
    ];
    for (what, body, expect) in cases {
        let e = Lab::build(inline_driver_config(&format!("{SERVE}\n{body}")))
            .await
            .unwrap_err()
            .to_string();
        println!("{what}: {e}");
        assert!(e.contains(expect), "{what}: {e}");
    }
    let mut c = inline_driver_config("pass");
    c.devices[0].command = vec!["/nonexistent/driver".into()];
    let e = Lab::build(c).await.unwrap_err().to_string();
    assert!(e.contains("cannot open"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn measurements_a_driver_did_not_declare_or_cannot_be_valid_are_refused() {
    let cases = [
        (
            "undeclared kind",
            r#"{"measurements": [{"kind": "cd_spectrum", "wavelength_nm": [1, 2], "cd_mdeg": [0, 0], "step_nm": 1}]}"#,
            "does not declare",
        ),
        (
            "length mismatch",
            r#"{"measurements": [{"kind": "absorption_spectrum", "wavelength_nm": [1, 2], "absorbance": [0], "integration_ms": 1, "averages": 1, "window_nm": [1, 2]}]}"#,
            "differ in length",
        ),
        (
            "axis not increasing",
            r#"{"measurements": [{"kind": "absorption_spectrum", "wavelength_nm": [2, 1], "absorbance": [0, 0], "integration_ms": 1, "averages": 1, "window_nm": [1, 2]}]}"#,
            "not increasing",
        ),
        (
            "wrong shape",
            r#"{"measurements": [{"kind": "absorption_spectrum", "wavelength_nm": "many"}]}"#,
            "measurement",
        ),
        ("not an object", "[1, 2]", "must be an object"),
    ];
    for (what, result, expect) in cases {
        let body = format!(
            "serve({{\"protocol\": 1, \"methods\": [M]}}, lambda r: json.loads('{}'))",
            result.replace('\'', "\\'")
        );
        let lab = Lab::build(inline_driver_config(&format!("{SERVE}\n{body}")))
            .await
            .unwrap();
        let e = lab.call("X.acquire", &BTreeMap::new()).await.unwrap_err();
        println!("{what}: {e}");
        assert!(matches!(e, DeviceError::Protocol { .. }), "{what}: {e}");
        assert!(e.to_string().contains(expect), "{what}: {e}");
    }
}
