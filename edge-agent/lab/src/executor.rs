//! Program executor: checks a compiled program against the lab (methods, parameter ranges) before
//! anything moves, then runs its DAG — each step once its dependencies completed, independent
//! steps concurrently — turning results into records; stops safely on failure, cancel or trip.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use maosic_schema::program::Program;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::config::LinkLossPolicy;
use crate::error::DeviceError;
use crate::lab::{CallOutput, Lab};
use crate::record::{unix_ms, Outcome, Record, RecordBody, RecordSink};

/// Options for one run.
#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    /// Id for the records (the link's command id).
    pub program_id: Option<String>,
    /// Link-loss policy; `None` = the lab's default.
    pub link_loss: Option<LinkLossPolicy>,
}

/// Summary of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProgramReport {
    pub outcome: Outcome,
    pub steps_succeeded: u32,
    pub steps_total: u32,
    pub lab_duration_s: f64,
    /// First error, if any.
    pub error: Option<String>,
}

struct Ctx<'a, S> {
    lab: &'a Lab,
    sink: S,
    program_id: Option<String>,
}

impl<S: RecordSink> Ctx<'_, S> {
    async fn emit(&self, step: Option<u32>, method: Option<&str>, body: RecordBody) {
        let r = Record {
            program: self.program_id.clone(),
            step,
            method: method.map(str::to_string),
            lab_time_s: self.lab.clock.now_s(),
            unix_ms: unix_ms(),
            body,
        };
        // Kept before the run goes on (the agent's sink: written to its spool).
        self.sink.record(r).await;
    }

    async fn safety_events(&self) {
        for e in self.lab.kernel().drain_events() {
            self.emit(
                None,
                None,
                RecordBody::Safety {
                    event: e.event,
                    detail: e.detail,
                },
            )
            .await;
        }
    }
}

/// Gives a run's devices back however the run ends (a dropped future included).
struct Owned<'a> {
    lab: &'a Lab,
    run_id: &'a str,
}

impl Drop for Owned<'_> {
    fn drop(&mut self) {
        self.lab.kernel().program_finished(self.run_id);
        self.lab.release_devices(self.run_id);
    }
}

/// Run `program` on `lab`; every record goes to `sink`, each kept before the run goes on.
///
/// On the event clock the run is an activity (lab time moves while it runs, at max speed only
/// then) and an actor (lab time stands still while it works between steps); each running step is
/// an actor of its own, handed back to the run when it ends so the turn passes without a gap.
pub async fn run_program<S: RecordSink>(
    lab: &Lab,
    program: &Program,
    opts: ExecOptions,
    sink: S,
    cancel: CancellationToken,
) -> ProgramReport {
    let me = lab.clock.actor();
    // dropped before `me` (locals drop in reverse): lab time stops moving before the run stops
    // being busy, so the end of a run cannot let it move
    let _moving = lab.clock.activity();
    me.run(run(lab, program, opts, sink, cancel)).await
}

/// [`run_program`] with the run busy on the lab clock from this call, not from the returned
/// future's first poll: a caller that queues runs ahead (a pipeline) cannot let lab time move
/// between handing a run over and the run queueing for its devices.
pub fn start_program<'a, S: RecordSink + 'a>(
    lab: &'a Lab,
    program: Program,
    opts: ExecOptions,
    sink: S,
    cancel: CancellationToken,
) -> impl std::future::Future<Output = ProgramReport> + 'a {
    let me = lab.clock.actor();
    let moving = lab.clock.activity();
    async move {
        let report = me.run(run(lab, &program, opts, sink, cancel)).await;
        drop(moving);
        drop(me);
        report
    }
}

/// The device a method names (`P1.set_rate` → `P1`).
fn device_of(method: &str) -> String {
    method.split_once('.').map_or(method, |(d, _)| d).to_owned()
}

/// What the run waits for between steps.
enum Next<T> {
    Done(T),
    Canceled,
    Tripped,
}

