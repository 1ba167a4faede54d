//! Finding and opening a wgpu adapter: which adapters count as hardware for `--backend auto`,
//! which one an explicit `--backend wgpu` takes (lavapipe included), the limits and features we
//! request, and which kernel variant suits the adapter.

use std::sync::{Arc, Mutex};

use super::WgpuError;

/// How the matrix kernels split their work; chosen per adapter, overridable for tests/benches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelVariant {
    /// One invocation per weight row, no barriers: for CPU adapters (lavapipe), where
    /// workgroup barriers are emulated and slow.
    Rows,
    /// One invocation per weight row, no barriers, and each subgroup of `lanes` shares the
    /// activation loads through `subgroupBroadcast`: for CPU adapters with subgroups.
    RowsSubgroup { lanes: u32 },
    /// 8 rows per workgroup, 32 lanes per row, lanes reduced through workgroup memory.
    TiledShared,
    /// One row per workgroup of exactly one subgroup of `lanes` invocations, reduced with
    /// `subgroupAdd`; only where the adapter has `Features::SUBGROUP` and a fixed subgroup size.
    TiledSubgroup { lanes: u32 },
}

impl KernelVariant {
    /// Rows stored word-interleaved per group in the device weight layout (1 = plain rows);
    /// see shaders/layout.wgsl.
    pub fn interleave(self) -> u32 {
        match self {
            KernelVariant::Rows => 8,
            KernelVariant::RowsSubgroup { lanes } => lanes,
            _ => 1,
        }
    }
}

/// Environment variable that forces a kernel variant (benchmarks, GPU checks):
/// `rows`, `rows-subgroup`, `tiled` or `tiled-subgroup`.
pub const KERNELS_ENV: &str = "SANDGRAPH_WGPU_KERNELS";

impl KernelVariant {
    /// The variant named by `SANDGRAPH_WGPU_KERNELS`, if set (subgroup sizes come from the
    /// adapter).
    pub fn from_env() -> Result<Option<KernelVariant>, WgpuError> {
        match std::env::var(KERNELS_ENV) {
            Ok(v) => KernelVariant::parse(&v).map(Some),
            Err(_) => Ok(None),
        }
    }

    /// Parses `rows`, `rows-subgroup`, `tiled` or `tiled-subgroup` (lanes are filled in from
    /// the adapter when a context opens).
    pub fn parse(s: &str) -> Result<KernelVariant, WgpuError> {
        Ok(match s {
            "rows" => KernelVariant::Rows,
            "rows-subgroup" => KernelVariant::RowsSubgroup { lanes: 0 },
            "tiled" => KernelVariant::TiledShared,
            "tiled-subgroup" => KernelVariant::TiledSubgroup { lanes: 0 },
            other => {
                return Err(WgpuError::BadKernelChoice(format!(
                    "{KERNELS_ENV}='{other}'; use rows, rows-subgroup, tiled or tiled-subgroup"
                )));
            }
        })
    }
}

impl std::fmt::Display for KernelVariant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KernelVariant::Rows => write!(f, "rows (barrier-free)"),
            KernelVariant::RowsSubgroup { lanes } => {
                write!(
                    f,
                    "rows (barrier-free, activations shared by subgroups of {lanes})"
                )
            }
            KernelVariant::TiledShared => write!(f, "tiled (workgroup memory)"),
            KernelVariant::TiledSubgroup { lanes } => write!(f, "tiled (subgroups of {lanes})"),
        }
    }
}

/// Which adapters a session may open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdapterPolicy {
    /// Discrete, integrated or virtual GPUs only (what `--backend auto` wants).
    HardwareOnly,
    /// Any adapter with compute shaders, software ones (lavapipe) included (`--backend wgpu`).
    Any,
}

/// Knobs for opening a device; the defaults pick everything from the adapter.
#[derive(Clone, Debug)]
pub struct WgpuOptions {
    pub policy: AdapterPolicy,
    /// Forces a kernel variant instead of the one chosen by adapter type.
    pub variant: Option<KernelVariant>,
    /// Caps the bytes of one weight split below the adapter's binding limit, so tests can
    /// exercise the splitting of big tensors on small models.
    pub max_binding_bytes: Option<u64>,
}

