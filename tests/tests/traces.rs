//! OpenTelemetry traces (issue #17) against a real OTLP collector: rotel (an OpenTelemetry
//! collector, installed from PyPI by `scripts/test`), receiving OTLP/HTTP and printing every
//! span it receives with its debug exporter. The server and the agent export to it; the test
//! reads the spans back and checks that one trace runs from the GraphQL request through the
//! engine and the gateway call to the agent's execution, with the parent of every span right.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use maosic_e2e::{
    repo_root, virtual_lab_config, wait_for, AgentOptions, Backend, Session, TestAgent,
    TestDatabase, TestServer,
};
use serde_json::{json, Value};

/// One span as the collector printed it.
#[derive(Debug, Clone, Default)]
struct Span {
    service: String,
    trace: String,
    parent: String,
    id: String,
    name: String,
    attributes: BTreeMap<String, String>,
}

/// The collector's binary: `MAOSIC_TEST_ROTEL`, else the `rotel` Python package's.
fn rotel_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("MAOSIC_TEST_ROTEL") {
        return PathBuf::from(path);
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import os, rotel; print(os.path.join(os.path.dirname(rotel.__file__), 'rotel-agent'))",
        ])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "the OTLP collector is missing: `pip install rotel` (scripts/test installs it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running collector printing what it receives to `out`.
struct Collector {
    child: Child,
    out: PathBuf,
    url: String,
    _dir: tempfile::TempDir,
}

impl Collector {
    fn start() -> Collector {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("spans.txt");
        let (http, grpc) = (free_port(), free_port());
        let child = Command::new(rotel_binary())
            .args(["start", "--exporter", "blackhole"])
            .args(["--debug-log", "traces", "--debug-log-verbosity", "detailed"])
            .args(["--otlp-http-endpoint", &format!("127.0.0.1:{http}")])
            .args(["--otlp-grpc-endpoint", &format!("127.0.0.1:{grpc}")])
            .arg("--pid-file")
            .arg(dir.path().join("rotel.pid"))
            .arg("--log-file")
            .arg(dir.path().join("rotel.log"))
            .env("NO_COLOR", "1")
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("start rotel");
        wait_for(Duration::from_secs(20), "the collector listening", || {
            Ok(std::net::TcpStream::connect(("127.0.0.1", http))
                .ok()
                .map(|_| ()))
        })
        .unwrap();
        Collector {
            child,
            out,
            url: format!("http://127.0.0.1:{http}"),
            _dir: dir,
        }
    }

    fn spans(&self) -> Vec<Span> {
        parse_spans(&std::fs::read_to_string(&self.out).unwrap_or_default())
    }

    /// Waits until `ready` holds for the spans received so far, and returns them.
    fn wait(&self, what: &str, ready: impl Fn(&[Span]) -> bool) -> Vec<Span> {
        wait_for(Duration::from_secs(30), what, || {
            let spans = self.spans();
            Ok(ready(&spans).then_some(spans))
        })
        .unwrap_or_else(|e| panic!("{e}; spans so far:\n{:#?}", self.spans()))
        .0
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Parses the debug exporter's text: `ResourceSpans` blocks (with `service.name`), each with
/// `Span #n` blocks of `Trace ID`, `Parent ID`, `ID`, `Name` and `-> key: Type(value)` lines.
fn parse_spans(text: &str) -> Vec<Span> {
    let mut spans = Vec::new();
    let mut service = String::new();
    let mut current: Option<Span> = None;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("ResourceSpans #") {
            spans.extend(current.take());
            service.clear();
        } else if t.starts_with("Span #") {
            spans.extend(current.take());
            current = Some(Span {
                service: service.clone(),
                ..Span::default()
            });
        } else if let Some((key, value)) = t.split_once(':') {
            let value = value.trim().to_owned();
            let key = key.trim();
            match (current.as_mut(), key) {
                (Some(s), "Trace ID") => s.trace = value,
                (Some(s), "Parent ID") => s.parent = value,
                (Some(s), "ID") => s.id = value,
                (Some(s), "Name") => s.name = value,
                (span, k) if k.starts_with("-> ") => {
                    let k = k.trim_start_matches("-> ").to_owned();
                    // `Str(x)`, `Int(3)`, `Bool(true)`: the value inside the parentheses.
                    let v = value
                        .split_once('(')
                        .map_or(value.as_str(), |(_, v)| v.trim_end_matches(')'))
                        .to_owned();
                    match span {
                        Some(s) => {
                            s.attributes.insert(k, v);
                        }
                        None if k == "service.name" => service = v,
                        None => {}
                    }
                }
                _ => {}
            }
        }
    }
    spans.extend(current);
    spans
}

fn find<'a>(spans: &'a [Span], trace: &str, name: &str) -> Vec<&'a Span> {
    spans
        .iter()
        .filter(|s| s.trace == trace && s.name == name)
        .collect()
}

