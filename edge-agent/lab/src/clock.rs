//! Lab time. One abstraction, three clocks:
//!
//! - **wall** (`Clock::real_time`): lab time is wall time — the agent on real hardware;
//! - **scaled** (`Clock::new(speed)`): lab time is wall time × `speed` — kept for tests of
//!   wall-time behaviour (a blocked runtime, the watchdog);
//! - **event** (`Clock::event(speed)`): the virtual lab's discrete-event clock. Lab time moves
//!   only when every *actor* (the safety kernel's loop, each running program step, the executor
//!   between steps) waits on lab time; it then jumps to the earliest wake-up and wakes that one
//!   sleeper (ties in the order they went to sleep). I/O and computation therefore take no lab
//!   time at all — a CPU stall is a pause, not minutes with the heater cut — and the same seed
//!   and commands give the same sequence of events on any machine. At `speed = max` (infinite)
//!   the jumps happen as fast as the CPU allows, and lab time stands still while no activity
//!   (a program or a manual call) holds it: the cloud's thinking time between programs is not lab
//!   time. At a finite speed each jump also waits until `wall ≥ origin + lab / speed`, and idle
//!   time runs on too (an interactive lab), so a stall is caught up afterwards rather than lost.
//!
//! Built on `tokio::time`, so tests may pause tokio's clock instead of sleeping.
//!
//! The accounting: [`Clock::actor`] registers a busy actor; [`Actor::run`] makes every
//! [`Clock::sleep`] inside that future (task-locally) the actor's. A sleeping actor is not busy;
//! the scheduler counts it busy again as it wakes it, so a hand-over never leaves a gap in
//! which time could move. Waits on something other than lab time (a lock another actor holds, a
//! link coming back) go through [`Clock::idle`], or time could never move. A sleep outside an
//! actor is passive: it wakes when lab time reaches it but never holds time back.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{oneshot, Notify};

/// Shared lab clock. Cloning is cheap; all clones see the same time.
#[derive(Clone, Debug)]
pub struct Clock {
    inner: Arc<Inner>,
}

#[derive(Debug)]
enum Inner {
    Scaled {
        origin: tokio::time::Instant,
        speed: f64,
    },
    Event(Arc<Sched>),
}

/// A speed factor that is not positive (NaN, zero, negative; infinite only for the event clock).
#[derive(Debug, thiserror::Error)]
#[error("clock speed must be a positive number (or max for the event clock), got {0}")]
pub struct BadSpeed(pub f64);

/// A lab-time time-out elapsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("lab-time deadline elapsed")]
pub struct Elapsed;

tokio::task_local! {
    static ACTOR: Arc<ActorCell>;
}

#[derive(Debug)]
struct ActorCell {
    /// Counted in `busy` (changed only under the scheduler's lock).
    counted: AtomicBool,
    /// Order among sleepers due at the same instant: actors in the order they were made (which
    /// the lab's logic decides, not the timing of their I/O), passive sleepers after them.
    rank: u64,
}

#[derive(Debug)]
struct Sched {
    state: Mutex<State>,
    changed: Notify,
    /// `None`: as fast as the CPU allows.
    pace: Option<f64>,
    origin: tokio::time::Instant,
    now_ns: AtomicU64,
    jumps: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    busy: usize,
    holds: usize,
    seq: u64,
    actors_made: u64,
    /// By (instant, rank of the sleeper, order of going to sleep).
    sleepers: BTreeMap<(u64, u64, u64), Sleeper>,
    stopped: bool,
}

