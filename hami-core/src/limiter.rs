//! Compute-share limiter (`CUDA_DEVICE_SM_LIMIT`).
//!
//! Kernel launches draw from a token bucket per device; a watcher thread
//! refills it at a rate it steers from NVML's measured utilization of this
//! container. A launch costs its grid size in thread blocks, a unit whose
//! worth in GPU time is unknown and differs per kernel and per GPU, so the
//! watcher *learns* it: `k` = utilization obtained per block-per-second,
//! smoothed. The refill rate is then `(share + integral term) / k`.
//!
//! Nothing in the loop depends on the GPU's size: `k` absorbs the SM count and
//! the kernel length, and every correction is relative to the measurement.
//! (HAMi's gain grows with the SM count, which is why it overshoots on large
//! GPUs and oscillates.)
//!
//! The launch path costs one relaxed `fetch_sub` while tokens last; only a
//! launch that finds the bucket empty waits, sleeping until the next refill.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::config::{CorePolicy, MAX_DEVICES};
use crate::engine::engine;
use crate::nvml::{self, nvmlDevice_t, ProcessUtilizationSample, Utilization, NVML_SUCCESS};
use crate::{hlog, log};

/// Refill period: short enough that a throttled process never idles long.
const TICK: Duration = Duration::from_millis(5);
/// Control period: long enough for NVML's sample to mean something.
const CONTROL_TICKS: u32 = 20;
/// Tokens bank for at most this long, so an idle process cannot save up a burst.
const BURST: f64 = 0.02;
/// Integral gain, in share points per (point × second) of error.
const KI: f64 = 1.0;
/// Tokens while ungated: large enough never to run out between refills.
const UNGATED: i64 = i64::MAX / 4;
/// Graph launches carry no grid; charge a fixed cost and let `k` absorb it.
pub const GRAPH_COST: u64 = 1024;

pub struct Limiter {
    gates: [Gate; MAX_DEVICES],
    any: bool,
    /// Set when the process sees one device: launches then skip the context lookup.
    only_device: Option<usize>,
    policy: CorePolicy,
    /// Pid of the process whose watcher is running (a forked child has none).
    watcher_pid: AtomicU32,
    nvml_warned: AtomicBool,
}

struct Gate {
    share: u32,
    tokens: AtomicI64,
}

static LIMITER: OnceLock<Limiter> = OnceLock::new();

fn limiter() -> &'static Limiter {
    LIMITER.get_or_init(|| {
        let e = engine();
        let policy = e.core_policy;
        let gates = std::array::from_fn(|d| {
            let share = match (e.is_enforcing(), policy, e.sm_limit(d)) {
                (true, CorePolicy::Force | CorePolicy::Default, Some(p)) => u32::from(p),
                _ => 0,
            };
            // Empty: the first launch takes the slow path, which starts the watcher.
            Gate {
                share,
                tokens: AtomicI64::new(0),
            }
        });
        let any = gates.iter().any(|g: &Gate| g.share != 0);
        let mut count = 0;
        let only_device = match crate::cuda::real::real().and_then(|r| r.device_get_count) {
            // SAFETY: writes one int.
            Some(f) if unsafe { f(&mut count) } == 0 && count == 1 => Some(0),
            _ => None,
        };
        if any {
            hlog!(log::INFO, "compute limiter on, policy {policy:?}");
            // SAFETY: registering a plain extern "C" handler.
            unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
        }
        Limiter {
            gates,
            any,
            only_device,
            policy,
            watcher_pid: AtomicU32::new(0),
            nvml_warned: AtomicBool::new(false),
        }
    })
}

/// A forked child has no watcher thread: empty the buckets so its first
/// launch starts one.
extern "C" fn after_fork_in_child() {
    if let Some(l) = LIMITER.get() {
        for g in &l.gates {
            g.tokens.store(0, Ordering::Relaxed);
        }
    }
}

/// Called before every kernel launch with its cost in thread blocks.
#[inline]
pub fn admit(cost: u64) {
    let l = limiter();
    if !l.any {
        return;
    }
    let device = l
        .only_device
        .unwrap_or_else(crate::cuda::real::current_device);
    let Some(gate) = l.gates.get(device) else {
        return;
    };
    if gate.share == 0 {
        return;
    }
    let cost = cost.min(i64::MAX as u64 / 4) as i64;
    if gate.tokens.fetch_sub(cost, Ordering::Relaxed) >= cost {
        return;
    }
    l.wait(gate);
}

