use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;

#[tokio::test(start_paused = true)]
async fn scaled_lab_time_runs_at_speed() {
    let c = Clock::new(1000.0).unwrap();
    c.sleep(Duration::from_secs(300)).await;
    let t = c.now_s();
    assert!((t - 300.0).abs() < 0.01, "{t}");
    assert!(Clock::new(0.0).is_err());
    assert!(Clock::new(f64::NAN).is_err());
    assert!(Clock::new(f64::INFINITY).is_err());
    assert!(Clock::event(0.0).is_err());
    assert!(Clock::event(f64::NAN).is_err());
}

#[tokio::test]
async fn at_max_speed_an_hour_of_lab_time_passes_at_once_and_exactly() {
    let c = Clock::event(f64::INFINITY).unwrap();
    let _moving = c.activity();
    let me = c.actor();
    let wall = std::time::Instant::now();
    me.run(async {
        for _ in 0..3600 {
            c.sleep(Duration::from_secs(1)).await;
        }
    })
    .await;
    assert_eq!(c.now(), Duration::from_secs(3600));
    assert_eq!(c.jumps(), 3600);
    assert!(
        wall.elapsed() < Duration::from_secs(20),
        "{:?}",
        wall.elapsed()
    );
}

#[tokio::test]
async fn lab_time_stands_still_while_an_actor_works() {
    let c = Clock::event(f64::INFINITY).unwrap();
    let _moving = c.activity();
    let worker = c.actor();
    let sleeper = c.actor();
    let c2 = c.clone();
    let woke = tokio::spawn(async move {
        sleeper.run(c2.sleep(Duration::from_secs(10))).await;
        c2.now()
    });
    // the worker is busy (wall time passes, as in a serial round-trip): no lab time passes
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(c.now(), Duration::ZERO);
    assert!(!woke.is_finished());
    worker.run(c.sleep(Duration::from_secs(4))).await;
    assert_eq!(c.now(), Duration::from_secs(4));
    drop(worker);
    assert_eq!(woke.await.unwrap(), Duration::from_secs(10));
}

#[tokio::test]
async fn at_max_speed_lab_time_stands_still_without_an_activity() {
    let c = Clock::event(f64::INFINITY).unwrap();
    let me = c.actor();
    let r = tokio::time::timeout(
        Duration::from_millis(200),
        me.run(c.sleep(Duration::from_secs(1))),
    )
    .await;
    assert!(r.is_err(), "no activity: time must not move");
    assert_eq!(c.now(), Duration::ZERO);
    let _moving = c.activity();
    me.run(c.sleep(Duration::from_secs(1))).await;
    assert_eq!(c.now(), Duration::from_secs(1));
}

/// Three actors that each sleep a different period and log what they see: the log is the same
/// in every run, whatever the scheduling of the tasks.
async fn interleaving() -> Vec<(u64, u32)> {
    let c = Clock::event(f64::INFINITY).unwrap();
    let _moving = c.activity();
    let log = Arc::new(Mutex::new(Vec::new()));
    // every actor exists before any of them runs (as the lab makes a run's actor before it
    // spawns the run): otherwise the first could sleep, and time move, before the others exist
    let actors: Vec<_> = [(1u32, 700u64), (2, 300), (3, 500)]
        .into_iter()
        .map(|(who, period_ms)| (who, period_ms, c.actor()))
        .collect();
    let mut tasks = Vec::new();
    for (who, period_ms, actor) in actors {
        let (c, log) = (c.clone(), log.clone());
        tasks.push(tokio::spawn(async move {
            actor
                .run(async {
                    for _ in 0..20 {
                        c.sleep(Duration::from_millis(period_ms)).await;
                        // some work between the wake-up and the next sleep
                        tokio::task::yield_now().await;
                        log.lock().unwrap().push((c.now().as_millis() as u64, who));
                    }
                })
                .await
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let v = log.lock().unwrap().clone();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actors_wake_in_the_same_order_in_every_run() {
    let first = interleaving().await;
    assert_eq!(first.len(), 60);
    assert!(first.windows(2).all(|w| w[0].0 <= w[1].0), "{first:?}");
    for _ in 0..5 {
        assert_eq!(interleaving().await, first);
    }
}

#[tokio::test(start_paused = true)]
async fn an_actor_waiting_on_a_lock_held_by_a_sleeping_actor_does_not_stop_time() {
    let c = Clock::event(f64::INFINITY).unwrap();
    let _moving = c.activity();
    let lock = Arc::new(tokio::sync::Mutex::new(()));
    let a = c.actor();
    let b = c.actor();
    let (c1, l1) = (c.clone(), lock.clone());
    let (locked_tx, locked) = tokio::sync::oneshot::channel();
    let holder = tokio::spawn(async move {
        a.run(async {
            let _g = l1.lock().await;
            let _ = locked_tx.send(());
            c1.sleep(Duration::from_secs(30)).await;
        })
        .await
    });
    // `b` is busy meanwhile: the holder's sleep cannot end before `b` waits
    locked.await.unwrap();
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        b.run(async {
            let _g = c.idle(lock.lock()).await;
            c.now()
        }),
    )
    .await
    .expect("time must move while the waiter is idle");
    assert_eq!(r, Duration::from_secs(30));
    holder.await.unwrap();
}

#[tokio::test]
async fn a_lab_time_timeout_fires_at_its_lab_deadline_without_holding_time() {
    let c = Clock::event(f64::INFINITY).unwrap();
    let _moving = c.activity();
    let me = c.actor();
    let r = me
        .run(c.timeout(Duration::from_secs(5), c.sleep(Duration::from_secs(60))))
        .await;
    assert_eq!(r, Err(Elapsed));
    assert_eq!(c.now(), Duration::from_secs(5));
    // the abandoned sleep is gone: the next one is not held back by it
    me.run(c.sleep(Duration::from_secs(1))).await;
    assert_eq!(c.now(), Duration::from_secs(6));
}

#[tokio::test(start_paused = true)]
async fn a_finite_speed_paces_the_same_events_to_wall_time() {
    let c = Clock::event(1000.0).unwrap();
    let me = c.actor();
    let wall = tokio::time::Instant::now();
    me.run(async {
        for _ in 0..300 {
            c.sleep(Duration::from_secs(1)).await;
        }
    })
    .await;
    assert_eq!(c.now(), Duration::from_secs(300));
    let w = wall.elapsed().as_secs_f64();
    assert!((w - 0.3).abs() < 0.01, "{w}");
}

#[tokio::test(start_paused = true)]
async fn a_paced_clock_catches_up_after_a_stall_instead_of_losing_lab_time() {
    let c = Clock::event(100.0).unwrap();
    let me = c.actor();
    // the actor works 2 s of wall time (a stall): lab time stays put
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(c.now(), Duration::ZERO);
    // then the 200 lab-seconds due by now pass without waiting
    let wall = tokio::time::Instant::now();
    me.run(c.sleep(Duration::from_secs(200))).await;
    assert!(wall.elapsed() < Duration::from_millis(5));
    assert_eq!(c.now(), Duration::from_secs(200));
}
