//! Storage conformance suite: every test runs on SQLite, and on PostgreSQL whenever
//! `MAOSIC_TEST_POSTGRES_URL` is set, each in a fresh database dropped afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::sync::Arc;

use maosic_e2e::{backends, mark_ran, TestDatabase};
use maosic_server::storage::{
    self, AgentHello, CommandState, DatabaseUrl, NewAuditEntry, PoolSettings, Role, Storage,
    StorageError,
};

async fn on_every_backend<F, Fut>(name: &str, test: F)
where
    F: Fn(Arc<dyn Storage>) -> Fut,
    Fut: Future<Output = ()>,
{
    for backend in backends() {
        let db = TestDatabase::create(backend).await.unwrap();
        let url = DatabaseUrl::parse(&db.url).unwrap();
        let storage = storage::connect(&url, &PoolSettings::default())
            .await
            .unwrap();
        storage.migrate().await.unwrap();
        // Storage calls outside any tenant scope see nothing: the suite is platform work.
        maosic_server::storage::tenant::system(test(storage)).await;
        mark_ran(backend, name);
    }
}

fn hello(version: &str) -> AgentHello {
    AgentHello {
        agent_version: version.into(),
        devices_json: r#"[{"name":"H","kind":"heater"}]"#.into(),
        descriptor_json: None,
    }
}

