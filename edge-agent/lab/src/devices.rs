//! Device traits, one per kind of instrument the paper uses, with their local limits and readings.
//!
//! Drivers (real serial protocols) and virtual instruments implement these; the lab, the executor
//! and the safety kernel only see the traits.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::DeviceError;
pub use crate::ne1000::{Direction, PumpState};

/// Kinds of devices a lab may declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceKind {
    SyringePump,
    TemperatureController,
    AbsorptionSpectrometer,
    CdSpectrometer,
    RotationSampler,
    RobotArm,
    Laser,
    /// The laser's beam shutter: a device of its own, closed by the safety kernel.
    Shutter,
}

/// Local limits of a syringe pump, enforced before any byte is written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PumpLimits {
    /// Highest rate allowed, µL/min.
    #[serde(default = "default_max_rate")]
    pub max_rate_ul_min: f64,
    /// Syringe capacity, µL (largest volume per stroke).
    #[serde(default = "default_syringe")]
    pub syringe_volume_ul: f64,
    /// Allowed syringe inside diameter range, mm.
    #[serde(default = "default_dia_min")]
    pub min_diameter_mm: f64,
    #[serde(default = "default_dia_max")]
    pub max_diameter_mm: f64,
}
fn default_max_rate() -> f64 {
    1000.0
}
fn default_syringe() -> f64 {
    500.0
}
fn default_dia_min() -> f64 {
    0.1
}
fn default_dia_max() -> f64 {
    50.0
}
impl Default for PumpLimits {
    fn default() -> Self {
        Self {
            max_rate_ul_min: default_max_rate(),
            syringe_volume_ul: default_syringe(),
            min_diameter_mm: default_dia_min(),
            max_diameter_mm: default_dia_max(),
        }
    }
}

/// What a pump reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PumpStatus {
    pub state: PumpState,
    /// Alarm code when `state` is `Alarm` (e.g. `?S` stalled).
    pub alarm: Option<String>,
    pub infused_ul: f64,
    pub withdrawn_ul: f64,
}

#[async_trait]
pub trait SyringePump: Send + Sync {
    fn name(&self) -> &str;
    fn limits(&self) -> &PumpLimits;
    async fn set_diameter(&self, mm: f64) -> Result<(), DeviceError>;
    async fn set_rate(&self, ul_per_min: f64) -> Result<(), DeviceError>;
    async fn set_volume(&self, ul: f64) -> Result<(), DeviceError>;
    async fn set_direction(&self, dir: Direction) -> Result<(), DeviceError>;
    async fn run(&self) -> Result<(), DeviceError>;
    async fn stop(&self) -> Result<(), DeviceError>;
    async fn clear_dispensed(&self) -> Result<(), DeviceError>;
    async fn status(&self) -> Result<PumpStatus, DeviceError>;
    /// The programmed pumping rate, µL/min (what the pump moves while it runs).
    async fn rate(&self) -> Result<f64, DeviceError>;
    async fn version(&self) -> Result<String, DeviceError>;
}

/// Local limits of a heater / temperature controller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaterLimits {
    #[serde(default = "default_tmin")]
    pub min_temperature_c: f64,
    /// Highest setpoint allowed, and the process value above which the heater is cut and latched.
    #[serde(default = "default_tmax")]
    pub max_temperature_c: f64,
}
fn default_tmin() -> f64 {
    20.0
}
fn default_tmax() -> f64 {
    200.0
}
impl Default for HeaterLimits {
    fn default() -> Self {
        Self {
            min_temperature_c: default_tmin(),
            max_temperature_c: default_tmax(),
        }
    }
}

/// Alarm bits a temperature controller reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaterAlarms {
    pub high_temperature: bool,
    pub sensor_break: bool,
    pub lease_expired: bool,
}

impl HeaterAlarms {
    pub fn from_bits(b: u16) -> Self {
        Self {
            high_temperature: b & 1 != 0,
            sensor_break: b & 2 != 0,
            lease_expired: b & 4 != 0,
        }
    }
    pub fn bits(self) -> u16 {
        u16::from(self.high_temperature)
            | (u16::from(self.sensor_break) << 1)
            | (u16::from(self.lease_expired) << 2)
    }
    pub fn any_fault(self) -> bool {
        self.high_temperature || self.sensor_break
    }
}

