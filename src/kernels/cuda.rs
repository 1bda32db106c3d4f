//! Launching the kernels on a CUDA device (`cuda` feature). Each source is compiled by NVRTC once
//! per process and compute capability, and loaded once per device (candle's custom-module
//! cache). Launch shapes follow kernels/README.md; the inputs were checked by the ops.

use super::limits::{SD_SHARED_FLOATS, SD_WARPS, SH_ROWS, SH_WARPS, TH_WARPS, TS_THREADS};
use super::ops::{SdimBucketTable, SdimMatchedSums, SdimSignatures, TopKHamming, TopKScores};
use super::{Source, SDIM_BUCKETS, SIMHASH, TOPK_HAMMING, TOPK_SCORE};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaView, LaunchArgs, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaDType, CudaDevice, WrapErr};
use candle_core::{CudaStorage, DType, Layout, Result, Shape};
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

/// The PTX of `src` for `dev`'s architecture (compiled on first use).
fn ptx(src: &Source, dev: &CudaDevice) -> Result<&'static str> {
    type Cache = Mutex<HashMap<(&'static str, (u32, u32)), &'static str>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let (major, minor) = dev.cuda_stream().context().compute_capability().w()?;
    let arch = (major as u32, minor as u32);
    let cache = CACHE.get_or_init(Default::default);
    let mut map = cache
        .lock()
        .map_err(|_| candle_core::Error::Msg("kernel cache poisoned".into()))?;
    if let Some(p) = map.get(&(src.file, arch)) {
        return Ok(p);
    }
    let p = super::nvrtc::compile(src, arch).map_err(candle_core::Error::wrap)?;
    // A handful of sources × architectures per process: kept for its lifetime.
    let p: &'static str = Box::leak(p.into_boxed_str());
    map.insert((src.file, arch), p);
    Ok(p)
}

fn func(dev: &CudaDevice, src: &Source, name: &str) -> Result<CudaFunction> {
    let module = format!("lifelong/{}", src.file);
    Ok(dev
        .get_or_load_custom_func(name, &module, ptx(src, dev)?)?
        .into_cuda_function())
}

fn view<'a, T: CudaDType>(s: &'a CudaStorage, l: &Layout, what: &str) -> Result<CudaView<'a, T>> {
    let (a, b) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("{what}: expected a contiguous tensor")))?;
    Ok(s.as_cuda_slice::<T>()?.slice(a..b))
}

fn cfg(grid: (u32, u32), block: u32, shared: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (grid.0, grid.1, 1),
        block_dim: (block, 1, 1),
        shared_mem_bytes: shared,
    }
}

fn int(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| candle_core::Error::Msg(format!("{what} = {v} exceeds i32")))
}

fn launch(mut b: LaunchArgs<'_>, c: LaunchConfig) -> Result<()> {
    // SAFETY: every argument list below matches its kernel's signature in kernels/*.cu, and the
    // buffers have the sizes the kernel's contract names (checked by the ops).
    unsafe { b.launch(c) }.w()?;
    Ok(())
}

pub(super) fn simhash_codes(
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let dev = s1.device().clone();
    let (n, d) = l1.shape().dims2()?;
    let bits = l2.shape().dims2()?.1;
    let words = bits.div_ceil(32);
    let r = view::<f32>(s2, l2, "simhash proj")?;
    // SAFETY: every word is written by the kernel.
    let out = unsafe { dev.alloc::<u32>(n * words)? };
    if n > 0 {
        let per_block = SH_WARPS * SH_ROWS;
        let c = cfg(
            ((n.div_ceil(per_block)) as u32, 1),
            (SH_WARPS * 32) as u32,
            0,
        );
        let (ni, di, bi) = (int(n, "n")?, int(d, "d")?, int(bits, "bits")?);
        let stream = dev.cuda_stream();
        match s1.dtype() {
            DType::F32 => {
                let f = func(&dev, &SIMHASH, "simhash_codes_f32")?;
                let x = view::<f32>(s1, l1, "simhash x")?;
                let mut b = stream.launch_builder(&f);
                b.arg(&x).arg(&r).arg(&out).arg(&ni).arg(&di).arg(&bi);
                launch(b, c)?;
            }
            DType::F16 => {
                let f = func(&dev, &SIMHASH, "simhash_codes_f16")?;
                let x = view::<half::f16>(s1, l1, "simhash x")?;
                let mut b = stream.launch_builder(&f);
                b.arg(&x).arg(&r).arg(&out).arg(&ni).arg(&di).arg(&bi);
                launch(b, c)?;
            }
            DType::BF16 => {
                let f = func(&dev, &SIMHASH, "simhash_codes_bf16")?;
                let x = view::<half::bf16>(s1, l1, "simhash x")?;
                let mut b = stream.launch_builder(&f);
                b.arg(&x).arg(&r).arg(&out).arg(&ni).arg(&di).arg(&bi);
                launch(b, c)?;
            }
            other => candle_core::bail!("simhash x: {other:?} (want f32, f16 or bf16)"),
        }
    }
    Ok((
        CudaStorage::wrap_cuda_slice(out, dev),
        Shape::from((n, words)),
    ))
}

