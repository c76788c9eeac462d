//! The `Lab` handle: builds a lab from its configuration (virtual twin, real serial ports, or a
//! mix), describes it as a capability descriptor, dispatches `"<SYMBOL>.<method>"` calls through
//! the safety kernel to the device traits, runs programs, and owns e-stop and link-loss hooks.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use maosic_schema::capability::{
    DeviceDescriptor, DeviceKind as SchemaKind, LabDescriptor, MethodDescriptor, ParamDescriptor,
};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::clock::{ActorHandle, Clock};
use crate::config::{DeviceConfig, DriverKind, LabConfig, VIRTUAL_PORT};
use crate::devices::*;
use crate::drivers::external::{ExternalDriver, ExternalSpec};
use crate::drivers::ne1000_pump::{Ne1000Bus, Ne1000Pump};
use crate::drivers::pid_modbus::{emergency_off_frame, PidModbus};
use crate::error::DeviceError;
use crate::record::Measurement;
use crate::safety::{EmergencyWrite, FaultReset, SafeStateReport, SafetyKernel};
use crate::sim::instruments::{
    Twin, VirtualArm, VirtualCd, VirtualLaser, VirtualSampler, VirtualShutter, VirtualUv,
};
use crate::sim::pump::PumpSim;
use crate::sim::thermal::ThermalParams;
use crate::sim::twin::{TwinHandle, TwinPortKind};
use crate::sim::world::{Chemistry, World};

/// Withdrawals a refill makes at most (one, unless a link-loss hold stops it part-way).
const REFILL_ROUNDS: usize = 3;

/// Longest `H.hold`, s of lab time.
pub const HOLD_MAX_S: f64 = 3600.0;

/// A device of the lab.
#[derive(Clone)]
pub enum Device {
    Pump(Arc<dyn SyringePump>),
    Heater(Arc<dyn TemperatureController>),
    Uv(Arc<dyn AbsorptionSpectrometer>),
    Cd(Arc<dyn CdSpectrometer>),
    Sampler(Arc<dyn RotationSampler>),
    Arm(Arc<dyn RobotArm>),
    Laser(Arc<dyn Laser>),
    Shutter(Arc<dyn Shutter>),
    /// A measuring instrument run by an external driver process (JSON-RPC over stdio).
    External(Arc<ExternalDriver>),
}

/// What a call returned: a JSON result and the measurements it yielded.
#[derive(Debug, Clone, Default)]
pub struct CallOutput {
    pub result: serde_json::Value,
    pub measurements: Vec<(String, Measurement)>,
}

/// Why a lab could not be built.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error(transparent)]
    Twin(#[from] crate::sim::twin::TwinError),
    #[error("landscape: {0}")]
    Landscape(String),
    /// The configuration is valid TOML but cannot be built into a lab.
    #[error("lab configuration: {0}")]
    Invalid(String),
}

struct PumpBook {
    diameter_mm: f64,
    refill_below_ul: f64,
    /// Liquid in the syringe as the agent believes, µL.
    content_ul: f64,
    initialised: bool,
}

/// A built lab.
pub struct Lab {
    pub config: LabConfig,
    pub clock: Clock,
    devices: BTreeMap<String, (DeviceConfig, Device)>,
    twin: Option<TwinHandle>,
    kernel: Arc<SafetyKernel>,
    kernel_task: Option<tokio::task::JoinHandle<()>>,
    /// Each pump's syringe book, locked per pump (refills of several pumps run at once).
    books: BTreeMap<String, tokio::sync::Mutex<PumpBook>>,
    /// Concrete pump drivers (for byte counters in tests).
    pub ne1000: BTreeMap<String, Arc<Ne1000Pump>>,
    pub pid: Option<Arc<PidModbus>>,
    /// Each device's queue of program runs (symbol → run ids): the first owns it, the others
    /// wait in the order they came.
    owners: std::sync::Mutex<BTreeMap<String, VecDeque<String>>>,
    owners_changed: tokio::sync::Notify,
    /// Ids of program runs started without one.
    local_runs: std::sync::atomic::AtomicU64,
    /// Sampler slots filled and not yet taken to the CD, oldest first.
    filled: std::sync::Mutex<VecDeque<u32>>,
    /// Programs waiting for devices, with their actors (see [`Lab::wait_owned`]).
    waiters: std::sync::Mutex<BTreeMap<u64, Waiter>>,
    next_waiter: std::sync::atomic::AtomicU64,
}

/// A program waiting for devices: its run id, the devices, its actor.
type Waiter = (String, BTreeSet<String>, ActorHandle);

/// Takes a waiter off the list however its wait ends.
struct Waiting<'a> {
    lab: &'a Lab,
    key: u64,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.lab.waiters().remove(&self.key);
    }
}

impl std::fmt::Debug for Lab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lab")
            .field("name", &self.config.lab.name)
            .finish()
    }
}

fn load_landscape(spec: &str) -> Result<maosic_landscape::Landscape, LabError> {
    if let Ok(l) = maosic_landscape::Landscape::builtin(spec) {
        return Ok(l);
    }
    let text = std::fs::read_to_string(spec)
        .map_err(|e| LabError::Landscape(format!("cannot read {spec}: {e}")))?;
    maosic_landscape::Landscape::from_toml_str(&text)
        .map_err(|e| LabError::Landscape(e.to_string()))
}

