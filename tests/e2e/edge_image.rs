//! The bootable edge image (image/edge) end to end: the built disk image, configured with
//! image/edge/configure.sh, boots under qemu through UEFI (TCG, user-mode networking, virtio
//! disk/NIC/RNG), enrolls with a one-use token over HTTPS at 10.0.2.2 (the host's loopback as
//! the guest sees it) and comes online over mutual-TLS MQTT; booted again from the same disk,
//! the same agent id comes back online with the identity kept on the state partition.
//!
//! The images come from `$VANTAGE_DIST_DIR` (default `<workspace>/dist`), built by
//! image/build (or image/edge/build.sh); qemu and the UEFI firmware by image/edge/deps.sh.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde_json::Value;
use vantage_tests::{Backend, ControlPlane, TestStore};

/// Per boot: UEFI, the kernel, the init and enrollment under TCG on a busy 2-core machine.
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
const REGION: &str = "edge";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x86_64_image_boots_enrolls_and_keeps_its_identity() {
    boot_enroll_reboot(&X86_64).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aarch64_image_boots_enrolls_and_keeps_its_identity() {
    boot_enroll_reboot(&AARCH64).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn armv7_image_boots_enrolls_and_keeps_its_identity() {
    boot_enroll_reboot(&ARMV7).await.unwrap();
}

/// How qemu runs one architecture's image.
struct Machine {
    arch: &'static str,
    /// What the agent reports (`std::env::consts::ARCH` of its build).
    reported_arch: &'static str,
    qemu: &'static str,
    machine: &'static [&'static str],
    firmware_code: &'static str,
    firmware_vars: &'static str,
}

const X86_64: Machine = Machine {
    arch: "x86_64",
    reported_arch: "x86_64",
    qemu: "qemu-system-x86_64",
    machine: &["-machine", "q35", "-vga", "none"],
    firmware_code: "/usr/share/OVMF/OVMF_CODE_4M.fd",
    firmware_vars: "/usr/share/OVMF/OVMF_VARS_4M.fd",
};

const AARCH64: Machine = Machine {
    arch: "aarch64",
    reported_arch: "aarch64",
    qemu: "qemu-system-aarch64",
    machine: &["-machine", "virt", "-cpu", "cortex-a57"],
    firmware_code: "/usr/share/AAVMF/AAVMF_CODE.fd",
    firmware_vars: "/usr/share/AAVMF/AAVMF_VARS.fd",
};

const ARMV7: Machine = Machine {
    arch: "armv7",
    reported_arch: "arm",
    qemu: "qemu-system-arm",
    machine: &["-machine", "virt", "-cpu", "cortex-a15"],
    firmware_code: "/usr/share/AAVMF/AAVMF32_CODE.fd",
    firmware_vars: "/usr/share/AAVMF/AAVMF32_VARS.fd",
};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

/// The newest `vantage-edge-*-<arch>.img` in the dist dir; never a silent skip.
fn find_image(arch: &str) -> anyhow::Result<PathBuf> {
    let dist = std::env::var_os("VANTAGE_DIST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("dist"));
    let suffix = format!("-{arch}.img");
    let newest = std::fs::read_dir(&dist)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            name.starts_with("vantage-edge-") && name.ends_with(&suffix)
        })
        .filter_map(|entry| Some((entry.metadata().ok()?.modified().ok()?, entry.path())))
        .max();
    match newest {
        Some((_, path)) => Ok(path),
        None => bail!(
            "no vantage-edge-*-{arch}.img in {}: run image/build first \
             (or image/edge/build.sh --arch {arch} --agent <static agent> --out {0})",
            dist.display()
        ),
    }
}

