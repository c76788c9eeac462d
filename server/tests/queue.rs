//! Campaign and experiment-queue storage on every backend: the round trip of a campaign's ask and
//! tell, forward-only experiment states, and the queue under load — 8 concurrent workers doing
//! claim/complete cycles with random kills (a killed worker drops its claim and comes back under
//! a new identity): 0 double claims, 0 lost, 0 stuck after the lease.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use maosic_e2e::{backends, mark_ran, TestDatabase};
use maosic_server::storage::{
    self, now_ms, tenant, CampaignId, CampaignState, CampaignTold, DatabaseUrl, ExperimentFilter,
    ExperimentId, ExperimentResult, ExperimentState, LabId, NewCampaign, NewExperiment,
    PoolSettings, Storage, StorageError,
};

async fn connect(db: &TestDatabase, max_connections: u32) -> Arc<dyn Storage> {
    let url = DatabaseUrl::parse(&db.url).unwrap();
    let settings = PoolSettings {
        max_connections,
        ..PoolSettings::default()
    };
    let s = storage::connect(&url, &settings).await.unwrap();
    s.migrate().await.unwrap();
    s
}

async fn campaign(s: &dyn Storage, org: &str, lab: &str) -> storage::Campaign {
    campaign_with_batch(s, org, lab, 1).await
}

async fn campaign_with_batch(
    s: &dyn Storage,
    org: &str,
    lab: &str,
    batch_size: i64,
) -> storage::Campaign {
    s.create_campaign(
        &NewCampaign {
            organization_id: org.into(),
            lab_id: lab.into(),
            name: "c".into(),
            recipe: "recipe r(T: °C in 90..180) { H[T = $T] }".into(),
            space_json: "{}".into(),
            objective: "maximize abs(cd_at_exciton)".into(),
            optimizer: "random".into(),
            settings_json: "{}".into(),
            seed: 1,
            budget: 1_000_000,
            batch_size,
            target: None,
            priority: 0,
            optimizer_state: "state-0".into(),
            created_by: "u".into(),
        },
        now_ms(),
    )
    .await
    .unwrap()
}

/// Moves a draft campaign to running.
async fn start(s: &dyn Storage, c: &storage::Campaign) {
    s.set_campaign_state(
        &c.id,
        &[CampaignState::Draft],
        CampaignState::Running,
        None,
        2,
    )
    .await
    .unwrap();
}

fn item(n: usize) -> NewExperiment {
    NewExperiment {
        id: ExperimentId::generate(),
        name: format!("item {n}"),
        source: "optimizer".into(),
        params_json: format!("{{\"T\": {n}}}"),
        proposal_json: None,
        program_json: "{}".into(),
        priority: 0,
        created_by: "u".into(),
        // Even items were queued under a trace, odd ones with traces off.
        trace_parent: n
            .is_multiple_of(2)
            .then(|| format!("00-{n:032x}-{n:016x}-01")),
    }
}

#[tokio::test]
async fn a_campaign_in_each_state_reads_back_as_that_state_and_its_api_enum() {
    tenant::system(a_campaign_in_each_state_reads_back_as_that_state_and_its_api_enum_body()).await;
}

async fn a_campaign_in_each_state_reads_back_as_that_state_and_its_api_enum_body() {
    use CampaignState as C;
    for backend in backends() {
        let db = TestDatabase::create(backend).await.unwrap();
        let s = connect(&db, 2).await;
        let org = s.create_organization("A", 1).await.unwrap();
        let lab = s.create_lab(&org.id, "lab", 1).await.unwrap();
        let mut seen = Vec::new();
        // One campaign per final state, through draft, running and paused on the way.
        for end in [C::Completed, C::Canceled, C::Failed] {
            let c = campaign(s.as_ref(), &org.id, &lab.id).await;
            let mut now = C::Draft;
            for to in [C::Draft, C::Running, C::Paused, end] {
                if to != now {
                    assert!(s
                        .set_campaign_state(&c.id, &[now], to, None, now_ms())
                        .await
                        .unwrap());
                    now = to;
                }
                let read = s.campaign(&c.id).await.unwrap().state;
                assert_eq!(read, to);
                let shown = async_graphql::InputType::to_value(&read);
                assert_eq!(
                    shown,
                    async_graphql::Value::Enum(async_graphql::Name::new(
                        to.as_str().to_uppercase()
                    ))
                );
                seen.push(read);
            }
        }
        for state in C::ALL {
            assert!(seen.contains(state), "{state:?} was never read back");
        }
        mark_ran(backend, "campaign_states_read_back");
    }
}

