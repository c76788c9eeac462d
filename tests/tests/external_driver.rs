//! A campaign whose absorption spectra come from an external driver: the agent's inline
//! spectrometer `UV` is the example Python driver (edge-agent/drivers/spectrometer.py, JSON-RPC
//! over stdio) reading raw counts from the virtual lab's optical bench and converting them to
//! absorbance itself. The paper's campaign runs through the real server, engine and analysis,
//! and the exciton the server fits from those spectra follows the synthesis temperature as the
//! lab's physics says it must.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use maosic_e2e::{param, repo_root, wait_for, Backend, TestAgent, TestDatabase, TestServer};
use serde_json::{json, Value};

const ENV: &[(&str, &str)] = &[("MAOSIC_CAMPAIGNS__TICK_MS", "100")];

/// The paper's virtual lab with `UV` replaced by the external Python driver.
fn external_lab_config(dir: &std::path::Path) -> std::path::PathBuf {
    let text =
        std::fs::read_to_string(repo_root().join("examples/agent-lab-virtual.toml")).unwrap();
    let uv_virtual = "symbol = \"UV\"\nkind = \"absorption_spectrometer\"\ndriver = \"virtual\"\n";
    assert!(text.contains(uv_virtual));
    let driver = repo_root().join("edge-agent/drivers/spectrometer.py");
    let uv_external = format!(
        "symbol = \"UV\"\nkind = \"absorption_spectrometer\"\ndriver = \"external\"\nport = \"virtual\"\n\
         command = [\"python3\", \"{}\", \"--backend\", \"bench\", \"--port\", \"{{port}}\", \"--reference-at-start\", \"--reference-file\", \"{}\"]\n",
        driver.display(),
        dir.join("uv-reference.json").display()
    );
    let path = dir.join("agent-lab-external.toml");
    std::fs::write(&path, text.replace(uv_virtual, &uv_external)).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaign_runs_on_spectra_from_the_external_python_driver() {
    let db = TestDatabase::create(Backend::Sqlite).await.unwrap();
    let server = TestServer::spawn(&db, ENV).unwrap();
    let s = server
        .sign_up("optics@lab.example", "Optics Group")
        .unwrap();
    let lab = server.create_enrolled_lab(&s, "paper-lab").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = external_lab_config(dir.path());
    let agent = TestAgent::spawn_with_lab(&server.url(), &lab.credential, &config).unwrap();
    let gql = |q: &str, v: Value| {
        let body = server.graphql_as(&s.access_token, q, v).unwrap();
        assert!(body.get("errors").is_none(), "{q}: {body}");
        body["data"].clone()
    };
    // the lab reports the driver's own methods for UV
    let devices = wait_for(Duration::from_secs(60), "the lab online", || {
        let d = gql(
            "query($l: ID!) { lab(id: $l) { online devices { name description methods { name } } } }",
            json!({ "l": lab.id }),
        );
        Ok((d["lab"]["online"] == true
            && d["lab"]["devices"].as_array().is_some_and(|a| !a.is_empty()))
        .then(|| d["lab"]["devices"].clone()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()))
    .0;
    let uv = devices
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "UV")
        .unwrap_or_else(|| panic!("no UV in {devices}"));
    assert!(
        uv["description"]
            .as_str()
            .unwrap()
            .contains("optical bench"),
        "{uv}"
    );
    let methods: Vec<&str> = uv["methods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(methods, ["acquire", "reference", "dark"]);

    let recipe = std::fs::read_to_string(repo_root().join("examples/chirality.recipe")).unwrap();
    let budget = 8;
    let d = gql(
        "mutation($o: ID!, $l: ID!, $r: String!, $b: Int!) { createCampaign(organizationId: $o, \
           labId: $l, name: \"external optics\", recipe: $r, objective: \"maximize abs(cd_at_exciton)\", \
           optimizer: \"snobfit\", seed: 11, budget: $b, start: true) { id state } }",
        json!({ "o": s.organization_id, "l": lab.id, "r": recipe, "b": budget }),
    );
    let id = d["createCampaign"]["id"].as_str().unwrap().to_owned();
    wait_for(Duration::from_secs(600), "the campaign to complete", || {
        let c = gql(
            "query($c: ID!) { campaign(id: $c) { state stateDetail } }",
            json!({ "c": id }),
        );
        let state = c["campaign"]["state"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if state == "FAILED" {
            panic!("campaign failed: {c}\nagent:\n{}", agent.log());
        }
        Ok((state == "COMPLETED").then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\nagent:\n{}\nserver:\n{}", agent.log(), server.log()));

    let d = gql(
        "query($c: ID!) { campaign(id: $c) { experiments(first: 50) { nodes { state parameters { name value } \
           features { excitonWavelengthNm excitonAbsorbance cdAtExcitonMdeg } } } } }",
        json!({ "c": id }),
    );
    let nodes = d["campaign"]["experiments"]["nodes"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(nodes.len(), budget as usize);
    let mut worst: f64 = 0.0;
    for e in &nodes {
        assert_eq!(e["state"], "COMPLETED", "{e}");
        let t = param(&e["parameters"], "T").unwrap();
        let c = param(&e["parameters"], "C").unwrap();
        let x = e["features"]["excitonWavelengthNm"]
            .as_f64()
            .unwrap_or(f64::NAN);
        let a = e["features"]["excitonAbsorbance"]
            .as_f64()
            .unwrap_or(f64::NAN);
        // the virtual lab's exciton: 450 nm at 130 °C, +0.35 nm/°C, clamped to 420-500 nm
        let expect = (450.0 + 0.35 * (t - 130.0)).clamp(420.0, 500.0);
        println!("T {t} °C, C {c}: exciton {x:.1} nm (physics {expect:.1}), height {a:.3}");
        assert!(a > 0.0, "no exciton absorbance: {e}");
        worst = worst.max((x - expect).abs());
    }
    println!("{budget} loops on the external driver's spectra; worst exciton error {worst:.2} nm");
    assert!(worst <= 2.0, "exciton off the physics by {worst} nm");
    let log = agent.log();
    assert!(log.contains("external driver started"), "{log}");
}
