//! `vantage`: the control plane binary.
//!
//! `vantage serve` runs everything on one machine: the HTTPS API and live feed (default
//! `0.0.0.0:8443`), the MQTT-over-TLS front door (`0.0.0.0:8883`) with the embedded broker
//! behind it on loopback, and the store — SQLite in the data dir by default,
//! PostgreSQL when `DATABASE_URL=postgres://…` is set. On first start it creates its CA and
//! server certificate under `<data dir>/pki/` and an admin API token in
//! `<data dir>/admin-token`. Every flag has a `VANTAGE_*` variable (see `vantage serve
//! --help`); `RUST_LOG` sets the log filter. `vantage demo` starts a local demo fleet.

use clap::Parser;

fn main() {
    vantage_control_plane::memory::tune_allocator();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            std::process::exit(1);
        }
    };
    runtime.block_on(async {
        vantage_control_plane::telemetry::init("info");
        let cli = vantage_control_plane::cli::Cli::parse();
        if let Err(error) = vantage_control_plane::cli::run(cli).await {
            eprintln!("error: {error:#}");
            std::process::exit(1);
        }
    });
}