#[tokio::test]
async fn ask_and_tell_write_the_optimizer_state_with_the_experiments_once() {
    // Storage calls outside any tenant scope see nothing: this is platform work.
    tenant::system(ask_and_tell_write_the_optimizer_state_with_the_experiments_once_body()).await;
}

async fn ask_and_tell_write_the_optimizer_state_with_the_experiments_once_body() {
    for backend in backends() {
        let db = TestDatabase::create(backend).await.unwrap();
        let s = connect(&db, 4).await;
        let org = s.create_organization("A", 1).await.unwrap();
        let lab = s.create_lab(&org.id, "lab", 1).await.unwrap();
        let c = campaign(s.as_ref(), &org.id, &lab.id).await;
        assert_eq!(c.state, CampaignState::Draft);
        // Asking a draft campaign writes nothing.
        assert!(!s
            .enqueue_proposals(&c.id, c.version, "state-1", &[item(1)], 2)
            .await
            .unwrap());
        assert!(s
            .set_campaign_state(
                &c.id,
                &[CampaignState::Draft],
                CampaignState::Running,
                None,
                3
            )
            .await
            .unwrap());
        assert!(!s
            .set_campaign_state(
                &c.id,
                &[CampaignState::Draft],
                CampaignState::Running,
                None,
                3
            )
            .await
            .unwrap());
        assert!(s
            .enqueue_proposals(&c.id, 0, "state-1", &[item(1), item(2)], 4)
            .await
            .unwrap());
        // A stale version (another writer asked meanwhile) writes nothing.
        assert!(!s
            .enqueue_proposals(&c.id, 0, "state-x", &[item(3)], 5)
            .await
            .unwrap());
        let c = s.campaign(&c.id).await.unwrap();
        assert_eq!(
            (c.version, c.proposals, c.optimizer_state.as_deref()),
            (1, 2, Some("state-1"))
        );
        let all = s
            .experiments_of_campaign(&c.id, 0, 10, &ExperimentFilter::default())
            .await
            .unwrap();
        assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2]);
        // Each keeps the trace context it was queued under (its dispatch continues it).
        assert_eq!(all[0].trace_parent, None);
        assert_eq!(
            all[1].trace_parent.as_deref(),
            Some("00-00000000000000000000000000000002-0000000000000002-01")
        );
        assert_eq!(s.optimizer_in_flight(&c.id).await.unwrap(), 2);

        // A paused campaign's queued experiments wait.
        assert!(s
            .set_campaign_state(
                &c.id,
                &[CampaignState::Running],
                CampaignState::Paused,
                None,
                5
            )
            .await
            .unwrap());
        assert!(s
            .claim_experiment(&lab.id, "w", 60_000, 6)
            .await
            .unwrap()
            .is_none());
        assert!(s
            .set_campaign_state(
                &c.id,
                &[CampaignState::Paused],
                CampaignState::Running,
                None,
                7
            )
            .await
            .unwrap());
        let e = s
            .claim_experiment(&lab.id, "w", 60_000, 10)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(e.seq, 1);
        assert!(s.mark_running(&e.id, 11).await.unwrap());
        assert!(!s.mark_running(&e.id, 11).await.unwrap(), "forward only");
        let result = ExperimentResult {
            experiment_id: e.id.clone(),
            state: ExperimentState::Completed,
            outcome: Some("succeeded".into()),
            error: None,
            features_json: Some("{}".into()),
            peaks_json: None,
            objective_value: Some(0.5),
        };
        let stale = CampaignTold {
            campaign_id: c.id.clone(),
            expected_version: 0,
            optimizer_state: "state-stale".into(),
            best_value: Some(0.5),
            best_params_json: None,
            best_experiment_id: Some(e.id.clone()),
        };
        // A tell against a stale version rolls back the experiment too.
        assert!(matches!(
            s.record_result(&result, Some(&stale), 12).await,
            Err(StorageError::Conflict(_))
        ));
        assert_eq!(
            s.experiment(&e.id).await.unwrap().state,
            ExperimentState::Running
        );
        let told = CampaignTold {
            expected_version: 1,
            optimizer_state: "state-2".into(),
            ..stale
        };
        assert!(s.record_result(&result, Some(&told), 13).await.unwrap());
        // Told once: a second report of the same end changes nothing.
        assert!(!s.record_result(&result, Some(&told), 14).await.unwrap());
        let c = s.campaign(&c.id).await.unwrap();
        assert_eq!((c.version, c.results, c.best_value), (2, 1, Some(0.5)));
        let e = s.experiment(&e.id).await.unwrap();
        assert!(e.told && e.is_final() && e.objective_value == Some(0.5));

        // Manual experiments go to the same campaign (next seq) and do not count as in flight.
        let mut manual = item(9);
        manual.source = "manual".into();
        let m = s.enqueue_manual(&c.id, &manual, 15).await.unwrap();
        assert_eq!((m.seq, m.state.as_str()), (3, "queued"));
        assert_eq!(s.optimizer_in_flight(&c.id).await.unwrap(), 1);
        // Canceling cancels what is queued.
        assert!(s
            .set_campaign_state(
                &c.id,
                &[CampaignState::Running],
                CampaignState::Canceled,
                None,
                16
            )
            .await
            .unwrap());
        let states: Vec<String> = s
            .experiments_of_campaign(&c.id, 0, 10, &ExperimentFilter::default())
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.state.to_string())
            .collect();
        assert_eq!(states, vec!["completed", "canceled", "canceled"]);
        assert!(s.enqueue_manual(&c.id, &item(10), 17).await.is_err());
        mark_ran(backend, "campaign_ask_and_tell");
    }
}