/// One reading of a temperature controller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TempReading {
    /// Process value, °C; `None` when the sensor is broken.
    pub pv_c: Option<f64>,
    pub sp_c: f64,
    /// Heater output, % of full power.
    pub output_pct: f64,
    pub enabled: bool,
    pub alarms: HeaterAlarms,
}

#[async_trait]
pub trait TemperatureController: Send + Sync {
    fn name(&self) -> &str;
    fn limits(&self) -> &HeaterLimits;
    async fn set_setpoint(&self, celsius: f64) -> Result<(), DeviceError>;
    async fn set_enabled(&self, on: bool) -> Result<(), DeviceError>;
    /// Refresh the heater output lease (the controller cuts output when it lapses).
    async fn refresh_lease(&self) -> Result<(), DeviceError>;
    /// Program the controller's own high-temperature alarm (cuts output on the device).
    async fn set_high_alarm(&self, celsius: f64) -> Result<(), DeviceError>;
    async fn reset_alarms(&self) -> Result<(), DeviceError>;
    async fn read(&self) -> Result<TempReading, DeviceError>;
}

/// A spectrum on a wavelength axis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spectrum {
    pub wavelength_nm: Vec<f64>,
    pub values: Vec<f64>,
    /// What `values` are (`absorbance`, `cd_mdeg`).
    pub quantity: String,
    /// Absorbance on the same axis when the instrument records it alongside (the CD
    /// spectrometer's HT channel).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub absorbance: Option<Vec<f64>>,
}

#[async_trait]
pub trait AbsorptionSpectrometer: Send + Sync {
    fn name(&self) -> &str;
    /// Acquire an absorbance spectrum of what is in the flow cell now.
    async fn acquire(&self, integration_ms: f64, averages: u32) -> Result<Spectrum, DeviceError>;
}

/// Parameters of a CD scan.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CdScan {
    pub start_nm: f64,
    pub end_nm: f64,
    pub step_nm: f64,
    pub rate_nm_per_min: f64,
}

impl Default for CdScan {
    fn default() -> Self {
        Self {
            start_nm: 400.0,
            end_nm: 500.0,
            step_nm: 1.0,
            rate_nm_per_min: 50.0,
        }
    }
}

#[async_trait]
pub trait CdSpectrometer: Send + Sync {
    fn name(&self) -> &str;
    /// Scan the cuvette in the sample holder; takes (end - start) / rate of lab time.
    async fn scan(&self, scan: CdScan) -> Result<Spectrum, DeviceError>;
}

#[async_trait]
pub trait RotationSampler: Send + Sync {
    fn name(&self) -> &str;
    /// Collect `volume_ul` of the reactor outlet into the cuvette at the fill position; returns the slot.
    async fn collect(&self, volume_ul: f64) -> Result<u32, DeviceError>;
    /// Rotate to a slot.
    async fn rotate(&self, slot: u32) -> Result<(), DeviceError>;
}

#[async_trait]
pub trait RobotArm: Send + Sync {
    fn name(&self) -> &str;
    /// Move a cuvette between named locations (`sampler`, `cd`, `laser`, `waste`).
    async fn transfer(&self, from: &str, to: &str) -> Result<(), DeviceError>;
    async fn home(&self) -> Result<(), DeviceError>;
    /// Whether a place holds a cuvette, when the arm's cell knows (`None`: unknown, e.g. no
    /// presence sensor).
    fn occupied(&self, _place: &str) -> Option<bool> {
        None
    }
}

#[async_trait]
pub trait Laser: Send + Sync {
    fn name(&self) -> &str;
    /// Irradiate the cuvette at the laser station.
    async fn irradiate(&self, wavelength_nm: f64, duration_s: f64) -> Result<(), DeviceError>;
    /// Shutter closed, emission off.
    async fn off(&self) -> Result<(), DeviceError>;
}

/// A beam shutter: light reaches the sample only while it is open. Closing is the safe state.
#[async_trait]
pub trait Shutter: Send + Sync {
    fn name(&self) -> &str;
    async fn open(&self) -> Result<(), DeviceError>;
    async fn close(&self) -> Result<(), DeviceError>;
    fn is_open(&self) -> bool;
}
