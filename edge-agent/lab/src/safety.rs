//! Safety kernel, independent of the cloud link: a periodic loop that reads the heater, detects
//! over-temperature, sensor break and thermal runaway, refreshes the heater output lease, latches
//! faults (a reset clears the latch but restarts nothing), puts the lab in its safe state (pumps
//! stopped, heater off, laser off, beam shutters closed) on a fault, an e-stop or shutdown, closes
//! the shutters when the cloud link is lost (and keeps them closed until it is back), and a
//! wall-clock watchdog thread that writes the safe-state frames straight to the serial ports if
//! the runtime stalls.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::{LinkLossPolicy, SafetyConfig};
use crate::devices::{Laser, Shutter, SyringePump, TemperatureController};
use crate::error::DeviceError;

/// Kinds of latched faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    OverTemperature,
    SensorBreak,
    Runaway,
    DeviceLost,
    Watchdog,
    EStop,
}

/// A latched fault.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fault {
    pub kind: FaultKind,
    pub detail: String,
    pub lab_time_s: f64,
}

/// A safety event for the record stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SafetyEvent {
    pub event: String,
    pub detail: String,
    pub lab_time_s: f64,
}

/// What an operator fault reset did ([`crate::lab::Lab::reset_faults`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultReset {
    /// The faults that were latched and were cleared.
    pub cleared: Vec<Fault>,
    /// The faults latched again right after (their condition persists), or since.
    pub latched: Vec<Fault>,
}

/// Raw bytes the watchdog writes to a serial port to make a device safe.
#[derive(Debug, Clone)]
pub struct EmergencyWrite {
    pub path: String,
    pub baud: u32,
    pub bytes: Vec<u8>,
}

/// Report of reaching the safe state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SafeStateReport {
    /// Lab time taken, s.
    pub lab_s: f64,
    /// Wall time taken, ms.
    pub wall_ms: f64,
    /// Devices that did not acknowledge (their own lease/limits still protect them).
    pub failures: Vec<String>,
}

/// What the kernel knows of one running program.
#[derive(Debug)]
struct ProgramSafety {
    policy: LinkLossPolicy,
    cancel: CancellationToken,
    /// The devices it owns (symbols).
    devices: BTreeSet<String>,
    /// Held by a link loss under the "hold" policy: starts no step, moves none of its pumps.
    held: bool,
}

#[derive(Debug, Default)]
struct State {
    latched: Vec<Fault>,
    target_c: Option<f64>,
    /// (lab time, PV, output %) while a target is set.
    history: VecDeque<(f64, f64, f64)>,
    at_target: bool,
    below_since: Option<f64>,
    heater_errors: u32,
    /// The running programs, by id: each with its own link-loss policy and devices.
    programs: BTreeMap<String, ProgramSafety>,
    /// The cloud link is lost: shutters stay closed.
    link_down: bool,
    events: Vec<SafetyEvent>,
}

/// The kernel. Create with [`SafetyKernel::new`], then [`SafetyKernel::spawn`] its loop.
pub struct SafetyKernel {
    cfg: SafetyConfig,
    clock: Clock,
    heater: Option<Arc<dyn TemperatureController>>,
    pumps: Vec<Arc<dyn SyringePump>>,
    lasers: Vec<Arc<dyn Laser>>,
    shutters: Vec<Arc<dyn Shutter>>,
    state: Mutex<State>,
    trip: Mutex<CancellationToken>,
    heartbeat_ms: Arc<AtomicU64>,
    origin: Instant,
    watchdog_fired: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    emergency: Vec<EmergencyWrite>,
    hold_changed: tokio::sync::Notify,
    /// Kernel cycles run so far.
    cycles: AtomicU64,
}

impl std::fmt::Debug for SafetyKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetyKernel")
            .field("cfg", &self.cfg)
            .finish()
    }
}

