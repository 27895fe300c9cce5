//! Grouped heartbeat writes beside ingest commits: a group passes over the agents whose rows
//! another transaction holds (and says which), and a group told to wait writes them once the
//! row is free.

use std::time::Duration;

use vantage_control_plane::store::{HeartbeatsRecorded, LockedAgents, Store};
use vantage_mqtt::Heartbeat;
use vantage_tests::{Backend, TestStore};

fn heartbeat() -> Heartbeat {
    Heartbeat {
        v: vantage_mqtt::PROTOCOL_VERSION,
        at_ms: 1_000,
        uptime_s: 10,
        spool_len: 0,
        spool_dropped_total: 3,
        spool_unsendable_total: 0,
        spool_write_errors_total: 0,
        next_seq: 1,
        config_revision: 0,
    }
}

async fn last_seen(store: &Store, id: &str) -> anyhow::Result<Option<i64>> {
    let sql = "SELECT last_seen_ms FROM agents WHERE id = $1";
    Ok(match store {
        Store::Postgres(pool) => sqlx::query_scalar(sql).bind(id).fetch_one(pool).await?,
        Store::Sqlite(pool) => sqlx::query_scalar(sql).bind(id).fetch_one(pool).await?,
    })
}

async fn a_heartbeat_group_passes_over_agents_an_ingest_commit_holds(
    backend: Backend,
) -> anyhow::Result<()> {
    let test_store = TestStore::create(backend).await?;
    let dir = tempfile::tempdir()?;
    let store = Store::connect(test_store.url.as_deref(), dir.path()).await?;
    store.migrate().await?;
    store.ensure_region("eu").await?;
    let insert = "INSERT INTO agents (id, region, labels, hostname, arch, os, version, cert_serial, \
                  cert_not_after_ms, state, enrolled_at_ms) VALUES \
                  ('ag-a', 'eu', '{}', 'h', 'x86_64', 'linux', '1', 's1', 0, 'offline', 0), \
                  ('ag-b', 'eu', '{}', 'h', 'x86_64', 'linux', '1', 's2', 0, 'offline', 0)";
    let inserted = match &store {
        Store::Postgres(pool) => sqlx::query(insert).execute(pool).await?.rows_affected(),
        Store::Sqlite(pool) => sqlx::query(insert).execute(pool).await?.rows_affected(),
    };
    assert_eq!(inserted, 2);
    let beat = heartbeat();
    let both = [("ag-a", &beat, 1_000), ("ag-b", &beat, 1_000)];

    let Store::Postgres(pool) = &store else {
        // One writer, no row locks: a group writes every heartbeat, whatever the mode.
        let recorded = store.record_heartbeats(&both, LockedAgents::Skip).await?;
        assert_eq!(
            recorded,
            HeartbeatsRecorded {
                back: vec!["ag-a".into(), "ag-b".into()],
                skipped: vec![],
            }
        );
        assert_eq!(last_seen(&store, "ag-a").await?, Some(1_000));
        return Ok(());
    };
    // An ingest commit holding ag-a's row, as `lock_marks_postgres` takes it.
    let mut commit = pool.begin().await?;
    sqlx::query("SELECT id FROM agents WHERE id = 'ag-a' FOR NO KEY UPDATE")
        .execute(&mut *commit)
        .await?;
    let recorded = tokio::time::timeout(
        Duration::from_secs(5),
        store.record_heartbeats(&both, LockedAgents::Skip),
    )
    .await
    .expect("a group passing over locked rows does not wait for them")?;
    assert_eq!(
        recorded,
        HeartbeatsRecorded {
            back: vec!["ag-b".into()],
            skipped: vec!["ag-a".into()],
        }
    );
    assert_eq!(last_seen(&store, "ag-a").await?, None);
    assert_eq!(last_seen(&store, "ag-b").await?, Some(1_000));

    // Told to wait, the group writes ag-a's heartbeat once the commit ends, and not before.
    let waiting = {
        let store = store.clone();
        tokio::spawn(async move {
            let beat = heartbeat();
            store
                .record_heartbeats(&[("ag-a", &beat, 2_000)], LockedAgents::Wait)
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "the group waits for the held row");
    assert_eq!(last_seen(&store, "ag-a").await?, None);
    commit.commit().await?;
    let recorded = tokio::time::timeout(Duration::from_secs(10), waiting).await???;
    assert_eq!(
        recorded,
        HeartbeatsRecorded {
            back: vec!["ag-a".into()],
            skipped: vec![],
        }
    );
    assert_eq!(last_seen(&store, "ag-a").await?, Some(2_000));
    Ok(())
}

crate::both_backends!(
    a_heartbeat_group_passes_over_agents_an_ingest_commit_holds,
    a_heartbeat_group_passes_over_agents_an_ingest_commit_holds
);