pub(super) fn sdim_signatures(
    op: &SdimSignatures,
    s: &CudaStorage,
    l: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let dev = s.device().clone();
    let (n, w) = l.shape().dims2()?;
    let g = op.groups;
    let codes = view::<u32>(s, l, "sdim_signatures codes")?;
    // SAFETY: every entry is written by the kernel.
    let out = unsafe { dev.alloc::<u32>(n * g)? };
    if n > 0 {
        let f = func(&dev, &SIMHASH, "sdim_signatures")?;
        let c = cfg(((n * g).div_ceil(256) as u32, 1), 256, 0);
        let (ni, wi, gi, ti) = (
            int(n, "n")?,
            int(w, "words")?,
            int(g, "G")?,
            int(op.tau, "τ")?,
        );
        let stream = dev.cuda_stream();
        let mut b = stream.launch_builder(&f);
        b.arg(&codes).arg(&out).arg(&ni).arg(&wi).arg(&gi).arg(&ti);
        launch(b, c)?;
    }
    Ok((CudaStorage::wrap_cuda_slice(out, dev), Shape::from((n, g))))
}

pub(super) fn topk_hamming(
    op: &TopKHamming,
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let dev = s1.device().clone();
    let (rows, w) = l1.shape().dims2()?;
    let target = view::<u32>(s1, l1, "topk_hamming target")?;
    let codes = view::<u32>(s2, l2, "topk_hamming codes")?;
    let offsets = dev.clone_htod(op.offsets.as_slice())?;
    // SAFETY: every slot is written by the kernel (a position or NONE).
    let out = unsafe { dev.alloc::<u32>(rows * op.k)? };
    let f = func(&dev, &TOPK_HAMMING, "topk_hamming")?;
    let c = cfg((rows as u32, 1), (TH_WARPS * 32) as u32, 0);
    let (ri, wi, ki) = (int(rows, "rows")?, int(w, "words")?, int(op.k, "k")?);
    let stream = dev.cuda_stream();
    let mut b = stream.launch_builder(&f);
    b.arg(&target)
        .arg(&codes)
        .arg(&offsets)
        .arg(&out)
        .arg(&ri)
        .arg(&wi)
        .arg(&ki);
    launch(b, c)?;
    Ok((
        CudaStorage::wrap_cuda_slice(out, dev),
        Shape::from((rows, op.k)),
    ))
}

pub(super) fn topk_scores(
    op: &TopKScores,
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let dev = s1.device().clone();
    let (rows, len) = l1.shape().dims2()?;
    let scores = view::<f32>(s1, l1, "topk_scores scores")?;
    // SAFETY: work space; the kernel writes before it reads.
    let scratch = unsafe { dev.alloc::<u32>((rows * len).max(1))? };
    // SAFETY: every slot is written by the kernel.
    let out = unsafe { dev.alloc::<u32>(rows * op.k)? };
    let f = func(&dev, &TOPK_SCORE, "topk_score")?;
    let c = cfg((rows as u32, 1), TS_THREADS as u32, 0);
    let (ri, li, ki) = (int(rows, "rows")?, int(len, "L")?, int(op.k, "k")?);
    let has_mask = op.has_mask as i32;
    let stream = dev.cuda_stream();
    let mut b = stream.launch_builder(&f);
    b.arg(&scores);
    // Without a mask the kernel never reads its mask argument; the scores' buffer stands in.
    let mask;
    if op.has_mask {
        mask = view::<u8>(s2, l2, "topk_scores mask")?;
        b.arg(&mask);
    } else {
        b.arg(&scores);
    }
    b.arg(&has_mask)
        .arg(&scratch)
        .arg(&out)
        .arg(&ri)
        .arg(&li)
        .arg(&ki);
    launch(b, c)?;
    Ok((
        CudaStorage::wrap_cuda_slice(out, dev),
        Shape::from((rows, op.k)),
    ))
}

