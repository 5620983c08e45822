//! A process's CPU time and memory, read from `/proc`.

use std::fs;

use anyhow::{anyhow, Context as _};

/// CPU time (user + system) a process has used so far, in seconds.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read /proc/{pid}/stat"))?;
    // Fields after the parenthesised command name (which may hold spaces): state is field 3,
    // utime field 14 and stime field 15.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("/proc/{pid}/stat has no command name: {stat}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| anyhow!("/proc/{pid}/stat: no field {}: {stat}", i + 3))
    };
    let ticks = tick(11)? + tick(12)?;
    Ok(ticks as f64 / rustix::param::clock_ticks_per_second() as f64)
}

/// Peak resident memory (`VmHWM`) of a process, in MiB.
pub fn peak_rss_mb(pid: u32) -> anyhow::Result<f64> {
    status_kib(pid, "VmHWM:").map(|k| k as f64 / 1024.0)
}

/// Current resident memory (`VmRSS`) of a process, in MiB.
pub fn rss_mb(pid: u32) -> anyhow::Result<f64> {
    status_kib(pid, "VmRSS:").map(|k| k as f64 / 1024.0)
}

fn status_kib(pid: u32, key: &str) -> anyhow::Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow!("no {key} in /proc/{pid}/status"))
}

/// CPU used by a process between two readings.
#[derive(Debug, Clone, Copy)]
pub struct CpuMeter {
    pid: u32,
    cpu: f64,
    at: std::time::Instant,
}

impl CpuMeter {
    /// Starts measuring `pid` now.
    pub fn start(pid: u32) -> anyhow::Result<CpuMeter> {
        Ok(CpuMeter {
            pid,
            cpu: cpu_seconds(pid)?,
            at: std::time::Instant::now(),
        })
    }

    /// CPU seconds used since the start, and that as a percentage of one core over the wall time.
    pub fn stop(&self) -> anyhow::Result<(f64, f64)> {
        let used = cpu_seconds(self.pid)? - self.cpu;
        let wall = self.at.elapsed().as_secs_f64().max(1e-9);
        Ok((used, 100.0 * used / wall))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        // Burn CPU until the kernel has counted a tick of it (10 ms), however busy the machine.
        let meter = CpuMeter::start(me).unwrap();
        let before = cpu_seconds(me).unwrap();
        let mut x = 0u64;
        let give_up = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while cpu_seconds(me).unwrap() <= before && std::time::Instant::now() < give_up {
            for _ in 0..100_000 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            }
        }
        std::hint::black_box(x);
        let (used, percent) = meter.stop().unwrap();
        assert!(used > 0.0, "no CPU time counted: {used}");
        assert!(percent > 0.0);
        let peak = peak_rss_mb(me).unwrap();
        let now = rss_mb(me).unwrap();
        assert!(
            peak > 0.0 && now > 0.0 && peak >= now,
            "peak {peak} now {now}"
        );
        assert!(cpu_seconds(u32::MAX).is_err());
    }
}
