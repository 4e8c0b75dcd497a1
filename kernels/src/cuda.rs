//! The kernels on a GPU: cudarc with dynamic loading (the crate builds and runs without CUDA installed),
//! NVRTC compiles each op's program at first use for the device's compute capability, and the PTX is
//! cached on disk under its source hash + architecture + NVRTC version.
//!
//! [`Cuda::new`] checks for the driver library before touching cudarc (which panics when it is missing)
//! and returns [`Error::NoDriver`]; [`compile`] needs only NVRTC, no GPU (CI uses it for the compile check).

use std::collections::HashMap;
use std::ffi::c_void;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// cudarc's raw driver types (CUstream, CUdeviceptr) for callers that hold foreign pointers (ORT).
pub use cudarc::driver::sys;
use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use cudarc::nvrtc::{CompileOptions, Ptx};

use crate::error::{Error, Result};
use crate::launch::{Launch, Op, plan};
use crate::layout::{Activation, Dtype, Fp8Layout, Int4Layout, check_io};
use crate::source;

/// Whether libcuda can be opened (cudarc panics on first use otherwise).
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the library names cudarc would use.
    unsafe { sys::is_culib_present() }
}

/// Whether libnvrtc can be opened.
pub fn nvrtc_present() -> bool {
    cudarc::get_lib_name_candidates("nvrtc")
        .iter()
        // SAFETY: opening NVRTC runs no initialisers with preconditions.
        .any(|name| unsafe { libloading::Library::new(name) }.is_ok())
}

/// NVRTC's version as "major.minor".
pub fn nvrtc_version() -> Result<String> {
    if !nvrtc_present() {
        return Err(Error::NoNvrtc);
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: plain out-parameters.
    let rc = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    if rc != cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(Error::driver("asking NVRTC for its version", format!("{rc:?}")));
    }
    Ok(format!("{major}.{minor}"))
}

/// Directories that hold cuda_fp16.h: $ST_CUDA_INCLUDE, $CUDA_HOME/include, $CUDA_PATH/include,
/// /usr/local/cuda/include (the first that exists is used).
pub fn include_dir() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os("ST_CUDA_INCLUDE") {
        candidates.push(p.into());
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(p) = std::env::var_os(var) {
            candidates.push(PathBuf::from(p).join("include"));
        }
    }
    candidates.push("/usr/local/cuda/include".into());
    candidates.into_iter().find(|d| d.join("cuda_fp16.h").is_file())
}

/// Compiles `op`'s program to PTX for `arch` ("sm_80", "sm_87", "sm_89", "sm_90", ...). Needs NVRTC only.
pub fn compile(op: Op, arch: &str) -> Result<String> {
    if !nvrtc_present() {
        return Err(Error::NoNvrtc);
    }
    let include = include_dir().ok_or(Error::NoHeaders)?;
    let virtual_arch = arch.replace("sm_", "compute_");
    let opts = CompileOptions {
        include_paths: vec![include.display().to_string()],
        options: vec![format!("--gpu-architecture={virtual_arch}"), "--std=c++17".into(), "-lineinfo".into()],
        name: Some(source::file_name(op).into()),
        ..Default::default()
    };
    let ptx = cudarc::nvrtc::compile_ptx_with_opts(source::program(op), opts).map_err(|e| Error::Compile {
        program: source::file_name(op).into(),
        arch: arch.into(),
        log: e.to_string(),
    })?;
    Ok(ptx.to_src())
}

/// PTX for `op` on `arch`, from `cache_dir` when an entry for this exact source, arch and NVRTC version
/// exists, else compiled and stored there (write to a temp file, then rename).
pub fn compile_cached(op: Op, arch: &str, cache_dir: Option<&Path>) -> Result<String> {
    let program = source::program(op);
    let version = nvrtc_version()?;
    let key = source::cache_key(&program, &[arch, &version]);
    let path = cache_dir.map(|d| d.join(format!("{}-{arch}-{}.ptx", op.name(), &key[..16])));
    if let Some(p) = &path
        && let Ok(text) = std::fs::read_to_string(p)
    {
        return Ok(text);
    }
    let ptx = compile(op, arch)?;
    if let Some(p) = &path {
        let cache = |source| Error::Cache { path: p.clone(), source };
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir).map_err(cache)?;
        }
        let tmp = p.with_extension(format!("ptx.tmp{}", std::process::id()));
        std::fs::write(&tmp, &ptx).map_err(cache)?;
        std::fs::rename(&tmp, p).map_err(cache)?;
    }
    Ok(ptx)
}

/// Both ops loaded on one device.
pub struct Cuda {
    ctx: Arc<CudaContext>,
    arch: String,
    functions: HashMap<String, CudaFunction>,
}