impl Lab {
    /// Build the lab described by `config` and start its safety kernel. Must run inside a tokio runtime.
    pub async fn build(config: LabConfig) -> Result<Lab, LabError> {
        config.validate()?;
        let needs_twin = config.needs_twin();
        let clock = if needs_twin {
            match config.twin.clock {
                crate::config::TwinClock::Event => Clock::event(config.twin.speed),
                crate::config::TwinClock::Scaled => Clock::new(config.twin.speed),
            }
            .map_err(|e| LabError::Invalid(e.to_string()))?
        } else {
            Clock::real_time()
        };
        let twin = if needs_twin {
            let landscape = load_landscape(&config.twin.landscape)?;
            let mut chem = Chemistry {
                cs_mmol_per_ml: BTreeMap::new(),
                reactor_volume_ul: config.twin.reactor_volume_ul,
            };
            let params = ThermalParams {
                lease_s: config.safety.lease_s,
                ..ThermalParams::default()
            };
            let mut world = World::new(landscape, chem.clone(), params, config.twin.seed);
            // on the scaled clock, keep the lease meaningful at high speed factors: never shorter
            // than 50 ms of wall time (the event clock refreshes it in lockstep)
            if !clock.is_event() {
                world.heater.lease_floor_s = 0.05 * config.twin.speed;
            }
            let mut ports = Vec::new();
            for d in &config.devices {
                if d.port.as_deref() != Some(VIRTUAL_PORT) {
                    continue;
                }
                match d.driver {
                    DriverKind::Ne1000 => {
                        let cap = d
                            .pump_limits()
                            .map_err(LabError::Invalid)?
                            .syringe_volume_ul;
                        let model = d.pump_model().map_err(LabError::Invalid)?;
                        world.pumps.insert(
                            d.symbol.clone(),
                            PumpSim::new(d.address, cap).with_model(model, d.syringe_diameter_mm()),
                        );
                        chem.cs_mmol_per_ml
                            .insert(d.symbol.clone(), d.cs_mmol_per_ml.unwrap_or(0.0));
                        ports.push((d.symbol.clone(), TwinPortKind::Pump));
                    }
                    DriverKind::ModbusPid => {
                        let profile = d
                            .controller_profile()
                            .map_err(|e| LabError::Invalid(format!("{}: {e}", d.symbol)))?;
                        ports.push((
                            d.symbol.clone(),
                            TwinPortKind::Pid {
                                slave: d.address,
                                profile,
                                decimals: d.decimals.unwrap_or(profile.decimals),
                            },
                        ))
                    }
                    DriverKind::External => {
                        // validated: only absorption spectrometers on the virtual bench
                        ports.push((d.symbol.clone(), TwinPortKind::OpticalBench));
                    }
                    DriverKind::Virtual => {}
                }
            }
            world.chemistry = chem;
            let world = Arc::new(Mutex::new(world));
            Some(TwinHandle::start(world, clock.clone(), ports)?)
        } else {
            None
        };

        let mut devices = BTreeMap::new();
        let mut books = BTreeMap::new();
        let mut ne1000 = BTreeMap::new();
        let mut pid = None;
        let mut emergency = Vec::new();
        let mut heater: Option<Arc<dyn TemperatureController>> = None;
        let mut pumps: Vec<Arc<dyn SyringePump>> = Vec::new();
        let mut lasers: Vec<Arc<dyn Laser>> = Vec::new();
        // one bus per port: pumps on a network share it (validated: same baud, distinct addresses)
        let mut buses: BTreeMap<String, Arc<Ne1000Bus>> = BTreeMap::new();
        // beam shutters first: a laser names its shutter, which may be declared after it
        let mut virtual_shutters: BTreeMap<String, Arc<VirtualShutter>> = BTreeMap::new();
        if let Some(t) = &twin {
            for d in &config.devices {
                if d.kind == DeviceKind::Shutter && d.driver == DriverKind::Virtual {
                    let twin = Twin {
                        world: t.world.clone(),
                        clock: clock.clone(),
                    };
                    virtual_shutters.insert(
                        d.symbol.clone(),
                        Arc::new(VirtualShutter::new(d.symbol.clone(), twin)),
                    );
                }
            }
        }
        let mut shutters: Vec<Arc<dyn Shutter>> = Vec::new();
        for d in &config.devices {
            let path = match (&d.port, &twin) {
                (Some(p), Some(t)) if p == VIRTUAL_PORT => t.path(&d.symbol).map(str::to_string),
                (Some(p), _) => Some(p.clone()),
                (None, _) => None,
            };
            let dev = match (d.kind, d.driver) {
                (DeviceKind::SyringePump, DriverKind::Ne1000) => {
                    let path = path.unwrap_or_default();
                    let limits = d.pump_limits().map_err(LabError::Invalid)?;
                    let cap = limits.syringe_volume_ul;
                    let bus = match buses.get(&path) {
                        Some(b) => b.clone(),
                        None => {
                            let b = Ne1000Bus::open(&d.symbol, &path, d.baud)?;
                            buses.insert(path.clone(), b.clone());
                            b
                        }
                    };
                    let model = d.pump_model().map_err(LabError::Invalid)?;
                    let mut p = Ne1000Pump::on_bus(&d.symbol, bus, d.address, limits, d.timing)
                        .with_model(model, d.syringe_diameter_mm());
                    if let Some(n) = d.safe_mode_s {
                        p = p.with_safe_mode(n);
                    }
                    let p = Arc::new(p);
                    p.start().await?;
                    emergency.push(EmergencyWrite {
                        path: path.clone(),
                        baud: d.baud,
                        bytes: p.emergency_stop_bytes(),
                    });
                    books.insert(
                        d.symbol.clone(),
                        tokio::sync::Mutex::new(PumpBook {
                            diameter_mm: d.syringe_diameter_mm(),
                            refill_below_ul: d.refill_below_ul.unwrap_or(0.8 * cap),
                            content_ul: cap,
                            initialised: false,
                        }),
                    );
                    ne1000.insert(d.symbol.clone(), p.clone());
                    pumps.push(p.clone());
                    Device::Pump(p)
                }
                (DeviceKind::TemperatureController, DriverKind::ModbusPid) => {
                    let path = path.unwrap_or_default();
                    let limits = d.heater_limits().map_err(LabError::Invalid)?;
                    let profile = d
                        .controller_profile()
                        .map_err(|e| LabError::Invalid(format!("{}: {e}", d.symbol)))?;
                    let h = Arc::new(
                        PidModbus::open(&d.symbol, &path, d.baud, d.address, limits, d.timing)?
                            .with_profile(profile, d.decimals),
                    );
                    tracing::info!(device = %d.symbol, profile = profile.name, "temperature controller");
                    emergency.push(EmergencyWrite {
                        path,
                        baud: d.baud,
                        bytes: emergency_off_frame(profile, d.address),
                    });
                    heater = Some(h.clone());
                    pid = Some(h.clone());
                    Device::Heater(h)
                }
                (kind, DriverKind::External) => {
                    let port = path.clone().unwrap_or_default();
                    let spec = ExternalSpec {
                        symbol: d.symbol.clone(),
                        command: d
                            .command
                            .iter()
                            .map(|a| a.replace("{port}", &port))
                            .collect(),
                        timeout: Duration::from_millis(d.rpc_timeout_ms.unwrap_or(10_000)),
                        min_backoff: Duration::from_millis(200),
                        max_backoff: Duration::from_secs(30),
                    };
                    let x = ExternalDriver::start(spec, schema_kind(kind)).await?;
                    Device::External(Arc::new(x))
                }
                (kind, DriverKind::Virtual) => {
                    let Some(t) = &twin else {
                        return Err(LabError::Invalid("virtual device without a twin".into()));
                    };
                    let twin = Twin {
                        world: t.world.clone(),
                        clock: clock.clone(),
                    };
                    let name = d.symbol.clone();
                    match kind {
                        DeviceKind::AbsorptionSpectrometer => {
                            Device::Uv(Arc::new(VirtualUv { name, twin }))
                        }
                        DeviceKind::CdSpectrometer => Device::Cd(Arc::new(VirtualCd {
                            name,
                            twin,
                            scan_rate_nm_per_min: config.twin.cd_scan_rate_nm_per_min,
                        })),
                        DeviceKind::RotationSampler => Device::Sampler(Arc::new(VirtualSampler {
                            name,
                            twin,
                            slots: config.twin.sampler_slots.max(1),
                        })),
                        DeviceKind::RobotArm => Device::Arm(Arc::new(VirtualArm {
                            name,
                            twin,
                            move_s: config.twin.arm_move_s,
                        })),
                        DeviceKind::Laser => {
                            let shutter = d
                                .shutter
                                .as_ref()
                                .map(|s| {
                                    virtual_shutters.get(s).cloned().ok_or_else(|| {
                                        LabError::Invalid(format!(
                                            "{}: shutter {s} is not a virtual shutter",
                                            d.symbol
                                        ))
                                    })
                                })
                                .transpose()?;
                            let l: Arc<dyn Laser> = Arc::new(VirtualLaser {
                                name,
                                twin,
                                shutter,
                            });
                            lasers.push(l.clone());
                            Device::Laser(l)
                        }
                        DeviceKind::Shutter => {
                            let s: Arc<dyn Shutter> =
                                virtual_shutters.get(&d.symbol).cloned().ok_or_else(|| {
                                    LabError::Invalid(format!("{}: no virtual shutter", d.symbol))
                                })?;
                            shutters.push(s.clone());
                            Device::Shutter(s)
                        }
                        _ => {
                            return Err(LabError::Invalid(format!(
                                "{}: no virtual implementation",
                                d.symbol
                            )))
                        }
                    }
                }
                _ => {
                    return Err(LabError::Invalid(format!(
                        "{}: unsupported driver",
                        d.symbol
                    )))
                }
            };
            devices.insert(d.symbol.clone(), (d.clone(), dev));
        }
        let kernel = SafetyKernel::new(
            config.safety.clone(),
            clock.clone(),
            heater.clone(),
            pumps,
            lasers,
            shutters,
            emergency,
        );
        if let Some(h) = &heater {
            h.set_high_alarm(h.limits().max_temperature_c).await?;
        }
        let kernel_task = Some(kernel.spawn());
        Ok(Lab {
            config,
            clock,
            devices,
            twin,
            kernel,
            kernel_task,
            books,
            ne1000,
            pid,
            owners: Default::default(),
            owners_changed: tokio::sync::Notify::new(),
            local_runs: Default::default(),
            filled: Default::default(),
            waiters: Default::default(),
            next_waiter: Default::default(),
        })
    }

