//! Compiling the kernel sources to PTX with NVRTC (loaded at run time: nothing of CUDA is needed
//! to build, and a machine without a GPU can still compile, which is how CI checks every kernel).

use super::Source;
use crate::{Error, Result};

/// The lowest architecture: the kernels need 7.0 (`__match_any_sync`), NVRTC 13 starts at 7.5.
pub const MIN_ARCH: (u32, u32) = (7, 5);

/// Whether libnvrtc could be loaded (it is looked up by name on the library path).
#[cfg(not(feature = "cuda"))]
pub fn available() -> bool {
    // SAFETY: only tries to open the shared library.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Under `cuda` the library is linked, not loaded: present whenever the binary started.
#[cfg(feature = "cuda")]
pub fn available() -> bool {
    true
}

/// PTX of `src` for compute capability `arch` (major, minor), e.g. (9, 0).
///
/// # Errors
/// [`Error::InvalidArgument`] with NVRTC's log when the source does not compile, or when libnvrtc
/// is not on the library path.
pub fn compile(src: &Source, arch: (u32, u32)) -> Result<String> {
    if arch < MIN_ARCH {
        return Err(Error::InvalidArgument(format!(
            "{}: compute capability {}.{} is below the kernels' {}.{}",
            src.file, arch.0, arch.1, MIN_ARCH.0, MIN_ARCH.1
        )));
    }
    if !available() {
        return Err(Error::InvalidArgument(
            "libnvrtc.so (CUDA 13.0) is not on the library path (LD_LIBRARY_PATH); it comes with \
             the CUDA toolkit or the `nvidia-cuda-nvrtc` wheel"
                .into(),
        ));
    }
    let opts = cudarc::nvrtc::CompileOptions {
        options: vec![
            format!("--gpu-architecture=compute_{}{}", arch.0, arch.1),
            "--std=c++17".into(),
        ],
        name: Some(src.file.into()),
        ..Default::default()
    };
    let ptx = cudarc::nvrtc::compile_ptx_with_opts(src.code, opts).map_err(|e| {
        let why = match &e {
            cudarc::nvrtc::CompileError::CompileError { log, .. } => {
                log.to_string_lossy().into_owned()
            }
            other => format!("{other:?}"),
        };
        Error::InvalidArgument(format!("kernels/{}: NVRTC: {why}", src.file))
    })?;
    Ok(ptx.to_src())
}
