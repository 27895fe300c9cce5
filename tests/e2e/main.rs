//! End-to-end tests: one binary, one module per area; real processes, real TLS, real MQTT.
//! Every test in which the store plays a part runs against both stores through
//! [`both_backends!`]; tests of the agent alone, of release artifacts and of provisioning
//! scripts run once, on SQLite, and say so.

mod api;
mod backup;
mod bad_input;
mod broker_cluster;
mod cert_renewal;
mod check_types;
mod compact_rows;
mod dashboard;
mod demo;
mod durability;
mod edge_image;
mod faults;
mod heartbeat_groups;
mod http_limits;
mod install;
mod integrations;
mod packs;
mod probe_cli;
mod provision_cloud;
mod quiet_start;
mod quiet_writes;
mod replicas;
mod resilience;
mod retention;
mod row_bounds;
mod run_now;
mod secrets;
mod security;
mod spine;
mod sqlite_load;
mod systemd_install;
mod verdicts;
mod zabbix;
mod zabbix_sender;

/// Defines `<name>_sqlite` and `<name>_postgres` tests that call `body(Backend)`.
#[macro_export]
macro_rules! both_backends {
    ($name:ident, $body:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$body(vantage_tests::Backend::Sqlite).await.unwrap();
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$body(vantage_tests::Backend::Postgres)
                    .await
                    .unwrap();
            }
        }
    };
}