/// A running qemu, killed on every exit path.
struct Qemu {
    child: Child,
    serial: PathBuf,
    stderr: PathBuf,
    started: Instant,
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Qemu {
    fn boot(
        machine: &Machine,
        dir: &Path,
        disk: &Path,
        vars: &Path,
        n: u32,
    ) -> anyhow::Result<Qemu> {
        let serial = dir.join(format!("serial-{n}.log"));
        let stderr = dir.join(format!("qemu-{n}.log"));
        let log = std::fs::File::create(&stderr)?;
        let mut command = Command::new(machine.qemu);
        command
            .args(machine.machine)
            .args(["-accel", accelerator(machine), "-smp", "1", "-m", "512"])
            .args(["-nodefaults", "-display", "none", "-no-reboot"])
            .arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={}",
                machine.firmware_code
            ))
            .arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,unit=1,file={}",
                vars.display()
            ))
            .arg("-drive")
            .arg(format!(
                "file={},format=raw,if=none,id=disk0",
                disk.display()
            ))
            .args(["-device", "virtio-blk-pci,drive=disk0,bootindex=0"])
            .args(["-netdev", "user,id=net0"])
            .args(["-device", "virtio-net-pci,netdev=net0"])
            .args(["-device", "virtio-rng-pci"])
            .arg("-serial")
            .arg(format!("file:{}", serial.display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {}: run image/edge/deps.sh", machine.qemu))?;
        Ok(Qemu {
            child,
            serial,
            stderr,
            started: Instant::now(),
        })
    }

    /// The init's step lines (`vantage-edge: …`), the last lines of the serial console and
    /// qemu's own output, for failure messages.
    fn tail(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = std::fs::File::open(&self.serial) {
            let length = file.metadata().map(|m| m.len()).unwrap_or(0);
            let _ = file.seek(SeekFrom::Start(length.saturating_sub(1024 * 1024)));
            let mut bytes = Vec::new();
            let _ = file.read_to_end(&mut bytes);
            text = String::from_utf8_lossy(&bytes).replace('\r', "");
        }
        let lines: Vec<&str> = text.lines().collect();
        let steps: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| l.contains("vantage-edge:"))
            .collect();
        format!(
            "init steps on the serial console ({}):\n{}\nserial console tail:\n{}\nqemu: {}",
            self.serial.display(),
            steps[steps.len().saturating_sub(40)..].join("\n"),
            lines[lines.len().saturating_sub(40)..].join("\n"),
            std::fs::read_to_string(&self.stderr)
                .unwrap_or_default()
                .trim()
        )
    }
}

