//! With an endpoint configured (a closed port here: export fails quietly, the spans are still
//! made), spans get W3C trace context and continue a remote parent. Its own test binary: the
//! subscriber is process-global.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use maosic_telemetry::{init, is_traceparent, set_parent, traceparent, traceparent_of, Settings};

#[test]
fn spans_carry_w3c_trace_context_and_continue_a_remote_parent() {
    let guard = init(&Settings {
        service: "propagation-test",
        instance: Some("t1".into()),
        filter: "info".into(),
        json: false,
        otlp_endpoint: Some("http://127.0.0.1:9".into()),
        sample_ratio: 1.0,
    })
    .expect("init");
    assert!(guard.exporting());

    // A root span starts its own sampled trace.
    let root = tracing::info_span!("root");
    let tp = traceparent_of(&root).expect("a recorded span has a context");
    assert!(is_traceparent(&tp), "{tp}");
    assert!(tp.ends_with("-01"), "sampled: {tp}");
    let trace_id = &tp[3..35];
    // A child shares the trace, with its own span id.
    let child_tp = root.in_scope(|| {
        let child = tracing::info_span!("child");
        child.in_scope(traceparent).expect("child context")
    });
    assert_eq!(&child_tp[3..35], trace_id);
    assert_ne!(child_tp[36..52], tp[36..52]);

    // A span continuing a remote parent joins the remote trace under a new span id.
    let remote = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let continued = tracing::info_span!("continued");
    assert!(set_parent(&continued, remote));
    let got = traceparent_of(&continued).unwrap();
    assert_eq!(&got[3..35], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_ne!(&got[36..52], "00f067aa0ba902b7");

    // The remote caller's decision not to sample is followed (parent-based sampler).
    let unsampled = tracing::info_span!("unsampled");
    assert!(set_parent(
        &unsampled,
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
    ));
    let got = traceparent_of(&unsampled).unwrap();
    assert!(got.ends_with("-00"), "{got}");

    // Junk is refused, and the span keeps its own trace.
    let junk = tracing::info_span!("junk");
    assert!(!set_parent(&junk, "00-zz-yy-01"));
    assert!(!set_parent(&junk, "not a traceparent"));
    let own = traceparent_of(&junk).unwrap();
    assert_ne!(&own[3..35], "4bf92f3577b34da6a3ce929d0e0e4736");
    drop(guard);
}
