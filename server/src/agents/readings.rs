//! Live readings of a lab (`Lab.telemetry`): each heater's temperature (`<heater>.read`) and each
//! pump's state and flow (`<pump>.status`), read through the gateway from the lab's agent with a
//! short timeout, and cached per lab for about a second so that many open browsers cost the
//! hardware one read per lab and period (concurrent misses wait for the same read).
//!
//! Only methods the lab's stored capability descriptor declares are called. A heater that cannot
//! be read live (agent offline, call refused or late, method not declared) falls back to the
//! lab's latest stored `temperature` measurement, marked `RECORD` with its time. Nothing here
//! fails: every problem becomes a state and a detail, so an offline lab is a quiet answer.
//!
//! The cache holds per-lab values shared by everyone who may read the lab: callers check access
//! *before* asking it (`graphql/labs.rs`), and the key is the lab id.

use std::sync::Arc;
use std::time::Duration;

use async_graphql::{Enum, SimpleObject};
use maosic_schema::capability::{DeviceKind, LabDescriptor};
use serde_json::{json, Value};
use tracing::{debug, warn};

use crate::agents::registry::{CallError, Gateway};
use crate::storage::{now_ms, Lab, LabId, Storage, StoredRecord};
use crate::time::rfc3339_ms;

/// How long a lab's readings are served from the cache.
pub const TTL: Duration = Duration::from_secs(1);
/// How long one read may take on the agent before it counts as unavailable.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Labs whose readings are kept at most (each entry is a few hundred bytes).
const CAPACITY: u64 = 10_000;

/// The method that reads a heater.
const HEATER_READ: &str = "read";
/// The method that reads a pump.
const PUMP_STATUS: &str = "status";

/// How complete a lab's readings are.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum TelemetryState {
    /// Every reading came from the agent just now.
    Live,
    /// The agent is connected but some reading could not be taken live (see `detail`); a
    /// heater's temperature may be the latest stored measurement.
    Partial,
    /// The lab's agent is not connected; a heater's temperature may be the latest stored one.
    Offline,
    /// Live readings of a shared lab are only its own organisation's: what another
    /// organisation's experiment is doing on it is theirs.
    Restricted,
}

/// Where a reading comes from.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadingSource {
    /// Read from the agent for this answer.
    Agent,
    /// The latest stored `temperature` measurement of the lab.
    Record,
}

/// A heater's temperature.
#[derive(SimpleObject, Debug, Clone, PartialEq)]
pub struct HeaterReading {
    /// The heater's symbol (e.g. `H`).
    pub device: String,
    /// Where the values come from.
    pub source: ReadingSource,
    /// When they were read or measured (RFC 3339, UTC).
    pub at: String,
    /// Process value, °C; null when the sensor is broken.
    pub pv_c: Option<f64>,
    /// Setpoint, °C.
    pub setpoint_c: f64,
    /// Heater output, % of full power.
    pub output_pct: f64,
    /// Whether the heater is on (null for a stored measurement).
    pub enabled: Option<bool>,
}

/// A pump's state and flow.
#[derive(SimpleObject, Debug, Clone, PartialEq)]
pub struct PumpReading {
    /// The pump's symbol (e.g. `P1`).
    pub device: String,
    /// `infusing`, `withdrawing`, `stopped`, `paused`, `alarm`, ...
    pub state: String,
    /// The programmed rate, µL/min.
    pub rate_ul_min: f64,
    /// What it moves now, µL/min: the rate while infusing or withdrawing, else 0.
    pub flow_ul_min: f64,
    /// Volume infused since it was last cleared, µL.
    pub infused_ul: f64,
    /// The pump's alarm code, if it is in alarm.
    pub alarm: Option<String>,
}

