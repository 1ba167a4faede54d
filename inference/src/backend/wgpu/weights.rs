//! Weight upload: GGUF blocks go to the device still quantized, once per session. Q4_1 (20-byte
//! blocks), F16 and F32 rows are word aligned and uploaded byte for byte; Q4_0 (18 bytes) and
//! Q8_0 (34 bytes) blocks are padded after their f16 scale to 20 and 36 bytes so every block
//! starts on a u32 word (quants untouched). Matrices bigger than one storage binding are split
//! by rows into several buffers.

use wgpu::util::DeviceExt;

use super::WgpuError;
use super::device::GpuContext;
use crate::gguf::GgmlType;

/// Bytes one row of `cols` values occupies on the device.
pub fn device_row_bytes(ty: GgmlType, cols: usize) -> usize {
    let blocks = cols / 32;
    match ty {
        GgmlType::Q4_0 | GgmlType::Q4_1 => blocks * 20,
        GgmlType::Q8_0 => blocks * 36,
        GgmlType::F16 => cols * 2,
        _ => cols * 4,
    }
}

/// Converts GGUF rows of `ty` into the device layout described in the module docs.
pub fn to_device_layout(ty: GgmlType, cols: usize, bytes: &[u8]) -> Result<Vec<u8>, WgpuError> {
    if !super::kernels::supports(ty) {
        return Err(WgpuError::UnsupportedType(ty));
    }
    if !cols.is_multiple_of(32) {
        return Err(WgpuError::UnsupportedShape(format!(
            "rows of {cols} values; the wgpu kernels need a multiple of 32"
        )));
    }
    let row = ty.row_bytes(cols);
    if row == 0 || !bytes.len().is_multiple_of(row) {
        return Err(WgpuError::UnsupportedShape(format!(
            "{} bytes are not whole rows of {row} bytes ({} x {cols})",
            bytes.len(),
            ty.name()
        )));
    }
    let pad = |block: usize| -> Vec<u8> {
        let mut out = Vec::with_capacity(bytes.len() / block * (block + 2));
        for b in bytes.chunks_exact(block) {
            out.extend_from_slice(&b[..2]);
            out.extend_from_slice(&[0, 0]);
            out.extend_from_slice(&b[2..]);
        }
        out
    };
    Ok(match ty {
        GgmlType::Q4_0 => pad(18),
        GgmlType::Q8_0 => pad(34),
        _ => bytes.to_vec(),
    })
}

/// Stores each group of `il` rows word-interleaved (see shaders/layout.wgsl), padding the last
/// group with zero rows.
fn interleave(rows: &[u8], row_bytes: usize, il: usize) -> Vec<u8> {
    let n = rows.len() / row_bytes;
    let words = row_bytes / 4;
    let groups = n.div_ceil(il);
    let mut out = vec![0u8; groups * il * row_bytes];
    for r in 0..n {
        let (g, lane) = (r / il, r % il);
        for j in 0..words {
            let o = ((g * words + j) * il + lane) * 4;
            out[o..o + 4].copy_from_slice(&rows[r * row_bytes + j * 4..][..4]);
        }
    }
    out
}

/// Rows `row_start..row_start + rows` of a matrix in one buffer.
pub struct Split {
    pub row_start: usize,
    pub rows: usize,
    pub buffer: wgpu::Buffer,
}

/// A weight matrix on the device: `rows` x `cols` values of `ty`, in one or more splits.
pub struct GpuMatrix {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub splits: Vec<Split>,
}

impl GpuMatrix {
    /// Uploads a matrix given its GGUF bytes, splitting it to fit `ctx.max_binding`.
    pub fn upload(
        ctx: &GpuContext,
        name: &str,
        ty: GgmlType,
        rows: usize,
        cols: usize,
        bytes: &[u8],
    ) -> Result<GpuMatrix, WgpuError> {
        if bytes.len() != rows * ty.row_bytes(cols) {
            return Err(WgpuError::UnsupportedShape(format!(
                "tensor '{name}': {} bytes for {rows} x {cols} {}",
                bytes.len(),
                ty.name()
            )));
        }
        let data = to_device_layout(ty, cols, bytes)?;
        let dev_row = device_row_bytes(ty, cols);
        let il = ctx.variant.interleave() as usize;
        let per_split =
            (ctx.split_bytes as usize / dev_row / il * il).min(rows.next_multiple_of(il));
        if per_split == 0 {
            return Err(WgpuError::TooLarge(format!(
                "{il} rows of tensor '{name}' ({} bytes) exceed the storage binding limit of {} bytes",
                il * dev_row,
                ctx.split_bytes
            )));
        }
        let mut splits = Vec::new();
        let mut start = 0;
        while start < rows {
            let n = per_split.min(rows - start);
            let rows_bytes = &data[start * dev_row..(start + n) * dev_row];
            let interleaved;
            let contents = if il > 1 {
                interleaved = interleave(rows_bytes, dev_row, il);
                &interleaved[..]
            } else {
                rows_bytes
            };
            let buffer = ctx
                .device
                .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some(name),
                    contents,
                    usage: wgpu::BufferUsages::STORAGE,
                });
            splits.push(Split {
                row_start: start,
                rows: n,
                buffer,
            });
            start += n;
        }
        Ok(GpuMatrix {
            ty,
            rows,
            cols,
            splits,
        })
    }
}

