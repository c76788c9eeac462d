//! External drivers: a device whose driver is a separate process (any language, e.g. Python around
//! a vendor SDK) speaking JSON-RPC 2.0 over its stdin and stdout, one JSON object per line. The
//! protocol is documented in docs/external-drivers.md.
//!
//! The agent supervises the process:
//! - it is started with the lab, and must answer `describe` with its methods (validated like the
//!   built-in devices' descriptors; they join the lab's capability descriptor);
//! - every call has a timeout; a driver that does not answer in time is killed;
//! - a driver that exits, or is killed, is started again on the next call, after a backoff that
//!   doubles with each consecutive failure (calls during the backoff fail at once with
//!   `disconnected`), and must describe the same methods as before;
//! - what it writes to stderr goes to the agent's log;
//! - calls are serialised (one request in flight per driver), and replies are matched by id.
//!
//! What goes in and out is checked here: parameters against the declared ranges before anything
//! is sent, measurements against the method's declared `yields` and the measurement schema.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use maosic_schema::capability::{
    DeviceDescriptor, DeviceKind as SchemaKind, LabDescriptor, MethodDescriptor,
};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::error::DeviceError;
use crate::record::Measurement;

/// Protocol version this agent speaks.
pub const PROTOCOL_VERSION: u64 = 1;

/// Method names the protocol reserves (a driver's device methods cannot use them).
pub const RESERVED_METHODS: [&str; 3] = ["describe", "safe_state", "shutdown"];

/// Longest reply line accepted, bytes (a 2,048-pixel spectrum is ~40 kB).
const MAX_LINE: usize = 4 << 20;

/// Most measurement points accepted in one spectrum.
const MAX_POINTS: usize = 100_000;

/// How the agent runs one external driver.
#[derive(Debug, Clone)]
pub struct ExternalSpec {
    /// Device symbol (for errors and logs).
    pub symbol: String,
    /// Program and arguments.
    pub command: Vec<String>,
    /// Longest wait for any reply (start-up `describe` included).
    pub timeout: Duration,
    /// First restart backoff; doubles with each consecutive failure up to `max_backoff`.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
}

/// What `describe` returns.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Description {
    /// Protocol version the driver speaks (must be [`PROTOCOL_VERSION`]).
    pub protocol: u64,
    /// Model / backend, shown as the device's description when the lab gives none.
    #[serde(default)]
    pub model: String,
    /// The device's methods, in the capability-descriptor format.
    pub methods: Vec<MethodDescriptor>,
}

struct Proc {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

#[derive(Default)]
struct State {
    proc: Option<Proc>,
    next_id: u64,
    /// Consecutive failures (start, timeout, exit); 0 after a good reply.
    failures: u32,
    /// No restart before this instant.
    not_before: Option<Instant>,
}

/// A running external driver.
pub struct ExternalDriver {
    spec: ExternalSpec,
    kind: SchemaKind,
    description: Description,
    state: Mutex<State>,
    starts: AtomicU64,
}

impl std::fmt::Debug for ExternalDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalDriver")
            .field("symbol", &self.spec.symbol)
            .field("command", &self.spec.command)
            .finish()
    }
}

/// The result of a call: the driver's result object (without `measurements`) and the
/// measurements it yielded, each named by its kind.
#[derive(Debug, Clone)]
pub struct ExternalOutput {
    pub result: Value,
    pub measurements: Vec<(String, Measurement)>,
    /// Lab time the instrument reports it spent (`lab_duration_s` in the result, optional): on
    /// a discrete-event lab clock the agent counts it (the driver's I/O itself takes none).
    pub lab_duration_s: Option<f64>,
}

impl ExternalDriver {
    /// Start the driver and ask it to describe itself; `kind` is the kind of device the lab
    /// declared (its methods are checked as that kind's would be).
    pub async fn start(spec: ExternalSpec, kind: SchemaKind) -> Result<Self, DeviceError> {
        if spec.command.is_empty() {
            return Err(DeviceError::Open {
                device: spec.symbol.clone(),
                port: String::new(),
                detail: "no command".into(),
            });
        }
        let mut state = State::default();
        let proc = spawn(&spec)?;
        state.proc = Some(proc);
        let raw = exchange(&spec, &mut state, "describe", json!({})).await?;
        let description = parse_description(&spec.symbol, kind, raw)?;
        tracing::info!(
            device = %spec.symbol,
            model = %description.model,
            methods = description.methods.len(),
            "external driver started"
        );
        Ok(Self {
            spec,
            kind,
            description,
            state: Mutex::new(state),
            starts: AtomicU64::new(1),
        })
    }