/// A lab's live readings.
#[derive(SimpleObject, Debug, Clone, PartialEq)]
#[graphql(name = "LabTelemetry")]
pub struct Telemetry {
    /// How complete the readings are.
    pub state: TelemetryState,
    /// When this answer was assembled (RFC 3339, UTC); answers are cached about a second.
    pub read_at: String,
    /// Why some reading is missing or not live, when one is.
    pub detail: Option<String>,
    /// Each heater's temperature that could be read or was stored.
    pub heaters: Vec<HeaterReading>,
    /// Each pump that could be read live.
    pub pumps: Vec<PumpReading>,
}

impl Telemetry {
    /// The answer for a caller who may see the lab but not its live readings.
    pub fn restricted() -> Self {
        Telemetry {
            state: TelemetryState::Restricted,
            read_at: rfc3339_ms(now_ms()),
            detail: Some("live readings of a shared lab are its own organisation's".into()),
            heaters: Vec::new(),
            pumps: Vec::new(),
        }
    }
}

/// The per-lab cache of readings.
#[derive(Clone)]
pub struct TelemetryCache {
    cache: moka::future::Cache<LabId, Arc<Telemetry>>,
}

impl Default for TelemetryCache {
    fn default() -> Self {
        TelemetryCache {
            cache: moka::future::Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_live(TTL)
                .build(),
        }
    }
}

impl TelemetryCache {
    /// The lab's readings, from the cache when younger than [`TTL`], else read now (once for
    /// all concurrent callers). The caller must already have checked that it may read the lab.
    pub async fn get(
        &self,
        gateway: &Gateway,
        storage: &Arc<dyn Storage>,
        lab: &Lab,
    ) -> Arc<Telemetry> {
        self.cache
            .get_with_by_ref(&lab.id, async {
                Arc::new(read(gateway, storage.as_ref(), lab).await)
            })
            .await
    }
}

/// Reads the lab now: the gateway for what its agent can answer, storage for the fallback.
pub async fn read(gateway: &Gateway, storage: &dyn Storage, lab: &Lab) -> Telemetry {
    let descriptor = lab
        .descriptor
        .as_deref()
        .and_then(|d| LabDescriptor::from_json_str(d).ok());
    let mut heaters: Vec<(String, bool)> = Vec::new(); // (symbol, declares `read`)
    let mut pumps: Vec<String> = Vec::new();
    for d in descriptor.iter().flat_map(|d| d.devices.iter()) {
        match d.kind {
            DeviceKind::Heater => heaters.push((d.symbol.clone(), d.method(HEATER_READ).is_some())),
            DeviceKind::Pump if d.method(PUMP_STATUS).is_some() => pumps.push(d.symbol.clone()),
            _ => {}
        }
    }
    let mut problems: Vec<String> = Vec::new();
    if descriptor.is_none() {
        problems.push("the lab's agent has not announced a capability descriptor yet".into());
    }
    let connected = gateway.is_connected(&lab.id);
    let mut live_heaters: Vec<Option<HeaterReading>> = vec![None; heaters.len()];
    let mut pump_readings = Vec::new();
    if connected {
        let heater_calls = heaters.iter().map(|(sym, declared)| async move {
            if *declared {
                Some(device_call(gateway, &lab.id, sym, HEATER_READ).await)
            } else {
                None
            }
        });
        let pump_calls = pumps
            .iter()
            .map(|sym| device_call(gateway, &lab.id, sym, PUMP_STATUS));
        let (heater_answers, pump_answers) = futures_util::future::join(
            futures_util::future::join_all(heater_calls),
            futures_util::future::join_all(pump_calls),
        )
        .await;
        let at = rfc3339_ms(now_ms());
        for (i, ((sym, _), answer)) in heaters.iter().zip(heater_answers).enumerate() {
            match answer {
                None => problems.push(format!("{sym} does not declare {HEATER_READ}")),
                Some(Err(why)) => problems.push(format!("{sym}.{HEATER_READ}: {why}")),
                Some(Ok(v)) => match heater_of(sym, &at, &v) {
                    Some(r) => live_heaters[i] = Some(r),
                    None => problems.push(format!("{sym}.{HEATER_READ}: unexpected answer")),
                },
            }
        }
        for (sym, answer) in pumps.iter().zip(pump_answers) {
            match answer.map(|v| pump_of(sym, &v)) {
                Ok(Some(r)) => pump_readings.push(r),
                Ok(None) => problems.push(format!("{sym}.{PUMP_STATUS}: unexpected answer")),
                Err(why) => problems.push(format!("{sym}.{PUMP_STATUS}: {why}")),
            }
        }
    }
    let mut out_heaters = Vec::new();
    if live_heaters.iter().any(Option::is_none) {
        let stored = latest_temperature(storage, &lab.id).await;
        let only = heaters.len() == 1;
        for ((sym, _), live) in heaters.iter().zip(live_heaters) {
            if let Some(r) = live {
                out_heaters.push(r);
            } else if let Some((device, r)) = &stored {
                if device.as_deref() == Some(sym.as_str()) || (device.is_none() && only) {
                    out_heaters.push(HeaterReading {
                        device: sym.clone(),
                        ..r.clone()
                    });
                }
            }
        }
    } else {
        out_heaters.extend(live_heaters.into_iter().flatten());
    }
    let state = if !connected {
        TelemetryState::Offline
    } else if problems.is_empty() {
        TelemetryState::Live
    } else {
        TelemetryState::Partial
    };
    if !connected {
        problems.insert(
            0,
            if lab.online {
                "the lab's agent is connected to another server replica".into()
            } else {
                "the lab's agent is not connected".into()
            },
        );
    }
    if !problems.is_empty() {
        debug!(lab.id = %lab.id, problems = ?problems, "live readings incomplete");
    }
    Telemetry {
        state,
        read_at: rfc3339_ms(now_ms()),
        detail: (!problems.is_empty()).then(|| problems.join("; ")),
        heaters: out_heaters,
        pumps: pump_readings,
    }
}