/// Waits until one agent of the region is online with a boot id other than `not_boot`;
/// returns its API view. Fails at once when qemu exits.
async fn wait_online(
    cp: &ControlPlane,
    qemu: &mut Qemu,
    not_boot: Option<&str>,
) -> anyhow::Result<Value> {
    let deadline = Instant::now() + BOOT_TIMEOUT;
    loop {
        if let Some(status) = qemu.child.try_wait()? {
            bail!("qemu exited ({status}) before the agent came online");
        }
        if let Ok((200, Value::Array(agents))) =
            cp.get(&format!("/api/v1/agents?region={REGION}")).await
            && let Some(agent) = agents.iter().find(|a| {
                a["state"] == "online"
                    && a["boot_id"] != ""
                    && not_boot.is_none_or(|b| a["boot_id"] != b)
            })
        {
            return Ok(agent.clone());
        }
        if Instant::now() > deadline {
            bail!("the agent was not online {BOOT_TIMEOUT:?} after qemu started");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn boot_enroll_reboot(machine: &Machine) -> anyhow::Result<()> {
    let arch = machine.arch;
    let image = find_image(arch)?;
    ensure!(
        Path::new(machine.firmware_code).exists() && Path::new(machine.firmware_vars).exists(),
        "UEFI firmware {} is missing: run image/edge/deps.sh {arch}",
        machine.firmware_code
    );
    eprintln!("{arch}: qemu accelerator {}", accelerator(machine));

    let store = TestStore::create(Backend::Sqlite).await?;
    let cp = ControlPlane::start_with(&store, &[("VANTAGE_PUBLIC_HOST", "10.0.2.2")]).await?;
    let token = cp.enrollment_token(REGION, 1).await?;

    let temp = tempfile::tempdir()?;
    let dir = temp.path();
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "server_url = \"https://10.0.2.2:{}\"\nenrollment_token = \"{token}\"\n\
             ca_pem = \"\"\"\n{}\"\"\"\n[labels]\nimage = \"edge-{arch}\"\n",
            cp.http_port,
            cp.ca_pem.trim_end()
        ),
    )?;
    let disk = dir.join("disk.img");
    let copied = Command::new("cp")
        .arg("--sparse=always")
        .arg(&image)
        .arg(&disk)
        .status()?;
    ensure!(copied.success(), "cannot copy {}", image.display());
    let configure = Command::new(workspace_root().join("image/edge/configure.sh"))
        .arg(&disk)
        .arg(&config)
        .output()?;
    ensure!(
        configure.status.success(),
        "configure.sh failed: {}",
        String::from_utf8_lossy(&configure.stderr)
    );
    let vars = dir.join("vars.fd");
    std::fs::copy(machine.firmware_vars, &vars)?;

    // First boot: enroll with the token, come online.
    let mut qemu = Qemu::boot(machine, dir, &disk, &vars, 1)?;
    let first = wait_online(&cp, &mut qemu, None).await.with_context(|| {
        format!(
            "{arch}, first boot of {}\n{}\n{}",
            image.display(),
            qemu.tail(),
            cp.log_tail()
        )
    })?;
    let first_seconds = qemu.started.elapsed().as_secs_f64();
    let id = first["id"].as_str().context("agent id")?.to_owned();
    let first_boot = first["boot_id"].as_str().context("boot id")?.to_owned();
    eprintln!(
        "{arch}: first boot: agent {id} online {first_seconds:.1} s after qemu started \
         (os {}, hostname {})",
        first["os"], first["hostname"]
    );
    ensure!(
        first["arch"] == machine.reported_arch,
        "agent reports arch {}",
        first["arch"]
    );
    ensure!(
        first["labels"]["image"] == format!("edge-{arch}"),
        "labels: {first}"
    );
    drop(qemu);

    // Second boot of the same disk: the token is spent, so only a kept identity comes back.
    let mut qemu = Qemu::boot(machine, dir, &disk, &vars, 2)?;
    let second = wait_online(&cp, &mut qemu, Some(&first_boot))
        .await
        .with_context(|| {
            format!(
                "{arch}, second boot (same disk)\n{}\n{}",
                qemu.tail(),
                cp.log_tail()
            )
        })?;
    let second_seconds = qemu.started.elapsed().as_secs_f64();
    eprintln!(
        "{arch}: second boot: agent {} online {second_seconds:.1} s after qemu started",
        second["id"].as_str().unwrap_or("?")
    );
    ensure!(
        second["id"] == id.as_str(),
        "a different agent came online after the reboot: {second}\n{}",
        qemu.tail()
    );
    let (_, agents) = cp.get(&format!("/api/v1/agents?region={REGION}")).await?;
    ensure!(
        agents.as_array().map(Vec::len) == Some(1),
        "more than one agent enrolled: {agents}"
    );
    drop(qemu);
    Ok(())
}

/// KVM when it can work, TCG otherwise. It works for a guest of the host's own arch when
/// `/dev/kvm` opens and the CPU offers hardware virtualisation (vmx, svm, or an arm64 host);
/// a `/dev/kvm` backed by nested software virtualisation (no vmx/svm flag) makes UEFI die
/// with an emulation failure, so it is not used.
fn accelerator(machine: &Machine) -> &'static str {
    let native = machine.reported_arch == std::env::consts::ARCH;
    let device = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    let hardware = std::env::consts::ARCH == "aarch64"
        || std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|info| {
            info.lines()
                .filter(|l| l.starts_with("flags"))
                .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
        });
    if native && device && hardware {
        "kvm"
    } else {
        "tcg"
    }
}