    /// Build from a TOML file.
    pub async fn from_file(path: &std::path::Path) -> Result<Lab, LabError> {
        Self::build(LabConfig::from_file(path)?).await
    }

    /// The safety kernel.
    pub fn kernel(&self) -> &Arc<SafetyKernel> {
        &self.kernel
    }

    /// The twin, when the lab is (partly) virtual.
    pub fn twin(&self) -> Option<&TwinHandle> {
        self.twin.as_ref()
    }

    /// Symbols and kinds.
    /// A device by symbol.
    pub fn device(&self, symbol: &str) -> Option<&Device> {
        self.devices.get(symbol).map(|(_, d)| d)
    }

    pub fn device_list(&self) -> Vec<(String, DeviceKind, DriverKind, Option<String>)> {
        self.devices
            .iter()
            .map(|(s, (c, _))| {
                let port = match (&c.port, &self.twin) {
                    (Some(p), Some(t)) if p == VIRTUAL_PORT => {
                        t.path(s).map(|x| format!("virtual ({x})"))
                    }
                    (p, _) => p.clone(),
                };
                (s.clone(), c.kind, c.driver, port)
            })
            .collect()
    }

    /// E-stop: latch, heater off, pumps stopped, laser off.
    pub async fn estop(&self) -> SafeStateReport {
        let r = self.kernel.estop("e-stop requested").await;
        self.external_safe_state().await;
        r
    }

    /// Ask every external driver to put its instrument in its safe state (best effort: the
    /// kernel's devices are already safe; a driver that does not know `safe_state` is fine).
    async fn external_safe_state(&self) {
        for (_, d) in self.devices.values() {
            if let Device::External(x) = d {
                match x.safe_state().await {
                    Ok(()) | Err(DeviceError::UnknownMethod(_)) => {}
                    Err(e) => {
                        tracing::warn!(device = %x.name(), error = %e, "external driver safe state")
                    }
                }
            }
        }
    }

    /// Operator fault reset: clears the latched faults, then lets the safety kernel run two
    /// cycles so that a condition that persists latches again, and reports both. `by` names who
    /// reset (an operator on the lab's machine, or a lab admin through the cloud) and why.
    pub async fn reset_faults(&self, by: &str) -> Result<FaultReset, DeviceError> {
        let cleared = self.kernel.reset(by).await?;
        if self.clock.is_event() {
            // two kernel cycles of lab time (and a half: the kernel's own wake-up at the same
            // instant may come after this one's)
            let _moving = self.clock.activity();
            self.clock
                .sleep(Duration::from_secs_f64(
                    2.5 * self.kernel.config().control_period_s,
                ))
                .await;
        } else {
            tokio::time::sleep(self.kernel.real_period() * 2).await;
        }
        Ok(FaultReset {
            cleared,
            latched: self.kernel.faults(),
        })
    }

    /// Hook for the link: the cloud link is lost / back.
    pub async fn link_lost(&self) -> Option<crate::config::LinkLossPolicy> {
        self.kernel.link_lost().await
    }
    pub fn link_restored(&self) {
        self.kernel.link_restored()
    }

    /// Run a compiled program (see [`crate::executor`]); each record is kept by `sink` before
    /// the run goes on.
    pub async fn run_program<S: crate::record::RecordSink>(
        &self,
        program: &maosic_schema::program::Program,
        opts: crate::executor::ExecOptions,
        sink: S,
        cancel: CancellationToken,
    ) -> crate::executor::ProgramReport {
        crate::executor::run_program(self, program, opts, sink, cancel).await
    }

    /// A run id for a program started without one (local runs, tests).
    pub fn local_run_id(&self) -> String {
        let n = self
            .local_runs
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("local-{}", n + 1)
    }