impl Cuda {
    /// Opens device `ordinal` (its primary context, the one ORT's CUDA provider uses) and loads both ops,
    /// compiling them on first use into `cache_dir`.
    pub fn new(ordinal: usize, cache_dir: Option<&Path>) -> Result<Self> {
        if !driver_present() {
            return Err(Error::NoDriver);
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| Error::driver(format!("opening CUDA device {ordinal}"), e))?;
        let (major, minor) =
            ctx.compute_capability().map_err(|e| Error::driver("reading the compute capability", e))?;
        let arch = format!("sm_{major}{minor}");
        let mut functions = HashMap::new();
        for op in Op::ALL {
            let ptx = compile_cached(op, &arch, cache_dir)?;
            let module = ctx
                .load_module(Ptx::from_src(ptx))
                .map_err(|e| Error::driver(format!("loading {} for {arch}", source::file_name(op)), e))?;
            for name in crate::launch::kernel_names(op) {
                let f = module.load_function(&name).map_err(|e| Error::driver(format!("finding {name}"), e))?;
                functions.insert(name, f);
            }
        }
        Ok(Self { ctx, arch, functions })
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// "sm_XY" of the device.
    pub fn arch(&self) -> &str {
        &self.arch
    }

    fn launch_raw(&self, launch: &Launch, stream: sys::CUstream, params: &mut [*mut c_void]) -> Result<()> {
        let f = self.functions.get(&launch.kernel).ok_or_else(|| Error::UnknownKernel(launch.kernel.clone()))?;
        self.ctx.bind_to_thread().map_err(|e| Error::driver("binding the CUDA context", e))?;
        // SAFETY: the caller passes parameters matching the kernel's signature (see the *_raw functions).
        unsafe {
            cudarc::driver::result::launch_kernel(
                f.cu_function(),
                (launch.grid.0, launch.grid.1, 1),
                (launch.threads, 1, 1),
                0,
                stream,
                params,
            )
        }
        .map_err(|e| Error::driver(format!("launching {}", launch.kernel), e))
    }

    /// Launches the int4 kernel for `m` rows on `stream` with raw device pointers (the ORT custom op's
    /// entry: ORT owns the buffers). `zero_points` is 0 for symmetric weights.
    ///
    /// # Safety
    /// Every pointer must address device memory of this context holding the lengths `layout` and `m`
    /// imply, in `dtype` for a, scales and y; `stream` must belong to this context.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn int4_matmul_raw(
        &self,
        stream: sys::CUstream,
        dtype: Dtype,
        layout: Int4Layout,
        m: usize,
        a: sys::CUdeviceptr,
        b: sys::CUdeviceptr,
        scales: sys::CUdeviceptr,
        zero_points: sys::CUdeviceptr,
        y: sys::CUdeviceptr,
    ) -> Result<()> {
        layout.validate()?;
        check_io(m, layout.n, layout.k, m * layout.k, m * layout.n)?;
        let launch = plan(Op::Int4, dtype, m, layout.n);
        let (mut a, mut b, mut s, mut z, mut y) = (a, b, scales, zero_points, y);
        let (mut mi, mut ni, mut ki, mut bi) = (m as i32, layout.n as i32, layout.k as i32, layout.block as i32);
        let mut params: [*mut c_void; 9] = [
            (&mut a as *mut u64).cast(),
            (&mut b as *mut u64).cast(),
            (&mut s as *mut u64).cast(),
            (&mut z as *mut u64).cast(),
            (&mut y as *mut u64).cast(),
            (&mut mi as *mut i32).cast(),
            (&mut ni as *mut i32).cast(),
            (&mut ki as *mut i32).cast(),
            (&mut bi as *mut i32).cast(),
        ];
        self.launch_raw(&launch, stream, &mut params)
    }

    /// Launches the fp8 kernel for `m` rows on `stream` with raw device pointers.
    ///
    /// # Safety
    /// As for [`Cuda::int4_matmul_raw`].
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn fp8_matmul_raw(
        &self,
        stream: sys::CUstream,
        dtype: Dtype,
        layout: Fp8Layout,
        m: usize,
        a: sys::CUdeviceptr,
        w: sys::CUdeviceptr,
        scales: sys::CUdeviceptr,
        y: sys::CUdeviceptr,
    ) -> Result<()> {
        layout.validate()?;
        check_io(m, layout.n, layout.k, m * layout.k, m * layout.n)?;
        let launch = plan(Op::Fp8, dtype, m, layout.n);
        let (mut a, mut w, mut s, mut y) = (a, w, scales, y);
        let (mut mi, mut ni, mut ki, mut bi) = (m as i32, layout.n as i32, layout.k as i32, layout.block_arg() as i32);
        let mut params: [*mut c_void; 8] = [
            (&mut a as *mut u64).cast(),
            (&mut w as *mut u64).cast(),
            (&mut s as *mut u64).cast(),
            (&mut y as *mut u64).cast(),
            (&mut mi as *mut i32).cast(),
            (&mut ni as *mut i32).cast(),
            (&mut ki as *mut i32).cast(),
            (&mut bi as *mut i32).cast(),
        ];
        self.launch_raw(&launch, stream, &mut params)
    }
}