#[derive(Debug)]
struct Sleeper {
    tx: oneshot::Sender<()>,
    /// Counted busy as the sleeper wakes (its actor's, or a passive sleeper's own), so lab time
    /// stands still until the woken future has run.
    cell: Arc<ActorCell>,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

fn to_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Sched {
    fn uncount(&self, st: &mut State, cell: &ActorCell) {
        if cell.counted.swap(false, Ordering::SeqCst) {
            st.busy -= 1;
            if st.busy == 0 {
                self.changed.notify_one();
            }
        }
    }

    fn count(&self, st: &mut State, cell: &ActorCell) {
        if !cell.counted.swap(true, Ordering::SeqCst) {
            st.busy += 1;
        }
    }

    /// The scheduler: whenever no actor is busy (and time may move), wake the earliest sleeper.
    async fn run(self: Arc<Self>) {
        loop {
            let changed = self.changed.notified();
            let next = {
                let st = lock(&self.state);
                if st.stopped {
                    return;
                }
                let may_move = st.busy == 0 && (self.pace.is_some() || st.holds > 0);
                match st.sleepers.keys().next() {
                    Some(&key) if may_move => Some(key),
                    _ => None,
                }
            };
            let Some(key) = next else {
                changed.await;
                continue;
            };
            let t = key.0;
            if let Some(speed) = self.pace {
                let due = self.origin + Duration::from_nanos(t).div_f64(speed);
                if due > tokio::time::Instant::now() {
                    tokio::select! {
                        _ = tokio::time::sleep_until(due) => {}
                        _ = changed => {}
                    }
                    continue;
                }
            }
            let mut st = lock(&self.state);
            // still the earliest, and still nobody busy?
            if st.busy != 0 || st.sleepers.keys().next() != Some(&key) {
                continue;
            }
            if let Some(s) = st.sleepers.remove(&key) {
                self.now_ns.fetch_max(t, Ordering::SeqCst);
                self.jumps.fetch_add(1, Ordering::Relaxed);
                self.count(&mut st, &s.cell);
                let _ = s.tx.send(());
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Inner::Event(s) = self {
            lock(&s.state).stopped = true;
            s.changed.notify_one();
        }
    }
}

impl Clock {
    /// A scaled wall clock: lab time runs `speed` times faster than real time.
    pub fn new(speed: f64) -> Result<Self, BadSpeed> {
        if !(speed.is_finite() && speed > 0.0) {
            return Err(BadSpeed(speed));
        }
        Ok(Self {
            inner: Arc::new(Inner::Scaled {
                origin: tokio::time::Instant::now(),
                speed,
            }),
        })
    }

    /// A real-time clock (speed 1): real hardware.
    pub fn real_time() -> Self {
        Self {
            inner: Arc::new(Inner::Scaled {
                origin: tokio::time::Instant::now(),
                speed: 1.0,
            }),
        }
    }

    /// The discrete-event clock at `speed` (`f64::INFINITY`: as fast as the CPU allows). Starts
    /// its scheduler on the current tokio runtime.
    pub fn event(speed: f64) -> Result<Self, BadSpeed> {
        if speed.is_nan() || speed <= 0.0 {
            return Err(BadSpeed(speed));
        }
        let sched = Arc::new(Sched {
            state: Mutex::new(State::default()),
            changed: Notify::new(),
            pace: speed.is_finite().then_some(speed),
            origin: tokio::time::Instant::now(),
            now_ns: AtomicU64::new(0),
            jumps: AtomicU64::new(0),
        });
        tokio::spawn(sched.clone().run());
        Ok(Self {
            inner: Arc::new(Inner::Event(sched)),
        })
    }

    /// The speed factor (infinite: as fast as the CPU allows).
    pub fn speed(&self) -> f64 {
        match &*self.inner {
            Inner::Scaled { speed, .. } => *speed,
            Inner::Event(s) => s.pace.unwrap_or(f64::INFINITY),
        }
    }

    /// Whether this is the discrete-event clock (the virtual lab's): I/O takes no lab time, and
    /// wall-time stalls cannot harm the lab.
    pub fn is_event(&self) -> bool {
        matches!(&*self.inner, Inner::Event(_))
    }

    /// Jumps of the event clock so far (0 on the others).
    pub fn jumps(&self) -> u64 {
        match &*self.inner {
            Inner::Scaled { .. } => 0,
            Inner::Event(s) => s.jumps.load(Ordering::Relaxed),
        }
    }

    /// Lab time elapsed since the clock was made.
    pub fn now(&self) -> Duration {
        match &*self.inner {
            Inner::Scaled { origin, speed } => origin.elapsed().mul_f64(*speed),
            Inner::Event(s) => Duration::from_nanos(s.now_ns.load(Ordering::SeqCst)),
        }
    }

    /// Lab time in seconds.
    pub fn now_s(&self) -> f64 {
        self.now().as_secs_f64()
    }

    /// Wall time that `lab` of lab time takes on a scaled clock (zero at max speed).
    pub fn to_real(&self, lab: Duration) -> Duration {
        let speed = self.speed();
        if speed.is_finite() {
            lab.div_f64(speed)
        } else {
            Duration::ZERO
        }
    }

    /// Sleep for `lab` of lab time.
    pub async fn sleep(&self, lab: Duration) {
        match &*self.inner {
            Inner::Scaled { .. } => tokio::time::sleep(self.to_real(lab)).await,
            Inner::Event(s) => {
                let t = s.now_ns.load(Ordering::SeqCst).saturating_add(to_ns(lab));
                match ACTOR.try_with(Arc::clone) {
                    Ok(cell) => event_sleep(s, t, cell, Mode::ActorSleeps).await,
                    Err(_) => event_sleep(s, t, ActorCell::idle(), Mode::Passive).await,
                }
            }
        }
    }

    /// Sleep until lab time `t`.
    pub async fn sleep_until(&self, t: Duration) {
        let now = self.now();
        if t > now {
            self.sleep(t - now).await;
        }
    }

    /// Run `fut` with a lab-time limit of `lab`. The deadline never holds time back.
    pub async fn timeout<F: Future>(&self, lab: Duration, fut: F) -> Result<F::Output, Elapsed> {
        match &*self.inner {
            Inner::Scaled { .. } => tokio::time::timeout(self.to_real(lab), fut)
                .await
                .map_err(|_| Elapsed),
            Inner::Event(s) => {
                let t = s.now_ns.load(Ordering::SeqCst).saturating_add(to_ns(lab));
                // the deadline wakes the actor (busy again) but does not idle it meanwhile
                let deadline = match ACTOR.try_with(Arc::clone) {
                    Ok(cell) => event_sleep(s, t, cell, Mode::ActorDeadline),
                    Err(_) => event_sleep(s, t, ActorCell::idle(), Mode::Passive),
                };
                tokio::select! {
                    r = fut => Ok(r),
                    _ = deadline => Err(Elapsed),
                }
            }
        }
    }

    /// A busy actor on this clock, until dropped; [`Actor::run`] makes the sleeps of a future
    /// its own. A no-op on the wall clocks.
    pub fn actor(&self) -> Actor {
        match &*self.inner {
            Inner::Scaled { .. } => Actor { cell: None },
            Inner::Event(s) => {
                let mut st = lock(&s.state);
                st.actors_made += 1;
                let cell = Arc::new(ActorCell {
                    counted: AtomicBool::new(false),
                    rank: st.actors_made,
                });
                s.count(&mut st, &cell);
                drop(st);
                Actor {
                    cell: Some((s.clone(), cell)),
                }
            }
        }
    }

    /// Await `fut` — something other than lab time (a lock another actor holds, the link) — with
    /// the current actor counted idle meanwhile.
    pub async fn idle<F: Future>(&self, fut: F) -> F::Output {
        let Inner::Event(s) = &*self.inner else {
            return fut.await;
        };
        let Ok(cell) = ACTOR.try_with(Arc::clone) else {
            return fut.await;
        };
        // idle only while `fut` is pending: a wait that is over at once must not open a moment
        // in which nobody is busy (lab time would move in it); a waiter another actor made
        // busy (see [`Clock::hand_over`]) that has to wait again is idle again
        // busy while `fut` is polled: what completes it inside this poll (an actor of a future
        // it drives, ending) cannot leave a moment in which nobody is busy
        let mut fut = std::pin::pin!(fut);
        let mut recount: Option<Recount> = None;
        std::future::poll_fn(|cx| {
            if recount.is_some() {
                s.count(&mut lock(&s.state), &cell);
            }
            let r = fut.as_mut().poll(cx);
            if r.is_pending() {
                s.uncount(&mut lock(&s.state), &cell);
                if recount.is_none() {
                    recount = Some(Recount {
                        sched: s.clone(),
                        cell: cell.clone(),
                    });
                }
            }
            r
        })
        .await
    }

    /// The current task's actor, to hand a turn over to it later (see [`Clock::hand_over`]).
    pub fn current_actor(&self) -> Option<ActorHandle> {
        match &*self.inner {
            Inner::Event(_) => ACTOR.try_with(Arc::clone).ok().map(ActorHandle),
            Inner::Scaled { .. } => None,
        }
    }

    /// Count `waiter` busy now, from a busy actor that just made the thing it waits for (in
    /// [`Clock::idle`]) happen: the waiter is busy before this actor can go idle, so lab time
    /// cannot move between the two (a device handed from one program to the next).
    pub fn hand_over(&self, waiter: &ActorHandle) {
        if let Inner::Event(s) = &*self.inner {
            s.count(&mut lock(&s.state), &waiter.0);
        }
    }

    /// Await `fut` as an actor holding an activity, unless this task already is an actor (then
    /// just await it): for calls made outside a program (a manual call, a test, the probe).
    pub async fn as_actor<F: Future>(&self, fut: F) -> F::Output {
        if !self.is_event() || ACTOR.try_with(|_| ()).is_ok() {
            return fut.await;
        }
        let me = self.actor();
        // dropped first (locals drop in reverse): time stops before the actor leaves, so the
        // moment between the two cannot move it
        let _moving = self.activity();
        me.run(fut).await
    }

    /// An activity that lets lab time move at max speed (a program, a manual call), until
    /// dropped. A no-op on the other clocks.
    pub fn activity(&self) -> Activity {
        match &*self.inner {
            Inner::Event(s) if s.pace.is_none() => {
                lock(&s.state).holds += 1;
                s.changed.notify_one();
                Activity {
                    sched: Some(s.clone()),
                }
            }
            _ => Activity { sched: None },
        }
    }
}

/// Counts an actor busy again when an idle wait ends (or is dropped).
struct Recount {
    sched: Arc<Sched>,
    cell: Arc<ActorCell>,
}

impl Drop for Recount {
    fn drop(&mut self) {
        self.sched.count(&mut lock(&self.sched.state), &self.cell);
    }
}

impl ActorCell {
    /// A passive sleeper's.
    fn idle() -> Arc<Self> {
        Arc::new(Self {
            counted: AtomicBool::new(false),
            rank: u64::MAX,
        })
    }
}

/// Who sleeps on the event clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The current actor: idle until woken.
    ActorSleeps,
    /// A deadline of the current actor (a time-out): wakes it, never idles it.
    ActorDeadline,
    /// Not an actor: busy only from its wake-up until its future has run.
    Passive,
}

/// Sleep on the event clock until `t`; `cell` is counted busy as the sleeper wakes.
async fn event_sleep(s: &Arc<Sched>, t: u64, cell: Arc<ActorCell>, mode: Mode) {
    let (tx, rx) = oneshot::channel();
    let key = {
        let mut st = lock(&s.state);
        st.seq += 1;
        let key = (t, cell.rank, st.seq);
        if mode == Mode::ActorSleeps {
            s.uncount(&mut st, &cell);
        }
        st.sleepers.insert(
            key,
            Sleeper {
                tx,
                cell: cell.clone(),
            },
        );
        s.changed.notify_one();
        key
    };
    let _guard = SleepGuard {
        sched: s.clone(),
        key,
        cell,
        mode,
    };
    // the sender lives in the map until the scheduler sends, or the guard removes it
    let _ = rx.await;
}

/// Ends a sleep, woken or dropped: removes the sleeper if still there; an actor is busy again
/// (it runs on), a passive sleeper's count is given back (it has run).
struct SleepGuard {
    sched: Arc<Sched>,
    key: (u64, u64, u64),
    cell: Arc<ActorCell>,
    mode: Mode,
}

impl Drop for SleepGuard {
    fn drop(&mut self) {
        let mut st = lock(&self.sched.state);
        st.sleepers.remove(&self.key);
        match self.mode {
            Mode::ActorSleeps | Mode::ActorDeadline => self.sched.count(&mut st, &self.cell),
            Mode::Passive => self.sched.uncount(&mut st, &self.cell),
        }
        self.sched.changed.notify_one();
    }
}

/// An actor to hand a turn over to (see [`Clock::hand_over`]).
#[derive(Debug, Clone)]
pub struct ActorHandle(Arc<ActorCell>);

/// A busy actor of the event clock (see [`Clock::actor`]).
#[derive(Debug)]
pub struct Actor {
    cell: Option<(Arc<Sched>, Arc<ActorCell>)>,
}

impl Actor {
    /// Run `fut` as this actor: its sleeps are the actor's. The actor stays busy until dropped,
    /// so a caller may keep it past `fut` to hand the turn over without a gap.
    pub async fn run<F: Future>(&self, fut: F) -> F::Output {
        match &self.cell {
            Some((_, cell)) => ACTOR.scope(cell.clone(), fut).await,
            None => fut.await,
        }
    }
}

impl Drop for Actor {
    fn drop(&mut self) {
        if let Some((s, cell)) = &self.cell {
            s.uncount(&mut lock(&s.state), cell);
        }
    }
}

/// Lets lab time move at max speed while held (see [`Clock::activity`]).
#[derive(Debug)]
pub struct Activity {
    sched: Option<Arc<Sched>>,
}

impl Drop for Activity {
    fn drop(&mut self) {
        if let Some(s) = &self.sched {
            lock(&s.state).holds -= 1;
            s.changed.notify_one();
        }
    }
}

#[cfg(test)]
mod tests;