/// A grid's cost: its number of thread blocks.
#[inline]
pub fn grid_cost(x: u32, y: u32, z: u32) -> u64 {
    u64::from(x.max(1)) * u64::from(y.max(1)) * u64::from(z.max(1))
}

impl Limiter {
    #[cold]
    fn wait(&'static self, gate: &Gate) {
        self.ensure_watcher();
        // The launch already took its tokens (the bucket is in debt); it may go
        // once refills have paid that back.
        while gate.tokens.load(Ordering::Relaxed) < 0 {
            std::thread::sleep(TICK / 5);
        }
    }

    fn ensure_watcher(&'static self) {
        let pid = std::process::id();
        let running = self.watcher_pid.load(Ordering::Acquire);
        if running == pid
            || self
                .watcher_pid
                .compare_exchange(running, pid, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return;
        }
        let spawned = std::thread::Builder::new()
            .name("hami-limiter".into())
            .spawn(move || self.watch());
        if let Err(e) = spawned {
            hlog!(
                log::ERROR,
                "cannot start the compute limiter thread ({e}); launches run unthrottled"
            );
            for g in &self.gates {
                g.tokens.store(UNGATED, Ordering::Relaxed);
            }
        }
    }

    fn watch(&'static self) {
        engine().register();
        let mut controls: Vec<(usize, Control)> = (0..MAX_DEVICES)
            .filter(|d| self.gates[*d].share != 0)
            .map(|d| (d, Control::new(self.gates[d].share)))
            .collect();
        let Some(sampler) = Sampler::new() else {
            if !self.nvml_warned.swap(true, Ordering::Relaxed) {
                hlog!(
                    log::WARN,
                    "NVML unavailable: cannot measure utilization, launches run unthrottled"
                );
            }
            for g in &self.gates {
                g.tokens.store(UNGATED, Ordering::Relaxed);
            }
            return;
        };
        let mut last = Instant::now();
        let mut ticks = 0u32;
        loop {
            std::thread::sleep(TICK);
            let now = Instant::now();
            let dt = now.duration_since(last).as_secs_f64();
            last = now;
            ticks += 1;
            let control_now = ticks % CONTROL_TICKS == 0;
            for (device, c) in &mut controls {
                let gate = &self.gates[*device];
                c.refill(gate, dt);
                if control_now {
                    let (own, total) = sampler.utilization(*device);
                    let gated = match self.policy {
                        CorePolicy::Force => true,
                        // Throttle only while someone outside the container uses the device.
                        CorePolicy::Default => total - own > 2.0,
                        CorePolicy::Disable => false,
                    };
                    c.control(gate, own, gated);
                }
            }
        }
    }
}

/// Per-device control state, owned by the watcher thread.
struct Control {
    share: f64,
    /// Refill rate in blocks per second; infinite while ungated.
    rate: f64,
    /// Utilization points per (block per second), learned.
    k: Option<f64>,
    integral: f64,
    /// Tokens refills really put in the bucket since the last control step.
    added: f64,
    /// Bucket level at the last control step.
    last_level: i64,
    elapsed: f64,
}

impl Control {
    fn new(share: u32) -> Self {
        Self {
            share: f64::from(share),
            rate: f64::INFINITY,
            k: None,
            integral: 0.0,
            added: 0.0,
            last_level: UNGATED,
            elapsed: 0.0,
        }
    }