/// int4 weights resident on the device.
impl Cuda {
    /// Grouped-query attention (`attention.cu`) for f32 activations on `stream`: the launches of
    /// [`crate::gqa::plan`] after [`crate::gqa::GqaDims::args`] checked the sizes.
    ///
    /// # Safety
    /// Every pointer is device memory of the sizes `dims` and `shape` imply (rows at their strides,
    /// `[kv_heads][capacity][head_dim]` caches, `[kv_heads][past_capacity][head_dim]` past buffers when
    /// they are not the caches, i64 position ids, `[tokens][heads · head_dim]` output), alive until the
    /// stream has run the kernels.
    pub unsafe fn gqa_raw(
        &self,
        stream: sys::CUstream,
        shape: crate::cpu::GqaShape,
        dims: &crate::gqa::GqaDims,
        ptrs: &crate::gqa::GqaPointers,
    ) -> Result<()> {
        let mut args = dims.args(shape, ptrs)?;
        for launch in crate::gqa::plan(shape, dims, ptrs) {
            let mut params: [*mut c_void; 1] = [(&mut args as *mut crate::gqa::GqaArgs).cast()];
            self.launch_raw(&launch, stream, &mut params)?;
        }
        Ok(())
    }
}

pub struct DeviceInt4<T> {
    pub layout: Int4Layout,
    pub b: CudaSlice<u8>,
    pub scales: CudaSlice<T>,
    pub zero_points: Option<CudaSlice<u8>>,
}

/// fp8 weights resident on the device.
pub struct DeviceFp8<T> {
    pub layout: Fp8Layout,
    pub w: CudaSlice<u8>,
    pub scales: CudaSlice<T>,
}

fn upload<T: cudarc::driver::DeviceRepr>(stream: &Arc<CudaStream>, what: &str, v: &[T]) -> Result<CudaSlice<T>> {
    stream.clone_htod(v).map_err(|e| Error::driver(format!("copying {what} to the device"), e))
}

impl<T: Activation + cudarc::driver::DeviceRepr> DeviceInt4<T> {
    pub fn upload(stream: &Arc<CudaStream>, w: &crate::layout::Int4Weights<'_, T>) -> Result<Self> {
        w.validate()?;
        Ok(Self {
            layout: w.layout,
            b: upload(stream, "int4 B", w.b)?,
            scales: upload(stream, "int4 scales", w.scales)?,
            zero_points: w.zero_points.map(|z| upload(stream, "int4 zero points", z)).transpose()?,
        })
    }
}

impl<T: Activation + cudarc::driver::DeviceRepr> DeviceFp8<T> {
    pub fn upload(stream: &Arc<CudaStream>, w: &crate::layout::Fp8Weights<'_, T>) -> Result<Self> {
        w.validate()?;
        Ok(Self { layout: w.layout, w: upload(stream, "fp8 W", w.w)?, scales: upload(stream, "fp8 scales", w.scales)? })
    }
}

impl Cuda {
    /// `y[m, n] = a[m, k] · Wᵀ` on `stream` (typed, lengths checked).
    pub fn int4_matmul<T: Activation + cudarc::driver::DeviceRepr>(
        &self,
        stream: &Arc<CudaStream>,
        a: &CudaSlice<T>,
        m: usize,
        w: &DeviceInt4<T>,
        y: &mut CudaSlice<T>,
    ) -> Result<()> {
        let l = w.layout;
        check_io(m, l.n, l.k, a.len(), y.len())?;
        let (pa, _ga) = a.device_ptr(stream);
        let (pb, _gb) = w.b.device_ptr(stream);
        let (ps, _gs) = w.scales.device_ptr(stream);
        let (pz, _gz) = match &w.zero_points {
            Some(z) => {
                let (p, g) = z.device_ptr(stream);
                (p, Some(g))
            }
            None => (0, None),
        };
        let (py, _gy) = y.device_ptr_mut(stream);
        // SAFETY: the buffers were allocated with the lengths the layout implies (checked at upload and above).
        unsafe { self.int4_matmul_raw(stream.cu_stream(), T::DTYPE, l, m, pa, pb, ps, pz, py) }
    }

    /// `y[m, n] = a[m, k] · Wᵀ` on `stream` (typed, lengths checked).
    pub fn fp8_matmul<T: Activation + cudarc::driver::DeviceRepr>(
        &self,
        stream: &Arc<CudaStream>,
        a: &CudaSlice<T>,
        m: usize,
        w: &DeviceFp8<T>,
        y: &mut CudaSlice<T>,
    ) -> Result<()> {
        let l = w.layout;
        check_io(m, l.n, l.k, a.len(), y.len())?;
        let (pa, _ga) = a.device_ptr(stream);
        let (pw, _gw) = w.w.device_ptr(stream);
        let (ps, _gs) = w.scales.device_ptr(stream);
        let (py, _gy) = y.device_ptr_mut(stream);
        // SAFETY: as in int4_matmul.
        unsafe { self.fp8_matmul_raw(stream.cu_stream(), T::DTYPE, l, m, pa, pw, ps, py) }
    }
}