pub(super) fn sdim_matched_sums(
    op: &SdimMatchedSums,
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
    s3: &CudaStorage,
    l3: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let dev = s1.device().clone();
    let d = l1.shape().dims2()?.1;
    let (rows, g) = l3.shape().dims2()?;
    let values = view::<f32>(s1, l1, "sdim values")?;
    let sigs = view::<u32>(s2, l2, "sdim sigs")?;
    let target = view::<u32>(s3, l3, "sdim target")?;
    let offsets = dev.clone_htod(op.offsets.as_slice())?;
    // SAFETY: every entry is written by the kernel.
    let out = unsafe { dev.alloc::<f32>(rows * g * d)? };
    // Groups per block: at most a warp's lanes, and the warps' partials within shared memory.
    let gc = g.min(32).min(SD_SHARED_FLOATS / (SD_WARPS * d)).max(1);
    let f = func(&dev, &SDIM_BUCKETS, "sdim_matched_sums")?;
    let shared = (SD_WARPS * gc * d * 4) as u32;
    let c = cfg(
        (rows as u32, g.div_ceil(gc) as u32),
        (SD_WARPS * 32) as u32,
        shared,
    );
    let (ri, di, gi, gci) = (
        int(rows, "rows")?,
        int(d, "d")?,
        int(g, "G")?,
        int(gc, "gc")?,
    );
    let stream = dev.cuda_stream();
    let mut b = stream.launch_builder(&f);
    b.arg(&values)
        .arg(&sigs)
        .arg(&target)
        .arg(&offsets)
        .arg(&out)
        .arg(&ri)
        .arg(&di)
        .arg(&gi)
        .arg(&gci);
    launch(b, c)?;
    Ok((
        CudaStorage::wrap_cuda_slice(out, dev),
        Shape::from((rows, g, d)),
    ))
}

pub(super) fn sdim_bucket_table(
    op: &SdimBucketTable,
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let dev = s1.device().clone();
    let d = l1.shape().dims2()?.1;
    let g = l2.shape().dims2()?.1;
    let rows = op.offsets.len() - 1;
    let nb = 1usize << op.tau;
    let values = view::<f32>(s1, l1, "sdim values")?;
    let sigs = view::<u32>(s2, l2, "sdim sigs")?;
    let offsets = dev.clone_htod(op.offsets.as_slice())?;
    // Zeroed: the large-table path adds into it.
    let out = dev.alloc_zeros::<f32>(rows * g * nb * d)?;
    let bad = dev.alloc_zeros::<u32>(1)?;
    let in_shared = SD_WARPS * nb * d <= SD_SHARED_FLOATS;
    let shared = if in_shared {
        (SD_WARPS * nb * d * 4) as u32
    } else {
        0
    };
    let f = func(&dev, &SDIM_BUCKETS, "sdim_bucket_table")?;
    let c = cfg((rows as u32, g as u32), (SD_WARPS * 32) as u32, shared);
    let (ri, di, gi, ti) = (
        int(rows, "rows")?,
        int(d, "d")?,
        int(g, "G")?,
        int(op.tau, "τ")?,
    );
    let flag = in_shared as i32;
    let stream = dev.cuda_stream();
    let mut b = stream.launch_builder(&f);
    b.arg(&values)
        .arg(&sigs)
        .arg(&offsets)
        .arg(&out)
        .arg(&bad)
        .arg(&ri)
        .arg(&di)
        .arg(&gi)
        .arg(&ti)
        .arg(&flag);
    launch(b, c)?;
    if dev.clone_dtoh(&bad)?[0] != 0 {
        candle_core::bail!("sdim_bucket_table: a signature is ≥ 2^τ = {nb}");
    }
    Ok((
        CudaStorage::wrap_cuda_slice(out, dev),
        Shape::from((rows, g, nb, d)),
    ))
}
