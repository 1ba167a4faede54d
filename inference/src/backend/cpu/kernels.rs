//! Dot products between quantized weight rows and quantized activations. Activations are
//! quantized to 8-bit blocks of 32 (as llama.cpp does), so Q4_0/Q4_1/Q8_0 rows are consumed
//! in their block form with integer multiply-adds; AVX2 paths are chosen at runtime.

use crate::gguf::{GgmlType, f16_to_f32, read_f16};

/// One block of 32 quantized activations: value_i ~= d * qs[i]; `s` = d * sum(qs).
#[derive(Clone, Copy, Debug, Default)]
#[repr(C, align(8))]
pub struct ActBlock {
    pub d: f32,
    pub s: f32,
    pub qs: [i8; 32],
}

/// Whether the AVX2 builds of the helpers outside the kernels (quantizer, attention) may run:
/// the CPU has AVX2 and `SANDGRAPH_CPU_PORTABLE` is unset. Read once; these run hundreds of
/// times per decoded token, and reading the environment takes a lock.
#[cfg(target_arch = "x86_64")]
pub fn avx2_allowed() -> bool {
    static ALLOWED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ALLOWED.get_or_init(|| {
        std::env::var_os("SANDGRAPH_CPU_PORTABLE").is_none() && is_x86_feature_detected!("avx2")
    })
}

/// Quantizes `x` (length a multiple of 32) into `out` (x.len() / 32 blocks).
pub fn quantize_act(x: &[f32], out: &mut [ActBlock]) {
    #[cfg(target_arch = "x86_64")]
    if avx2_allowed() {
        // SAFETY: AVX2 was detected at run time.
        return unsafe { quantize_act_avx2(x, out) };
    }
    quantize_act_portable(x, out)
}

/// The scalar quantizer: the reference the AVX2 one must equal bit for bit.
pub fn quantize_act_portable(x: &[f32], out: &mut [ActBlock]) {
    for (blk, o) in x.chunks_exact(32).zip(out.iter_mut()) {
        let amax = blk.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut sum = 0i32;
        for (q, &v) in o.qs.iter_mut().zip(blk) {
            // Ties to even, like ggml's SIMD quantizers; it also vectorises (roundps).
            let r = (v * id).round_ties_even() as i32;
            *q = r as i8;
            sum += r;
        }
        o.d = d;
        o.s = d * sum as f32;
    }
}

/// [`quantize_act_portable`] in AVX2: the same scale, the same ties-to-even rounding
/// (`cvtps2dq` under the default rounding mode) and the same sum, so the blocks are identical.
/// Without it every value went through a libm `rintf` call: about 9% of a decode step.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantize_act_avx2(x: &[f32], out: &mut [ActBlock]) {
    use std::arch::x86_64::*;
    for (blk, o) in x.chunks_exact(32).zip(out.iter_mut()) {
        // SAFETY: `blk` holds 32 f32 (four loads of 8) and `o.qs` 32 bytes (one store).
        unsafe {
            let p = blk.as_ptr();
            let v = [
                _mm256_loadu_ps(p),
                _mm256_loadu_ps(p.add(8)),
                _mm256_loadu_ps(p.add(16)),
                _mm256_loadu_ps(p.add(24)),
            ];
            let sign = _mm256_set1_ps(-0.0);
            let abs = |v| _mm256_andnot_ps(sign, v);
            let m = _mm256_max_ps(
                _mm256_max_ps(abs(v[0]), abs(v[1])),
                _mm256_max_ps(abs(v[2]), abs(v[3])),
            );
            let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
            let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
            let m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
            let amax = _mm_cvtss_f32(m);
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            let idv = _mm256_set1_ps(id);
            let q = v.map(|v| _mm256_cvtps_epi32(_mm256_mul_ps(v, idv)));
            let sum = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
            let sum = _mm_add_epi32(
                _mm256_castsi256_si128(sum),
                _mm256_extracti128_si256(sum, 1),
            );
            let sum = _mm_hadd_epi32(sum, sum);
            let sum = _mm_hadd_epi32(sum, sum);
            // Packing works within 128-bit lanes: the permute puts the four groups of
            // eight back in order.
            let w = _mm256_packs_epi16(
                _mm256_packs_epi32(q[0], q[1]),
                _mm256_packs_epi32(q[2], q[3]),
            );
            let w = _mm256_permutevar8x32_epi32(w, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            _mm256_storeu_si256(o.qs.as_mut_ptr() as *mut __m256i, w);
            o.d = d;
            o.s = d * _mm_cvtsi128_si32(sum) as f32;
        }
    }
}