/// A storage buffer of f32 values (norm weights, test inputs).
pub fn f32_buffer(ctx: &GpuContext, name: &str, values: &[f32], writable: bool) -> wgpu::Buffer {
    let mut usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
    if writable {
        usage |= wgpu::BufferUsages::COPY_DST;
    }
    let contents: &[u8] = if values.is_empty() {
        &[0; 4]
    } else {
        bytemuck::cast_slice(values)
    };
    ctx.device
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(name),
            contents,
            usage,
        })
}

/// A uniform buffer holding `words` (u32 fields; f32 fields as their bits).
pub fn uniform(ctx: &GpuContext, name: &str, words: &[u32]) -> wgpu::Buffer {
    let mut w = words.to_vec();
    w.resize(w.len().next_multiple_of(4).max(4), 0);
    ctx.device
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(name),
            contents: bytemuck::cast_slice(&w),
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        })
}

/// A zeroed storage buffer of `bytes` bytes that kernels write and the host can read or fill.
pub fn scratch(ctx: &GpuContext, name: &str, bytes: u64) -> Result<wgpu::Buffer, WgpuError> {
    if bytes > ctx.max_binding {
        return Err(WgpuError::TooLarge(format!(
            "buffer '{name}' needs {bytes} bytes, over the adapter's storage binding limit of {} bytes; use fewer slots or a shorter context",
            ctx.max_binding
        )));
    }
    Ok(ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(name),
        size: bytes.max(16).next_multiple_of(16),
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    }))
}

/// The host-visible buffer results are copied into for reading back.
pub fn staging(ctx: &GpuContext, bytes: u64) -> wgpu::Buffer {
    ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("staging"),
        size: bytes.max(16).next_multiple_of(16),
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_0_and_q4_0_blocks_are_padded_after_the_scale_and_q4_1_is_unchanged() {
        let q8: Vec<u8> = (0..34).collect();
        let out = to_device_layout(GgmlType::Q8_0, 32, &q8).unwrap();
        assert_eq!(out.len(), 36);
        assert_eq!(&out[..4], &[0, 1, 0, 0]);
        assert_eq!(&out[4..], &q8[2..]);
        let q4: Vec<u8> = (0..18).collect();
        let out = to_device_layout(GgmlType::Q4_0, 32, &q4).unwrap();
        assert_eq!(
            (out.len(), &out[..4], &out[4..]),
            (20, &[0u8, 1, 0, 0][..], &q4[2..])
        );
        let q41: Vec<u8> = (0..40).collect();
        assert_eq!(to_device_layout(GgmlType::Q4_1, 32, &q41).unwrap(), q41);
        assert_eq!(device_row_bytes(GgmlType::Q8_0, 64), 72);
    }

    #[test]
    fn rows_that_are_not_whole_blocks_or_whole_rows_are_refused() {
        let e = to_device_layout(GgmlType::F32, 48, &[0; 192]).unwrap_err();
        assert!(
            matches!(&e, WgpuError::UnsupportedShape(m) if m.contains("multiple of 32")),
            "{e}"
        );
        let e = to_device_layout(GgmlType::Q8_0, 32, &[0; 35]).unwrap_err();
        assert!(
            matches!(&e, WgpuError::UnsupportedShape(m) if m.contains("not whole rows")),
            "{e}"
        );
    }

    #[test]
    fn interleaving_puts_word_j_of_row_r_at_group_offset() {
        // 3 rows of 2 words, groups of 2: row 2 is alone in the second group with a zero row.
        let rows: Vec<u8> = (0u32..6).flat_map(|w| w.to_le_bytes()).collect();
        let out = interleave(&rows, 8, 2);
        let words: Vec<u32> = out
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        // ((g * words + j) * il + lane): g0: r0w0 r1w0 r0w1 r1w1, g1: r2w0 0 r2w1 0.
        assert_eq!(words, vec![0, 2, 1, 3, 4, 0, 5, 0]);
    }
}