#[tokio::test]
async fn migrations_are_idempotent_and_the_database_answers() {
    on_every_backend("migrations", |s| async move {
        s.migrate().await.unwrap();
        s.ping().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn organizations_users_and_memberships_round_trip() {
    on_every_backend("accounts", |s| async move {
        let org = s.create_organization("Chirality Group", 1).await.unwrap();
        assert_eq!(s.organization(&org.id).await.unwrap(), org);
        assert_eq!(
            s.organization_by_name("Chirality Group").await.unwrap(),
            Some(org.clone())
        );
        assert!(matches!(
            s.organization(&"missing".into()).await,
            Err(StorageError::NotFound)
        ));

        let user = s
            .create_user(" Ada@Example.org ", "Ada", Some("$argon2id$x"), 2)
            .await
            .unwrap();
        assert_eq!(user.email, "ada@example.org");
        assert_eq!(
            s.user_by_email("ADA@example.org").await.unwrap(),
            Some(user.clone())
        );
        assert!(matches!(
            s.create_user("ada@example.org", "Other", None, 3).await,
            Err(StorageError::Conflict(_))
        ));

        s.set_membership(&org.id, &user.id, Role::Researcher, 4)
            .await
            .unwrap();
        s.set_membership(&org.id, &user.id, Role::Admin, 5)
            .await
            .unwrap();
        let memberships = s.memberships_of_user(&user.id).await.unwrap();
        assert_eq!(memberships.len(), 1);
        assert_eq!(memberships[0].role, Role::Admin);
        // A membership must point at existing rows.
        assert!(matches!(
            s.set_membership(&"no-org".into(), &user.id, Role::Viewer, 6)
                .await,
            Err(StorageError::Conflict(_))
        ));
    })
    .await;
}

#[tokio::test]
async fn labs_are_scoped_to_their_organization() {
    on_every_backend("labs", |s| async move {
        let a = s.create_organization("A", 1).await.unwrap();
        let b = s.create_organization("B", 1).await.unwrap();
        let lab_a = s.create_lab(&a.id, "reactor", 2).await.unwrap();
        let lab_b = s.create_lab(&b.id, "reactor", 2).await.unwrap();
        assert!(matches!(
            s.create_lab(&a.id, "reactor", 3).await,
            Err(StorageError::Conflict(_))
        ));
        assert_eq!(
            s.labs_of_organization(&a.id).await.unwrap(),
            vec![lab_a.clone()]
        );
        assert_eq!(s.labs_of_organization(&b.id).await.unwrap(), vec![lab_b]);
        let fresh = s.lab(&lab_a.id).await.unwrap();
        assert!(!fresh.online);
        assert_eq!(fresh.connection_generation, 0);
        assert_eq!(fresh.devices, "[]");
    })
    .await;
}

#[tokio::test]
async fn agent_credentials_can_be_revoked_once() {
    on_every_backend("credentials", |s| async move {
        let org = s.create_organization("A", 1).await.unwrap();
        let lab = s.create_lab(&org.id, "reactor", 2).await.unwrap();
        let cred = s.create_agent_credential(&lab.id, "abc", 3).await.unwrap();
        assert_eq!(
            s.agent_credential(&cred.id).await.unwrap(),
            Some(cred.clone())
        );
        assert!(s.revoke_agent_credential(&cred.id, 4).await.unwrap());
        assert!(!s.revoke_agent_credential(&cred.id, 5).await.unwrap());
        assert_eq!(
            s.agent_credential(&cred.id)
                .await
                .unwrap()
                .unwrap()
                .revoked_at,
            Some(4)
        );
        assert_eq!(s.agent_credential("nope").await.unwrap(), None);
    })
    .await;
}

#[tokio::test]
async fn only_the_current_connection_generation_changes_presence() {
    on_every_backend("presence", |s| async move {
        let org = s.create_organization("A", 1).await.unwrap();
        let lab = s.create_lab(&org.id, "reactor", 2).await.unwrap();
        let old = s
            .agent_connected(&lab.id, &hello("0.1.0"), "replica-1", 10)
            .await
            .unwrap();
        let new = s
            .agent_connected(&lab.id, &hello("0.1.1"), "replica-2", 20)
            .await
            .unwrap();
        assert_eq!((old, new), (1, 2));
        // The old connection's late traffic and close change nothing.
        assert!(!s.agent_seen(&lab.id, old, 30).await.unwrap());
        assert!(!s.agent_disconnected(&lab.id, old, 31).await.unwrap());
        let row = s.lab(&lab.id).await.unwrap();
        assert!(row.online);
        assert_eq!(row.last_seen_at, Some(20));
        assert_eq!(row.agent_version.as_deref(), Some("0.1.1"));
        // The newer connection's replica is the one calls are relayed to.
        assert_eq!(
            s.agent_replica(&lab.id).await.unwrap().as_deref(),
            Some("replica-2")
        );
        assert!(row.is_online(25, 30));
        assert!(
            !row.is_online(100, 30),
            "silent for longer than the timeout"
        );
        // The current one's traffic and close do.
        assert!(s.agent_seen(&lab.id, new, 40).await.unwrap());
        assert!(s.agent_disconnected(&lab.id, new, 41).await.unwrap());
        assert!(!s.agent_disconnected(&lab.id, new, 42).await.unwrap());
        let row = s.lab(&lab.id).await.unwrap();
        assert!(!row.online);
        assert_eq!(row.last_seen_at, Some(41));
        assert_eq!(s.agent_replica(&lab.id).await.unwrap(), None, "offline");
        assert!(matches!(
            s.agent_connected(&"missing".into(), &hello("x"), "replica-1", 1)
                .await,
            Err(StorageError::NotFound)
        ));
    })
    .await;
}

#[tokio::test]
async fn batched_presence_writes_change_only_current_generations() {
    on_every_backend("presence_batch", |s| async move {
        let org = s.create_organization("A", 1).await.unwrap();
        // 700 labs: more than one statement's worth of pairs.
        let mut labs = Vec::new();
        for i in 0..700 {
            let lab = s.create_lab(&org.id, &format!("lab {i}"), 1).await.unwrap();
            let generation = s
                .agent_connected(&lab.id, &hello("0.1.0"), "replica-1", 10)
                .await
                .unwrap();
            labs.push((lab.id, generation));
        }
        // The first lab's agent reconnected (on another replica): generation 1 is stale.
        let newer = s
            .agent_connected(&labs[0].0, &hello("0.1.1"), "replica-2", 20)
            .await
            .unwrap();
        assert_eq!(newer, labs[0].1 + 1);
        let mut noted = labs.clone();
        noted.push((labs[0].0.clone(), newer));
        noted.push(("missing".into(), 1));
        assert!(s.agents_seen(&[], 30).await.unwrap().is_empty());
        let current = s.agents_seen(&noted, 30).await.unwrap();
        assert_eq!(current.len(), 702);
        assert!(!current[0], "the superseded generation");
        assert!(current[1..700].iter().all(|c| *c));
        assert!(current[700], "the newer generation");
        assert!(!current[701], "an unknown lab");
        let first = s.lab(&labs[0].0).await.unwrap();
        assert_eq!(first.last_seen_at, Some(30));
        assert_eq!(first.agent_version.as_deref(), Some("0.1.1"));
        assert_eq!(s.lab(&labs[699].0).await.unwrap().last_seen_at, Some(30));
        // A stale generation alone changes nothing.
        assert_eq!(
            s.agents_seen(&[labs[0].clone()], 40).await.unwrap(),
            vec![false]
        );
        assert_eq!(s.lab(&labs[0].0).await.unwrap().last_seen_at, Some(30));
    })
    .await;
}

#[tokio::test]
async fn audit_entries_are_listed_newest_first_per_organization() {
    on_every_backend("audit", |s| async move {
        let a = s.create_organization("A", 1).await.unwrap();
        let b = s.create_organization("B", 1).await.unwrap();
        for (i, org) in [&a, &a, &b].into_iter().enumerate() {
            s.append_audit(
                &NewAuditEntry {
                    organization_id: Some(org.id.clone()),
                    actor: "cli".into(),
                    action: format!("act{i}"),
                    target: "lab:x".into(),
                    detail: serde_json::json!({ "i": i }),
                    source: Some("127.0.0.1".into()),
                },
                100 + i as i64,
            )
            .await
            .unwrap();
        }
        let entries = s.audit_of_organization(&a.id, 10).await.unwrap();
        let actions: Vec<_> = entries.iter().map(|e| e.action.as_str()).collect();
        assert_eq!(actions, ["act1", "act0"]);
        assert_eq!(entries[0].detail, r#"{"i":1}"#);
        assert_eq!(s.audit_of_organization(&a.id, 1).await.unwrap().len(), 1);
        assert_eq!(s.audit_of_organization(&b.id, 10).await.unwrap().len(), 1);
    })
    .await;
}

#[tokio::test]
async fn sessions_refresh_tokens_and_enrollment_tokens_are_single_use() {
    on_every_backend("single_use_tokens", |s| async move {
        let user = s
            .create_user("a@x.example", "A", Some("h"), 1)
            .await
            .unwrap();
        let session = s.create_session(&user.id, 2).await.unwrap();
        let rt = s
            .create_refresh_token(&session.id, "hash", 1000, 3)
            .await
            .unwrap();
        assert_eq!(s.refresh_token(&rt.id).await.unwrap(), Some(rt.clone()));
        assert!(s.use_refresh_token(&rt.id, 4).await.unwrap());
        assert!(!s.use_refresh_token(&rt.id, 5).await.unwrap(), "second use");
        assert!(s.revoke_session(&session.id, 6).await.unwrap());
        assert!(!s.revoke_session(&session.id, 7).await.unwrap());
        assert_eq!(
            s.session(&session.id).await.unwrap().unwrap().revoked_at,
            Some(6)
        );
        let keep = s.create_session(&user.id, 8).await.unwrap();
        let other = s.create_session(&user.id, 9).await.unwrap();
        assert_eq!(
            s.revoke_sessions_of_user(&user.id, Some(&keep.id), 10)
                .await
                .unwrap(),
            1
        );
        assert!(s
            .session(&other.id)
            .await
            .unwrap()
            .unwrap()
            .revoked_at
            .is_some());
        assert!(s
            .session(&keep.id)
            .await
            .unwrap()
            .unwrap()
            .revoked_at
            .is_none());

        let org = s.create_organization("O", 1).await.unwrap();
        let lab = s.create_lab(&org.id, "L", 1).await.unwrap();
        let et = s
            .create_enrollment_token(&lab.id, "h", 100, 1)
            .await
            .unwrap();
        assert!(s.use_enrollment_token(&et.id, 50).await.unwrap());
        assert!(
            !s.use_enrollment_token(&et.id, 51).await.unwrap(),
            "second use"
        );
        let expired = s
            .create_enrollment_token(&lab.id, "h", 100, 1)
            .await
            .unwrap();
        assert!(
            !s.use_enrollment_token(&expired.id, 100).await.unwrap(),
            "expired"
        );
    })
    .await;
}

#[tokio::test]
async fn api_tokens_invitations_and_shares_round_trip() {
    on_every_backend("api_tokens_invitations_shares", |s| async move {
        let user = s.create_user("a@x.example", "A", None, 1).await.unwrap();
        let other = s.create_user("b@x.example", "B", None, 1).await.unwrap();
        let org = s.create_organization("O", 1).await.unwrap();
        let partner = s.create_organization("P", 1).await.unwrap();
        s.set_membership(&org.id, &user.id, Role::Owner, 1)
            .await
            .unwrap();
        s.set_membership(&org.id, &other.id, Role::Viewer, 2)
            .await
            .unwrap();
        assert_eq!(
            s.memberships_of_organization(&org.id).await.unwrap().len(),
            2
        );
        assert!(s.remove_membership(&org.id, &other.id).await.unwrap());
        assert!(!s.remove_membership(&org.id, &other.id).await.unwrap());

        let t = s
            .create_api_token(&user.id, &org.id, "nb", "read", "h", 3)
            .await
            .unwrap();
        assert_eq!(
            s.api_tokens_of_user(&user.id).await.unwrap(),
            vec![t.clone()]
        );
        assert!(
            !s.revoke_api_token(&t.id, &other.id, 4).await.unwrap(),
            "not theirs"
        );
        assert!(s.revoke_api_token(&t.id, &user.id, 4).await.unwrap());
        assert_eq!(
            s.api_token(&t.id).await.unwrap().unwrap().revoked_at,
            Some(4)
        );

        let inv = storage::Invitation {
            id: storage::new_id(),
            organization_id: org.id.clone(),
            email: "C@X.example".into(),
            role: "researcher".into(),
            token_hash: "h".into(),
            created_by: "user:x".into(),
            created_at: 1,
            expires_at: 100,
            accepted_at: None,
        };
        s.create_invitation(&inv).await.unwrap();
        assert_eq!(
            s.invitation(&inv.id).await.unwrap().unwrap().email,
            "c@x.example"
        );
        assert!(s.accept_invitation(&inv.id, 10).await.unwrap());
        assert!(
            !s.accept_invitation(&inv.id, 11).await.unwrap(),
            "single use"
        );

        let lab = s.create_lab(&org.id, "L", 1).await.unwrap();
        let share = s
            .share_lab(&lab.id, &partner.id, 20, "run", 5)
            .await
            .unwrap();
        assert_eq!(share.daily_quota, 20);
        assert_eq!(
            s.share_lab(&lab.id, &partner.id, 7, "instruct", 6)
                .await
                .unwrap()
                .daily_quota,
            7
        );
        assert_eq!(s.shares_of_lab(&lab.id).await.unwrap().len(), 1);
        assert_eq!(
            s.shares_of_lab(&lab.id).await.unwrap()[0].rights,
            "instruct"
        );
        assert!(
            s.share_lab(&lab.id, &partner.id, 7, "everything", 7)
                .await
                .is_err(),
            "rights outside view/run/instruct are refused by the schema"
        );
        assert_eq!(
            s.shares_with_organization(&partner.id).await.unwrap()[0].lab_id,
            lab.id
        );
        assert!(s.unshare_lab(&lab.id, &partner.id).await.unwrap());
        assert!(s.shares_of_lab(&lab.id).await.unwrap().is_empty());
    })
    .await;
}

#[tokio::test]
async fn the_latest_measurement_of_a_kind_is_found_among_newer_records() {
    on_every_backend("latest_measurement", |s| async move {
        let org = s.create_organization("A", 1).await.unwrap();
        let lab = s.create_lab(&org.id, "reactor", 1).await.unwrap();
        let other = s.create_lab(&org.id, "other", 1).await.unwrap();
        let record = |lab_id: &str, seq: i64, kind: &str, body: serde_json::Value| {
            storage::NewRecord {
                lab_id: lab_id.into(),
                epoch: "e1".into(),
                seq,
                program_id: Some("p1".into()),
                kind: kind.into(),
                body: body.to_string(),
            }
        };
        let temperature = |t: f64| {
            serde_json::json!({ "method": "H.set_temperature", "body": { "type": "measurement",
                "name": "temperature", "measurement": { "kind": "temperature", "setpoint_c": t } } })
        };
        assert_eq!(s.latest_measurement(&lab.id, "temperature").await.unwrap(), None);
        s.store_record(&record(&lab.id, 1, "measurement", temperature(60.0)), 10)
            .await
            .unwrap();
        s.store_record(&record(&lab.id, 2, "measurement", temperature(130.0)), 20)
            .await
            .unwrap();
        // Newer records of other measurement kinds and other record kinds do not hide it.
        let spectrum = serde_json::json!({ "body": { "type": "measurement", "name": "cd",
            "measurement": { "kind": "cd_spectrum", "cd_mdeg": [1.0] } } });
        s.store_record(&record(&lab.id, 3, "measurement", spectrum), 30)
            .await
            .unwrap();
        let finished = serde_json::json!({ "body": { "type": "program_finished",
            "note": "\"kind\":\"temperature\"" } });
        s.store_record(&record(&lab.id, 4, "program_finished", finished), 40)
            .await
            .unwrap();
        // `_` is no wildcard: a newer `cdXspectrum` is not a `cd_spectrum`.
        let lookalike = serde_json::json!({ "body": { "type": "measurement", "name": "x",
            "measurement": { "kind": "cdXspectrum" } } });
        s.store_record(&record(&lab.id, 5, "measurement", lookalike), 50)
            .await
            .unwrap();
        let latest = s
            .latest_measurement(&lab.id, "temperature")
            .await
            .unwrap()
            .unwrap();
        assert_eq!((latest.seq, latest.received_at), (2, 20));
        assert!(latest.body.contains("130"));
        assert_eq!(
            s.latest_measurement(&lab.id, "cd_spectrum")
                .await
                .unwrap()
                .map(|r| r.seq),
            Some(3)
        );
        assert_eq!(s.latest_measurement(&other.id, "temperature").await.unwrap(), None);
    })
    .await;
}

#[tokio::test]
async fn a_batch_of_records_is_stored_once_per_key_and_counted_once() {
    on_every_backend("store_records", |s| async move {
        let org = s.create_organization("A", 1).await.unwrap();
        let lab = s.create_lab(&org.id, "reactor", 1).await.unwrap();
        let record = |epoch: &str, seq: i64| storage::NewRecord {
            lab_id: lab.id.clone(),
            epoch: epoch.into(),
            seq,
            program_id: (seq % 2 == 0).then(|| "p1".into()),
            kind: "measurement".into(),
            body: format!(r#"{{"body":{{"type":"measurement","seq":{seq}}}}}"#),
        };
        let day_ms = 3 * 86_400_000 + 5;
        assert!(s.store_records(&[], day_ms).await.unwrap().is_empty());
        // 600 records: more than one statement's worth, in one transaction.
        let first: Vec<_> = (1..=600).map(|seq| record("e1", seq)).collect();
        let stored = s.store_records(&first, day_ms).await.unwrap();
        assert_eq!(stored, vec![true; 600]);
        // A replayed tail, a key repeated inside the batch, a new epoch: each key stored once.
        let second = vec![
            record("e1", 599),
            record("e1", 600),
            record("e1", 601),
            record("e1", 601),
            record("e2", 1),
        ];
        let stored = s.store_records(&second, day_ms + 1).await.unwrap();
        assert_eq!(stored, vec![false, false, true, false, true]);
        assert_eq!(s.max_record_seq(&lab.id, "e1").await.unwrap(), Some(601));
        assert_eq!(s.max_record_seq(&lab.id, "e2").await.unwrap(), Some(1));
        let p1 = s.records_of_program(&lab.id, "p1", 10_000).await.unwrap();
        assert_eq!(p1.len(), 300);
        assert!(p1.iter().all(|r| r.seq % 2 == 0 && r.epoch == "e1"));
        // The day's usage counts what was stored, once.
        let bytes: i64 = first
            .iter()
            .chain(&second[2..3])
            .chain(&second[4..])
            .map(|r| r.body.len() as i64)
            .sum();
        let usage = s.ingest_usage(&lab.id, 3).await.unwrap();
        assert_eq!((usage.records, usage.bytes), (602, bytes));
        // The one-record form agrees.
        assert!(!s.store_record(&record("e2", 1), day_ms).await.unwrap());
        assert!(s.store_record(&record("e2", 2), day_ms).await.unwrap());
        assert_eq!(s.ingest_usage(&lab.id, 3).await.unwrap().records, 603);
    })
    .await;
}

#[tokio::test]
async fn postgres_row_level_security_fences_tenants_on_its_own() {
    // Set-up is platform work; the checks below run in explicit tenant scopes.
    maosic_server::storage::tenant::system(
        postgres_row_level_security_fences_tenants_on_its_own_body(),
    )
    .await;
}

async fn postgres_row_level_security_fences_tenants_on_its_own_body() {
    use maosic_server::storage::tenant::{scoped, TenantScope};
    if !backends().contains(&maosic_e2e::Backend::Postgres) {
        println!("PostgreSQL not configured: row-level security test did not run");
        return;
    }
    let db = TestDatabase::create(maosic_e2e::Backend::Postgres)
        .await
        .unwrap();
    let url = DatabaseUrl::parse(&db.url).unwrap();
    let pg = storage::SqlStorage::connect(&url, &PoolSettings::default())
        .await
        .unwrap();
    pg.migrate().await.unwrap();
    let s: &dyn Storage = &pg;
    let a = s.create_organization("A", 1).await.unwrap();
    let b = s.create_organization("B", 1).await.unwrap();
    let lab = s.create_lab(&a.id, "secret-lab", 1).await.unwrap();
    s.create_agent_credential(&lab.id, "h", 1).await.unwrap();
    let as_org = |org: &str, admin: bool| TenantScope::Principal {
        user_id: "u".into(),
        org_ids: vec![org.into()],
        admin_org_ids: if admin { vec![org.into()] } else { vec![] },
        shared_lab_ids: vec![],
    };

    // The application role is not the owner, and the policies bind the owner too (FORCE).
    let (owner, forced): (String, bool) = sqlx::query_as(
        "SELECT pg_get_userbyid(relowner)::text, relforcerowsecurity FROM pg_class WHERE relname = 'labs'",
    )
    .fetch_one(pg.postgres_pool().expect("a PostgreSQL URL"))
    .await
    .unwrap();
    assert_ne!(owner, "maosic_app");
    assert!(forced);

    // B sees nothing of A and cannot write into A; A's admin can.
    let b_scope = as_org(&b.id, true);
    scoped(b_scope.clone(), async {
        assert!(matches!(s.lab(&lab.id).await, Err(StorageError::NotFound)));
        assert!(s.labs_of_organization(&a.id).await.unwrap().is_empty());
        assert!(s
            .agent_credentials_of_lab(&lab.id)
            .await
            .unwrap()
            .is_empty());
        assert!(matches!(
            s.organization(&a.id).await,
            Err(StorageError::NotFound)
        ));
        assert!(s.create_lab(&a.id, "planted", 2).await.is_err());
        assert!(s.share_lab(&lab.id, &b.id, 1000, "run", 2).await.is_err());
        assert!(!s.agent_disconnected(&lab.id, 0, 2).await.unwrap());
        assert!(s.audit_of_organization(&a.id, 10).await.unwrap().is_empty());
    })
    .await;
    // A viewer of A reads the lab but cannot manage its credentials.
    scoped(as_org(&a.id, false), async {
        assert_eq!(s.lab(&lab.id).await.unwrap().name, "secret-lab");
        assert!(s
            .agent_credentials_of_lab(&lab.id)
            .await
            .unwrap()
            .is_empty());
        assert!(s.create_lab(&a.id, "viewer-made", 2).await.is_err());
    })
    .await;
    scoped(as_org(&a.id, true), async {
        assert_eq!(s.agent_credentials_of_lab(&lab.id).await.unwrap().len(), 1);
        s.share_lab(&lab.id, &b.id, 5, "run", 3).await.unwrap();
    })
    .await;
    // Once shared, B reads the lab (its scope lists the shared lab) but still cannot manage it.
    let shared = TenantScope::Principal {
        user_id: "u".into(),
        org_ids: vec![b.id.clone()],
        admin_org_ids: vec![b.id.clone()],
        shared_lab_ids: vec![lab.id.clone()],
    };
    scoped(shared, async {
        assert_eq!(s.lab(&lab.id).await.unwrap().id, lab.id);
        assert!(s
            .agent_credentials_of_lab(&lab.id)
            .await
            .unwrap()
            .is_empty());
        assert!(s.unshare_lab(&lab.id, &b.id).await.is_ok_and(|done| !done));
    })
    .await;
    // Platform work (no scope) sees everything.
    assert_eq!(s.labs_of_organization(&a.id).await.unwrap().len(), 1);
    assert_eq!(s.shares_of_lab(&lab.id).await.unwrap().len(), 1);
    mark_ran(maosic_e2e::Backend::Postgres, "row_level_security");
}

#[tokio::test]
async fn lab_ssh_keys_are_unique_in_force_and_accepted_only_while_their_lab_has_a_credential() {
    use maosic_server::storage::NewLabSshKey;
    let key = |lab: &str, fingerprint: &str| NewLabSshKey {
        lab_id: lab.into(),
        algorithm: "ssh-ed25519".into(),
        public_key: format!("ssh-ed25519 AAAA{fingerprint}"),
        fingerprint: fingerprint.into(),
        comment: "bench".into(),
    };
    on_every_backend("lab_ssh_keys", |s| async move {
        let org = s.create_organization("O", 1).await.unwrap();
        let lab = s.create_lab(&org.id, "a", 1).await.unwrap();
        let other = s.create_lab(&org.id, "b", 1).await.unwrap();
        let credential = s.create_agent_credential(&lab.id, "h", 1).await.unwrap();

        let added = s
            .add_lab_ssh_key(&key(&lab.id, "SHA256:one"), 2)
            .await
            .unwrap();
        assert_eq!(
            (
                added.lab_id.as_str(),
                added.comment.as_str(),
                added.created_at
            ),
            (lab.id.as_str(), "bench", 2)
        );
        assert_eq!(added.revoked_at, None);
        // A key in force belongs to one lab; the lab must exist.
        assert!(matches!(
            s.add_lab_ssh_key(&key(&other.id, "SHA256:one"), 3).await,
            Err(StorageError::Conflict(_))
        ));
        assert!(matches!(
            s.add_lab_ssh_key(&key("missing", "SHA256:two"), 3).await,
            Err(StorageError::Conflict(_))
        ));
        assert_eq!(
            s.accepted_ssh_key("SHA256:one").await.unwrap(),
            Some(added.clone())
        );
        assert_eq!(s.accepted_ssh_key("SHA256:unknown").await.unwrap(), None);

        // The other lab has no credential in force: its key is registered but not accepted.
        s.add_lab_ssh_key(&key(&other.id, "SHA256:other"), 4)
            .await
            .unwrap();
        assert_eq!(s.accepted_ssh_key("SHA256:other").await.unwrap(), None);

        // Revoking the lab's only credential closes its SSH door too.
        assert!(s.revoke_agent_credential(&credential.id, 5).await.unwrap());
        assert_eq!(s.accepted_ssh_key("SHA256:one").await.unwrap(), None);
        s.create_agent_credential(&lab.id, "h2", 6).await.unwrap();
        assert!(s.accepted_ssh_key("SHA256:one").await.unwrap().is_some());

        // Revocation: once, by the owning lab only; a revoked key may be registered again.
        assert!(!s
            .revoke_lab_ssh_key(&other.id, "SHA256:one", 7)
            .await
            .unwrap());
        assert!(s
            .revoke_lab_ssh_key(&lab.id, "SHA256:one", 7)
            .await
            .unwrap());
        assert!(!s
            .revoke_lab_ssh_key(&lab.id, "SHA256:one", 8)
            .await
            .unwrap());
        assert_eq!(s.accepted_ssh_key("SHA256:one").await.unwrap(), None);
        let again = s
            .add_lab_ssh_key(&key(&lab.id, "SHA256:one"), 9)
            .await
            .unwrap();
        assert_ne!(again.id, added.id);
        let listed = s.ssh_keys_of_lab(&lab.id).await.unwrap();
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].revoked_at, Some(7));
        assert_eq!(listed[1], again);
        assert_eq!(s.ssh_keys_of_lab(&other.id).await.unwrap().len(), 1);
    })
    .await;
}

#[tokio::test]
async fn postgres_row_level_security_fences_lab_ssh_keys() {
    // Set-up is platform work; the checks below run in explicit tenant scopes.
    maosic_server::storage::tenant::system(postgres_row_level_security_fences_lab_ssh_keys_body())
        .await;
}

async fn postgres_row_level_security_fences_lab_ssh_keys_body() {
    use maosic_server::storage::tenant::{scoped, TenantScope};
    use maosic_server::storage::NewLabSshKey;
    if !backends().contains(&maosic_e2e::Backend::Postgres) {
        println!("PostgreSQL not configured: row-level security test did not run");
        return;
    }
    let db = TestDatabase::create(maosic_e2e::Backend::Postgres)
        .await
        .unwrap();
    let url = DatabaseUrl::parse(&db.url).unwrap();
    let pg = storage::SqlStorage::connect(&url, &PoolSettings::default())
        .await
        .unwrap();
    pg.migrate().await.unwrap();
    let s: &dyn Storage = &pg;
    let a = s.create_organization("A", 1).await.unwrap();
    let b = s.create_organization("B", 1).await.unwrap();
    let lab = s.create_lab(&a.id, "secret-lab", 1).await.unwrap();
    s.create_agent_credential(&lab.id, "h", 1).await.unwrap();
    let new = |fingerprint: &str| NewLabSshKey {
        lab_id: lab.id.clone(),
        algorithm: "ssh-ed25519".into(),
        public_key: "ssh-ed25519 AAAA".into(),
        fingerprint: fingerprint.into(),
        comment: String::new(),
    };
    s.add_lab_ssh_key(&new("SHA256:a"), 2).await.unwrap();
    let as_org = |org: &str, admin: bool| TenantScope::Principal {
        user_id: "u".into(),
        org_ids: vec![org.into()],
        admin_org_ids: if admin { vec![org.into()] } else { vec![] },
        shared_lab_ids: vec![],
    };
    // Another organisation's admin, and a viewer of the lab's own, see and change nothing.
    for scope in [as_org(&b.id, true), as_org(&a.id, false)] {
        scoped(scope, async {
            assert!(s.ssh_keys_of_lab(&lab.id).await.unwrap().is_empty());
            assert_eq!(s.accepted_ssh_key("SHA256:a").await.unwrap(), None);
            assert!(s.add_lab_ssh_key(&new("SHA256:planted"), 3).await.is_err());
            assert!(!s.revoke_lab_ssh_key(&lab.id, "SHA256:a", 3).await.unwrap());
        })
        .await;
    }
    scoped(as_org(&a.id, true), async {
        assert_eq!(s.ssh_keys_of_lab(&lab.id).await.unwrap().len(), 1);
    })
    .await;
    // Platform work (the SSH endpoint's look-up) sees the key.
    assert!(s.accepted_ssh_key("SHA256:a").await.unwrap().is_some());
    mark_ran(
        maosic_e2e::Backend::Postgres,
        "lab_ssh_keys_row_level_security",
    );
}

#[tokio::test]
async fn queued_commands_move_forward_only_and_expire_at_their_deadline() {
    use maosic_server::storage::commands::{CommandEnd, NewLabCommand};
    on_every_backend("lab_commands", |s| async move {
        let org = s.create_organization("A", 1).await.unwrap();
        let lab = s.create_lab(&org.id, "lab", 1).await.unwrap();
        let new = |deadline_at: i64| NewLabCommand {
            organization_id: org.id.clone(),
            lab_id: lab.id.clone(),
            method: "H.read".into(),
            params_json: "{}".into(),
            program_json: "{}".into(),
            created_by: "u".into(),
            deadline_at,
        };
        let late = s.create_command(&new(100), 10).await.unwrap();
        let timely = s.create_command(&new(10_000), 10).await.unwrap();
        let canceled = s.create_command(&new(10_000), 11).await.unwrap();
        assert_eq!(late.state, CommandState::Queued);
        assert_eq!(s.open_commands().await.unwrap().len(), 3);

        // Past its deadline a queued command cannot be claimed; the sweep times it out.
        assert!(s.claim_command(&late.id, 100).await.unwrap().is_none());
        let expired = s.expire_commands(100).await.unwrap();
        assert_eq!(
            expired.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
            [late.id.as_str()]
        );
        assert!(s.expire_commands(200).await.unwrap().is_empty());

        // queued → sent (counting attempts; a re-send of sent is allowed) → succeeded.
        let sent = s.claim_command(&timely.id, 50).await.unwrap().unwrap();
        assert_eq!((sent.state.as_str(), sent.attempts), ("sent", 1));
        let again = s.claim_command(&timely.id, 20_000).await.unwrap().unwrap();
        assert_eq!(
            again.attempts, 2,
            "a sent command may be re-sent after its deadline"
        );
        assert!(!s
            .finish_command(&timely.id, CommandEnd::Canceled, None, None, 60)
            .await
            .unwrap());
        assert!(s
            .finish_command(&timely.id, CommandEnd::Succeeded, Some("{}"), None, 60)
            .await
            .unwrap());
        assert!(s.claim_command(&timely.id, 70).await.unwrap().is_none());

        // Terminal states never change.
        assert!(s
            .finish_command(&canceled.id, CommandEnd::Canceled, None, None, 61)
            .await
            .unwrap());
        for end in [
            CommandEnd::Succeeded,
            CommandEnd::Failed,
            CommandEnd::TimedOut,
            CommandEnd::Canceled,
        ] {
            for id in [&late.id, &timely.id, &canceled.id] {
                assert!(!s.finish_command(id, end, None, None, 99).await.unwrap());
            }
        }
        assert!(s.claim_command(&canceled.id, 70).await.unwrap().is_none());
        let states: Vec<String> = s
            .commands_of_lab(&lab.id, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.state.to_string())
            .collect();
        assert_eq!(states, ["canceled", "succeeded", "timed_out"]);
        assert!(s.open_commands().await.unwrap().is_empty());
        assert!(matches!(
            s.command(&"00000000-0000-0000-0000-000000000000".into())
                .await,
            Err(StorageError::NotFound)
        ));
    })
    .await;
}

/// Fail-closed tenant scope and full row-level-security coverage (issue 15, item 3): a storage
/// call made outside any scope sees no tenant's rows (never the platform's view), every table
/// the application role may touch has row-level security, and records are fenced like the rest.
#[tokio::test]
async fn postgres_calls_outside_any_scope_see_nothing_and_every_table_is_fenced() {
    use maosic_server::storage::records::NewRecord;
    use maosic_server::storage::tenant::{scoped, system, TenantScope};
    if !backends().contains(&maosic_e2e::Backend::Postgres) {
        println!("PostgreSQL not configured: fail-closed scope test did not run");
        return;
    }
    let db = TestDatabase::create(maosic_e2e::Backend::Postgres)
        .await
        .unwrap();
    let url = DatabaseUrl::parse(&db.url).unwrap();
    let pg = storage::SqlStorage::connect(&url, &PoolSettings::default())
        .await
        .unwrap();
    pg.migrate().await.unwrap();
    let s: &dyn Storage = &pg;
    let (a, b, lab, user) = system(async {
        let a = s.create_organization("A", 1).await.unwrap();
        let b = s.create_organization("B", 1).await.unwrap();
        let lab = s.create_lab(&a.id, "lab", 1).await.unwrap();
        let user = s
            .create_user("someone@example.org", "Someone", Some("hash"), 1)
            .await
            .unwrap();
        s.store_record(
            &NewRecord {
                lab_id: lab.id.clone(),
                epoch: "e".into(),
                seq: 1,
                program_id: Some("p".into()),
                kind: "measurement".into(),
                body: r#"{"body":{"type":"measurement"}}"#.into(),
            },
            5,
        )
        .await
        .unwrap();
        (a, b, lab, user)
    })
    .await;

    // No scope at all: nothing, not the platform's view.
    assert!(matches!(s.lab(&lab.id).await, Err(StorageError::NotFound)));
    assert!(s.labs_of_organization(&a.id).await.unwrap().is_empty());
    assert!(s
        .records_of_program(&lab.id, "p", 10)
        .await
        .unwrap()
        .is_empty());
    assert!(s
        .user_by_email("someone@example.org")
        .await
        .unwrap()
        .is_none());
    // A's own scope reads A's records; B's scope reads neither records nor A's users.
    let scope = |org: &str, user_id: &str| TenantScope::Principal {
        user_id: user_id.into(),
        org_ids: vec![org.into()],
        admin_org_ids: vec![],
        shared_lab_ids: vec![],
    };
    scoped(scope(&a.id, "x"), async {
        assert_eq!(
            s.records_of_program(&lab.id, "p", 10).await.unwrap().len(),
            1
        );
    })
    .await;
    scoped(scope(&b.id, "x"), async {
        assert!(s
            .records_of_program(&lab.id, "p", 10)
            .await
            .unwrap()
            .is_empty());
        assert!(s
            .user_by_email("someone@example.org")
            .await
            .unwrap()
            .is_none());
        // Platform-only accounting: not even readable by a tenant.
        assert!(s.ingest_usage(&lab.id, 0).await.is_err());
    })
    .await;
    // A user reads itself.
    scoped(scope(&b.id, &user.id), async {
        assert!(s
            .user_by_email("someone@example.org")
            .await
            .unwrap()
            .is_some());
    })
    .await;

    // Every table the application role can read has row-level security, forced.
    let unfenced: Vec<(String,)> = sqlx::query_as(
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = 'public' AND c.relkind = 'r' AND c.relname <> '_sqlx_migrations' \
         AND has_table_privilege('maosic_app', c.oid, 'SELECT') \
         AND NOT (c.relrowsecurity AND c.relforcerowsecurity)",
    )
    .fetch_all(pg.postgres_pool().expect("a PostgreSQL URL"))
    .await
    .unwrap();
    assert!(
        unfenced.is_empty(),
        "tables without row-level security: {unfenced:?}"
    );
    mark_ran(maosic_e2e::Backend::Postgres, "fail_closed_scope");
}

#[tokio::test]
async fn attempt_reservations_are_atomic_and_windows_restart() {
    on_every_backend("auth_throttle", |s| async move {
        let now = 1_000_000;
        // 50 concurrent reservations against a limit of 5: exactly 5 pass.
        let tries = (0..50).map(|_| {
            let s = s.clone();
            tokio::spawn(maosic_server::storage::tenant::system(async move {
                s.reserve_attempts(&[("k", 5)], 60_000, now).await.unwrap()
            }))
        });
        let passed = futures_util::future::join_all(tries)
            .await
            .into_iter()
            .filter(|r| *r.as_ref().unwrap())
            .count();
        assert_eq!(passed, 5);
        // Any key over its limit refuses the attempt; every key counts it.
        assert!(!s
            .reserve_attempts(&[("k", 5), ("j", 5)], 60_000, now)
            .await
            .unwrap());
        for _ in 0..4 {
            assert!(s.reserve_attempts(&[("j", 5)], 60_000, now).await.unwrap());
        }
        // A refund (a success) gives one attempt back.
        s.refund_attempt("j").await.unwrap();
        assert!(s.reserve_attempts(&[("j", 5)], 60_000, now).await.unwrap());
        assert!(!s.reserve_attempts(&[("j", 5)], 60_000, now).await.unwrap());
        // A new window starts the count again; clearing forgets the key.
        assert!(s
            .reserve_attempts(&[("k", 5)], 60_000, now + 60_000)
            .await
            .unwrap());
        s.clear_attempts("j").await.unwrap();
        assert!(s.reserve_attempts(&[("j", 1)], 60_000, now).await.unwrap());
        assert!(s.prune_auth(now + 1, now).await.unwrap() >= 1);
    })
    .await;
}

#[tokio::test]
async fn sign_up_requests_become_accounts_once_and_mail_is_claimed_once() {
    on_every_backend("signup_outbox", |s| async move {
        let request = storage::SignupRequest {
            id: "req-1".into(),
            email: "new@x.example".into(),
            display_name: "New".into(),
            organization_name: "New org".into(),
            password_hash: "$argon2id$fake".into(),
            token_hash: "h".into(),
            created_at: 10,
            expires_at: 100,
            used_at: None,
        };
        let mail = storage::NewMail {
            recipient: "new@x.example".into(),
            subject: "s".into(),
            body: "token mvt_x.y".into(),
        };
        s.create_signup_request(&request, &mail).await.unwrap();
        assert_eq!(
            s.signup_request("req-1").await.unwrap(),
            Some(request.clone())
        );
        assert_eq!(
            s.complete_signup("req-1", 100).await.unwrap(),
            None,
            "expired"
        );
        let (user, org) = s.complete_signup("req-1", 50).await.unwrap().unwrap();
        assert_eq!(user.email, "new@x.example");
        assert_eq!(org.name, "New org");
        let m = s.memberships_of_user(&user.id).await.unwrap();
        assert_eq!((m.len(), m[0].role), (1, Role::Owner));
        assert_eq!(
            s.complete_signup("req-1", 51).await.unwrap(),
            None,
            "single use"
        );
        // A second request for the same address cannot make a second account.
        let again = storage::SignupRequest {
            id: "req-2".into(),
            ..request
        };
        s.create_signup_request(&again, &mail).await.unwrap();
        assert!(matches!(
            s.complete_signup("req-2", 50).await,
            Err(StorageError::Conflict(_))
        ));
        assert!(s
            .signup_request("req-2")
            .await
            .unwrap()
            .unwrap()
            .used_at
            .is_none());
        // The outbox: each mail claimed once per lease, blanked when sent.
        let first = s.claim_mail(1_000, 60_000).await.unwrap().unwrap();
        let second = s.claim_mail(1_000, 60_000).await.unwrap().unwrap();
        assert_ne!(first.id, second.id);
        assert_eq!(s.claim_mail(1_000, 60_000).await.unwrap(), None);
        s.mark_mail_sent(&first.id, 2_000).await.unwrap();
        let retried = s.claim_mail(61_001, 60_000).await.unwrap().unwrap();
        assert_eq!(
            (retried.id.as_str(), retried.attempts),
            (second.id.as_str(), 2)
        );
        assert_eq!(
            s.claim_mail(200_000, 60_000).await.unwrap().map(|m| m.id),
            Some(second.id)
        );
    })
    .await;
}

#[tokio::test]
async fn an_organisation_keeps_an_owner_whatever_the_interleaving() {
    on_every_backend("last_owner", |s| async move {
        let org = s.create_organization("Owned", 1).await.unwrap();
        let mut users = Vec::new();
        for i in 0..8 {
            let u = s
                .create_user(&format!("o{i}@x.example"), "O", None, 1)
                .await
                .unwrap();
            s.set_membership(&org.id, &u.id, Role::Owner, 1)
                .await
                .unwrap();
            users.push(u.id);
        }
        // Every owner demoted (or removed) at once: exactly one stays.
        for round in 0..2 {
            let changes = users.iter().map(|u| {
                let (s, org, u) = (s.clone(), org.id.clone(), u.clone());
                tokio::spawn(maosic_server::storage::tenant::system(async move {
                    if round == 0 {
                        s.change_member_role(&org, &u, Role::Admin, &u)
                            .await
                            .unwrap()
                    } else {
                        s.remove_member(&org, &u, &u).await.unwrap()
                    }
                }))
            });
            let results: Vec<storage::MemberChange> = futures_util::future::join_all(changes)
                .await
                .into_iter()
                .map(Result::unwrap)
                .collect();
            let owners = s
                .memberships_of_organization(&org.id)
                .await
                .unwrap()
                .into_iter()
                .filter(|m| m.role == Role::Owner)
                .count();
            assert_eq!(owners, 1, "round {round}: {results:?}");
            assert_eq!(
                results
                    .iter()
                    .filter(|r| **r == storage::MemberChange::LastOwner)
                    .count(),
                1
            );
            if round == 0 {
                for u in &users {
                    s.set_membership(&org.id, u, Role::Owner, 2).await.unwrap();
                }
            }
        }
        let last = s.memberships_of_organization(&org.id).await.unwrap();
        assert_eq!(last.len(), 1);
        // Joining with a lower role keeps the higher one; only owners touch owners (an admin
        // may not demote an owner).
        assert_eq!(
            s.join_organization(&org.id, &last[0].user_id, Role::Viewer, 3)
                .await
                .unwrap(),
            Role::Owner
        );
        let newcomer = s.create_user("n@x.example", "N", None, 1).await.unwrap();
        assert_eq!(
            s.join_organization(&org.id, &newcomer.id, Role::Viewer, 3)
                .await
                .unwrap(),
            Role::Viewer
        );
        assert_eq!(
            s.join_organization(&org.id, &newcomer.id, Role::Admin, 4)
                .await
                .unwrap(),
            Role::Admin
        );
        assert_eq!(
            s.change_member_role(&org.id, &last[0].user_id, Role::Viewer, &newcomer.id)
                .await
                .unwrap(),
            storage::MemberChange::Forbidden
        );
        assert_eq!(
            s.change_member_role(&org.id, &"nobody".into(), Role::Viewer, &last[0].user_id)
                .await
                .unwrap(),
            storage::MemberChange::NotMember
        );
        // The actor's role is read under the lock too: a non-manager changes nothing.
        assert_eq!(
            s.change_member_role(&org.id, &newcomer.id, Role::Viewer, &"nobody".into())
                .await
                .unwrap(),
            storage::MemberChange::Forbidden
        );
        assert_eq!(
            s.remove_member(&org.id, &newcomer.id, &newcomer.id)
                .await
                .unwrap(),
            storage::MemberChange::Done
        );
    })
    .await;
}

#[tokio::test]
async fn postgres_keeps_the_account_guard_tables_out_of_tenant_reach() {
    // Set-up is platform work; the checks below run in explicit tenant scopes.
    maosic_server::storage::tenant::system(
        postgres_keeps_the_account_guard_tables_out_of_tenant_reach_body(),
    )
    .await;
}

async fn postgres_keeps_the_account_guard_tables_out_of_tenant_reach_body() {
    use maosic_server::storage::tenant::{scoped, TenantScope};
    if !backends().contains(&maosic_e2e::Backend::Postgres) {
        println!("PostgreSQL not configured: platform-table test did not run");
        return;
    }
    let db = TestDatabase::create(maosic_e2e::Backend::Postgres)
        .await
        .unwrap();
    let url = DatabaseUrl::parse(&db.url).unwrap();
    let pg = storage::SqlStorage::connect(&url, &PoolSettings::default())
        .await
        .unwrap();
    pg.migrate().await.unwrap();
    let s: &dyn Storage = &pg;
    let mail = storage::NewMail {
        recipient: "a@x.example".into(),
        subject: "s".into(),
        body: "mvt_secret.token".into(),
    };
    s.enqueue_mail(&mail, 1).await.unwrap();
    assert!(s.reserve_attempts(&[("k", 5)], 60_000, 1).await.unwrap());
    // A tenant's transaction (role maosic_app) has no privilege on them at all.
    let tenant = TenantScope::Principal {
        user_id: "u".into(),
        org_ids: vec!["o".into()],
        admin_org_ids: vec!["o".into()],
        shared_lab_ids: vec![],
    };
    scoped(tenant, async {
        assert!(s.reserve_attempts(&[("k", 5)], 60_000, 1).await.is_err());
        assert!(s.claim_mail(1, 1_000).await.is_err());
        assert!(s.signup_request("x").await.is_err());
    })
    .await;
    // And FORCE'd bypass-only policies fence the owner role too.
    for table in ["auth_throttle", "signup_requests", "mail_outbox"] {
        let (forced,): (bool,) =
            sqlx::query_as("SELECT relforcerowsecurity FROM pg_class WHERE relname = $1")
                .bind(table)
                .fetch_one(pg.postgres_pool().expect("a PostgreSQL URL"))
                .await
                .unwrap();
        assert!(forced, "{table}");
    }
    mark_ran(maosic_e2e::Backend::Postgres, "platform_tables");
}

#[tokio::test]
async fn engine_leases_go_to_one_replica_move_when_expired_and_prefer_the_agents_holder() {
    on_every_backend("engine_leases", |s| async move {
        let org = s.create_organization("A", 1).await.unwrap();
        let a = s.create_lab(&org.id, "reactor a", 2).await.unwrap().id;
        let b = s.create_lab(&org.id, "reactor b", 2).await.unwrap().id;
        let ttl = 5_000;
        let sorted = |mut v: Vec<_>| {
            v.sort();
            v
        };
        // Replica 1 takes both; replica 2 (no agent) gets neither while they are live.
        let both = vec![(a.clone(), false), (b.clone(), false)];
        assert_eq!(
            sorted(
                s.claim_engine_leases("r1", &both, ttl, 1_000)
                    .await
                    .unwrap()
            ),
            sorted(vec![a.clone(), b.clone()])
        );
        assert!(s
            .claim_engine_leases("r2", &both, ttl, 2_000)
            .await
            .unwrap()
            .is_empty());
        // Renewed by its holder, still refused to the other.
        assert_eq!(
            s.claim_engine_leases("r1", &[(a.clone(), false)], ttl, 5_500)
                .await
                .unwrap(),
            vec![a.clone()]
        );
        // b expired (renewed at 1 000, so until 6 000); a is live until 10 500.
        assert_eq!(
            s.claim_engine_leases("r2", &both, ttl, 6_001)
                .await
                .unwrap(),
            vec![b.clone()]
        );
        // A replica holding a's agent takes a from one that does not hold it...
        assert_eq!(
            s.claim_engine_leases("r2", &[(a.clone(), true)], ttl, 6_002)
                .await
                .unwrap(),
            vec![a.clone()]
        );
        // ...but a live holder with the agent keeps it, even against another with the agent.
        assert!(s
            .claim_engine_leases("r1", &[(a.clone(), true)], ttl, 6_003)
            .await
            .unwrap()
            .is_empty());
        // A replica shutting down gives its leases up at once.
        s.release_engine_leases("r2").await.unwrap();
        assert_eq!(
            sorted(
                s.claim_engine_leases("r1", &both, ttl, 6_004)
                    .await
                    .unwrap()
            ),
            sorted(vec![a.clone(), b.clone()])
        );
    })
    .await;
}