/// Whether `trace` holds a span of each of `names`.
fn has_all(spans: &[Span], trace: &str, names: &[&str]) -> bool {
    names.iter().all(|n| !find(spans, trace, n).is_empty())
}

fn one<'a>(spans: &'a [Span], trace: &str, name: &str) -> &'a Span {
    let found = find(spans, trace, name);
    assert_eq!(found.len(), 1, "{name} in trace {trace}: {spans:#?}");
    found[0]
}

fn gql(server: &TestServer, s: &Session, traceparent: &str, query: &str, vars: Value) -> Value {
    let (status, body) = server
        .graphql_with(
            Some(&s.access_token),
            &[("traceparent", traceparent)],
            &json!({ "query": query, "variables": vars }),
        )
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.get("errors").is_none(), "{query}: {body}");
    body["data"].clone()
}

/// A client's own trace (as a browser or notebook with OpenTelemetry would send it).
const CLIENT_TRACE: &str = "5b8efff798038103d269b633813fc60c";
const CLIENT_SPAN: &str = "eee19b7ec3c1b174";
const INSTRUCTION_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const INSTRUCTION_SPAN: &str = "b7ad6b7169203331";

struct TracedLab {
    collector: Collector,
    server: TestServer,
    agent: TestAgent,
    s: Session,
    lab: maosic_e2e::TestLab,
    _dir: tempfile::TempDir,
    _db: TestDatabase,
}