    /// Adds `rate × dt` tokens, banking at most BURST seconds' worth.
    fn refill(&mut self, gate: &Gate, dt: f64) {
        self.elapsed += dt;
        if self.rate.is_infinite() {
            let left = gate.tokens.swap(UNGATED, Ordering::Relaxed);
            self.added += (UNGATED - left) as f64;
            return;
        }
        let add = (self.rate * dt).round() as i64;
        let cap = ((self.rate * BURST) as i64).max(1);
        let mut effective = 0;
        let _ = gate
            .tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                let next = (t + add).min(cap).max(t);
                effective = next - t;
                Some(next)
            });
        self.added += effective as f64;
    }

    /// One control step with the container's measured utilization `util` (points).
    fn control(&mut self, gate: &Gate, util: f64, gated: bool) {
        let period = std::mem::take(&mut self.elapsed);
        let level = gate.tokens.load(Ordering::Relaxed);
        // Launches took whatever refills added and the bucket did not keep.
        let consumed =
            (std::mem::take(&mut self.added) - (level - self.last_level) as f64).max(0.0);
        self.last_level = level;
        if period <= 0.0 {
            return;
        }
        let consumed_rate = consumed / period;
        if consumed_rate > 0.0 && util > 0.5 {
            let observed = util / consumed_rate;
            self.k = Some(self.k.map_or(observed, |k| 0.7 * k + 0.3 * observed));
        }
        if !gated {
            if self.rate.is_finite() {
                self.rate = f64::INFINITY;
                self.last_level = UNGATED;
            }
            self.integral = 0.0;
            return;
        }
        let Some(k) = self.k else {
            return;
        };
        let error = self.share - util;
        // A process that does not use its budget is not held back by us: do not
        // wind the integral up on its idle time.
        let demand_limited =
            self.rate.is_finite() && consumed_rate < 0.9 * self.rate && error > 0.0;
        if !demand_limited {
            let bound = self.share / 2.0 / KI;
            self.integral = (self.integral + error * period).clamp(-bound, bound);
        }
        let target = ((self.share + KI * self.integral) / k).max(1.0);
        if self.rate.is_infinite() {
            self.rate = target;
            gate.tokens.store(0, Ordering::Relaxed);
            self.last_level = 0;
        } else {
            self.rate = 0.5 * self.rate + 0.5 * target;
        }
    }
}

/// Reads NVML process utilization for this container's processes.
struct Sampler {
    nvml: &'static nvml::RealNvml,
    handles: [nvmlDevice_t; MAX_DEVICES],
}

impl Sampler {
    fn new() -> Option<Self> {
        let nvml = nvml::real()?;
        // SAFETY: NVML's own init and handle lookups.
        unsafe {
            if nvml.init?() != NVML_SUCCESS {
                return None;
            }
            let get = nvml.get_handle_by_index?;
            let mut handles = [std::ptr::null_mut(); MAX_DEVICES];
            for (i, h) in handles.iter_mut().enumerate() {
                if get(i as u32, h) != NVML_SUCCESS {
                    *h = std::ptr::null_mut();
                }
            }
            nvml.get_process_utilization?;
            Some(Self { nvml, handles })
        }
    }

    /// (this container's SM utilization, the whole device's), in points, since the last call.
    fn utilization(&self, device: usize) -> (f64, f64) {
        let handle = self.handles[device];
        if handle.is_null() {
            return (0.0, 0.0);
        }
        let pids = container_pids();
        let mut samples = [ProcessUtilizationSample::default(); 64];
        let mut count = samples.len() as u32;
        let get = self.nvml.get_process_utilization.expect("checked in new");
        // SAFETY: a buffer of `count` samples.
        let rc = unsafe { get(handle, samples.as_mut_ptr(), &mut count, 0) };
        if rc != NVML_SUCCESS {
            return (0.0, 0.0);
        }
        let samples = &samples[..(count as usize).min(samples.len())];
        let own: f64 = samples
            .iter()
            .filter(|s| pids.contains(&s.pid))
            .map(|s| f64::from(s.sm_util))
            .sum();
        let all: f64 = samples.iter().map(|s| f64::from(s.sm_util)).sum();
        let mut rates = Utilization::default();
        let total = match self.nvml.get_utilization_rates {
            // SAFETY: writes one struct.
            Some(f) if unsafe { f(handle, &mut rates) } == NVML_SUCCESS => {
                f64::from(rates.gpu).max(all)
            }
            _ => all,
        };
        (own, total)
    }
}

/// This container's processes as the driver names them: each slot's host pid
/// where it was learned, else its own pid (right when there is no pid namespace).
fn container_pids() -> Vec<u32> {
    let e = engine();
    let mut pids = vec![e.host_pid().unwrap_or_else(std::process::id)];
    if let Some(region) = e.region() {
        pids.extend(region.slots().iter().filter_map(|s| {
            let pid = s.pid.load(Ordering::Relaxed);
            let host = s.host_pid.load(Ordering::Relaxed);
            (pid != 0).then_some(if host != 0 { host } else { pid })
        }));
    }
    pids
}
