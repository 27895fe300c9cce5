//! Host metrics from sysinfo, refreshing only what is reported: CPU, memory and swap, disks,
//! network counters (rates from the previous sample), load averages, uptime.

use std::time::Instant;

use sysinfo::{Disks, Networks, System};
use vantage_mqtt::{DiskUsage, HostMetrics, NetUsage};

/// File systems that say nothing about a node's storage.
const PSEUDO_FS: [&str; 9] = [
    "tmpfs", "devtmpfs", "overlay", "squashfs", "proc", "sysfs", "cgroup2", "devpts", "ramfs",
];

/// Keeps the sysinfo handles and the previous network sample between calls.
pub struct Collector {
    system: Option<System>,
    disks: Option<Disks>,
    networks: Option<Networks>,
    last_sample: Option<Instant>,
    per_core: bool,
}

impl Collector {
    /// A collector; `per_core` adds per-core CPU usage to every sample.
    pub fn new(per_core: bool) -> Collector {
        let mut system = System::new().ok();
        if let Some(system) = system.as_mut() {
            system.refresh_cpu_usage();
        }
        let networks = Networks::new_with_refreshed_list().ok();
        Collector {
            system,
            disks: Disks::new_with_refreshed_list().ok(),
            networks,
            last_sample: Some(Instant::now()),
            per_core,
        }
    }

    /// One sample with `seq` and `measured_at_ms` filled in.
    pub fn sample(&mut self, seq: u64, measured_at_ms: i64) -> HostMetrics {
        let mut metrics = HostMetrics {
            seq,
            measured_at_ms,
            cpu_pct: 0.0,
            cores_pct: None,
            mem_total_bytes: 0,
            mem_used_bytes: 0,
            swap_total_bytes: 0,
            swap_used_bytes: 0,
            load1: 0.0,
            load5: 0.0,
            load15: 0.0,
            uptime_s: System::uptime().unwrap_or(0),
            disks: Vec::new(),
            nets: Vec::new(),
        };
        if let Some(system) = self.system.as_mut() {
            system.refresh_cpu_usage();
            system.refresh_memory();
            metrics.cpu_pct = system.global_cpu_usage();
            if self.per_core {
                metrics.cores_pct = Some(system.cpus().iter().map(|c| c.usage()).collect());
            }
            metrics.mem_total_bytes = system.total_memory();
            metrics.mem_used_bytes = system.used_memory();
            metrics.swap_total_bytes = system.total_swap();
            metrics.swap_used_bytes = system.used_swap();
        }
        if let Ok(load) = System::load_average() {
            metrics.load1 = load.one;
            metrics.load5 = load.five;
            metrics.load15 = load.fifteen;
        }
        if let Some(disks) = self.disks.as_mut() {
            disks.refresh(true);
            for disk in disks.iter() {
                let fs = disk.file_system().to_string_lossy();
                if PSEUDO_FS.contains(&fs.as_ref()) || disk.total_space() == 0 {
                    continue;
                }
                metrics.disks.push(DiskUsage {
                    mount: disk.mount_point().to_string_lossy().into_owned(),
                    total_bytes: disk.total_space(),
                    used_bytes: disk.total_space().saturating_sub(disk.available_space()),
                });
            }
        }
        let now = Instant::now();
        let elapsed_s = self
            .last_sample
            .map(|t| now.duration_since(t).as_secs_f64())
            .unwrap_or(0.0);
        self.last_sample = Some(now);
        if let Some(networks) = self.networks.as_mut() {
            networks.refresh(true);
            let mut names: Vec<_> = networks.iter().collect();
            names.sort_by(|a, b| a.0.cmp(b.0));
            for (name, data) in names {
                let rate = |bytes: u64| {
                    if elapsed_s > 0.0 {
                        bytes as f64 / elapsed_s
                    } else {
                        0.0
                    }
                };
                metrics.nets.push(NetUsage {
                    iface: name.to_string_lossy().into_owned(),
                    rx_bytes: data.total_received(),
                    tx_bytes: data.total_transmitted(),
                    rx_bytes_per_s: rate(data.received()),
                    tx_bytes_per_s: rate(data.transmitted()),
                });
            }
        }
        metrics
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_reports_this_machine() {
        let mut collector = Collector::new(true);
        std::thread::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL);
        let sample = collector.sample(7, 123);
        assert_eq!((sample.seq, sample.measured_at_ms), (7, 123));
        assert!(sample.mem_total_bytes > 0 && sample.mem_used_bytes <= sample.mem_total_bytes);
        assert!((0.0..=100.0).contains(&sample.cpu_pct));
        assert!(!sample.cores_pct.unwrap_or_default().is_empty());
        assert!(sample.uptime_s > 0);
        assert!(sample.nets.iter().any(|n| n.iface == "lo"));
    }
}
