//! Measurement records: what the executor and the safety kernel emit, and what the link streams to
//! the cloud (raw spectra, temperatures, step outcomes, safety events), as serde types.

use serde::{Deserialize, Serialize};

/// Where a run's records go. [`RecordSink::record`] returns once the record is kept, and the
/// executor awaits it before going on, so a run never gets ahead of what is kept: the agent's
/// sink writes each record to its durable spool (a crash loses nothing already recorded); a
/// channel sender keeps it in the channel.
pub trait RecordSink: Send + Sync {
    /// Keeps one record.
    fn record(&self, record: Record) -> impl std::future::Future<Output = ()> + Send;
}

impl RecordSink for tokio::sync::mpsc::Sender<Record> {
    async fn record(&self, record: Record) {
        // A closed channel means nobody listens; the run still completes safely.
        let _ = self.send(record).await;
    }
}

/// One record. The link adds its own (agent, epoch, seq) envelope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Program run id given by the caller (the link's command id), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program: Option<String>,
    /// Step id in the program, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<u32>,
    /// `"<SYMBOL>.<method>"`, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Lab time since the lab was built, s.
    pub lab_time_s: f64,
    /// Wall clock, ms since the Unix epoch.
    pub unix_ms: u64,
    pub body: RecordBody,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RecordBody {
    ProgramStarted {
        steps: u32,
    },
    StepStarted,
    StepSucceeded {
        result: serde_json::Value,
        lab_duration_s: f64,
    },
    StepFailed {
        code: String,
        message: String,
    },
    Measurement {
        name: String,
        measurement: Measurement,
    },
    Safety {
        event: String,
        detail: String,
    },
    ProgramFinished {
        outcome: Outcome,
        steps_succeeded: u32,
        lab_duration_s: f64,
    },
}

/// How a program ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Succeeded,
    Failed,
    Canceled,
    Refused,
}

/// A measurement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Measurement {
    /// Raw absorbance spectrum of the stream (2,048 pixels).
    AbsorptionSpectrum {
        wavelength_nm: Vec<f64>,
        absorbance: Vec<f64>,
        integration_ms: f64,
        averages: u32,
        /// The window the program asked for (analysis range).
        window_nm: [f64; 2],
    },
    /// CD spectrum of the cuvette.
    CdSpectrum {
        wavelength_nm: Vec<f64>,
        cd_mdeg: Vec<f64>,
        step_nm: f64,
        /// Absorbance of the cuvette on the same axis (HT channel); empty when not recorded.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        absorbance: Vec<f64>,
    },
    /// Reactor temperature when a setpoint was reached.
    Temperature {
        setpoint_c: f64,
        pv_c: Option<f64>,
        output_pct: f64,
        settle_s: f64,
    },
}

/// Wall clock in ms since the Unix epoch (0 if the clock is before 1970).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