#[tokio::test]
async fn a_lab_serves_the_organisation_served_longest_ago_first() {
    // Storage calls outside any tenant scope see nothing: this is platform work.
    tenant::system(a_lab_serves_the_organisation_served_longest_ago_first_body()).await;
}

async fn a_lab_serves_the_organisation_served_longest_ago_first_body() {
    for backend in backends() {
        let db = TestDatabase::create(backend).await.unwrap();
        let s = connect(&db, 4).await;
        let a = s.create_organization("A", 1).await.unwrap();
        let b = s.create_organization("B", 1).await.unwrap();
        let lab = s.create_lab(&a.id, "lab", 1).await.unwrap();
        let ca = campaign(s.as_ref(), &a.id, &lab.id).await;
        let cb = campaign(s.as_ref(), &b.id, &lab.id).await;
        for c in [&ca, &cb] {
            start(s.as_ref(), c).await;
        }
        // A queues 4 first, then B queues 2: they alternate instead of A going first.
        s.enqueue_proposals(&ca.id, 0, "s", &(0..4).map(item).collect::<Vec<_>>(), 3)
            .await
            .unwrap();
        s.enqueue_proposals(&cb.id, 0, "s", &(0..2).map(item).collect::<Vec<_>>(), 4)
            .await
            .unwrap();
        let mut order = Vec::new();
        for t in 0..6 {
            let e = s
                .claim_experiment(&lab.id, "w", 60_000, 10 + t)
                .await
                .unwrap()
                .unwrap();
            order.push(if e.organization_id == a.id { 'A' } else { 'B' });
            s.finish_claim(&e.id, "w", ExperimentState::Completed, 10 + t)
                .await
                .unwrap();
        }
        assert_eq!(order.iter().collect::<String>(), "ABABAA");
        mark_ran(backend, "queue_fair_share");
    }
}

#[tokio::test]
async fn a_dispatch_claim_needs_room_counting_running_and_unexpired_leases_against_the_deepest_batch(
) {
    for backend in backends() {
        let db = TestDatabase::create(backend).await.unwrap();
        let s = connect(&db, 4).await;
        tenant::system(async {
            let a = s.create_organization("A", 1).await.unwrap();
            let lab = s.create_lab(&a.id, "lab", 1).await.unwrap();
            let claim = |now: i64, max: i64| {
                let (s, lab) = (s.clone(), lab.id.clone());
                async move {
                    s.claim_within_room(&lab, "w", 100, now, max)
                        .await
                        .unwrap()
                        .map(|e| e.id)
                }
            };
            // Nothing queued: nothing to claim.
            assert_eq!(claim(0, 4).await, None);
            let one = campaign(s.as_ref(), &a.id, &lab.id).await;
            start(s.as_ref(), &one).await;
            let queued = (0..3).map(item).collect::<Vec<_>>();
            s.enqueue_proposals(&one.id, 0, "s", &queued, 3)
                .await
                .unwrap();
            // Batch 1: one at a time. A lease in force holds the lab; an expired one does not
            // (and is itself claimed again, first in line).
            let first = claim(10, 4).await.unwrap();
            assert_eq!(first, queued[0].id);
            assert_eq!(claim(50, 4).await, None);
            assert_eq!(claim(111, 4).await, Some(first.clone()));
            // Running holds the lab whatever its lease.
            assert!(s.mark_running(&first, 120).await.unwrap());
            assert_eq!(claim(10_000, 4).await, None);
            // A claim made without the room check (the queue's) counts too; ending it frees
            // its place, the running one still holds the lab.
            let second = s
                .claim_experiment(&lab.id, "w", 100, 130)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(claim(140, 4).await, None);
            assert!(s
                .finish_claim(&second.id, "w", ExperimentState::Completed, 150)
                .await
                .unwrap());
            assert_eq!(claim(160, 4).await, None);
            // A running campaign with batches of 3 deepens the lab to 3, capped by the caller.
            let three = campaign_with_batch(s.as_ref(), &a.id, &lab.id, 3).await;
            start(s.as_ref(), &three).await;
            s.enqueue_proposals(
                &three.id,
                0,
                "s",
                &(3..6).map(item).collect::<Vec<_>>(),
                170,
            )
            .await
            .unwrap();
            assert!(claim(180, 2).await.is_some());
            assert_eq!(claim(181, 2).await, None, "capped at 2");
            assert!(claim(182, 4).await.is_some());
            assert_eq!(claim(183, 4).await, None, "the deepest batch is 3");
            mark_ran(backend, "claim_within_room");
        })
        .await;
    }
}

