//! With no adapter the wgpu backend fails with an error that names the fix, and `auto` does not
//! count anything as hardware. Its own test binary: it changes the process environment
//! (`WGPU_BACKEND`), which must not leak into the other wgpu tests under `cargo test`.

use sandgraph_inference::backend::wgpu::{AdapterPolicy, GpuContext, WgpuError, WgpuOptions};

#[test]
fn no_adapter_is_a_clear_error_and_not_hardware() {
    // Allow only an API this platform lacks (DX12 on macOS, Metal elsewhere): no adapter at all.
    let absent = if cfg!(target_os = "macos") {
        "dx12"
    } else {
        "metal"
    };
    // SAFETY: the only test of this binary, so no other thread reads the environment.
    unsafe { std::env::set_var("WGPU_BACKEND", absent) };
    assert!(!sandgraph_inference::backend::wgpu::hardware_adapter_available());
    let e = GpuContext::new(&WgpuOptions::default())
        .err()
        .expect("no adapter");
    let msg = e.to_string();
    assert!(
        matches!(
            e,
            WgpuError::NoAdapter {
                policy: AdapterPolicy::Any,
                ..
            }
        ),
        "{msg}"
    );
    assert!(
        msg.contains("mesa-vulkan-drivers") && msg.contains("--backend cpu"),
        "{msg}"
    );
}