async fn run<S: RecordSink>(
    lab: &Lab,
    program: &Program,
    opts: ExecOptions,
    sink: S,
    cancel: CancellationToken,
) -> ProgramReport {
    let ctx = Ctx {
        lab,
        sink,
        program_id: opts.program_id.clone(),
    };
    let total = program.steps.len() as u32;
    let queued_at = lab.clock.now_s();
    let refuse = |msg: String| ProgramReport {
        outcome: Outcome::Refused,
        steps_succeeded: 0,
        steps_total: total,
        lab_duration_s: 0.0,
        error: Some(msg),
    };
    // 1. the whole program is checked before anything moves
    if let Err(e) = program.validate() {
        let r = refuse(e.to_string());
        ctx.emit(
            None,
            None,
            RecordBody::ProgramFinished {
                outcome: Outcome::Refused,
                steps_succeeded: 0,
                lab_duration_s: 0.0,
            },
        )
        .await;
        return r;
    }
    let desc = lab.descriptor();
    for s in &program.steps {
        if let Err(e) = lab.check_params(&desc, &s.request.method, &s.request.params) {
            let msg = format!("step {} ({}): {e}", s.id, s.request.method);
            ctx.emit(
                Some(s.id),
                Some(&s.request.method),
                RecordBody::StepFailed {
                    code: e.code().into(),
                    message: msg.clone(),
                },
            )
            .await;
            ctx.emit(
                None,
                None,
                RecordBody::ProgramFinished {
                    outcome: Outcome::Refused,
                    steps_succeeded: 0,
                    lab_duration_s: 0.0,
                },
            )
            .await;
            return refuse(msg);
        }
    }
    if let Err(e) = lab.kernel().check_call("program.run") {
        ctx.emit(
            None,
            None,
            RecordBody::ProgramFinished {
                outcome: Outcome::Refused,
                steps_succeeded: 0,
                lab_duration_s: 0.0,
            },
        )
        .await;
        return refuse(e.to_string());
    }
    let policy = opts.link_loss.unwrap_or(lab.config.safety.link_loss);
    let run_cancel = cancel.child_token();
    // 2. the devices it uses, queued for all at once (behind earlier programs: a device goes to
    // the programs that need it in the order they came, so no two wait on each other); the run
    // starts once it owns the devices of its first steps (cancellable meanwhile), each later
    // step waits for its own device, and a device goes back after the last step on it — so
    // the next program's synthesis can start while this one still measures
    let run_id = opts
        .program_id
        .clone()
        .unwrap_or_else(|| lab.local_run_id());
    let devices: BTreeSet<String> = program
        .steps
        .iter()
        .map(|s| device_of(&s.request.method))
        .collect();
    let first: BTreeSet<String> = program
        .steps
        .iter()
        .filter(|s| s.after.is_empty())
        .map(|s| device_of(&s.request.method))
        .collect();
    // steps not yet ended, per device
    let mut uses: BTreeMap<String, usize> = BTreeMap::new();
    for s in &program.steps {
        *uses.entry(device_of(&s.request.method)).or_default() += 1;
    }
    if !lab
        .clock
        .idle(lab.claim_devices(&run_id, &devices, &first, &run_cancel))
        .await
    {
        ctx.emit(
            None,
            None,
            RecordBody::ProgramFinished {
                outcome: Outcome::Canceled,
                steps_succeeded: 0,
                lab_duration_s: lab.clock.now_s() - queued_at,
            },
        )
        .await;
        return ProgramReport {
            outcome: Outcome::Canceled,
            steps_succeeded: 0,
            steps_total: total,
            lab_duration_s: lab.clock.now_s() - queued_at,
            error: Some("canceled while waiting for its devices".into()),
        };
    }
    // the run's lab time counts from when it has its first devices (not from when it queued)
    let t0 = lab.clock.now_s();
    let _owned = Owned {
        lab,
        run_id: &run_id,
    };
    lab.kernel()
        .program_started(&run_id, policy, run_cancel.clone(), first.clone());
    let trip = lab.kernel().trip_token();
    ctx.emit(None, None, RecordBody::ProgramStarted { steps: total })
        .await;

    // 2. the DAG
    let mut remaining: BTreeMap<u32, usize> = BTreeMap::new();
    let mut dependents: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for s in &program.steps {
        remaining.insert(s.id, s.after.len());
        for d in &s.after {
            dependents.entry(*d).or_default().push(s.id);
        }
    }
    let by_id: BTreeMap<u32, &maosic_schema::program::Step> =
        program.steps.iter().map(|s| (s.id, s)).collect();
    let mut ready: Vec<u32> = remaining
        .iter()
        .filter(|(_, n)| **n == 0)
        .map(|(id, _)| *id)
        .collect();
    let mut running = FuturesUnordered::new();
    let mut succeeded = 0u32;
    let mut error: Option<String> = None;
    let mut outcome = Outcome::Succeeded;
    loop {
        if error.is_none() && !run_cancel.is_cancelled() && !trip.is_cancelled() {
            lab.clock.idle(lab.kernel().wait_not_held(&run_id)).await;
            for id in ready.drain(..) {
                let Some(step) = by_id.get(&id).copied() else {
                    continue;
                };
                let method = step.request.method.clone();
                ctx.emit(Some(id), Some(&method), RecordBody::StepStarted)
                    .await;
                let timeout = Duration::from_millis(
                    step.duration_ms
                        .saturating_mul(3)
                        .max(step.duration_ms + 600_000),
                );
                // busy from now: the run is, so lab time cannot move in between
                let actor = lab.clock.actor();
                let (run_id, run_cancel) = (&run_id, &run_cancel);
                let fut = async move {
                    let t = lab.clock.now_s();
                    let r = actor
                        .run(async {
                            // its device, once the earlier program that has it gives it back
                            let device = device_of(&method);
                            let one = BTreeSet::from([device.clone()]);
                            if !lab.owns_all(run_id, &one)
                                && !lab
                                    .clock
                                    .idle(lab.wait_owned(run_id, &one, run_cancel))
                                    .await
                            {
                                return Ok(Err(DeviceError::Interlock(format!(
                                    "{method}: canceled while waiting for {device}"
                                ))));
                            }
                            lab.kernel().program_take(run_id, &device);
                            lab.clock
                                .timeout(timeout, lab.call(&method, &step.request.params))
                                .await
                        })
                        .await;
                    let r: Result<CallOutput, DeviceError> = match r {
                        Ok(r) => r,
                        Err(_) => Err(DeviceError::Timeout {
                            device: method.clone(),
                            timeout,
                            attempts: 1,
                        }),
                    };
                    (id, method, lab.clock.now_s() - t, r, actor)
                };
                // One span per step, a child of the run's (a trace shows the steps' overlap).
                let span = tracing::info_span!("step", step.id = id, method = %step.request.method);
                running.push(fut.instrument(span));
            }
        }
        if running.is_empty() {
            break;
        }
        let next = lab
            .clock
            .idle(async {
                tokio::select! {
                    Some(done) = running.next() => Next::Done(done),
                    _ = run_cancel.cancelled(), if outcome == Outcome::Succeeded => Next::Canceled,
                    _ = trip.cancelled(), if outcome == Outcome::Succeeded => Next::Tripped,
                    else => Next::Canceled,
                }
            })
            .await;
        match next {
            // the step's actor is dropped only now, with the run busy again
            Next::Done((id, method, dt, r, _step_actor)) => match r {
                Ok(out) => {
                    for (name, m) in out.measurements {
                        ctx.emit(
                            Some(id),
                            Some(&method),
                            RecordBody::Measurement {
                                name,
                                measurement: m,
                            },
                        )
                        .await;
                    }
                    ctx.emit(
                        Some(id),
                        Some(&method),
                        RecordBody::StepSucceeded {
                            result: out.result,
                            lab_duration_s: dt,
                        },
                    )
                    .await;
                    succeeded += 1;
                    // after its last step here, the device goes to the next program
                    let device = device_of(&method);
                    if let Some(n) = uses.get_mut(&device) {
                        *n = n.saturating_sub(1);
                        if *n == 0 {
                            lab.kernel().program_give(&run_id, &device);
                            lab.release_device(&run_id, &device);
                        }
                    }
                    for d in dependents.get(&id).cloned().unwrap_or_default() {
                        if let Some(n) = remaining.get_mut(&d) {
                            *n -= 1;
                            if *n == 0 {
                                ready.push(d);
                            }
                        }
                    }
                }
                Err(e) => {
                    ctx.emit(
                        Some(id),
                        Some(&method),
                        RecordBody::StepFailed {
                            code: e.code().into(),
                            message: e.to_string(),
                        },
                    )
                    .await;
                    if error.is_none() {
                        error = Some(format!("step {id} ({method}): {e}"));
                        // a step that fails once the run is cancelled ends a cancelled run
                        outcome = if run_cancel.is_cancelled() {
                            Outcome::Canceled
                        } else {
                            Outcome::Failed
                        };
                    }
                    break;
                }
            },
            Next::Canceled => {
                outcome = Outcome::Canceled;
                error = Some("canceled".into());
                break;
            }
            Next::Tripped => {
                outcome = Outcome::Failed;
                error = Some(format!(
                    "safety kernel tripped: {:?}",
                    lab.kernel().faults().first().map(|f| f.detail.clone())
                ));
                break;
            }
        }
    }
    drop(running);
    if outcome != Outcome::Succeeded {
        // stop what the program started (its own devices: another program may be running);
        // the kernel has already acted on a trip
        // the devices it holds now: the kernel's record (taken by its steps, given back after
        // the last step on each)
        let held = lab.kernel().program_devices(&run_id);
        lab.kernel().safe_state_of(Some(&held)).await;
    }
    ctx.safety_events().await;
    lab.kernel().program_finished(&run_id);
    let dt = lab.clock.now_s() - t0;
    ctx.emit(
        None,
        None,
        RecordBody::ProgramFinished {
            outcome,
            steps_succeeded: succeeded,
            lab_duration_s: dt,
        },
    )
    .await;
    ProgramReport {
        outcome,
        steps_succeeded: succeeded,
        steps_total: total,
        lab_duration_s: dt,
        error,
    }
}