impl Default for WgpuOptions {
    fn default() -> Self {
        WgpuOptions {
            policy: AdapterPolicy::Any,
            variant: None,
            max_binding_bytes: None,
        }
    }
}

/// An opened device plus what the kernels need to know about it.
pub struct GpuContext {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    /// Whether `Features::SUBGROUP` was granted on this device.
    pub subgroups: bool,
    /// Whether `Features::TIMESTAMP_QUERY` was granted (GPU-side kernel timings for profiling).
    pub timestamps: bool,
    pub variant: KernelVariant,
    /// Largest storage binding the adapter allows, in bytes.
    pub max_binding: u64,
    /// Largest weight split we upload (`max_binding`, maybe capped by the options).
    pub split_bytes: u64,
    /// First uncaptured device error, reported by the next backend call instead of panicking.
    pub(crate) error: Arc<Mutex<Option<String>>>,
}

fn instance() -> wgpu::Instance {
    wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env())
}

fn is_hardware(t: wgpu::DeviceType) -> bool {
    matches!(
        t,
        wgpu::DeviceType::DiscreteGpu
            | wgpu::DeviceType::IntegratedGpu
            | wgpu::DeviceType::VirtualGpu
    )
}

fn has_compute(a: &wgpu::Adapter) -> bool {
    a.get_downlevel_capabilities()
        .flags
        .contains(wgpu::DownlevelFlags::COMPUTE_SHADERS)
}

/// Preference order: discrete > integrated > virtual > other > CPU, and Vulkan/Metal/DX12
/// before GL for the same kind.
fn rank(info: &wgpu::AdapterInfo) -> (u32, u32) {
    let kind = match info.device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    };
    let api = match info.backend {
        wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12 => 0,
        _ => 1,
    };
    (kind, api)
}

fn adapters() -> Vec<wgpu::Adapter> {
    pollster::block_on(instance().enumerate_adapters(wgpu::Backends::all()))
        .into_iter()
        .filter(has_compute)
        .collect()
}

/// One line per adapter with compute shaders: name, type, API, driver.
pub fn describe_adapters() -> Vec<String> {
    adapters()
        .iter()
        .map(|a| {
            let i = a.get_info();
            format!(
                "{} ({:?}, {:?}, driver {} {})",
                i.name, i.device_type, i.backend, i.driver, i.driver_info
            )
        })
        .collect()
}

/// True when a hardware GPU adapter (not a CPU/software one) with compute shaders exists;
/// `--backend auto` uses wgpu only then.
pub fn hardware_adapter_available() -> bool {
    adapters()
        .iter()
        .any(|a| is_hardware(a.get_info().device_type))
}

/// The variant the adapter type suggests.
fn default_variant(info: &wgpu::AdapterInfo, subgroups: bool) -> KernelVariant {
    let fixed = info.subgroup_min_size == info.subgroup_max_size;
    if info.device_type == wgpu::DeviceType::Cpu {
        return if subgroups && fixed && (4..=64).contains(&info.subgroup_min_size) {
            KernelVariant::RowsSubgroup {
                lanes: info.subgroup_min_size,
            }
        } else {
            KernelVariant::Rows
        };
    }
    if subgroups && fixed && (4..=128).contains(&info.subgroup_min_size) {
        KernelVariant::TiledSubgroup {
            lanes: info.subgroup_min_size,
        }
    } else {
        KernelVariant::TiledShared
    }
}