#[tokio::test]
async fn live_experiments_carry_whether_their_program_reported_and_finished() {
    for backend in backends() {
        let db = TestDatabase::create(backend).await.unwrap();
        let s = connect(&db, 4).await;
        tenant::system(async {
            let a = s.create_organization("A", 1).await.unwrap();
            let lab = s.create_lab(&a.id, "lab", 1).await.unwrap();
            let other = s.create_lab(&a.id, "other", 1).await.unwrap();
            let c = campaign(s.as_ref(), &a.id, &lab.id).await;
            start(s.as_ref(), &c).await;
            s.enqueue_proposals(&c.id, 0, "s", &(0..4).map(item).collect::<Vec<_>>(), 3)
                .await
                .unwrap();
            // Queued experiments are not live.
            assert!(s.live_experiments().await.unwrap().is_empty());
            let mut claimed = Vec::new();
            for t in 0..3 {
                let e = s
                    .claim_experiment(&lab.id, "w", 60_000, 10 + t)
                    .await
                    .unwrap()
                    .unwrap();
                claimed.push(e.id);
            }
            let record =
                |lab_id: &LabId, program: &ExperimentId, seq: i64, kind: &str| storage::NewRecord {
                    lab_id: lab_id.clone(),
                    epoch: "e1".into(),
                    seq,
                    program_id: Some(program.to_string()),
                    kind: kind.into(),
                    body: "{}".into(),
                };
            // First: started. Second: started and finished. Third: nothing from its lab, but a
            // record of the same program id from another lab (which must not count).
            s.store_records(
                &[
                    record(&lab.id, &claimed[0], 1, "program_started"),
                    record(&lab.id, &claimed[1], 2, "program_started"),
                    record(&lab.id, &claimed[1], 3, "program_finished"),
                    record(&other.id, &claimed[2], 1, "program_finished"),
                ],
                20,
            )
            .await
            .unwrap();
            let live = s.live_experiments().await.unwrap();
            let seen: Vec<(ExperimentId, bool, bool)> = live
                .iter()
                .map(|l| (l.experiment.id.clone(), l.has_records, l.finished))
                .collect();
            assert_eq!(
                seen,
                vec![
                    (claimed[0].clone(), true, false),
                    (claimed[1].clone(), true, true),
                    (claimed[2].clone(), false, false),
                ]
            );
            assert!(live
                .iter()
                .all(|l| l.experiment.state == ExperimentState::Leased));
            mark_ran(backend, "live_experiments");
        })
        .await;
    }
}

/// (claimed at, lease until, owner) of one claim.
type Lease = (i64, i64, String);

struct Tally {
    completions: Mutex<HashMap<ExperimentId, usize>>,
    /// Every claim's lease interval per experiment, as the database granted it.
    leases: Mutex<HashMap<ExperimentId, Vec<Lease>>>,
    kills: AtomicUsize,
    claims: AtomicUsize,
}