    /// The device symbol.
    pub fn name(&self) -> &str {
        &self.spec.symbol
    }

    /// What the driver described at start.
    pub fn description(&self) -> &Description {
        &self.description
    }

    /// How many times the process was started (1 + restarts).
    pub fn starts(&self) -> u64 {
        self.starts.load(Ordering::Relaxed)
    }

    /// The process id of the running driver, if one runs.
    pub async fn pid(&self) -> Option<u32> {
        self.state
            .lock()
            .await
            .proc
            .as_ref()
            .and_then(|p| p.child.id())
    }

    /// Call one of the driver's device methods with named numeric parameters, checked against
    /// the declared ranges first (nothing is sent when they are out of range).
    pub async fn call(
        &self,
        method: &str,
        params: &BTreeMap<String, f64>,
    ) -> Result<ExternalOutput, DeviceError> {
        let md = self
            .description
            .methods
            .iter()
            .find(|m| m.name == method)
            .ok_or_else(|| DeviceError::UnknownMethod(format!("{}.{method}", self.spec.symbol)))?;
        crate::lab::check_method_params(&format!("{}.{method}", self.spec.symbol), md, params)?;
        // the driver receives every parameter that has a value: given, or the declared default
        let mut full: serde_json::Map<String, Value> =
            params.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        for pd in &md.params {
            if let Some(d) = pd.default {
                full.entry(pd.name.clone()).or_insert_with(|| json!(d));
            }
        }
        let raw = self.rpc(method, Value::Object(full)).await?;
        self.output(md, raw)
    }

    /// Ask the driver to put its instrument in its safe state (best effort, e-stop and shutdown).
    pub async fn safe_state(&self) -> Result<(), DeviceError> {
        self.rpc("safe_state", json!({})).await.map(|_| ())
    }

    async fn rpc(&self, method: &str, params: Value) -> Result<Value, DeviceError> {
        let mut st = self.state.lock().await;
        if st.proc.is_none() {
            if let Some(t) = st.not_before {
                if Instant::now() < t {
                    return Err(DeviceError::Disconnected {
                        device: self.spec.symbol.clone(),
                        detail: format!(
                            "external driver is restarting (after {} failure(s)); next start in {:?}",
                            st.failures,
                            t - Instant::now()
                        ),
                    });
                }
            }
            match spawn(&self.spec) {
                Ok(p) => st.proc = Some(p),
                Err(e) => {
                    self.failed(&mut st);
                    return Err(e);
                }
            }
            self.starts.fetch_add(1, Ordering::Relaxed);
            let raw = match exchange(&self.spec, &mut st, "describe", json!({})).await {
                Ok(v) => v,
                Err(e) => {
                    self.failed(&mut st);
                    return Err(e);
                }
            };
            match parse_description(&self.spec.symbol, self.kind, raw) {
                Ok(d) if d.methods == self.description.methods => {
                    tracing::info!(device = %self.spec.symbol, starts = self.starts(), "external driver restarted");
                }
                Ok(_) => {
                    self.failed(&mut st);
                    return Err(DeviceError::Protocol {
                        device: self.spec.symbol.clone(),
                        detail: "the restarted driver describes other methods than at start; restart the agent to accept them".into(),
                    });
                }
                Err(e) => {
                    self.failed(&mut st);
                    return Err(e);
                }
            }
        }
        match exchange(&self.spec, &mut st, method, params).await {
            Ok(v) => {
                st.failures = 0;
                st.not_before = None;
                Ok(v)
            }
            // the driver answered with an error: it is alive and well
            Err(e @ (DeviceError::Refused { .. } | DeviceError::BadParameter { .. })) => {
                st.failures = 0;
                Err(e)
            }
            Err(DeviceError::UnknownMethod(m)) => {
                st.failures = 0;
                Err(DeviceError::UnknownMethod(m))
            }
            Err(e) => {
                self.failed(&mut st);
                Err(e)
            }
        }
    }

    /// Kill the process (if any) and schedule the next start after the backoff.
    fn failed(&self, st: &mut State) {
        if let Some(mut p) = st.proc.take() {
            let _ = p.child.start_kill();
        }
        st.failures = st.failures.saturating_add(1);
        let backoff = self
            .spec
            .min_backoff
            .saturating_mul(1u32 << st.failures.saturating_sub(1).min(16))
            .min(self.spec.max_backoff);
        st.not_before = Some(Instant::now() + backoff);
        tracing::warn!(device = %self.spec.symbol, failures = st.failures, ?backoff, "external driver failed; restarting after backoff");
    }