/// `device.call` of `<sym>.<method>` without parameters; the agent's `result` or why not.
async fn device_call(
    gateway: &Gateway,
    lab_id: &LabId,
    sym: &str,
    method: &str,
) -> Result<Value, String> {
    let answer = gateway
        .call(
            lab_id,
            maosic_schema::protocol::method::DEVICE_CALL,
            json!({ "method": format!("{sym}.{method}"), "params": {} }),
            CALL_TIMEOUT,
        )
        .await;
    match answer {
        Ok(v) => Ok(v.get("result").cloned().unwrap_or(Value::Null)),
        Err(CallError::Rejected(rpc)) => Err(format!("the agent refused: {}", rpc.message)),
        Err(e) => Err(e.to_string()),
    }
}

/// A heater's `read` result: `{pv_c, sp_c, output_pct, enabled, ...}`.
fn heater_of(sym: &str, at: &str, v: &Value) -> Option<HeaterReading> {
    Some(HeaterReading {
        device: sym.to_owned(),
        source: ReadingSource::Agent,
        at: at.to_owned(),
        pv_c: v.get("pv_c").and_then(Value::as_f64),
        setpoint_c: v.get("sp_c").and_then(Value::as_f64)?,
        output_pct: v.get("output_pct").and_then(Value::as_f64)?,
        enabled: v.get("enabled").and_then(Value::as_bool),
    })
}

/// A pump's `status` result: `{state, alarm, rate_ul_min, flow_ul_min, infused_ul, ...}`.
fn pump_of(sym: &str, v: &Value) -> Option<PumpReading> {
    Some(PumpReading {
        device: sym.to_owned(),
        state: v.get("state").and_then(Value::as_str)?.to_owned(),
        rate_ul_min: v.get("rate_ul_min").and_then(Value::as_f64)?,
        flow_ul_min: v.get("flow_ul_min").and_then(Value::as_f64)?,
        infused_ul: v.get("infused_ul").and_then(Value::as_f64).unwrap_or(0.0),
        alarm: v.get("alarm").and_then(Value::as_str).map(str::to_owned),
    })
}