/// An activation row in both forms: f32 (for float weights) and quantized blocks.
#[derive(Clone, Copy)]
pub struct Act<'a> {
    pub f: &'a [f32],
    pub q: &'a [ActBlock],
}

/// Which kernel family runs on this CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    Portable,
    Avx2,
    /// AVX2 plus AVX-VNNI's 8-bit dot product instruction.
    AvxVnni,
}

impl Isa {
    pub fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if std::env::var_os("SANDGRAPH_CPU_PORTABLE").is_none()
                && is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
            {
                if is_x86_feature_detected!("avxvnni")
                    && std::env::var_os("SANDGRAPH_CPU_NO_VNNI").is_none()
                {
                    return Isa::AvxVnni;
                }
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }
}

/// `out[j] = dot(row, acts[j])` for up to 4 activation rows sharing one pass over `row`.
/// `row` holds `cols` values of type `ty`; `acts` must all have `cols` values.
#[inline]
pub fn dot_rows(
    isa: Isa,
    ty: GgmlType,
    row: &[u8],
    cols: usize,
    acts: &[Act<'_>],
    out: &mut [f32],
) {
    debug_assert!(acts.len() <= 4 && out.len() >= acts.len());
    debug_assert_eq!(row.len(), ty.row_bytes(cols));
    match ty {
        GgmlType::F32 | GgmlType::F16 => {
            for (o, a) in out.iter_mut().zip(acts) {
                *o = dot_float(ty, row, a.f);
            }
        }
        GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0 => {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: Isa::Avx2/AvxVnni are only produced after runtime detection of their
            // features; block counts match the row and activation lengths (checked by callers).
            match isa {
                Isa::Avx2 => unsafe {
                    match acts.len() {
                        1 => avx2::dot_n::<1>(ty, row, acts, out),
                        2 => avx2::dot_n::<2>(ty, row, acts, out),
                        3 => avx2::dot_n::<3>(ty, row, acts, out),
                        _ => avx2::dot_n::<4>(ty, row, acts, out),
                    }
                    return;
                },
                Isa::AvxVnni => unsafe {
                    match acts.len() {
                        1 => avxvnni::dot_n::<1>(ty, row, acts, out),
                        2 => avxvnni::dot_n::<2>(ty, row, acts, out),
                        3 => avxvnni::dot_n::<3>(ty, row, acts, out),
                        _ => avxvnni::dot_n::<4>(ty, row, acts, out),
                    }
                    return;
                },
                Isa::Portable => {}
            }
            let _ = isa;
            for (o, a) in out.iter_mut().zip(acts) {
                *o = dot_quant_portable(ty, row, a.q);
            }
        }
    }
}

/// Like [`dot_rows`] for two weight rows at once (`out0`/`out1`), sharing activation loads.
#[allow(clippy::too_many_arguments)]
#[inline]
pub fn dot_rows2(
    isa: Isa,
    ty: GgmlType,
    rows: [&[u8]; 2],
    cols: usize,
    acts: &[Act<'_>],
    out0: &mut [f32],
    out1: &mut [f32],
) {
    debug_assert!(acts.len() <= 4);
    #[cfg(target_arch = "x86_64")]
    if matches!(ty, GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0) {
        // SAFETY: as in `dot_rows`; both rows have the same length.
        macro_rules! go {
            ($m:ident) => {
                unsafe {
                    match acts.len() {
                        1 => $m::dot2_n::<1>(ty, rows, acts, [out0, out1]),
                        2 => $m::dot2_n::<2>(ty, rows, acts, [out0, out1]),
                        3 => $m::dot2_n::<3>(ty, rows, acts, [out0, out1]),
                        _ => $m::dot2_n::<4>(ty, rows, acts, [out0, out1]),
                    }
                }
            };
        }
        match isa {
            Isa::Avx2 => return go!(avx2),
            Isa::AvxVnni => return go!(avxvnni),
            Isa::Portable => {}
        }
    }
    dot_rows(isa, ty, rows[0], cols, acts, out0);
    dot_rows(isa, ty, rows[1], cols, acts, out1);
}

fn dot_float(ty: GgmlType, row: &[u8], x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    match ty {
        GgmlType::F32 => {
            for (i, (c, &v)) in row.chunks_exact(4).zip(x).enumerate() {
                acc[i % 8] += f32::from_le_bytes([c[0], c[1], c[2], c[3]]) * v;
            }
        }
        _ => {
            for (i, (c, &v)) in row.chunks_exact(2).zip(x).enumerate() {
                acc[i % 8] += f16_to_f32(u16::from_le_bytes([c[0], c[1]])) * v;
            }
        }
    }
    acc.iter().sum()
}

/// Scalar reference for the block dot products (also the non-x86 path).
pub fn dot_quant_portable(ty: GgmlType, row: &[u8], q: &[ActBlock]) -> f32 {
    let mut sum = 0.0f32;
    match ty {
        GgmlType::Q8_0 => {
            for (b, a) in row.chunks_exact(34).zip(q) {
                let mut isum = 0i32;
                for j in 0..32 {
                    isum += (b[2 + j] as i8) as i32 * a.qs[j] as i32;
                }
                sum += read_f16(b, 0) * a.d * isum as f32;
            }
        }
        GgmlType::Q4_0 => {
            for (b, a) in row.chunks_exact(18).zip(q) {
                let mut isum = 0i32;
                for j in 0..16 {
                    isum += (b[2 + j] & 0x0f) as i32 * a.qs[j] as i32;
                    isum += (b[2 + j] >> 4) as i32 * a.qs[j + 16] as i32;
                }
                let d = read_f16(b, 0);
                sum += d * a.d * isum as f32 - 8.0 * d * a.s;
            }
        }
        GgmlType::Q4_1 => {
            for (b, a) in row.chunks_exact(20).zip(q) {
                let mut isum = 0i32;
                for j in 0..16 {
                    isum += (b[4 + j] & 0x0f) as i32 * a.qs[j] as i32;
                    isum += (b[4 + j] >> 4) as i32 * a.qs[j + 16] as i32;
                }
                sum += read_f16(b, 0) * a.d * isum as f32 + read_f16(b, 2) * a.s;
            }
        }
        GgmlType::F32 | GgmlType::F16 => unreachable!("float rows use dot_float"),
    }
    sum
}

/// The x86 kernels, instantiated once per instruction-set level: only the u8 x i8 block
/// product differs (AVX2's maddubs + madd pair, or one AVX-VNNI dpbusd).
#[cfg(target_arch = "x86_64")]
macro_rules! x86_kernels {
    ($name:ident, $features:literal, $block:expr) => {
        mod $name {
            use super::{Act, ActBlock};
            use crate::gguf::GgmlType;
            use std::arch::x86_64::*;

            /// Bytes ahead of the current block to prefetch: weight rows are streamed once per step,
            /// and the hardware prefetcher stops at every 4 KiB page boundary. Prefetching past the
            /// end of a row (into the next row or beyond the tensor) is harmless: prefetches never fault.
            const PREFETCH: usize = 1024;

            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn hsum(v: __m256) -> f32 {
                let lo = _mm256_castps256_ps128(v);
                let hi = _mm256_extractf128_ps(v, 1);
                let s = _mm_add_ps(lo, hi);
                let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
                _mm_cvtss_f32(s)
            }

            /// Two halves (d, m) of a block header as f32, via F16C.
            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn halves(p: *const u8) -> (f32, f32) {
                unsafe {
                    let v =
                        _mm_cvtph_ps(_mm_cvtsi32_si128(std::ptr::read_unaligned(p as *const i32)));
                    (_mm_cvtss_f32(v), _mm_cvtss_f32(_mm_shuffle_ps(v, v, 1)))
                }
            }

            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn nibbles(p: *const u8) -> __m256i {
                unsafe {
                    let q = _mm_loadu_si128(p as *const __m128i);
                    let m = _mm_set1_epi8(0x0f);
                    let lo = _mm_and_si128(q, m);
                    let hi = _mm_and_si128(_mm_srli_epi16(q, 4), m);
                    _mm256_set_m128i(hi, lo)
                }
            }

            #[inline]
            #[target_feature(enable = $features)]
            unsafe fn block_i32(qw_u8: __m256i, qx: __m256i) -> __m256 {
                $block(qw_u8, qx)
            }

            /// Two consecutive weight rows against the same activations: each activation
            /// block is loaded once for both rows (what makes batched matmuls cheaper).
            #[target_feature(enable = $features)]
            pub unsafe fn dot2_n<const N: usize>(
                ty: GgmlType,
                rows: [&[u8]; 2],
                acts: &[Act<'_>],
                out: [&mut [f32]; 2],
            ) {
                let mut acc = [[_mm256_setzero_ps(); N]; 2];
                let mut extra = [[0.0f32; N]; 2];
                let qs: [*const ActBlock; N] = std::array::from_fn(|j| acts[j].q.as_ptr());
                let p = [rows[0].as_ptr(), rows[1].as_ptr()];
                unsafe {
                    match ty {
                        GgmlType::Q4_1 | GgmlType::Q4_0 => {
                            let (bs, off) = if ty == GgmlType::Q4_1 {
                                (20, 4)
                            } else {
                                (18, 2)
                            };
                            let nb = rows[0].len() / bs;
                            for i in 0..nb {
                                let b = [p[0].add(i * bs), p[1].add(i * bs)];
                                _mm_prefetch::<_MM_HINT_T0>(
                                    b[0].wrapping_add(PREFETCH) as *const i8
                                );
                                _mm_prefetch::<_MM_HINT_T0>(
                                    b[1].wrapping_add(PREFETCH) as *const i8
                                );
                                let (d0, m0) = halves(b[0]);
                                let (d1, m1) = halves(b[1]);
                                let (m0, m1) = if ty == GgmlType::Q4_1 {
                                    (m0, m1)
                                } else {
                                    (-8.0 * d0, -8.0 * d1)
                                };
                                let q0 = nibbles(b[0].add(off));
                                let q1 = nibbles(b[1].add(off));
                                for j in 0..N {
                                    let a = &*qs[j].add(i);
                                    let qx = _mm256_loadu_si256(a.qs.as_ptr() as *const __m256i);
                                    acc[0][j] = _mm256_fmadd_ps(
                                        _mm256_set1_ps(d0 * a.d),
                                        block_i32(q0, qx),
                                        acc[0][j],
                                    );
                                    acc[1][j] = _mm256_fmadd_ps(
                                        _mm256_set1_ps(d1 * a.d),
                                        block_i32(q1, qx),
                                        acc[1][j],
                                    );
                                    extra[0][j] += m0 * a.s;
                                    extra[1][j] += m1 * a.s;
                                }
                            }
                        }
                        GgmlType::Q8_0 => {
                            let nb = rows[0].len() / 34;
                            for i in 0..nb {
                                let b = [p[0].add(i * 34), p[1].add(i * 34)];
                                _mm_prefetch::<_MM_HINT_T0>(
                                    b[0].wrapping_add(PREFETCH) as *const i8
                                );
                                _mm_prefetch::<_MM_HINT_T0>(
                                    b[1].wrapping_add(PREFETCH) as *const i8
                                );
                                let (d0, _) = halves(b[0]);
                                let (d1, _) = halves(b[1]);
                                let w0 = _mm256_loadu_si256(b[0].add(2) as *const __m256i);
                                let w1 = _mm256_loadu_si256(b[1].add(2) as *const __m256i);
                                let a0 = _mm256_sign_epi8(w0, w0);
                                let a1 = _mm256_sign_epi8(w1, w1);
                                for j in 0..N {
                                    let a = &*qs[j].add(i);
                                    let qx = _mm256_loadu_si256(a.qs.as_ptr() as *const __m256i);
                                    acc[0][j] = _mm256_fmadd_ps(
                                        _mm256_set1_ps(d0 * a.d),
                                        block_i32(a0, _mm256_sign_epi8(qx, w0)),
                                        acc[0][j],
                                    );
                                    acc[1][j] = _mm256_fmadd_ps(
                                        _mm256_set1_ps(d1 * a.d),
                                        block_i32(a1, _mm256_sign_epi8(qx, w1)),
                                        acc[1][j],
                                    );
                                }
                            }
                        }
                        GgmlType::F32 | GgmlType::F16 => unreachable!("float rows use dot_float"),
                    }
                    let [o0, o1] = out;
                    for j in 0..N {
                        o0[j] = hsum(acc[0][j]) + extra[0][j];
                        o1[j] = hsum(acc[1][j]) + extra[1][j];
                    }
                }
            }

            #[target_feature(enable = $features)]
            pub unsafe fn dot_n<const N: usize>(
                ty: GgmlType,
                row: &[u8],
                acts: &[Act<'_>],
                out: &mut [f32],
            ) {
                let mut acc = [_mm256_setzero_ps(); N];
                let mut extra = [0.0f32; N];
                let qs: [*const ActBlock; N] = std::array::from_fn(|j| acts[j].q.as_ptr());
                let p = row.as_ptr();
                unsafe {
                    match ty {
                        GgmlType::Q4_1 => {
                            let nb = row.len() / 20;
                            for i in 0..nb {
                                let b = p.add(i * 20);
                                _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(PREFETCH) as *const i8);
                                let (d, m) = halves(b);
                                let qw = nibbles(b.add(4));
                                for j in 0..N {
                                    let a = &*qs[j].add(i);
                                    let qx = _mm256_loadu_si256(a.qs.as_ptr() as *const __m256i);
                                    acc[j] = _mm256_fmadd_ps(
                                        _mm256_set1_ps(d * a.d),
                                        block_i32(qw, qx),
                                        acc[j],
                                    );
                                    extra[j] += m * a.s;
                                }
                            }
                        }
                        GgmlType::Q4_0 => {
                            let nb = row.len() / 18;
                            for i in 0..nb {
                                let b = p.add(i * 18);
                                _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(PREFETCH) as *const i8);
                                let (d, _) = halves(b);
                                let qw = nibbles(b.add(2));
                                for j in 0..N {
                                    let a = &*qs[j].add(i);
                                    let qx = _mm256_loadu_si256(a.qs.as_ptr() as *const __m256i);
                                    acc[j] = _mm256_fmadd_ps(
                                        _mm256_set1_ps(d * a.d),
                                        block_i32(qw, qx),
                                        acc[j],
                                    );
                                    extra[j] -= 8.0 * d * a.s;
                                }
                            }
                        }
                        GgmlType::Q8_0 => {
                            let nb = row.len() / 34;
                            for i in 0..nb {
                                let b = p.add(i * 34);
                                _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(PREFETCH) as *const i8);
                                let (d, _) = halves(b);
                                let qw = _mm256_loadu_si256(b.add(2) as *const __m256i);
                                let aw = _mm256_sign_epi8(qw, qw);
                                for j in 0..N {
                                    let a = &*qs[j].add(i);
                                    let qx = _mm256_loadu_si256(a.qs.as_ptr() as *const __m256i);
                                    let sx = _mm256_sign_epi8(qx, qw);
                                    acc[j] = _mm256_fmadd_ps(
                                        _mm256_set1_ps(d * a.d),
                                        block_i32(aw, sx),
                                        acc[j],
                                    );
                                }
                            }
                        }
                        GgmlType::F32 | GgmlType::F16 => unreachable!("float rows use dot_float"),
                    }
                    for j in 0..N {
                        out[j] = hsum(acc[j]) + extra[j];
                    }
                }
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
x86_kernels!(avx2, "avx2,fma,f16c", |a, b| {
    let p16 = _mm256_maddubs_epi16(a, b);
    _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)))
});

#[cfg(target_arch = "x86_64")]
x86_kernels!(avxvnni, "avx2,fma,f16c,avxvnni", |a, b| {
    _mm256_cvtepi32_ps(_mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), a, b))
});

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::{dequantize_row, quantize_row};
    use crate::testutil::TestRng;

    #[test]
    fn every_kernel_matches_the_dequantized_reference() {
        let mut rng = TestRng::new(3);
        let cols = 256;
        for ty in GgmlType::ALL {
            let w: Vec<f32> = (0..cols).map(|_| rng.next_f32()).collect();
            let row = quantize_row(ty, &w).unwrap();
            let mut wd = vec![0.0; cols];
            dequantize_row(ty, &row, &mut wd).unwrap();
            let xs: Vec<Vec<f32>> = (0..4)
                .map(|_| (0..cols).map(|_| rng.next_f32()).collect())
                .collect();
            let qs: Vec<Vec<ActBlock>> = xs
                .iter()
                .map(|x| {
                    let mut q = vec![ActBlock::default(); cols / 32];
                    quantize_act(x, &mut q);
                    q
                })
                .collect();
            let acts: Vec<Act> = xs.iter().zip(&qs).map(|(f, q)| Act { f, q }).collect();
            for isa in available_isas() {
                for n in 1..=4 {
                    let mut out = [0.0f32; 4];
                    dot_rows(isa, ty, &row, cols, &acts[..n], &mut out);
                    for j in 0..n {
                        let exact: f32 = wd.iter().zip(&xs[j]).map(|(a, b)| a * b).sum();
                        // Activation quantization error: ~1% of the L1 mass.
                        let tol = 1e-3
                            + 0.01
                                * wd.iter()
                                    .zip(&xs[j])
                                    .map(|(a, b)| (a * b).abs())
                                    .sum::<f32>();
                        assert!(
                            (out[j] - exact).abs() <= tol,
                            "{ty} {isa:?} n={n}: {} vs {exact}",
                            out[j]
                        );
                    }
                }
            }
        }
    }

    fn available_isas() -> Vec<Isa> {
        let mut v = vec![Isa::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
            {
                v.push(Isa::Avx2);
                if is_x86_feature_detected!("avxvnni") {
                    v.push(Isa::AvxVnni);
                }
            }
        }
        v
    }

    #[test]
    fn the_simd_quantizer_equals_the_scalar_one_bit_for_bit() {
        let mut rng = TestRng::new(23);
        let mut rows: Vec<Vec<f32>> = (0..64)
            .map(|i| {
                let scale = [1e-30, 1e-3, 1.0, 1e3, 1e30][i % 5];
                (0..96).map(|_| rng.next_f32() * scale).collect()
            })
            .collect();
        // Ties: with amax 127 the scale is 1, so these land exactly on .5 and must round
        // to even; plus an all-zero block and a block with a single non-zero value.
        let mut ties = vec![0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, -126.5, 127.0];
        ties.resize(32, 3.5);
        ties.extend([0.0; 32]);
        ties.extend((0..32).map(|i| if i == 7 { -2.0 } else { 0.0 }));
        rows.push(ties);
        for x in rows {
            let (mut a, mut b) = (
                vec![ActBlock::default(); x.len() / 32],
                vec![ActBlock::default(); x.len() / 32],
            );
            quantize_act(&x, &mut a);
            quantize_act_portable(&x, &mut b);
            for (a, b) in a.iter().zip(&b) {
                assert_eq!(a.qs, b.qs);
                assert_eq!(a.d.to_bits(), b.d.to_bits());
                assert_eq!(a.s.to_bits(), b.s.to_bits());
            }
        }
    }

    #[test]
    fn two_row_kernels_equal_one_row_kernels() {
        let mut rng = TestRng::new(17);
        let cols = 192;
        for ty in GgmlType::ALL {
            let w: Vec<f32> = (0..2 * cols).map(|_| rng.next_f32()).collect();
            let r0 = quantize_row(ty, &w[..cols]).unwrap();
            let r1 = quantize_row(ty, &w[cols..]).unwrap();
            let xs: Vec<Vec<f32>> = (0..4)
                .map(|_| (0..cols).map(|_| rng.next_f32()).collect())
                .collect();
            let qs: Vec<Vec<ActBlock>> = xs
                .iter()
                .map(|x| {
                    let mut q = vec![ActBlock::default(); cols / 32];
                    quantize_act(x, &mut q);
                    q
                })
                .collect();
            let acts: Vec<Act> = xs.iter().zip(&qs).map(|(f, q)| Act { f, q }).collect();
            for isa in available_isas() {
                for n in 1..=4 {
                    let (mut a0, mut a1, mut b0, mut b1) =
                        ([0.0f32; 4], [0.0f32; 4], [0.0f32; 4], [0.0f32; 4]);
                    dot_rows2(isa, ty, [&r0, &r1], cols, &acts[..n], &mut a0, &mut a1);
                    dot_rows(isa, ty, &r0, cols, &acts[..n], &mut b0);
                    dot_rows(isa, ty, &r1, cols, &acts[..n], &mut b1);
                    for j in 0..n {
                        assert!(
                            (a0[j] - b0[j]).abs() <= 1e-5 * (1.0 + b0[j].abs()),
                            "{ty} {isa:?} row 0"
                        );
                        assert!(
                            (a1[j] - b1[j]).abs() <= 1e-5 * (1.0 + b1[j].abs()),
                            "{ty} {isa:?} row 1"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn simd_and_portable_kernels_agree_closely() {
        for isa in available_isas() {
            let mut rng = TestRng::new(9);
            let cols = 576;
            for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0] {
                let w: Vec<f32> = (0..cols).map(|_| rng.next_f32()).collect();
                let row = quantize_row(ty, &w).unwrap();
                let x: Vec<f32> = (0..cols).map(|_| rng.next_f32()).collect();
                let mut q = vec![ActBlock::default(); cols / 32];
                quantize_act(&x, &mut q);
                let a = [Act { f: &x, q: &q }];
                let mut out = [0.0f32];
                dot_rows(isa, ty, &row, cols, &a, &mut out);
                let reference = dot_quant_portable(ty, &row, &q);
                assert!(
                    (out[0] - reference).abs() <= 1e-4 * (1.0 + reference.abs()),
                    "{ty} {isa:?}: {} vs {reference}",
                    out[0]
                );
            }
        }
    }
}