    fn output(&self, md: &MethodDescriptor, raw: Value) -> Result<ExternalOutput, DeviceError> {
        let proto = |detail: String| DeviceError::Protocol {
            device: self.spec.symbol.clone(),
            detail,
        };
        let Value::Object(mut obj) = raw else {
            return Err(proto(format!("{}: the result must be an object", md.name)));
        };
        let ms = match obj.remove("measurements") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a,
            Some(_) => return Err(proto("`measurements` must be an array".into())),
        };
        let mut measurements = Vec::with_capacity(ms.len());
        for m in ms {
            let m: Measurement = serde_json::from_value(m)
                .map_err(|e| proto(format!("{}: measurement: {e}", md.name)))?;
            let kind = measurement_kind(&m);
            if !md.yields.iter().any(|y| y == kind) {
                return Err(proto(format!(
                    "{} yielded a {kind}, which it does not declare (yields: {:?})",
                    md.name, md.yields
                )));
            }
            check_measurement(&m).map_err(|d| proto(format!("{}: {kind}: {d}", md.name)))?;
            measurements.push((kind.to_string(), m));
        }
        let lab_duration_s = match obj.get("lab_duration_s") {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_f64() {
                Some(s) if (0.0..=86_400.0).contains(&s) => Some(s),
                _ => {
                    return Err(proto(format!(
                        "{}: lab_duration_s must be 0 to 86400 seconds, got {v}",
                        md.name
                    )))
                }
            },
        };
        Ok(ExternalOutput {
            result: Value::Object(obj),
            measurements,
            lab_duration_s,
        })
    }

    /// The capability-descriptor kind the lab declared for the device.
    pub fn kind(&self) -> SchemaKind {
        self.kind
    }
}

fn measurement_kind(m: &Measurement) -> &'static str {
    match m {
        Measurement::AbsorptionSpectrum { .. } => "absorption_spectrum",
        Measurement::CdSpectrum { .. } => "cd_spectrum",
        Measurement::Temperature { .. } => "temperature",
    }
}

/// Spectra of matching, bounded lengths with finite values on an increasing axis.
fn check_measurement(m: &Measurement) -> Result<(), String> {
    let (axis, values, extra): (&[f64], &[f64], &[f64]) = match m {
        Measurement::AbsorptionSpectrum {
            wavelength_nm,
            absorbance,
            ..
        } => (wavelength_nm, absorbance, &[]),
        Measurement::CdSpectrum {
            wavelength_nm,
            cd_mdeg,
            absorbance,
            ..
        } => (wavelength_nm, cd_mdeg, absorbance),
        Measurement::Temperature { .. } => return Ok(()),
    };
    if axis.is_empty() || axis.len() > MAX_POINTS {
        return Err(format!("{} points (1 to {MAX_POINTS} allowed)", axis.len()));
    }
    if values.len() != axis.len() || !(extra.is_empty() || extra.len() == axis.len()) {
        return Err("values and wavelength axis differ in length".into());
    }
    if axis
        .iter()
        .chain(values)
        .chain(extra)
        .any(|x| !x.is_finite())
    {
        return Err("non-finite value".into());
    }
    if axis.windows(2).any(|w| w[1] <= w[0]) {
        return Err("wavelength axis is not increasing".into());
    }
    Ok(())
}

fn parse_description(
    symbol: &str,
    kind: SchemaKind,
    raw: Value,
) -> Result<Description, DeviceError> {
    let bad = |detail: String| DeviceError::Protocol {
        device: symbol.to_string(),
        detail: format!("describe: {detail}"),
    };
    let d: Description = serde_json::from_value(raw).map_err(|e| bad(e.to_string()))?;
    if d.protocol != PROTOCOL_VERSION {
        return Err(bad(format!(
            "protocol version {} (this agent speaks {PROTOCOL_VERSION})",
            d.protocol
        )));
    }
    if d.methods.is_empty() {
        return Err(bad("no methods".into()));
    }
    if let Some(m) = d
        .methods
        .iter()
        .find(|m| RESERVED_METHODS.contains(&m.name.as_str()))
    {
        return Err(bad(format!(
            "method name {} is reserved by the protocol",
            m.name
        )));
    }
    // validated exactly like a built-in device's descriptor
    let lab = LabDescriptor {
        name: "external".into(),
        description: String::new(),
        devices: vec![DeviceDescriptor {
            symbol: symbol.to_string(),
            kind,
            description: String::new(),
            stream: false,
            flow: false,
            default_method: None,
            methods: d.methods.clone(),
        }],
    };
    lab.validate().map_err(|e| bad(e.to_string()))?;
    Ok(d)
}