impl GpuContext {
    /// Opens the best adapter the policy allows, with its own limits and (when present)
    /// subgroups.
    pub fn new(opts: &WgpuOptions) -> Result<GpuContext, WgpuError> {
        let mut all = adapters();
        let seen: Vec<String> = all
            .iter()
            .map(|a| format!("{} ({:?})", a.get_info().name, a.get_info().device_type))
            .collect();
        if opts.policy == AdapterPolicy::HardwareOnly {
            all.retain(|a| is_hardware(a.get_info().device_type));
        }
        all.sort_by_key(|a| rank(&a.get_info()));
        let adapter = all.into_iter().next().ok_or(WgpuError::NoAdapter {
            policy: opts.policy,
            seen,
        })?;
        let info = adapter.get_info();
        let limits = adapter.limits();
        let subgroups = adapter.features().contains(wgpu::Features::SUBGROUP);
        let timestamps = adapter.features().contains(wgpu::Features::TIMESTAMP_QUERY);
        let mut features = wgpu::Features::empty();
        if subgroups {
            features |= wgpu::Features::SUBGROUP;
        }
        if timestamps {
            features |= wgpu::Features::TIMESTAMP_QUERY;
        }
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("sandgraph-inference"),
            required_features: features,
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| WgpuError::RequestDevice {
            adapter: info.name.clone(),
            reason: e.to_string(),
        })?;
        let error = Arc::new(Mutex::new(None::<String>));
        let sink = error.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let mut slot = sink.lock().unwrap_or_else(|p| p.into_inner());
            if slot.is_none() {
                *slot = Some(e.to_string());
            }
        }));
        let mut variant = match opts.variant {
            Some(v) => v,
            None => match KernelVariant::from_env()? {
                Some(v) => v,
                None => default_variant(&info, subgroups),
            },
        };
        if let KernelVariant::TiledSubgroup { lanes } | KernelVariant::RowsSubgroup { lanes } =
            &mut variant
        {
            if !subgroups {
                return Err(WgpuError::NoSubgroups {
                    adapter: info.name.clone(),
                });
            }
            // The workgroup must be exactly one subgroup.
            if info.subgroup_min_size != info.subgroup_max_size {
                return Err(WgpuError::NoSubgroups {
                    adapter: info.name.clone(),
                });
            }
            *lanes = info.subgroup_min_size;
        }
        let adapter_binding = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size);
        let max_binding = adapter_binding;
        let split_bytes = opts
            .max_binding_bytes
            .map_or(adapter_binding, |c| c.min(adapter_binding));
        Ok(GpuContext {
            device,
            queue,
            info,
            limits,
            subgroups,
            timestamps,
            variant,
            max_binding,
            split_bytes,
            error,
        })
    }

    /// One line describing the adapter and the chosen kernels.
    pub fn describe(&self) -> String {
        format!(
            "{} ({:?}, {:?}, driver {} {}); kernels: {}; subgroups: {} (size {}..={}); max binding {} MiB",
            self.info.name,
            self.info.device_type,
            self.info.backend,
            self.info.driver,
            self.info.driver_info,
            self.variant,
            self.subgroups,
            self.info.subgroup_min_size,
            self.info.subgroup_max_size,
            self.max_binding >> 20
        )
    }

    /// Takes the first uncaptured device error, if any happened since the last check.
    pub(crate) fn take_error(&self) -> Option<String> {
        self.error.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Waits until the queue is idle.
    pub(crate) fn wait(&self) -> Result<(), WgpuError> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map(|_| ())
            .map_err(|e| WgpuError::Device(e.to_string()))
    }

    /// Submits `enc` after appending a copy of `bytes` bytes of `src` into `staging` (a
    /// MAP_READ buffer allocated once per session), waits, and returns the bytes.
    pub(crate) fn submit_and_read(
        &self,
        mut enc: wgpu::CommandEncoder,
        src: &wgpu::Buffer,
        bytes: u64,
        staging: &wgpu::Buffer,
    ) -> Result<Vec<u8>, WgpuError> {
        enc.copy_buffer_to_buffer(src, 0, staging, 0, bytes);
        self.queue.submit([enc.finish()]);
        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, 0..bytes, move |r| {
            let _ = tx.send(r);
        });
        self.wait()?;
        if let Some(e) = self.take_error() {
            return Err(WgpuError::Device(e));
        }
        rx.recv()
            .map_err(|_| WgpuError::Device("buffer map callback never ran".into()))?
            .map_err(|e| WgpuError::Device(format!("mapping the read-back buffer: {e}")))?;
        let out = staging
            .get_mapped_range(0..bytes)
            .map_err(|e| WgpuError::Device(e.to_string()))?
            .to_vec();
        staging.unmap();
        Ok(out)
    }
}