async fn worker(s: Arc<dyn Storage>, lab: LabId, n: usize, tally: Arc<Tally>, w: usize, seed: u64) {
    let mut rng = seed ^ (w as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut incarnation = 0;
    let mut owner = format!("w{w}.{incarnation}");
    let lease_ms = 150;
    loop {
        let done = tally.completions.lock().unwrap().len();
        if done == n {
            return;
        }
        let now = now_ms();
        let Some(e) = s
            .claim_experiment(&lab, &owner, lease_ms, now)
            .await
            .unwrap()
        else {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        tally.claims.fetch_add(1, Ordering::Relaxed);
        tally
            .leases
            .lock()
            .unwrap()
            .entry(e.id.clone())
            .or_default()
            .push((now, now + lease_ms, owner.clone()));
        if next() % 100 < 3 {
            // Killed holding the claim: it comes back as a new process.
            tally.kills.fetch_add(1, Ordering::Relaxed);
            incarnation += 1;
            owner = format!("w{w}.{incarnation}");
            continue;
        }
        if s.finish_claim(&e.id, &owner, ExperimentState::Completed, now_ms())
            .await
            .unwrap()
        {
            *tally
                .completions
                .lock()
                .unwrap()
                .entry(e.id.clone())
                .or_default() += 1;
        }
    }
}

/// Keeps about `depth` experiments waiting (queued or claimed, not yet completed) until `total`
/// were queued.
async fn producer(
    s: Arc<dyn Storage>,
    campaign_id: CampaignId,
    total: usize,
    depth: usize,
    tally: Arc<Tally>,
) {
    let mut queued = 0;
    while queued < total {
        let c = s.campaign(&campaign_id).await.unwrap();
        let waiting = queued - tally.completions.lock().unwrap().len();
        if waiting < depth / 2 {
            let batch: Vec<NewExperiment> = (queued..(queued + depth / 2).min(total))
                .map(item)
                .collect();
            assert!(s
                .enqueue_proposals(&campaign_id, c.version, "s", &batch, now_ms())
                .await
                .unwrap());
            queued += batch.len();
        } else {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_workers_claim_and_complete_with_random_kills_without_double_claims_or_losses() {
    // Storage calls outside any tenant scope see nothing: this is platform work.
    tenant::system(
        eight_workers_claim_and_complete_with_random_kills_without_double_claims_or_losses_body(),
    )
    .await;
}

async fn eight_workers_claim_and_complete_with_random_kills_without_double_claims_or_losses_body() {
    let per_worker: usize = std::env::var("MAOSIC_QUEUE_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let workers = 8;
    for backend in backends() {
        let db = TestDatabase::create(backend).await.unwrap();
        let s = connect(&db, 12).await;
        let org = s.create_organization("A", 1).await.unwrap();
        let lab = s.create_lab(&org.id, "lab", 1).await.unwrap();
        let c = campaign(s.as_ref(), &org.id, &lab.id).await;
        start(s.as_ref(), &c).await;
        let total = per_worker * workers;
        let tally = Arc::new(Tally {
            completions: Mutex::new(HashMap::new()),
            leases: Mutex::new(HashMap::new()),
            kills: AtomicUsize::new(0),
            claims: AtomicUsize::new(0),
        });
        let started = Instant::now();
        let prod = tokio::spawn(tenant::system(producer(
            s.clone(),
            c.id.clone(),
            total,
            64,
            tally.clone(),
        )));
        let mut tasks = Vec::new();
        for w in 0..workers {
            tasks.push(tokio::spawn(tenant::system(worker(
                s.clone(),
                lab.id.clone(),
                total,
                tally.clone(),
                w,
                0xC0FFEE,
            ))));
        }
        prod.await.unwrap();
        for t in tasks {
            t.await.unwrap();
        }
        let took = started.elapsed();
        let completions = tally.completions.lock().unwrap().clone();
        // A double claim: two holders' lease intervals of one experiment overlap (the database
        // may hand out an experiment again only after the previous lease ended).
        let mut double_claims = 0;
        for leases in tally.leases.lock().unwrap().values_mut() {
            leases.sort();
            double_claims += leases.windows(2).filter(|w| w[1].0 <= w[0].1).count();
        }
        let twice = completions.values().filter(|n| **n > 1).count();
        let stuck = s
            .experiments_of_campaign(
                &c.id,
                0,
                i64::MAX,
                &ExperimentFilter {
                    state: Some(ExperimentState::Leased),
                    source: None,
                },
            )
            .await
            .unwrap()
            .len();
        let lost = total - completions.len();
        println!(
            "[{}] queue: {workers} workers, {total} experiments, {} claims, {} kills holding a claim, {:.1} s ({:.0} claim/complete per s): double claims {}, completed twice {twice}, lost {lost}, stuck {stuck}",
            backend.name(),
            tally.claims.load(Ordering::Relaxed),
            tally.kills.load(Ordering::Relaxed),
            took.as_secs_f64(),
            total as f64 / took.as_secs_f64(),
            double_claims,
        );
        assert_eq!(double_claims, 0);
        assert_eq!(twice, 0);
        assert_eq!(lost, 0);
        assert_eq!(stuck, 0);
        assert!(
            tally.kills.load(Ordering::Relaxed) > 0,
            "the kills must happen"
        );
        mark_ran(backend, "queue_under_load");
    }
}