    fn owners(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, VecDeque<String>>> {
        // A panic while holding the lock cannot leave the map inconsistent: use it anyway.
        self.owners.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn filled(&self) -> std::sync::MutexGuard<'_, VecDeque<u32>> {
        self.filled.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The program run that owns `device` (the first in its queue), if any.
    pub fn device_owner(&self, device: &str) -> Option<String> {
        self.owners().get(device).and_then(|q| q.front().cloned())
    }

    /// Whether `program` owns every device of `devices`.
    pub fn owns_all(&self, program: &str, devices: &BTreeSet<String>) -> bool {
        let owners = self.owners();
        devices.iter().all(|d| {
            owners
                .get(d)
                .and_then(|q| q.front())
                .is_some_and(|o| o == program)
        })
    }

    /// Queues `program` for every device of `devices`, all at once, behind the programs that
    /// queued before it (a device goes to the programs that need it in the order they came, so
    /// a program waits only for earlier ones and two never wait on each other), then waits
    /// until it owns `first` (the devices of its first steps). `false` when `cancel` fired
    /// first (and nothing stays queued).
    pub async fn claim_devices(
        &self,
        program: &str,
        devices: &BTreeSet<String>,
        first: &BTreeSet<String>,
        cancel: &CancellationToken,
    ) -> bool {
        {
            let mut owners = self.owners();
            for d in devices {
                let q = owners.entry(d.clone()).or_default();
                if !q.iter().any(|o| o == program) {
                    q.push_back(program.to_owned());
                }
            }
        }
        if self.wait_owned(program, first, cancel).await {
            return true;
        }
        self.release_devices(program);
        false
    }

    /// Waits until `program` (queued by [`Self::claim_devices`]) owns every device of
    /// `devices`; `false` when `cancel` fired first.
    pub async fn wait_owned(
        &self,
        program: &str,
        devices: &BTreeSet<String>,
        cancel: &CancellationToken,
    ) -> bool {
        let mut logged = false;
        // registered so that the run giving the last of them back hands the turn over
        let _waiting = self.clock.current_actor().map(|actor| {
            let key = self
                .next_waiter
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.waiters()
                .insert(key, (program.to_owned(), devices.clone(), actor));
            Waiting { lab: self, key }
        });
        loop {
            let changed = self.owners_changed.notified();
            if self.owns_all(program, devices) {
                return true;
            }
            if !logged {
                let taken: Vec<(String, String)> = devices
                    .iter()
                    .filter_map(|d| self.device_owner(d).map(|o| (d.clone(), o)))
                    .filter(|(_, o)| o != program)
                    .collect();
                tracing::info!(
                    program,
                    ?taken,
                    "program waits for devices an earlier program owns"
                );
                logged = true;
            }
            tokio::select! {
                () = changed => {}
                () = cancel.cancelled() => return false,
            }
        }
    }

    /// Gives back one device `program` will not use again (the next program in its queue owns
    /// it now).
    pub fn release_device(&self, program: &str, device: &str) {
        if let Some(q) = self.owners().get_mut(device) {
            q.retain(|o| o != program);
        }
        self.hand_over();
        self.owners_changed.notify_waiters();
    }

    fn waiters(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Waiter>> {
        self.waiters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts busy every waiting program that owns all it waits for now (before the caller,
    /// busy, can go idle): on the event clock the turn passes without a gap.
    fn hand_over(&self) {
        let ready: Vec<ActorHandle> = self
            .waiters()
            .values()
            .filter(|(program, devices, _)| self.owns_all(program, devices))
            .map(|(_, _, actor)| actor.clone())
            .collect();
        for actor in &ready {
            self.clock.hand_over(actor);
        }
    }

    /// Gives back every device `program` owns or waits for.
    pub fn release_devices(&self, program: &str) {
        let mut owners = self.owners();
        for q in owners.values_mut() {
            q.retain(|o| o != program);
        }
        owners.retain(|_, q| !q.is_empty());
        drop(owners);
        self.hand_over();
        self.owners_changed.notify_waiters();
    }

    /// A manual call (an instruction from the cloud, telemetry, the CLI): refused while a
    /// program owns the device, so a person's command never interleaves with a program's steps —
    /// except the methods that only read (`status`, `read`) or only make safe (`stop`, `off`,
    /// `close`), which are always allowed.
    pub async fn call_manual(
        &self,
        method: &str,
        params: &BTreeMap<String, f64>,
    ) -> Result<CallOutput, DeviceError> {
        let (device, name) = method.split_once('.').unwrap_or((method, ""));
        let harmless = is_read(name) || matches!(name, "stop" | "off" | "close");
        if let Some(program) = self.device_owner(device).filter(|_| !harmless) {
            return Err(DeviceError::InUse {
                device: device.to_owned(),
                program,
            });
        }
        self.call(method, params).await
    }

    /// Ping every device: a harmless query each.
    pub async fn ping(&self) -> Vec<(String, Result<String, DeviceError>)> {
        let mut out = Vec::new();
        for (s, (_, d)) in &self.devices {
            let r = match d {
                Device::Pump(p) => p.version().await,
                Device::Heater(h) => h.read().await.map(|r| {
                    format!(
                        "PV {:?} °C, SP {:.1} °C, output {:.1} %",
                        r.pv_c, r.sp_c, r.output_pct
                    )
                }),
                Device::Uv(u) => Ok(format!("{} (virtual absorption spectrometer)", u.name())),
                Device::Cd(u) => Ok(format!("{} (virtual CD spectrometer)", u.name())),
                Device::Sampler(u) => Ok(format!("{} (virtual rotation sampler)", u.name())),
                Device::Arm(u) => Ok(format!("{} (virtual robot arm)", u.name())),
                Device::Laser(u) => Ok(format!("{} (virtual laser)", u.name())),
                Device::Shutter(u) => Ok(format!(
                    "{} (virtual beam shutter, {})",
                    u.name(),
                    if u.is_open() { "open" } else { "closed" }
                )),
                Device::External(x) => Ok(format!(
                    "{} (external driver: {}, started {} time(s))",
                    x.name(),
                    x.description().model,
                    x.starts()
                )),
            };
            out.push((s.clone(), r));
        }
        out
    }

    /// Safe state and stop the kernel (call before dropping on shutdown).
    pub async fn shutdown(&mut self) -> SafeStateReport {
        let r = self.kernel.safe_state().await;
        self.external_safe_state().await;
        self.kernel.shutdown();
        if let Some(t) = self.kernel_task.take() {
            t.abort();
        }
        r
    }

    /// The capability descriptor this lab reports (limits from the configuration).
    pub fn descriptor(&self) -> LabDescriptor {
        let p = |name: &str,
                 unit: &str,
                 min: f64,
                 max: f64,
                 res: Option<f64>,
                 required: bool,
                 default: Option<f64>| ParamDescriptor {
            name: name.into(),
            unit: unit.into(),
            min,
            max,
            resolution: res,
            required,
            default,
        };
        let m = |name: &str,
                 desc: &str,
                 duration_ms: u64,
                 params: Vec<ParamDescriptor>,
                 yields: &[&str]| MethodDescriptor {
            name: name.into(),
            description: desc.into(),
            params,
            duration_ms,
            duration_param: None,
            setpoint: false,
            yields: yields.iter().map(|s| s.to_string()).collect(),
        };
        let mut devices = Vec::new();
        for (sym, (c, d)) in &self.devices {
            let (kind, stream, flow, methods) = match d {
                Device::Pump(pump) => {
                    let l = pump.limits();
                    (
                        SchemaKind::Pump,
                        true,
                        false,
                        vec![
                            m(
                                "set_rate",
                                "Start infusing at a constant rate (refills the syringe first when low)",
                                1000,
                                vec![
                                    p("rate", "uL/min", 0.0, l.max_rate_ul_min, Some(0.1), true, None),
                                    p("volume", "uL", 1.0, l.syringe_volume_ul, Some(0.1), false, Some(l.syringe_volume_ul)),
                                ],
                                &[],
                            ),
                            m("stop", "Stop infusing", 200, vec![], &[]),
                            m("refill", "Stop infusing and refill the syringe from the reservoir", 30000, vec![], &[]),
                            m("status", "Read the pump: state, programmed rate, flow now and dispensed volumes", 200, vec![], &[]),
                        ],
                    )
                }
                Device::Heater(h) => {
                    let l = h.limits();
                    let mut set = m(
                        "set_temperature",
                        "Set the reaction temperature and wait until it is stable (±1 °C)",
                        120_000,
                        vec![p(
                            "T",
                            "°C",
                            l.min_temperature_c,
                            l.max_temperature_c,
                            Some(0.1),
                            true,
                            None,
                        )],
                        &["temperature"],
                    );
                    set.setpoint = true;
                    let mut hold = m(
                        "hold",
                        "Let the stream flow through the reactor at the set temperature for a time (residence time, steady state)",
                        0,
                        vec![p("time", "s", 0.0, HOLD_MAX_S, None, true, None)],
                        &[],
                    );
                    hold.duration_param = Some("time".into());
                    (
                        SchemaKind::Heater,
                        false,
                        true,
                        vec![
                            set,
                            hold,
                            m("off", "Heater off", 200, vec![], &[]),
                            m("read", "Read the controller", 200, vec![], &["temperature"]),
                        ],
                    )
                }
                Device::Uv(_) => {
                    (
                        SchemaKind::Spectrometer,
                        false,
                        true,
                        vec![m(
                        "acquire",
                        "Record an absorption spectrum of the stream (2,048 pixels, 200-1100 nm)",
                        5000,
                        vec![
                            p("from", "nm", 200.0, 1000.0, Some(1.0), false, Some(350.0)),
                            p("to", "nm", 200.0, 1000.0, Some(1.0), false, Some(600.0)),
                            p("integration", "ms", 1.0, 10000.0, Some(1.0), false, Some(100.0)),
                            p("averages", "", 1.0, 100.0, Some(1.0), false, Some(10.0)),
                        ],
                        &["absorption_spectrum"],
                    )],
                    )
                }
                Device::Sampler(_) => (
                    SchemaKind::Sampler,
                    false,
                    true,
                    vec![m(
                        "collect",
                        "Collect a volume of the stream into the cuvette in a slot",
                        60000,
                        vec![
                            p("volume", "uL", 10.0, 3000.0, Some(10.0), false, Some(400.0)),
                            p(
                                "slot",
                                "",
                                1.0,
                                f64::from(self.config.twin.sampler_slots.max(1)),
                                Some(1.0),
                                false,
                                Some(1.0),
                            ),
                        ],
                        &[],
                    )],
                ),
                Device::Arm(_) => (
                    SchemaKind::Arm,
                    false,
                    false,
                    vec![
                        m(
                            "to_cd",
                            "Move the cuvette from a sampler slot (default: the one filled longest ago) into the CD spectrometer",
                            30000,
                            vec![p(
                                "slot",
                                "",
                                1.0,
                                f64::from(self.config.twin.sampler_slots.max(1)),
                                Some(1.0),
                                false,
                                None,
                            )],
                            &[],
                        ),
                        m(
                            "to_laser",
                            "Move the cuvette from the CD spectrometer to the laser stage",
                            20000,
                            vec![],
                            &[],
                        ),
                        m(
                            "from_laser",
                            "Move the cuvette from the laser stage back into the CD spectrometer",
                            20000,
                            vec![],
                            &[],
                        ),
                        m(
                            "discard",
                            "Put the cuvette from the CD spectrometer into the waste rack (nothing to do when empty)",
                            15000,
                            vec![],
                            &[],
                        ),
                    ],
                ),
                Device::Cd(_) => (
                    SchemaKind::Cd,
                    false,
                    false,
                    vec![m(
                        "scan",
                        "Record a CD spectrum of the cuvette",
                        180000,
                        vec![
                            p("from", "nm", 190.0, 900.0, Some(1.0), false, Some(350.0)),
                            p("to", "nm", 190.0, 900.0, Some(1.0), false, Some(600.0)),
                            p("step", "nm", 0.1, 5.0, Some(0.1), false, Some(1.0)),
                            p("averages", "", 1.0, 20.0, Some(1.0), false, Some(1.0)),
                        ],
                        &["cd_spectrum"],
                    )],
                ),
                Device::Laser(_) => {
                    let mut irr = m(
                        "irradiate",
                        "Irradiate the cuvette on the laser stage",
                        2000,
                        vec![
                            p("wavelength", "nm", 300.0, 1000.0, Some(1.0), true, None),
                            p("duration", "s", 1.0, 3600.0, Some(1.0), true, None),
                            p("power", "mW", 1.0, 2000.0, Some(1.0), false, Some(500.0)),
                            p("rep_rate", "Hz", 1000.0, 1000.0, None, false, Some(1000.0)),
                        ],
                        &[],
                    );
                    irr.duration_param = Some("duration".into());
                    (SchemaKind::Laser, false, false, vec![irr])
                }
                Device::External(x) => {
                    let kind = x.kind();
                    (
                        kind,
                        false,
                        kind == SchemaKind::Spectrometer,
                        x.description().methods.clone(),
                    )
                }
                Device::Shutter(_) => (
                    SchemaKind::Other,
                    false,
                    false,
                    vec![
                        m("close", "Close the laser's beam shutter", 200, vec![], &[]),
                        m(
                            "open",
                            "Open the laser's beam shutter (refused while the cloud link is lost)",
                            200,
                            vec![],
                            &[],
                        ),
                    ],
                ),
            };
            let default_method = methods.first().map(|x| x.name.clone());
            let description = match d {
                Device::External(x) if c.description.is_empty() => x.description().model.clone(),
                _ => c.description.clone(),
            };
            devices.push(DeviceDescriptor {
                symbol: sym.clone(),
                kind,
                description,
                stream,
                flow,
                default_method,
                methods,
            });
        }
        LabDescriptor {
            name: self.config.lab.name.clone(),
            description: self.config.lab.description.clone(),
            devices,
        }
    }

    /// Check a call against the lab's declared methods and ranges (the program pre-check).
    pub fn check_params(
        &self,
        desc: &LabDescriptor,
        method: &str,
        params: &BTreeMap<String, f64>,
    ) -> Result<(), DeviceError> {
        let (_, md) = desc
            .method(method)
            .ok_or_else(|| DeviceError::UnknownMethod(method.to_string()))?;
        check_method_params(method, md, params)
    }

    /// Call `"<SYMBOL>.<method>"` with named numeric parameters (manual control and the executor).
    /// On the event clock a call that changes something counts its serial exchange as the
    /// twin's fixed `call_lab_ms` of lab time (reads count none: a read's time is the caller's).
    pub async fn call(
        &self,
        method: &str,
        params: &BTreeMap<String, f64>,
    ) -> Result<CallOutput, DeviceError> {
        // outside a program (a manual call, telemetry, a test) the call is an actor of its own
        self.clock
            .as_actor(async {
                let out = self.call_device(method, params).await?;
                let reads = method.split_once('.').is_some_and(|(_, m)| is_read(m));
                if self.clock.is_event() && !reads && self.config.twin.call_lab_ms > 0 {
                    self.clock
                        .sleep(Duration::from_millis(self.config.twin.call_lab_ms))
                        .await;
                }
                Ok(out)
            })
            .await
    }

    async fn call_device(
        &self,
        method: &str,
        params: &BTreeMap<String, f64>,
    ) -> Result<CallOutput, DeviceError> {
        self.kernel.check_call(method)?;
        let (sym, name) = method
            .split_once('.')
            .ok_or_else(|| DeviceError::UnknownMethod(method.to_string()))?;
        let (_, dev) = self
            .devices
            .get(sym)
            .ok_or_else(|| DeviceError::UnknownMethod(method.to_string()))?;
        let get = |k: &str, d: f64| params.get(k).copied().unwrap_or(d);
        let need = |k: &str| {
            params
                .get(k)
                .copied()
                .ok_or_else(|| DeviceError::BadParameter {
                    device: sym.to_string(),
                    message: format!("{method} needs parameter {k}"),
                })
        };
        let unknown = || DeviceError::UnknownMethod(method.to_string());
        let out = match (dev, name) {
            (Device::Pump(p), "set_rate") => {
                let rate = need("rate")?;
                let volume = get("volume", p.limits().syringe_volume_ul);
                crate::error::check_range(
                    sym,
                    "rate_ul_min",
                    rate,
                    0.0,
                    p.limits().max_rate_ul_min,
                )?;
                crate::error::check_range(
                    sym,
                    "volume_ul",
                    volume,
                    0.0,
                    p.limits().syringe_volume_ul,
                )?;
                self.pump_set_rate(sym, p.as_ref(), rate, volume).await?
            }
            (Device::Pump(p), "stop") => {
                p.stop().await?;
                CallOutput {
                    result: json!({"stopped": true}),
                    ..Default::default()
                }
            }
            (Device::Pump(p), "refill") => {
                let v = self.pump_refill(sym, p.as_ref()).await?;
                CallOutput {
                    result: json!({"content_ul": v}),
                    ..Default::default()
                }
            }
            (Device::Pump(p), "status") => CallOutput {
                result: Self::pump_status(p.as_ref()).await?,
                ..Default::default()
            },
            (Device::Heater(h), "set_temperature") => {
                self.set_temperature(h.as_ref(), need("T")?).await?
            }
            (Device::Heater(_), "hold") => self.hold(need("time")?).await?,
            (Device::Heater(h), "off") => {
                h.set_enabled(false).await?;
                self.kernel.heater_target(None);
                CallOutput {
                    result: json!({"enabled": false}),
                    ..Default::default()
                }
            }
            (Device::Heater(h), "read") => {
                let r = h.read().await?;
                CallOutput {
                    result: serde_json::to_value(&r).unwrap_or_default(),
                    measurements: vec![(
                        "temperature".into(),
                        Measurement::Temperature {
                            setpoint_c: r.sp_c,
                            pv_c: r.pv_c,
                            output_pct: r.output_pct,
                            settle_s: 0.0,
                        },
                    )],
                }
            }
            (Device::Uv(u), "acquire") => {
                let integration = get("integration", 100.0);
                let averages = get("averages", 10.0);
                crate::error::check_range(sym, "averages", averages, 1.0, 100.0)?;
                let s = u.acquire(integration, averages.round() as u32).await?;
                let peak = s.values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                CallOutput {
                    result: json!({"pixels": s.values.len(), "max_absorbance": peak}),
                    measurements: vec![(
                        "absorption_spectrum".into(),
                        Measurement::AbsorptionSpectrum {
                            wavelength_nm: s.wavelength_nm,
                            absorbance: s.values,
                            integration_ms: integration,
                            averages: averages.round() as u32,
                            window_nm: [get("from", 350.0), get("to", 600.0)],
                        },
                    )],
                }
            }
            (Device::Cd(c), "scan") => {
                let step = get("step", 1.0);
                let scan = CdScan {
                    start_nm: get("from", 350.0),
                    end_nm: get("to", 600.0),
                    step_nm: step,
                    rate_nm_per_min: self.config.twin.cd_scan_rate_nm_per_min,
                };
                let s = c.scan(scan).await?;
                CallOutput {
                    result: json!({"points": s.values.len()}),
                    measurements: vec![(
                        "cd_spectrum".into(),
                        Measurement::CdSpectrum {
                            wavelength_nm: s.wavelength_nm,
                            cd_mdeg: s.values,
                            step_nm: step,
                            absorbance: s.absorbance.unwrap_or_default(),
                        },
                    )],
                }
            }
            (Device::Sampler(s), "collect") => {
                let volume = get("volume", 400.0);
                let slot = s.collect(volume).await?;
                self.filled().push_back(slot);
                CallOutput {
                    result: json!({"slot": slot, "volume_ul": volume}),
                    ..Default::default()
                }
            }
            (Device::Sampler(s), "rotate") => {
                s.rotate(need("slot")?.round() as u32).await?;
                CallOutput {
                    result: json!({}),
                    ..Default::default()
                }
            }
            (Device::Arm(a), "to_cd") => {
                // the slot named, or the one filled longest ago (the next in the carousel: with
                // several loops in flight each measures its own sample)
                let slot = match params.get("slot") {
                    Some(s) => s.round() as u32,
                    None => self.filled().front().copied().unwrap_or(1),
                };
                self.filled().retain(|s| *s != slot);
                // a cuvette left in the CD holder goes to waste first
                let _ = a.transfer("cd", "waste").await;
                a.transfer(&format!("slot{slot}"), "cd").await?;
                CallOutput {
                    result: json!({"moved": format!("slot{slot} -> cd")}),
                    ..Default::default()
                }
            }
            (Device::Arm(a), "to_laser") => {
                a.transfer("cd", "laser").await?;
                CallOutput {
                    result: json!({"moved": "cd -> laser"}),
                    ..Default::default()
                }
            }
            (Device::Arm(a), "from_laser") => {
                a.transfer("laser", "cd").await?;
                CallOutput {
                    result: json!({"moved": "laser -> cd"}),
                    ..Default::default()
                }
            }
            (Device::Arm(a), "discard") => {
                // an empty holder is already clear: nothing to move (lets a recipe clear the
                // previous loop's cuvette in parallel with the synthesis, first loop included)
                if a.occupied("cd") == Some(false) {
                    CallOutput {
                        result: json!({"moved": null}),
                        ..Default::default()
                    }
                } else {
                    a.transfer("cd", "waste").await?;
                    CallOutput {
                        result: json!({"moved": "cd -> waste"}),
                        ..Default::default()
                    }
                }
            }
            (Device::Shutter(s), "close") => {
                s.close().await?;
                CallOutput {
                    result: json!({"open": false}),
                    ..Default::default()
                }
            }
            (Device::Shutter(s), "open") => {
                self.shutter_permitted(method)?;
                s.open().await?;
                CallOutput {
                    result: json!({"open": true}),
                    ..Default::default()
                }
            }
            (Device::Laser(l), "irradiate") => {
                self.shutter_permitted(method)?;
                let wl = need("wavelength")?;
                let d = need("duration")?;
                l.irradiate(wl, d).await?;
                CallOutput {
                    result: json!({"wavelength_nm": wl, "duration_s": d}),
                    ..Default::default()
                }
            }
            (Device::External(x), name) => {
                let o = x.call(name, params).await?;
                if let Some(s) = o.lab_duration_s.filter(|_| self.clock.is_event()) {
                    self.clock.sleep(Duration::from_secs_f64(s)).await;
                }
                CallOutput {
                    result: o.result,
                    measurements: o.measurements,
                }
            }
            _ => return Err(unknown()),
        };
        Ok(out)
    }

    /// The shutters stay closed while the cloud link is lost.
    fn shutter_permitted(&self, method: &str) -> Result<(), DeviceError> {
        if self.kernel.shutters_inhibited() {
            return Err(DeviceError::Interlock(format!(
                "{method} refused: the beam shutter stays closed while the cloud link is lost"
            )));
        }
        Ok(())
    }

    /// `H.hold(time)`: the stream keeps flowing through the coil at the set temperature (the
    /// kernel keeps watching the heater) while `time` seconds of lab time pass; cancelled with
    /// the program.
    async fn hold(&self, time_s: f64) -> Result<CallOutput, DeviceError> {
        crate::error::check_range("H", "time_s", time_s, 0.0, HOLD_MAX_S)?;
        self.clock.sleep(Duration::from_secs_f64(time_s)).await;
        Ok(CallOutput {
            result: json!({"held_s": time_s}),
            ..Default::default()
        })
    }

    /// Bring the agent's syringe book up to date from the pump's dispensed counters, then clear them.
    async fn sync_book(p: &dyn SyringePump, b: &mut PumpBook) -> Result<(), DeviceError> {
        if !b.initialised {
            p.stop().await?;
            p.set_diameter(b.diameter_mm).await?;
            p.clear_dispensed().await?;
            b.initialised = true;
            return Ok(());
        }
        let mut st = p.status().await?;
        if st.alarm.is_some() {
            // the alarm was reported once; read the counters again
            st = p.status().await?;
        }
        b.content_ul = (b.content_ul - st.infused_ul + st.withdrawn_ul)
            .clamp(0.0, p.limits().syringe_volume_ul);
        p.clear_dispensed().await
    }

    async fn pump_refill(&self, sym: &str, p: &dyn SyringePump) -> Result<f64, DeviceError> {
        let cap = p.limits().syringe_volume_ul;
        let rate = p.limits().max_rate_ul_min;
        let Some(book) = self.books.get(sym) else {
            return Ok(cap);
        };
        let mut b = self.clock.idle(book.lock()).await;
        let b = &mut *b;
        p.stop().await?;
        Self::sync_book(p, b).await?;
        // A link-loss hold stops the withdrawal part-way; the next round tops the syringe up.
        for _round in 0..REFILL_ROUNDS {
            let need = cap - b.content_ul;
            if need <= 0.5 {
                break;
            }
            p.set_direction(Direction::Withdraw).await?;
            p.set_rate(rate).await?;
            p.set_volume(need.min(cap)).await?;
            self.start_pump(sym, p).await?;
            self.clock
                .sleep(Duration::from_secs_f64(need / rate * 60.0))
                .await;
            for _ in 0..50 {
                let st = p.status().await?;
                if st.state != PumpState::Withdrawing {
                    break;
                }
                self.clock.sleep(Duration::from_secs(1)).await;
            }
            p.stop().await?;
            Self::sync_book(p, b).await?;
        }
        p.set_direction(Direction::Infuse).await?;
        Ok(b.content_ul)
    }

    /// Start pump `p` (`RUN`) once the safety kernel allows motion: a latched fault refuses, a
    /// link-loss hold waits until the link is back. The kernel is asked again after the start,
    /// so a hold or a trip that lands while the command is on the wire ends with the pump
    /// stopped (by the kernel or here), never with a step restarting what the kernel stopped.
    async fn start_pump(&self, sym: &str, p: &dyn SyringePump) -> Result<(), DeviceError> {
        loop {
            self.clock.idle(self.kernel.wait_device_not_held(sym)).await;
            if !self.kernel.motion_allowed(sym)? {
                continue;
            }
            p.run().await?;
            match self.kernel.motion_allowed(sym) {
                Ok(true) => return Ok(()),
                Ok(false) => {
                    // held meanwhile: stop again, then start once the link is back
                    p.stop().await?;
                }
                Err(e) => {
                    if let Err(stop) = p.stop().await {
                        tracing::warn!(pump = sym, error = %stop, "stopping a pump after a trip failed");
                    }
                    return Err(e);
                }
            }
        }
    }

    /// What a pump reports for `status`: its state, the programmed rate, the flow now (the
    /// rate while it infuses or withdraws, else 0) and the dispensed volumes.
    async fn pump_status(p: &dyn SyringePump) -> Result<serde_json::Value, DeviceError> {
        let st = p.status().await?;
        let rate = if st.alarm.is_some() {
            0.0
        } else {
            p.rate().await?
        };
        let moving = matches!(st.state, PumpState::Infusing | PumpState::Withdrawing);
        Ok(json!({
            "state": st.state,
            "alarm": st.alarm,
            "rate_ul_min": rate,
            "flow_ul_min": if moving { rate } else { 0.0 },
            "infused_ul": st.infused_ul,
            "withdrawn_ul": st.withdrawn_ul,
        }))
    }

    async fn pump_set_rate(
        &self,
        sym: &str,
        p: &dyn SyringePump,
        rate: f64,
        volume: f64,
    ) -> Result<CallOutput, DeviceError> {
        p.stop().await?;
        if let Some(book) = self.books.get(sym) {
            let mut b = self.clock.idle(book.lock()).await;
            Self::sync_book(p, &mut b).await?;
        }
        if rate <= 0.0 {
            return Ok(CallOutput {
                result: json!({"rate_ul_min": 0.0, "running": false}),
                ..Default::default()
            });
        }
        let low = match self.books.get(sym) {
            Some(book) => {
                let b = self.clock.idle(book.lock()).await;
                b.content_ul < b.refill_below_ul.min(volume)
            }
            None => false,
        };
        let mut refilled = false;
        if low {
            self.pump_refill(sym, p).await?;
            refilled = true;
        }
        let content = match self.books.get(sym) {
            Some(book) => self.clock.idle(book.lock()).await.content_ul,
            None => volume,
        };
        let vol = volume.min(content).max(0.0);
        p.set_direction(Direction::Infuse).await?;
        p.set_rate(rate).await?;
        p.set_volume(vol).await?;
        self.start_pump(sym, p).await?;
        Ok(CallOutput {
            result: json!({"rate_ul_min": rate, "volume_ul": vol, "refilled": refilled, "running": true}),
            ..Default::default()
        })
    }

    async fn set_temperature(
        &self,
        h: &dyn TemperatureController,
        t: f64,
    ) -> Result<CallOutput, DeviceError> {
        let l = h.limits();
        crate::error::check_range(h.name(), "T", t, l.min_temperature_c, l.max_temperature_c)?;
        let cfg = self.kernel.config().clone();
        h.set_setpoint(t).await?;
        self.kernel.heater_target(Some(t));
        h.refresh_lease().await?;
        h.set_enabled(true).await?;
        let t0 = self.clock.now_s();
        let mut stable_since: Option<f64> = None;
        let trip = self.kernel.trip_token();
        loop {
            if trip.is_cancelled() {
                return Err(DeviceError::Interlock(
                    "safety kernel tripped while settling".into(),
                ));
            }
            let r = h.read().await?;
            let now = self.clock.now_s();
            match r.pv_c {
                Some(pv) if (pv - t).abs() <= cfg.settle_band_c => {
                    let since = *stable_since.get_or_insert(now);
                    if now - since >= cfg.settle_hold_s {
                        return Ok(CallOutput {
                            result: json!({"T_set": t, "T_pv": pv, "settle_s": now - t0}),
                            measurements: vec![(
                                "temperature".into(),
                                Measurement::Temperature {
                                    setpoint_c: t,
                                    pv_c: Some(pv),
                                    output_pct: r.output_pct,
                                    settle_s: now - t0,
                                },
                            )],
                        });
                    }
                }
                _ => stable_since = None,
            }
            if now - t0 > cfg.settle_timeout_s {
                return Err(DeviceError::Fault {
                    device: h.name().to_string(),
                    detail: format!(
                        "temperature not stable at {t:.1} °C within {:.0} s (PV {:?})",
                        cfg.settle_timeout_s, r.pv_c
                    ),
                });
            }
            self.clock.sleep(Duration::from_secs(1)).await;
        }
    }
}

/// Methods that only read a device (`status`, `read`): no lab time, never refused.
fn is_read(method: &str) -> bool {
    matches!(method, "status" | "read")
}

/// Check named parameters against one declared method: every parameter known and in range, every
/// required one without a default present. `method` names the call in errors.
pub fn check_method_params(
    method: &str,
    md: &MethodDescriptor,
    params: &BTreeMap<String, f64>,
) -> Result<(), DeviceError> {
    for (k, v) in params {
        let pd = md.param(k).ok_or_else(|| DeviceError::BadParameter {
            device: method.to_string(),
            message: format!("unknown parameter {k}"),
        })?;
        crate::error::check_range(method, k, *v, pd.min, pd.max)?;
    }
    for pd in &md.params {
        if pd.required && pd.default.is_none() && !params.contains_key(&pd.name) {
            return Err(DeviceError::BadParameter {
                device: method.to_string(),
                message: format!("missing required parameter {}", pd.name),
            });
        }
    }
    Ok(())
}

/// The capability-descriptor kind of a configured device kind.
fn schema_kind(k: DeviceKind) -> SchemaKind {
    match k {
        DeviceKind::SyringePump => SchemaKind::Pump,
        DeviceKind::TemperatureController => SchemaKind::Heater,
        DeviceKind::AbsorptionSpectrometer => SchemaKind::Spectrometer,
        DeviceKind::CdSpectrometer => SchemaKind::Cd,
        DeviceKind::RotationSampler => SchemaKind::Sampler,
        DeviceKind::RobotArm => SchemaKind::Arm,
        DeviceKind::Laser => SchemaKind::Laser,
        DeviceKind::Shutter => SchemaKind::Other,
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.kernel.shutdown();
        if let Some(t) = self.kernel_task.take() {
            t.abort();
        }
        // Safe state without a runtime (shutdown or unwinding panic): raw frames to the ports.
        self.kernel.emergency_all();
    }
}
