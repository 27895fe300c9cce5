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

/// Buffers of this size and more (desired configs, MQTT packets, batches) are mapped on their
/// own and returned to the system when freed.
const MMAP_THRESHOLD_BYTES: i32 = 64 * 1024;

fn main() {
    // glibc raises its mmap threshold after each large free, after which large buffers come
    // from the heap arenas and fragment them: RSS then climbs with every burst of config
    // changes and reconnects. A fixed threshold keeps large buffers out of the arenas
    // (BENCHMARKS.md, config churn).
    // SAFETY: mallopt only changes allocator parameters, and no other thread exists yet (the
    // runtime is built below).
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES);
    }
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
