//! Operator commands and the lab API end to end on the virtual lab: `devices`, `run-program` with
//! the paper recipe compiled against this lab's own descriptor, argument parsing.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use maosic_lab::cli::{
    parse_laser, parse_sets, run_devices, run_program_cmd, DevicesArgs, RunProgramArgs,
};
use maosic_lab::config::{LabConfig, PAPER_VIRTUAL_TOML};
use maosic_lab::lab::Lab;

fn example() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/agent-lab-virtual.toml")
}

#[test]
fn parses_operator_arguments() {
    assert_eq!(parse_laser("800nm:300s").unwrap(), (800.0, 300.0));
    assert_eq!(parse_laser("300 nm:5min").unwrap(), (300.0, 300.0));
    assert!(parse_laser("800nm").is_err());
    assert!(parse_laser("800nm:-3s").is_err());
    assert_eq!(
        parse_sets(&["T=130".into(), "c=0.8".into()]).unwrap(),
        (130.0, 0.8)
    );
    assert!(parse_sets(&["T=130".into()]).is_err());
    assert!(parse_sets(&["T=900".into(), "C=0.8".into()]).is_err());
    assert!(parse_sets(&["T=abc".into(), "C=0.8".into()]).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn descriptor_is_valid_and_the_paper_recipe_compiles_against_it() {
    let lab = Lab::build(LabConfig::from_toml_str(PAPER_VIRTUAL_TOML).unwrap())
        .await
        .unwrap();
    let d = lab.descriptor();
    d.validate().unwrap();
    for m in [
        "H.set_temperature",
        "P1.set_rate",
        "P3.stop",
        "UV.acquire",
        "S.collect",
        "ARM.to_cd",
        "ARM.to_laser",
        "CD.scan",
        "L.irradiate",
    ] {
        assert!(d.method(m).is_some(), "{m}");
    }
    for recipe in ["chirality.recipe", "inversion.recipe"] {
        let src = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../examples")
                .join(recipe),
        )
        .unwrap();
        let b: BTreeMap<String, f64> = [("T".to_string(), 130.0), ("C".to_string(), 0.8)].into();
        let p = maosic_schema::lang::compile_recipe(&d, &src, &b);
        assert!(p.is_ok(), "{recipe}: {p:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_lists_and_pings_every_device() {
    let code = run_devices(DevicesArgs {
        lab: example(),
        json: true,
    })
    .await
    .unwrap();
    assert_eq!(code, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_program_runs_the_inversion_recipe_and_refuses_out_of_range() {
    let lab = Lab::build(LabConfig::from_toml_str(PAPER_VIRTUAL_TOML).unwrap())
        .await
        .unwrap();
    let src = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/inversion.recipe"),
    )
    .unwrap();
    let b: BTreeMap<String, f64> = [("T".to_string(), 130.0), ("C".to_string(), 0.8)].into();
    let program = maosic_schema::lang::compile_recipe(&lab.descriptor(), &src, &b).unwrap();
    drop(lab);
    let dir = std::env::temp_dir().join(format!("maosic-lab-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("inversion.json");
    std::fs::write(&path, program.to_json_pretty()).unwrap();
    let code = run_program_cmd(RunProgramArgs {
        program: path.clone(),
        lab: example(),
        json: false,
        link_loss: None,
    })
    .await
    .unwrap();
    assert_eq!(code, 0);

    // the same program with a temperature beyond the heater's limit is refused before anything moves
    let mut bad = program.clone();
    bad.steps[0].request.params.insert("T".into(), 260.0);
    std::fs::write(&path, bad.to_json_pretty()).unwrap();
    let code = run_program_cmd(RunProgramArgs {
        program: path.clone(),
        lab: example(),
        json: true,
        link_loss: None,
    })
    .await
    .unwrap();
    assert_eq!(code, 2);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_command_prints_json() {
    use maosic_lab::cli::{run_virtual_lab, ProbeArgs, VirtualLabArgs, VirtualLabCommand};
    let args = VirtualLabArgs {
        command: VirtualLabCommand::Probe(ProbeArgs {
            set: vec!["T=130".into(), "C=0.8".into()],
            landscape: None,
            seed: 3,
            laser: Some("800nm:300s".into()),
            speed: 2000.0,
            json: true,
        }),
    };
    assert_eq!(run_virtual_lab(args).await.unwrap(), 0);
}

/// The link runs programs in spawned tasks: the lab and its futures must be Send + Sync.
#[test]
fn lab_and_program_future_are_send() {
    fn send_sync<T: Send + Sync>() {}
    fn send<F: std::future::Future + Send>(_: &F) {}
    send_sync::<Lab>();
    send_sync::<maosic_lab::record::Record>();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let lab = Lab::build(LabConfig::from_toml_str(PAPER_VIRTUAL_TOML).unwrap())
            .await
            .unwrap();
        let program = maosic_schema::program::Program {
            format: 1,
            recipe: None,
            lab: "paper-lab".into(),
            variables: Default::default(),
            steps: vec![],
            estimated_duration_ms: 0,
        };
        let (tx, _rx) = tokio::sync::mpsc::channel(1);
        let f = lab.run_program(
            &program,
            Default::default(),
            tx,
            tokio_util::sync::CancellationToken::new(),
        );
        send(&f);
        let params = BTreeMap::new();
        let c = lab.call("P1.stop", &params);
        send(&c);
    });
}