fn traced_lab() -> TracedLab {
    let collector = Collector::start();
    let db = tokio_block_on(TestDatabase::create(Backend::Sqlite));
    let server = TestServer::spawn(
        &db,
        &[
            ("MAOSIC_CAMPAIGNS__TICK_MS", "100"),
            ("MAOSIC_LOG__OTLP_ENDPOINT", collector.url.as_str()),
            // Export every 100 ms instead of every 5 s.
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    )
    .unwrap();
    let s = server
        .sign_up("tracer@lab.example", "Tracing Group")
        .unwrap();
    let lab = server.create_enrolled_lab(&s, "traced-lab").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = virtual_lab_config(dir.path(), f64::INFINITY, 3).unwrap();
    let agent = TestAgent::start(
        &server.url(),
        &lab.credential,
        &AgentOptions {
            lab: Some(config),
            args: vec!["--otlp-endpoint".into(), collector.url.clone()],
            env: vec![("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into())],
            ..Default::default()
        },
    )
    .unwrap();
    wait_for(Duration::from_secs(30), "the lab online", || {
        let (_, body) = server
            .graphql_with(
                Some(&s.access_token),
                &[],
                &json!({ "query": "query($l: ID!) { lab(id: $l) { online } }", "variables": { "l": lab.id } }),
            )
            .unwrap();
        Ok((body["data"]["lab"]["online"] == true).then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    TracedLab {
        collector,
        server,
        agent,
        s,
        lab,
        _dir: dir,
        _db: db,
    }
}

fn tokio_block_on<T>(f: impl std::future::Future<Output = anyhow::Result<T>>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
        .unwrap()
}

/// A manual experiment queued by a GraphQL request that carries a client's `traceparent`: the
/// request, the engine's dispatch, the gateway call, the agent's run and each of its steps, and
/// the engine's conclusion are one trace, each span the child of the one before.
#[test]
fn a_queued_experiment_is_one_trace_from_the_graphql_request_to_the_agents_steps() {
    let t = traced_lab();
    let recipe = std::fs::read_to_string(repo_root().join("examples/chirality.recipe")).unwrap();
    let campaign = gql(
        &t.server,
        &t.s,
        &format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"),
        "mutation($o: ID!, $l: ID!, $r: String!) { createCampaign(organizationId: $o, labId: $l, \
           name: \"traced\", recipe: $r, objective: \"maximize abs(cd_at_exciton)\", \
           optimizer: \"snobfit\", seed: 5, budget: 4, start: true) { id } }",
        json!({ "o": t.s.organization_id, "l": t.lab.id, "r": recipe }),
    )["createCampaign"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let manual = gql(
        &t.server,
        &t.s,
        &format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"),
        "mutation($c: ID!) { queueExperiment(campaignId: $c, parameters: {T: 130, C: 0.8}) { id } }",
        json!({ "c": campaign }),
    )["queueExperiment"]["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let spans = t.collector.wait("the manual experiment's trace", |spans| {
        find(spans, CLIENT_TRACE, "graphql.request").len() == 2
            && has_all(
                spans,
                CLIENT_TRACE,
                &[
                    "engine.dispatch",
                    "gateway.call",
                    "agent.program.run",
                    "step",
                    "engine.conclude",
                ],
            )
    });
    // Two requests of the client's trace; the one that queued is the parent of the rest.
    let requests = find(&spans, CLIENT_TRACE, "graphql.request");
    assert_eq!(requests.len(), 2, "{spans:#?}");
    for r in &requests {
        assert_eq!(r.service, "maosic-server");
        assert_eq!(
            r.parent, CLIENT_SPAN,
            "the client's span is the request's parent"
        );
        assert_eq!(r.attributes["graphql.operation.type"], "mutation");
    }
    let dispatch = one(&spans, CLIENT_TRACE, "engine.dispatch");
    assert_eq!(dispatch.attributes["experiment.id"], manual);
    let queued_by = requests
        .iter()
        .find(|r| r.id == dispatch.parent)
        .unwrap_or_else(|| panic!("the dispatch's parent is a request: {spans:#?}"));
    let call = one(&spans, CLIENT_TRACE, "gateway.call");
    assert_eq!(call.parent, dispatch.id);
    assert_eq!(call.attributes["method"], "program.run");
    let run = one(&spans, CLIENT_TRACE, "agent.program.run");
    assert_eq!(run.service, "maosic-agent");
    assert_eq!(
        run.parent, call.id,
        "the agent's run continues the gateway call"
    );
    assert_eq!(run.attributes["program.id"], manual);
    let steps = find(&spans, CLIENT_TRACE, "step");
    let program_steps: usize = run.attributes["steps"].parse().unwrap();
    assert_eq!(
        steps.len(),
        program_steps,
        "one span per step of the program"
    );
    assert!(steps
        .iter()
        .all(|s| s.parent == run.id && s.service == "maosic-agent"));
    assert!(steps
        .iter()
        .any(|s| s.attributes["method"].starts_with("H.")));
    let conclude = one(&spans, CLIENT_TRACE, "engine.conclude");
    assert_eq!(conclude.parent, queued_by.id);
    assert_eq!(conclude.attributes["experiment.id"], manual);

    // The optimizer's own experiment: a trace the engine's step started, the same chain below.
    let chain = [
        "engine.step",
        "engine.dispatch",
        "gateway.call",
        "agent.program.run",
        "engine.conclude",
    ];
    let spans = t
        .collector
        .wait("the optimizer's experiment's trace", |spans| {
            spans.iter().any(|s| {
                s.name == "engine.conclude"
                    && s.trace != CLIENT_TRACE
                    && has_all(spans, &s.trace, &chain)
            })
        });
    let conclude = spans
        .iter()
        .find(|s| {
            s.name == "engine.conclude"
                && s.trace != CLIENT_TRACE
                && has_all(&spans, &s.trace, &chain)
        })
        .unwrap();
    let trace = conclude.trace.clone();
    let step = spans
        .iter()
        .find(|s| s.trace == trace && s.id == conclude.parent)
        .unwrap_or_else(|| panic!("the conclusion's parent is in its trace: {spans:#?}"));
    assert_eq!(step.name, "engine.step");
    assert_eq!(step.attributes["campaign.id"], campaign);
    let dispatch = one(&spans, &trace, "engine.dispatch");
    assert_eq!(dispatch.parent, step.id);
    let call = one(&spans, &trace, "gateway.call");
    assert_eq!(call.parent, dispatch.id);
    let run = one(&spans, &trace, "agent.program.run");
    assert_eq!(run.parent, call.id);
    drop(t.agent);
}

/// `sendInstruction` is one trace from the request through the gateway call to the agent's
/// device call; a request without `traceparent` starts a trace of its own.
#[test]
fn an_instruction_is_one_trace_from_the_request_to_the_agents_device_call() {
    let t = traced_lab();
    let query = "mutation($l: ID!) { sendInstruction(labId: $l, method: \"P1.status\") }";
    let answer = gql(
        &t.server,
        &t.s,
        &format!("00-{INSTRUCTION_TRACE}-{INSTRUCTION_SPAN}-01"),
        query,
        json!({ "l": t.lab.id }),
    );
    assert!(answer["sendInstruction"]["result"].is_object(), "{answer}");
    let spans = t.collector.wait("the instruction's trace", |spans| {
        has_all(
            spans,
            INSTRUCTION_TRACE,
            &["graphql.request", "gateway.call", "agent.device.call"],
        )
    });
    let request = one(&spans, INSTRUCTION_TRACE, "graphql.request");
    assert_eq!(request.parent, INSTRUCTION_SPAN);
    let call = one(&spans, INSTRUCTION_TRACE, "gateway.call");
    assert_eq!(call.parent, request.id);
    assert_eq!(call.attributes["method"], "device.call");
    let device = one(&spans, INSTRUCTION_TRACE, "agent.device.call");
    assert_eq!(device.parent, call.id);
    assert_eq!(device.service, "maosic-agent");
    assert_eq!(device.attributes["method"], "P1.status");

    // Without a client trace: a new trace, rooted at the request, still reaching the agent.
    let before: Vec<String> = spans.iter().map(|s| s.trace.clone()).collect();
    let (status, body) = t
        .server
        .graphql_with(
            Some(&t.s.access_token),
            &[],
            &json!({ "query": query, "variables": { "l": t.lab.id } }),
        )
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let chain = ["graphql.request", "gateway.call", "agent.device.call"];
    let new_trace = |spans: &[Span]| {
        spans
            .iter()
            .find(|s| {
                s.name == "agent.device.call"
                    && !before.contains(&s.trace)
                    && has_all(spans, &s.trace, &chain)
            })
            .cloned()
    };
    let spans = t.collector.wait("a second instruction's trace", |spans| {
        new_trace(spans).is_some()
    });
    let device = new_trace(&spans).unwrap();
    let call = one(&spans, &device.trace, "gateway.call");
    let request = one(&spans, &device.trace, "graphql.request");
    assert_eq!(device.parent, call.id);
    assert_eq!(call.parent, request.id);
    assert_eq!(request.parent, "", "a root span");
    drop(t.agent);
}

#[test]
fn the_collectors_output_parses_into_spans_with_their_service() {
    let text = "ResourceSpans #0\nResource SchemaURL: \nResource attributes:\n     -> service.name: Str(maosic-server)\n\
        ScopeSpans #0\nInstrumentationScope maosic-server \nSpan #0\n    Trace ID       : aa\n    Parent ID      : \n    ID             : bb\n\
            Name           : graphql.request\n    Kind           : SPAN_KIND_INTERNAL\nAttributes:\n     -> method: Str(P1.status)\n     -> steps: Int(4)\n\
        Span #1\n    Trace ID       : aa\n    Parent ID      : bb\n    ID             : cc\n    Name           : gateway.call\n\
        ResourceSpans #0\nResource attributes:\n     -> service.name: Str(maosic-agent)\nSpan #0\n    Trace ID       : aa\n    Parent ID      : cc\n    ID             : dd\n    Name           : agent.device.call\n";
    let spans = parse_spans(text);
    assert_eq!(spans.len(), 3, "{spans:#?}");
    assert_eq!(spans[0].service, "maosic-server");
    assert_eq!(spans[0].parent, "");
    assert_eq!(spans[0].attributes["method"], "P1.status");
    assert_eq!(spans[0].attributes["steps"], "4");
    assert_eq!(spans[1].parent, "bb");
    assert_eq!(spans[2].service, "maosic-agent");
    assert_eq!(spans[2].name, "agent.device.call");
}