fn lock_state(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl SafetyKernel {
    pub fn new(
        cfg: SafetyConfig,
        clock: Clock,
        heater: Option<Arc<dyn TemperatureController>>,
        pumps: Vec<Arc<dyn SyringePump>>,
        lasers: Vec<Arc<dyn Laser>>,
        shutters: Vec<Arc<dyn Shutter>>,
        emergency: Vec<EmergencyWrite>,
    ) -> Arc<Self> {
        Arc::new(Self {
            cfg,
            clock,
            heater,
            pumps,
            lasers,
            shutters,
            state: Mutex::new(State::default()),
            trip: Mutex::new(CancellationToken::new()),
            heartbeat_ms: Arc::new(AtomicU64::new(0)),
            origin: Instant::now(),
            watchdog_fired: Arc::new(AtomicBool::new(false)),
            stop: Arc::new(AtomicBool::new(false)),
            emergency,
            hold_changed: tokio::sync::Notify::new(),
            cycles: AtomicU64::new(0),
        })
    }

    pub fn config(&self) -> &SafetyConfig {
        &self.cfg
    }

    /// Real period of one kernel cycle.
    pub fn real_period(&self) -> Duration {
        self.clock
            .to_real(Duration::from_secs_f64(self.cfg.control_period_s))
            .max(Duration::from_millis(self.cfg.min_real_period_ms))
    }

    fn beat(&self) {
        self.heartbeat_ms
            .store(self.origin.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Start the kernel loop on the current runtime and the watchdog thread.
    ///
    /// On the virtual lab's event clock the loop is an actor of that clock: a cycle every
    /// `control_period_s` of lab time, in lockstep with everything else the lab does, and no
    /// wall-clock watchdog (a stalled runtime stalls lab time with it, so a stall cannot cut the
    /// heater's lease or let anything run away).
    pub fn spawn(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        self.beat();
        if self.clock.is_event() {
            let me = self.clone();
            let actor = self.clock.actor();
            let period = Duration::from_secs_f64(self.cfg.control_period_s);
            return tokio::spawn(async move {
                actor
                    .run(async {
                        loop {
                            if me.stop.load(Ordering::Relaxed) {
                                return;
                            }
                            me.beat();
                            me.cycle().await;
                            me.cycles.fetch_add(1, Ordering::Relaxed);
                            me.clock.sleep(period).await;
                        }
                    })
                    .await
            });
        }
        self.spawn_watchdog();
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(me.real_period());
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if me.stop.load(Ordering::Relaxed) {
                    return;
                }
                me.beat();
                if me.watchdog_fired.swap(false, Ordering::SeqCst) {
                    me.trip(
                        FaultKind::Watchdog,
                        "agent runtime stalled; watchdog forced the safe state",
                    )
                    .await;
                }
                me.cycle().await;
                me.cycles.fetch_add(1, Ordering::Relaxed);
            }
        })
    }

    /// Kernel cycles run so far.
    pub fn cycles(&self) -> u64 {
        self.cycles.load(Ordering::Relaxed)
    }

    fn spawn_watchdog(self: &Arc<Self>) {
        let hb = self.heartbeat_ms.clone();
        let fired = self.watchdog_fired.clone();
        let stop = self.stop.clone();
        let origin = self.origin;
        let limit = self.cfg.watchdog_ms;
        let writes = self.emergency.clone();
        let _ = std::thread::Builder::new()
            .name("safety-watchdog".into())
            .spawn(move || {
                let mut armed = true;
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis((limit / 10).max(1)));
                    let now = origin.elapsed().as_millis() as u64;
                    let last = hb.load(Ordering::Relaxed);
                    if now.saturating_sub(last) > limit {
                        if armed {
                            armed = false;
                            for w in &writes {
                                emergency_write(w);
                            }
                            fired.store(true, Ordering::SeqCst);
                        }
                    } else {
                        armed = true;
                    }
                }
            });
    }

    /// Write every device's safe-state frame with blocking I/O (no runtime needed).
    pub fn emergency_all(&self) -> usize {
        self.emergency.iter().filter(|w| emergency_write(w)).count()
    }

    /// The raw safe-state frames (for a panic hook or another process).
    pub fn emergency_writes(&self) -> Vec<EmergencyWrite> {
        self.emergency.clone()
    }

    /// Install a process-wide panic hook that writes the safe-state frames to every serial
    /// device before the previous hook runs. Call once at agent start.
    pub fn install_panic_hook(&self) {
        let writes = self.emergency.clone();
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            for w in &writes {
                emergency_write(w);
            }
            previous(info);
        }));
    }

    /// Stop the loop and the watchdog (does not touch devices; see [`Self::safe_state`]).
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// A token cancelled when a fault trips (replaced by a fresh one on reset).
    pub fn trip_token(&self) -> CancellationToken {
        match self.trip.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Latched faults.
    pub fn faults(&self) -> Vec<Fault> {
        lock_state(&self.state).latched.clone()
    }

    /// Safety events since the last call.
    pub fn drain_events(&self) -> Vec<SafetyEvent> {
        std::mem::take(&mut lock_state(&self.state).events)
    }

    fn event(&self, event: &str, detail: String) {
        lock_state(&self.state).events.push(SafetyEvent {
            event: event.into(),
            detail,
            lab_time_s: self.clock.now_s(),
        });
    }

    /// Refuse device calls while a fault is latched.
    pub fn check_call(&self, method: &str) -> Result<(), DeviceError> {
        let st = lock_state(&self.state);
        if let Some(f) = st.latched.first() {
            return Err(DeviceError::Interlock(format!(
                "{method} refused: fault {:?} latched ({}); an operator must reset",
                f.kind, f.detail
            )));
        }
        Ok(())
    }

    /// Whether pumps may start moving now: a latched fault refuses (as [`Self::check_call`]),
    /// a link-loss hold answers `Ok(false)`. A caller that starts a pump checks this before and
    /// again after the start (see `Lab::start_pump`): the kernel records a hold or a fault
    /// before it stops the pumps, so whichever order the two land in, the pump ends stopped.
    pub fn motion_allowed(&self, pump: &str) -> Result<bool, DeviceError> {
        self.check_call(&format!("{pump}.run"))?;
        Ok(!lock_state(&self.state)
            .programs
            .values()
            .any(|p| p.held && p.devices.contains(pump)))
    }

    /// Tell the kernel the heater target changed (runaway detection restarts).
    pub fn heater_target(&self, target: Option<f64>) {
        let mut st = lock_state(&self.state);
        st.target_c = target;
        st.history.clear();
        st.at_target = false;
        st.below_since = None;
    }

    /// Operator reset: clears latched faults (and the heater's own alarms), and returns the
    /// faults it cleared. Restarts nothing: outputs stay in their safe state until a program or
    /// a call sets them again. A condition that persists (an over-temperature, a broken sensor)
    /// latches again on the kernel's next cycle. `by` names who reset, for the safety event.
    pub async fn reset(&self, by: &str) -> Result<Vec<Fault>, DeviceError> {
        if let Some(h) = &self.heater {
            h.reset_alarms().await?;
        }
        let mut st = lock_state(&self.state);
        let cleared = std::mem::take(&mut st.latched);
        st.heater_errors = 0;
        drop(st);
        match self.trip.lock() {
            Ok(mut g) => *g = CancellationToken::new(),
            Err(p) => *p.into_inner() = CancellationToken::new(),
        }
        let kinds: Vec<String> = cleared.iter().map(|f| format!("{:?}", f.kind)).collect();
        self.event(
            "reset",
            format!("faults cleared by {by}: [{}]", kinds.join(", ")),
        );
        Ok(cleared)
    }

    /// One kernel cycle: read, check, protect, refresh the lease.
    pub async fn cycle(&self) {
        let Some(h) = &self.heater else { return };
        let r = match h.read().await {
            Ok(r) => {
                lock_state(&self.state).heater_errors = 0;
                r
            }
            Err(e) => {
                let n = {
                    let mut st = lock_state(&self.state);
                    st.heater_errors += 1;
                    st.heater_errors
                };
                if n >= 3 {
                    self.trip(
                        FaultKind::DeviceLost,
                        format!("heater controller not answering: {e}"),
                    )
                    .await;
                }
                return;
            }
        };
        let now = self.clock.now_s();
        let max = h.limits().max_temperature_c;
        let Some(pv) = r.pv_c else {
            self.trip(FaultKind::SensorBreak, "thermocouple open").await;
            return;
        };
        if r.alarms.sensor_break {
            self.trip(FaultKind::SensorBreak, "controller reports sensor break")
                .await;
            return;
        }
        if pv > max || r.alarms.high_temperature {
            self.trip(
                FaultKind::OverTemperature,
                format!("process value {pv:.1} °C above the limit {max:.1} °C"),
            )
            .await;
            return;
        }
        let verdict = {
            let mut st = lock_state(&self.state);
            let mut verdict = None;
            if let (Some(target), true) = (st.target_c, r.enabled) {
                st.history.push_back((now, pv, r.output_pct));
                let horizon = self.cfg.runaway_window_s.max(self.cfg.below_target_s) + 5.0;
                while st
                    .history
                    .front()
                    .is_some_and(|(t, _, _)| now - t > horizon)
                {
                    st.history.pop_front();
                }
                // heating hard (far below target, output high) for the whole window, too little rise
                let window = self.cfg.runaway_window_s;
                if let Some(&(t0, pv0, _)) = st.history.iter().find(|(t, _, _)| now - t <= window) {
                    let covered = now - t0 >= window - self.cfg.control_period_s;
                    let all_far = st
                        .history
                        .iter()
                        .filter(|(t, _, _)| now - t <= window)
                        .all(|(_, p, out)| target - p > 10.0 && *out >= 50.0);
                    if covered && all_far && pv - pv0 < self.cfg.runaway_min_rise_c {
                        verdict = Some(format!(
                            "only {:.1} °C rise in {window:.0} s while heating towards {target:.1} °C",
                            pv - pv0
                        ));
                    }
                }
                if (pv - target).abs() <= self.cfg.settle_band_c {
                    st.at_target = true;
                }
                if st.at_target && target - pv > self.cfg.below_target_c {
                    let since = *st.below_since.get_or_insert(now);
                    if now - since >= self.cfg.below_target_s {
                        verdict = Some(format!(
                            "{:.1} °C below target for {:.0} s after reaching it",
                            target - pv,
                            now - since
                        ));
                    }
                } else {
                    st.below_since = None;
                }
            }
            verdict
        };
        if let Some(v) = verdict {
            self.trip(FaultKind::Runaway, v).await;
            return;
        }
        if r.enabled {
            let _ = h.refresh_lease().await;
        }
    }

    /// Latch a fault and go to the safe state.
    pub async fn trip(&self, kind: FaultKind, detail: impl Into<String>) -> SafeStateReport {
        let detail = detail.into();
        {
            let mut st = lock_state(&self.state);
            st.latched.push(Fault {
                kind,
                detail: detail.clone(),
                lab_time_s: self.clock.now_s(),
            });
        }
        self.event("fault", format!("{kind:?}: {detail}"));
        self.trip_token().cancel();
        self.safe_state().await
    }

    /// Heater off, pumps stopped, shutters closed, laser off. Each device is tried even if another
    /// fails; the shutters go first (closing one is immediate).
    pub async fn safe_state(&self) -> SafeStateReport {
        self.safe_state_of(None).await
    }

    /// The safe state of `only` these devices (one program's), or of all: shutters close in
    /// either case.
    pub async fn safe_state_of(&self, only: Option<&BTreeSet<String>>) -> SafeStateReport {
        let t0 = self.clock.now_s();
        let w0 = Instant::now();
        let mine = |name: &str| only.is_none_or(|d| d.contains(name));
        let mut failures = self.close_shutters().await;
        let heater_off = self.heater.as_ref().is_some_and(|h| mine(h.name()));
        let heater = async {
            if let Some(h) = self.heater.as_ref().filter(|_| heater_off) {
                if let Err(e) = h.set_enabled(false).await {
                    return Some(format!("{}: {e}", h.name()));
                }
            }
            None
        };
        let pumps =
            futures_util::future::join_all(self.pumps.iter().filter(|p| mine(p.name())).map(
                |p| async move { p.stop().await.err().map(|e| format!("{}: {e}", p.name())) },
            ));
        let lasers = futures_util::future::join_all(
            self.lasers
                .iter()
                .filter(|l| mine(l.name()))
                .map(|l| async move { l.off().await.err().map(|e| format!("{}: {e}", l.name())) }),
        );
        let (h, p, l) = tokio::join!(heater, pumps, lasers);
        failures.extend(h);
        failures.extend(p.into_iter().flatten());
        failures.extend(l.into_iter().flatten());
        if heater_off {
            self.heater_target(None);
        }
        SafeStateReport {
            lab_s: self.clock.now_s() - t0,
            wall_ms: w0.elapsed().as_secs_f64() * 1000.0,
            failures,
        }
    }

    /// Operator / cloud e-stop: latch and reach the safe state now.
    pub async fn estop(&self, reason: &str) -> SafeStateReport {
        self.trip(FaultKind::EStop, reason.to_string()).await
    }

    /// The executor registers a running program: its link-loss policy, its cancel token and
    /// the devices it owns.
    pub fn program_started(
        &self,
        program: &str,
        policy: LinkLossPolicy,
        cancel: CancellationToken,
        devices: BTreeSet<String>,
    ) {
        lock_state(&self.state).programs.insert(
            program.to_owned(),
            ProgramSafety {
                policy,
                cancel,
                devices,
                held: false,
            },
        );
    }

    /// A running program took `device` (its steps take devices as they need them): its
    /// link-loss policy now applies to it.
    pub fn program_take(&self, program: &str, device: &str) {
        if let Some(p) = lock_state(&self.state).programs.get_mut(program) {
            p.devices.insert(device.to_owned());
        }
    }

    /// A running program gave `device` back after its last step on it: its policy no longer
    /// applies to it (the next program's does).
    pub fn program_give(&self, program: &str, device: &str) {
        if let Some(p) = lock_state(&self.state).programs.get_mut(program) {
            p.devices.remove(device);
        }
        self.hold_changed.notify_waiters();
    }

    /// The devices a running program holds now (empty once it finished).
    pub fn program_devices(&self, program: &str) -> BTreeSet<String> {
        lock_state(&self.state)
            .programs
            .get(program)
            .map(|p| p.devices.clone())
            .unwrap_or_default()
    }

    pub fn program_finished(&self, program: &str) {
        lock_state(&self.state).programs.remove(program);
        self.hold_changed.notify_waiters();
    }

    /// Close every beam shutter; the failures, worded for the report.
    async fn close_shutters(&self) -> Vec<String> {
        futures_util::future::join_all(
            self.shutters.iter().map(|s| async move {
                s.close().await.err().map(|e| format!("{}: {e}", s.name()))
            }),
        )
        .await
        .into_iter()
        .flatten()
        .collect()
    }

    /// Whether the lab's shutters must stay closed (it has some, and the cloud link is lost).
    /// A lab without shutters keeps its laser's behaviour under the link-loss policy.
    pub fn shutters_inhibited(&self) -> bool {
        !self.shutters.is_empty() && lock_state(&self.state).link_down
    }

    /// The link calls this when the cloud link is lost: the shutters close (whatever the
    /// programs' policies) and stay closed until the link is back; then each running program's
    /// own policy applies to it and its devices (hold: it starts no step and its pumps stop;
    /// safe stop: it is cancelled and its devices go to their safe state). Returns the most
    /// protective policy applied (safe stop, then hold, then continue), if a program runs.
    pub async fn link_lost(&self) -> Option<LinkLossPolicy> {
        lock_state(&self.state).link_down = true;
        if !self.shutters.is_empty() {
            let failures = self.close_shutters().await;
            self.event(
                "shutter_closed",
                format!("cloud link lost; failures {failures:?}"),
            );
        }
        // Held programs are marked before their pumps stop (see `motion_allowed`).
        let acting: Vec<(String, LinkLossPolicy, CancellationToken, BTreeSet<String>)> = {
            let mut st = lock_state(&self.state);
            st.programs
                .iter_mut()
                .map(|(id, p)| {
                    if p.policy == LinkLossPolicy::Hold {
                        p.held = true;
                    }
                    (id.clone(), p.policy, p.cancel.clone(), p.devices.clone())
                })
                .collect()
        };
        let protection = |p: &LinkLossPolicy| match p {
            LinkLossPolicy::Continue => 0,
            LinkLossPolicy::Hold => 1,
            LinkLossPolicy::SafeStop => 2,
        };
        let strongest = acting.iter().map(|a| a.1).max_by_key(protection);
        for (id, policy, cancel, devices) in acting {
            self.event("link_lost", format!("program {id}: policy {policy:?}"));
            match policy {
                LinkLossPolicy::Continue => {}
                LinkLossPolicy::Hold => {
                    for p in self.pumps.iter().filter(|p| devices.contains(p.name())) {
                        let _ = p.stop().await;
                    }
                }
                LinkLossPolicy::SafeStop => {
                    cancel.cancel();
                    self.safe_state_of(Some(&devices)).await;
                }
            }
        }
        strongest
    }

    /// The link calls this when the cloud link is back.
    pub fn link_restored(&self) {
        {
            let mut st = lock_state(&self.state);
            for p in st.programs.values_mut() {
                p.held = false;
            }
            st.link_down = false;
        }
        self.event("link_restored", String::new());
        self.hold_changed.notify_waiters();
    }

    /// Wait while a link-loss hold is in force on `program`.
    pub async fn wait_not_held(&self, program: &str) {
        loop {
            let notified = self.hold_changed.notified();
            if !lock_state(&self.state)
                .programs
                .get(program)
                .is_some_and(|p| p.held)
            {
                return;
            }
            notified.await;
        }
    }

    /// Wait while a link-loss hold is in force on a program that owns `device`.
    pub async fn wait_device_not_held(&self, device: &str) {
        loop {
            let notified = self.hold_changed.notified();
            if !lock_state(&self.state)
                .programs
                .values()
                .any(|p| p.held && p.devices.contains(device))
            {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for SafetyKernel {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Write raw safe-state bytes to a port with blocking I/O (no runtime needed).
pub fn emergency_write(w: &EmergencyWrite) -> bool {
    match tokio_serial::new(&w.path, w.baud)
        .timeout(Duration::from_millis(200))
        .exclusive(false)
        .open()
    {
        Ok(mut port) => port.write_all(&w.bytes).and_then(|()| port.flush()).is_ok(),
        Err(_) => false,
    }
}
