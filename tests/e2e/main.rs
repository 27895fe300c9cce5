//! End-to-end tests: one binary, one module per area. Every test runs against both stores
//! through [`both_backends!`]; real processes, real TLS, real MQTT.

mod api;
mod bad_input;
mod cert_renewal;
mod check_types;
mod demo;
mod durability;
mod edge_image;
mod install;
mod probe_cli;
mod provision_cloud;
mod resilience;
mod row_bounds;
mod run_now;
mod secrets;
mod security;
mod spine;
mod systemd_install;

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