/// The lab's latest stored temperature measurement: (the heater symbol of its method, if any;
/// the reading). Storage errors are logged and count as none.
async fn latest_temperature(
    storage: &dyn Storage,
    lab_id: &LabId,
) -> Option<(Option<String>, HeaterReading)> {
    match storage.latest_measurement(lab_id, "temperature").await {
        Ok(record) => record.as_ref().and_then(stored_temperature),
        Err(e) => {
            warn!(lab.id = %lab_id, error = %e, "latest temperature record not read");
            None
        }
    }
}

/// A stored record's temperature measurement, if it is one.
fn stored_temperature(record: &StoredRecord) -> Option<(Option<String>, HeaterReading)> {
    let body: Value = serde_json::from_str(&record.body).ok()?;
    if body["body"]["type"] != "measurement" || body["body"]["measurement"]["kind"] != "temperature"
    {
        return None;
    }
    let m = &body["body"]["measurement"];
    let device = body["method"]
        .as_str()
        .and_then(|method| method.split_once('.'))
        .map(|(sym, _)| sym.to_owned());
    let measured_ms = body["unix_ms"]
        .as_u64()
        .and_then(|ms| i64::try_from(ms).ok())
        .unwrap_or(record.received_at);
    Some((
        device.clone(),
        HeaterReading {
            device: device.unwrap_or_default(),
            source: ReadingSource::Record,
            at: rfc3339_ms(measured_ms),
            pv_c: m["pv_c"].as_f64(),
            setpoint_c: m["setpoint_c"].as_f64()?,
            output_pct: m["output_pct"].as_f64().unwrap_or(0.0),
            enabled: None,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(body: Value) -> StoredRecord {
        StoredRecord {
            lab_id: "lab".into(),
            epoch: "e".into(),
            seq: 1,
            program_id: Some("p".into()),
            kind: "measurement".into(),
            body: body.to_string(),
            received_at: 5_000,
        }
    }

    #[test]
    fn a_stored_temperature_measurement_is_read_with_its_heater_and_time() {
        let r = record(json!({
            "method": "H.set_temperature", "unix_ms": 1_000, "lab_time_s": 1.0,
            "body": { "type": "measurement", "name": "temperature",
                      "measurement": { "kind": "temperature", "setpoint_c": 130.0, "pv_c": 129.6,
                                       "output_pct": 42.0, "settle_s": 80.0 } }
        }));
        let (device, h) = stored_temperature(&r).unwrap();
        assert_eq!(device.as_deref(), Some("H"));
        assert_eq!(h.source, ReadingSource::Record);
        assert_eq!(h.setpoint_c, 130.0);
        assert_eq!(h.pv_c, Some(129.6));
        assert_eq!(h.at, "1970-01-01T00:00:01.000Z");
        // Another measurement kind, or something that is no measurement, is not a temperature.
        let spectrum = record(
            json!({ "unix_ms": 1, "body": { "type": "measurement", "name": "x",
            "measurement": { "kind": "cd_spectrum", "temperature": 1 } } }),
        );
        assert!(stored_temperature(&spectrum).is_none());
        let garbage = StoredRecord {
            body: "not json".into(),
            ..r
        };
        assert!(stored_temperature(&garbage).is_none());
    }

    #[test]
    fn agent_answers_become_readings_and_malformed_ones_do_not() {
        let h = heater_of(
            "H",
            "t",
            &json!({"pv_c": 25.1, "sp_c": 60.0, "output_pct": 80.0, "enabled": true}),
        )
        .unwrap();
        assert_eq!(
            (h.pv_c, h.setpoint_c, h.enabled),
            (Some(25.1), 60.0, Some(true))
        );
        assert!(heater_of("H", "t", &json!({"pv_c": 25.1})).is_none());
        let p = pump_of(
            "P1",
            &json!({"state": "infusing", "rate_ul_min": 30.0, "flow_ul_min": 30.0, "infused_ul": 2.0, "alarm": null}),
        )
        .unwrap();
        assert_eq!(
            (p.state.as_str(), p.flow_ul_min, p.alarm),
            ("infusing", 30.0, None)
        );
        assert!(pump_of("P1", &json!({"state": "stopped"})).is_none());
    }
}