fn spawn(spec: &ExternalSpec) -> Result<Proc, DeviceError> {
    let open = |detail: String| DeviceError::Open {
        device: spec.symbol.clone(),
        port: spec.command.join(" "),
        detail,
    };
    let (prog, args) = spec
        .command
        .split_first()
        .ok_or_else(|| open("no command".into()))?;
    let mut child = Command::new(prog)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| open(e.to_string()))?;
    let (Some(stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(open("no stdio pipes".into()));
    };
    let symbol = spec.symbol.clone();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            tracing::info!(device = %symbol, "driver: {line}");
        }
    });
    tracing::debug!(device = %spec.symbol, pid = child.id(), "external driver process started");
    Ok(Proc {
        child,
        stdin,
        stdout: BufReader::with_capacity(64 << 10, stdout).lines(),
    })
}

/// One request and its reply on the running process (none running: `disconnected`).
async fn exchange(
    spec: &ExternalSpec,
    st: &mut State,
    method: &str,
    params: Value,
) -> Result<Value, DeviceError> {
    let symbol = &spec.symbol;
    st.next_id += 1;
    let id = st.next_id;
    let Some(p) = st.proc.as_mut() else {
        return Err(DeviceError::Disconnected {
            device: symbol.clone(),
            detail: "external driver not running".into(),
        });
    };
    let gone = |detail: String| DeviceError::Disconnected {
        device: symbol.clone(),
        detail,
    };
    let mut line = serde_json::to_string(&json!({
        "jsonrpc": "2.0",
        "id": id,
        "method": method,
        "params": params,
    }))
    .map_err(|e| gone(e.to_string()))?;
    line.push('\n');
    let work = async {
        p.stdin
            .write_all(line.as_bytes())
            .await
            .map_err(|e| gone(format!("writing to the driver: {e}")))?;
        p.stdin
            .flush()
            .await
            .map_err(|e| gone(format!("writing to the driver: {e}")))?;
        loop {
            let reply = match p.stdout.next_line().await {
                Ok(Some(l)) => l,
                Ok(None) => {
                    let status = p.child.try_wait().ok().flatten();
                    return Err(gone(format!(
                        "the driver closed its output (exit status {})",
                        status.map_or_else(|| "unknown".to_string(), |s| s.to_string())
                    )));
                }
                Err(e) => return Err(gone(format!("reading from the driver: {e}"))),
            };
            if reply.len() > MAX_LINE {
                return Err(DeviceError::Protocol {
                    device: symbol.clone(),
                    detail: format!("reply of {} bytes (at most {MAX_LINE})", reply.len()),
                });
            }
            if reply.trim().is_empty() {
                continue;
            }
            let v: Value = serde_json::from_str(&reply).map_err(|e| DeviceError::Protocol {
                device: symbol.clone(),
                detail: format!("reply is not JSON: {e}"),
            })?;
            // a notification (no id) or a reply to an earlier, abandoned request: skip it
            if v.get("id").and_then(Value::as_u64) != Some(id) {
                continue;
            }
            if let Some(err) = v.get("error") {
                let code = err.get("code").and_then(Value::as_i64).unwrap_or(0);
                let message = err
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("(no message)")
                    .to_string();
                return Err(match code {
                    -32601 => DeviceError::UnknownMethod(format!("{symbol}.{method}")),
                    -32602 => DeviceError::BadParameter {
                        device: symbol.clone(),
                        message,
                    },
                    _ => DeviceError::Refused {
                        device: symbol.clone(),
                        detail: message,
                    },
                });
            }
            return v
                .get("result")
                .cloned()
                .ok_or_else(|| DeviceError::Protocol {
                    device: symbol.clone(),
                    detail: "reply has neither result nor error".into(),
                });
        }
    };
    match tokio::time::timeout(spec.timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(DeviceError::Timeout {
            device: symbol.clone(),
            timeout: spec.timeout,
            attempts: 1,
        }),
    }
}
