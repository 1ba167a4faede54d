//! GPU-side time of a forward, kernel kind by kind: with `Features::TIMESTAMP_QUERY`, each
//! dispatch gets its own compute pass with timestamps written at its start and end. This is what
//! `wgpu_bench --profile` prints, to see where a decode step's device time goes; normal
//! forwards record everything into one pass and pay nothing for it.

use super::WgpuError;
use super::device::GpuContext;

/// What the host did for the last forward: kernels recorded and the time spent recording them
/// (building the command buffers, not submitting or waiting).
#[derive(Clone, Copy, Debug, Default)]
pub struct ForwardStats {
    /// Kernel dispatches recorded (a matmul split over several bindings counts once).
    pub kernels: usize,
    pub recording: std::time::Duration,
}

/// Device time of one kind of kernel over a profiled step.
#[derive(Clone, Debug)]
pub struct KernelTime {
    pub kind: &'static str,
    pub dispatches: usize,
    pub seconds: f64,
}

/// A profiled step: per kind (in order of first use), and the span from the first kernel's
/// start to the last one's end (kernels plus the gaps between them, host round trips included).
#[derive(Clone, Debug)]
pub struct StepProfile {
    pub kernels: Vec<KernelTime>,
    pub span_seconds: f64,
}

/// Timestamp queries for up to `cap` timed passes (wgpu allows 4096 queries per set: 2048).
pub(crate) struct Timestamps {
    set: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    read: wgpu::Buffer,
    kinds: Vec<&'static str>,
    cap: u32,
}

impl Timestamps {
    pub(crate) fn new(ctx: &GpuContext, cap: u32) -> Timestamps {
        let bytes = cap as u64 * 16;
        Timestamps {
            set: ctx.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("profile"),
                ty: wgpu::QueryType::Timestamp,
                count: cap * 2,
            }),
            resolve: ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("profile_resolve"),
                size: bytes,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            }),
            read: ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("profile_read"),
                size: bytes,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
            kinds: Vec::new(),
            cap,
        }
    }

    /// Reads back every recorded pass's time and sums them by kind.
    pub(crate) fn finish(self, ctx: &GpuContext) -> Result<StepProfile, WgpuError> {
        let n = self.kinds.len() as u32;
        if n == 0 {
            return Ok(StepProfile {
                kernels: Vec::new(),
                span_seconds: 0.0,
            });
        }
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        enc.resolve_query_set(&self.set, 0..2 * n, &self.resolve, 0);
        let bytes = ctx.submit_and_read(enc, &self.resolve, n as u64 * 16, &self.read)?;
        let ticks: &[u64] = bytemuck::cast_slice(&bytes);
        let period = ctx.queue.get_timestamp_period() as f64 * 1e-9;
        let mut kernels: Vec<KernelTime> = Vec::new();
        for (i, &kind) in self.kinds.iter().enumerate() {
            let s = ticks[2 * i + 1].saturating_sub(ticks[2 * i]) as f64 * period;
            match kernels.iter_mut().find(|k| k.kind == kind) {
                Some(k) => {
                    k.dispatches += 1;
                    k.seconds += s;
                }
                None => kernels.push(KernelTime {
                    kind,
                    dispatches: 1,
                    seconds: s,
                }),
            }
        }
        let first = ticks.iter().step_by(2).min().copied().unwrap_or(0);
        let last = ticks.iter().skip(1).step_by(2).max().copied().unwrap_or(0);
        Ok(StepProfile {
            kernels,
            span_seconds: last.saturating_sub(first) as f64 * period,
        })
    }
}

/// Where a forward's dispatches go: one compute pass for everything, or (profiling) one
/// timed pass per dispatch group.
pub(crate) struct Rec<'a> {
    enc: &'a mut wgpu::CommandEncoder,
    pass: Option<wgpu::ComputePass<'static>>,
    prof: Option<&'a mut Timestamps>,
    /// Kernels recorded so far (one per `pass` call).
    pub(crate) kernels: usize,
}

impl<'a> Rec<'a> {
    pub(crate) fn new(enc: &'a mut wgpu::CommandEncoder, prof: Option<&'a mut Timestamps>) -> Self {
        Rec {
            enc,
            pass: None,
            prof,
            kernels: 0,
        }
    }

    /// The pass to record the next `kind` of kernel into.
    pub(crate) fn pass(&mut self, kind: &'static str) -> &mut wgpu::ComputePass<'static> {
        self.kernels += 1;
        match self.prof.as_deref_mut() {
            Some(p) if (p.kinds.len() as u32) < p.cap => {
                // End the previous pass before the encoder can begin another.
                self.pass = None;
                let i = p.kinds.len() as u32;
                p.kinds.push(kind);
                let pass = self
                    .enc
                    .begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some(kind),
                        timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                            query_set: &p.set,
                            beginning_of_pass_write_index: Some(2 * i),
                            end_of_pass_write_index: Some(2 * i + 1),
                        }),
                    })
                    .forget_lifetime();
                self.pass.insert(pass)
            }
            _ => {
                if self.pass.is_none() {
                    let pass = self
                        .enc
                        .begin_compute_pass(&Default::default())
                        .forget_lifetime();
                    self.pass = Some(pass);
                }
                self.pass.as_mut().expect("pass begun above")
            }
        }
    }

    /// Ends the open pass, so the encoder can record copies.
    pub(crate) fn end(&mut self) {
        self.pass = None;
    }

    pub(crate) fn encoder(&mut self) -> &mut wgpu::CommandEncoder {
        self.end();
        self.enc
    }
}
