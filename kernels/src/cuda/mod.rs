//! CUDA kernels, written by us in `kernels/cuda/*.cu` and compiled at run time by NVRTC for the device in hand,
//! loaded through cudarc's dynamic loading: nothing of CUDA is needed to build, and a machine without a driver or
//! a device gets a [`GpuError`] naming what is missing, never a panic.

pub mod adamw;
pub mod argmax;
pub mod attention;
pub mod attention_windows;
pub mod awq_search;
pub mod convert;
pub mod cross_entropy;
pub mod dropout;
pub mod float;
pub mod gemm;
pub mod lora;
pub mod rmsnorm;
pub mod rope;
pub mod rows;
pub mod silu_mul;
pub mod timing;
pub mod w4a16;

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::cublas::CudaBlas;
use cudarc::driver::sys::{self, CUstreamCaptureMode};
use cudarc::driver::{CudaModule, DriverError};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions, Ptx};

pub use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, CudaView, DeviceRepr, LaunchConfig,
    PushKernelArg, ValidAsZeroBits,
};
pub use half::{bf16, f16};

/// Why a GPU could not be used or a kernel failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GpuError {
    /// No CUDA driver library (libcuda.so) could be loaded: there is no NVIDIA driver on this machine.
    #[error("no CUDA device: the NVIDIA driver library (libcuda.so) is not installed or not on the loader path")]
    NoDriver,
    /// The driver is there but reports fewer devices than asked for.
    #[error("no CUDA device {ordinal}: the driver reports {count} device(s)")]
    NoDevice { ordinal: usize, count: usize },
    /// NVRTC (libnvrtc.so), which compiles our kernels, could not be loaded.
    #[error(
        "CUDA's run-time compiler NVRTC (libnvrtc.so) was not found on the loader path nor in {searched}; \
         install the CUDA toolkit or the nvidia-cuda-nvrtc package, or put its lib folder on LD_LIBRARY_PATH"
    )]
    NoNvrtc { searched: String },
    /// NVRTC refused a kernel source.
    #[error("compiling kernels/cuda/{file} for {arch} failed:\n{log}")]
    Compile {
        file: &'static str,
        arch: String,
        log: String,
    },
    /// A kernel name that its source does not define.
    #[error("kernels/cuda/{file} has no kernel `{name}`: {source}")]
    MissingKernel {
        file: &'static str,
        name: String,
        source: DriverError,
    },
    /// Shapes or arguments a launcher cannot take.
    #[error("{0}")]
    Shape(String),
    /// A CUDA driver call failed.
    #[error("CUDA driver: {0}")]
    Driver(#[from] DriverError),
    /// A cuBLAS call failed.
    #[error("cuBLAS: {0}")]
    Blas(#[from] cudarc::cublas::result::CublasError),
}

/// One kernel source file of `kernels/cuda/`, embedded in the binary.
#[derive(Debug, Clone, Copy)]
pub struct KernelSource {
    /// The file name, e.g. `rmsnorm.cu`.
    pub file: &'static str,
    /// Its text.
    pub code: &'static str,
    /// Compiled for the device's architecture-specific target where we use one (`sm_90a` on compute capability
    /// 9.0, for Hopper-only instructions such as wgmma), so the source may hold kernels guarded by
    /// `__CUDA_ARCH_FEAT_SM90_ALL`; other devices get their plain `sm_XY`.
    pub arch_specific: bool,
}

/// The [`KernelSource`] of `kernels/cuda/<name>.cu` after `kernels/cuda/prelude.cuh`, compiled for the device's
/// plain target.
#[macro_export]
macro_rules! cuda_source {
    ($name:literal) => {
        $crate::cuda::KernelSource {
            file: concat!($name, ".cu"),
            code: concat!(
                include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/cuda/prelude.cuh")),
                include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/cuda/", $name, ".cu"))
            ),
            arch_specific: false,
        }
    };
}

/// One CUDA device: its context, the one stream everything of ours runs on, cuBLAS on that stream, and the
/// modules compiled so far; and a second stream with its own cuBLAS that a capture records on (see
/// [`Gpu::capture`]).
pub struct Gpu {
    context: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    capture_stream: Arc<CudaStream>,
    capture_blas: CudaBlas,
    /// The [`thread_number`] of the thread capturing, 0 when none.
    capturing: AtomicU64,
    /// Held through a capture: one at a time.
    capture_lock: Mutex<()>,
    name: String,
    arch: (u32, u32),
    sm_count: u32,
    modules: Mutex<HashMap<String, Arc<CudaModule>>>,
    /// The kernels loaded so far that call `wait_for_previous_kernel` (kernels/cuda/prelude.cuh), by handle.
    waiting: Mutex<HashSet<usize>>,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gpu({}, sm_{}{})", self.name, self.arch.0, self.arch.1)
    }
}

impl Gpu {
    /// The process-wide handle of device `ordinal`, created on first use.
    pub fn get(ordinal: usize) -> Result<Arc<Gpu>, GpuError> {
        static GPUS: OnceLock<Mutex<HashMap<usize, Arc<Gpu>>>> = OnceLock::new();
        let mut gpus = GPUS
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(gpu) = gpus.get(&ordinal) {
            return Ok(gpu.clone());
        }
        let gpu = Arc::new(Self::open(ordinal)?);
        gpus.insert(ordinal, gpu.clone());
        Ok(gpu)
    }

    /// How many CUDA devices the driver reports (0 where it reports an error); [`GpuError::NoDriver`] without
    /// a driver.
    pub fn count() -> Result<usize, GpuError> {
        // SAFETY: only tries to dlopen the driver library; cudarc panics on a missing one, so we ask first.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(GpuError::NoDriver);
        }
        Ok(CudaContext::device_count().map_or(0, |n| usize::try_from(n).unwrap_or(0)))
    }

    fn open(ordinal: usize) -> Result<Self, GpuError> {
        let count = Self::count()?;
        if ordinal >= count {
            return Err(GpuError::NoDevice { ordinal, count });
        }
        load_nvrtc()?;
        let context = CudaContext::new(ordinal)?;
        // Every kernel, copy and cuBLAS call runs on the one stream below, in order, so cudarc's per-buffer events
        // (an event recorded and waited for per buffer around every launch, to order work across streams) order
        // nothing and cost host time on every launch (a decode step is ~35 launches a layer pair). A second
        // stream (olive-dist's communicator) joins this one explicitly both ways; the capture stream only records
        // graphs, which replay on this one.
        // SAFETY: called before any buffer of this context exists; the buffers made after carry no events, and
        // the only other stream orders itself against this one (`Comm::all_reduce_sum` / `Comm::wait`).
        unsafe { context.disable_event_tracking() };
        let stream = context.new_stream()?;
        let blas = CudaBlas::new(stream.clone())?;
        let capture_stream = context.new_stream()?;
        let capture_blas = CudaBlas::new(capture_stream.clone())?;
        let (major, minor) = context.compute_capability()?;
        let sm_count = context.attribute(
            cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
        )?;
        Ok(Self {
            name: context.name()?,
            arch: (major as u32, minor as u32),
            sm_count: sm_count as u32,
            context,
            stream,
            blas,
            capture_stream,
            capture_blas,
            capturing: AtomicU64::new(0),
            capture_lock: Mutex::default(),
            modules: Mutex::default(),
            waiting: Mutex::default(),
        })
    }

    /// The CUDA context (for a second stream, such as a communicator's).
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.context
    }

    /// The most bytes this process has held at once in the device's stream-ordered allocations (cudarc allocates
    /// with cuMemAllocAsync from the device's default memory pool): weights, caches and activations, not the CUDA
    /// context nor cuBLAS's workspace.
    pub fn peak_pool_bytes(&self) -> Result<u64, GpuError> {
        use cudarc::driver::sys;
        self.context.bind_to_thread()?;
        let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
        let mut high: u64 = 0;
        // SAFETY: driver queries on this context's device, each writing one value into a local.
        unsafe {
            sys::cuDeviceGetDefaultMemPool(&mut pool, self.context.cu_device()).result()?;
            sys::cuMemPoolGetAttribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
                (&mut high as *mut u64).cast(),
            )
            .result()?;
        }
        Ok(high)
    }

    /// The device's name, e.g. "NVIDIA H100 80GB HBM3".
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its compute capability (major, minor).
    pub fn arch(&self) -> (u32, u32) {
        self.arch
    }

    /// Its number of multiprocessors.
    pub fn sm_count(&self) -> u32 {
        self.sm_count
    }

    /// The stream every kernel, copy and cuBLAS call of ours runs on (in order); in a thread capturing
    /// ([`Gpu::capture`]), the stream the capture records.
    pub fn stream(&self) -> &Arc<CudaStream> {
        if self.capturing_here() {
            &self.capture_stream
        } else {
            &self.stream
        }
    }

    /// cuBLAS, bound to [`Gpu::stream`].
    pub fn blas(&self) -> &CudaBlas {
        if self.capturing_here() {
            &self.capture_blas
        } else {
            &self.blas
        }
    }

    fn capturing_here(&self) -> bool {
        self.capturing.load(Ordering::Relaxed) == thread_number()
    }

    /// Kernel `name` of `source`, compiling the file for this device on first use.
    pub fn function(&self, source: &KernelSource, name: &str) -> Result<CudaFunction, GpuError> {
        self.function_with(source, &[], name)
    }

    /// Kernel `name` of `source` compiled with the preprocessor `defines` (NAME, value), each set of defines a
    /// module of its own: for files that build only the instances a call needs.
    pub fn function_with(
        &self,
        source: &KernelSource,
        defines: &[(&str, &str)],
        name: &str,
    ) -> Result<CudaFunction, GpuError> {
        let module = self.module(source, defines)?;
        module
            .load_function(name)
            .map_err(|e| GpuError::MissingKernel {
                file: source.file,
                name: name.to_owned(),
                source: e,
            })
    }

    fn module(
        &self,
        source: &KernelSource,
        defines: &[(&str, &str)],
    ) -> Result<Arc<CudaModule>, GpuError> {
        let mut modules = self
            .modules
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let defines: Vec<String> = defines.iter().map(|(k, v)| format!("-D{k}={v}")).collect();
        // Looked up on every launch: no allocation for a file without defines.
        let key: Cow<'_, str> = if defines.is_empty() {
            Cow::Borrowed(source.file)
        } else {
            Cow::Owned(format!("{} {}", source.file, defines.join(" ")))
        };
        if let Some(module) = modules.get(key.as_ref()) {
            return Ok(module.clone());
        }
        let arch = match (source.arch_specific, self.arch) {
            (true, (9, 0)) => "sm_90a".to_owned(),
            _ => format!("sm_{}{}", self.arch.0, self.arch.1),
        };
        let mut compile = vec![format!("--gpu-architecture={arch}"), "--std=c++17".into()];
        compile.extend(defines);
        let options = CompileOptions {
            options: compile,
            include_paths: cuda_include_dirs(),
            name: Some(source.file.to_owned()),
            ..Default::default()
        };
        let cached = ptx_cache_path(
            source,
            &[&options.options[..], &options.include_paths[..]].concat(),
        );
        if let Some(ptx) = cached
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
        {
            if let Ok(module) = self.context.load_module(Ptx::from_src(ptx.clone())) {
                self.note_waiting(&module, &ptx)?;
                modules.insert(key.into_owned(), module.clone());
                return Ok(module);
            }
        }
        let ptx = compile_ptx_with_opts(source.code, options).map_err(|e| GpuError::Compile {
            file: source.file,
            arch: arch.clone(),
            log: e.to_string(),
        })?;
        let text = ptx.to_src();
        if let Some(path) = &cached {
            store_ptx(path, &text);
        }
        let module = self.context.load_module(ptx)?;
        self.note_waiting(&module, &text)?;
        modules.insert(key.into_owned(), module.clone());
        Ok(module)
    }

    /// Adds the kernels of `module` whose code (`ptx`) waits for the previous kernel to [`Gpu::waiting`].
    fn note_waiting(&self, module: &Arc<CudaModule>, ptx: &str) -> Result<(), GpuError> {
        let names = waiting_kernels(ptx);
        if names.is_empty() {
            return Ok(());
        }
        let mut waiting = self
            .waiting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for name in names {
            let f = module.load_function(name)?;
            waiting.insert(f.cu_function() as usize);
        }
        Ok(())
    }

    /// A device copy of `host`.
    pub fn upload<T: DeviceRepr>(&self, host: &[T]) -> Result<CudaSlice<T>, GpuError> {
        Ok(self.stream().clone_htod(host)?)
    }

    /// A host copy of `device` (waits for the stream).
    pub fn download<T: DeviceRepr + Default + Clone>(
        &self,
        device: &CudaSlice<T>,
    ) -> Result<Vec<T>, GpuError> {
        Ok(self.stream().clone_dtoh(device)?)
    }

    /// Overwrites `device` with `host` (same length), in stream order.
    pub fn write<T: DeviceRepr>(
        &self,
        host: &[T],
        device: &mut CudaSlice<T>,
    ) -> Result<(), GpuError> {
        if host.len() != device.len() {
            return Err(GpuError::Shape(format!(
                "write: {} host elements into a device buffer of {}",
                host.len(),
                device.len()
            )));
        }
        Ok(self.stream().memcpy_htod(host, device)?)
    }

    /// The work `queue` puts on [`Gpu::stream`], captured as a CUDA graph instead of run: its kernels (and copies,
    /// cuBLAS calls, stream-ordered allocations) with the arguments they were given, replayed by [`Gpu::replay`],
    /// linked as `edges` says. While `queue` runs, this thread's `stream()` is a second stream that records, so
    /// work other threads queue meanwhile runs as usual and stays out of the graph; `queue` must not wait on the
    /// device (no download). One capture at a time; the capture is ended whether or not `queue` fails.
    pub fn capture<E: From<GpuError>>(
        &self,
        edges: Edges,
        queue: impl FnOnce() -> Result<(), E>,
    ) -> Result<Graph, E> {
        let _one = self
            .capture_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.capture_stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)
            .map_err(GpuError::from)?;
        let queued = {
            /// Points this thread back at the main stream however `queue` ends.
            struct Recording<'a>(&'a AtomicU64);
            impl Drop for Recording<'_> {
                fn drop(&mut self) {
                    self.0.store(0, Ordering::Relaxed);
                }
            }
            self.capturing.store(thread_number(), Ordering::Relaxed);
            let _recording = Recording(&self.capturing);
            queue()
        };
        let ended = self.context.bind_to_thread().and_then(|()| {
            // SAFETY: the capture stream is this context's and is capturing (begun above).
            unsafe { cudarc::driver::result::stream::end_capture(self.capture_stream.cu_stream()) }
        });
        let mut graph = Graph {
            graph: ended.map_err(GpuError::from)?,
            exec: std::ptr::null_mut(),
            context: self.context.clone(),
        };
        queued?;
        if graph.graph.is_null() {
            return Err(GpuError::Shape("capture: nothing was queued".into()).into());
        }
        if edges == Edges::Overlapped && self.arch.0 >= 9 {
            self.overlap(graph.graph)?;
        }
        // SAFETY: the graph was just captured and is owned by `graph`, which destroys it (and the executable).
        graph.exec = unsafe {
            cudarc::driver::result::graph::instantiate(
                graph.graph,
                sys::CUgraphInstantiate_flags(0),
            )
        }
        .map_err(GpuError::from)?;
        Ok(graph)
    }

    /// Makes each edge of `graph` from a kernel into a kernel of [`Gpu::waiting`] programmatic: the second kernel is
    /// launched once every block of the first has started, and its `wait_for_previous_kernel` waits for the rest.
    fn overlap(&self, graph: sys::CUgraph) -> Result<(), GpuError> {
        let waiting = self
            .waiting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut count = 0usize;
        let null = std::ptr::null_mut();
        // SAFETY: with null arrays the call only counts the edges of a valid graph.
        unsafe { sys::cuGraphGetEdges_v2(graph, null, null, std::ptr::null_mut(), &mut count) }
            .result()?;
        let mut from: Vec<sys::CUgraphNode> = vec![std::ptr::null_mut(); count];
        let mut to: Vec<sys::CUgraphNode> = vec![std::ptr::null_mut(); count];
        // SAFETY: an all-zero edge datum is valid (the default edge); the call overwrites each.
        let mut data: Vec<sys::CUgraphEdgeData> = vec![unsafe { std::mem::zeroed() }; count];
        // SAFETY: the three arrays hold `count` entries, the number of edges just counted.
        unsafe {
            sys::cuGraphGetEdges_v2(
                graph,
                from.as_mut_ptr(),
                to.as_mut_ptr(),
                data.as_mut_ptr(),
                &mut count,
            )
        }
        .result()?;
        let programmatic = sys::CUgraphEdgeData {
            from_port: sys::CU_GRAPH_KERNEL_NODE_PORT_LAUNCH_ORDER as u8,
            to_port: 0,
            type_: sys::CUgraphDependencyType::CU_GRAPH_DEPENDENCY_TYPE_PROGRAMMATIC as u8,
            reserved: [0; 5],
        };
        for i in 0..count.min(from.len()) {
            let plain = data[i].type_
                == sys::CUgraphDependencyType::CU_GRAPH_DEPENDENCY_TYPE_DEFAULT as u8
                && data[i].from_port == sys::CU_GRAPH_KERNEL_NODE_PORT_DEFAULT as u8;
            let waits = kernel_of(to[i])?.is_some_and(|f| waiting.contains(&(f as usize)));
            if !plain || !waits || kernel_of(from[i])?.is_none() {
                continue;
            }
            // SAFETY: the edge exists (just listed) and both nodes are kernel nodes of `graph`.
            unsafe {
                sys::cuGraphRemoveDependencies_v2(graph, &from[i], &to[i], &data[i], 1).result()?;
                sys::cuGraphAddDependencies_v2(graph, &from[i], &to[i], &programmatic, 1)
                    .result()?;
            }
        }
        Ok(())
    }

    /// Runs a captured graph on [`Gpu::stream`], in order with the work queued there.
    pub fn replay(&self, graph: &Graph) -> Result<(), GpuError> {
        self.context.bind_to_thread()?;
        // SAFETY: the executable graph is alive (borrowed) and the stream is this context's.
        unsafe { sys::cuGraphLaunch(graph.exec, self.stream().cu_stream()) }.result()?;
        Ok(())
    }

    /// `len` zeroed elements on the device.
    pub fn alloc<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        len: usize,
    ) -> Result<CudaSlice<T>, GpuError> {
        Ok(self.stream().alloc_zeros(len)?)
    }

    /// Launches `f` on [`Gpu::stream`] through cuLaunchKernelEx; with `after_previous`, as a programmatic dependent
    /// launch (compute capability 9.0): its blocks may start before the previous kernel of the stream has ended,
    /// and must `griddepcontrol.wait` before reading what that kernel writes.
    ///
    /// # Safety
    /// `args` holds the address of each of the kernel's arguments, in order, of the kernel's types, and the
    /// kernel's accesses stay within the buffers they point at.
    pub(crate) unsafe fn launch_ex(
        &self,
        f: &CudaFunction,
        config: LaunchConfig,
        after_previous: bool,
        args: &mut [*mut std::ffi::c_void],
    ) -> Result<(), GpuError> {
        use cudarc::driver::sys;
        // SAFETY: an all-zero launch attribute is a valid value; its id and value are set next.
        let mut attribute: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
        attribute.id =
            sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
        attribute.value.programmaticStreamSerializationAllowed = 1;
        let launch = sys::CUlaunchConfig {
            gridDimX: config.grid_dim.0,
            gridDimY: config.grid_dim.1,
            gridDimZ: config.grid_dim.2,
            blockDimX: config.block_dim.0,
            blockDimY: config.block_dim.1,
            blockDimZ: config.block_dim.2,
            sharedMemBytes: config.shared_mem_bytes,
            hStream: self.stream().cu_stream(),
            attrs: &mut attribute,
            numAttrs: u32::from(after_previous),
        };
        self.context.bind_to_thread()?;
        // SAFETY: the launch configuration and attribute live through the call; the caller vouches for args.
        unsafe {
            sys::cuLaunchKernelEx(
                &launch,
                f.cu_function(),
                args.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        }
        .result()?;
        Ok(())
    }

    /// Waits until everything queued on the stream has run, surfacing any asynchronous kernel error.
    pub fn synchronize(&self) -> Result<(), GpuError> {
        Ok(self.stream().synchronize()?)
    }
}

/// How [`Gpu::capture`] links the kernels it records one after the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edges {
    /// Each starts when the one before it has ended, as on a stream.
    InOrder,
    /// A kernel that waits for the one before it (`wait_for_previous_kernel`, kernels/cuda/prelude.cuh) is
    /// launched as soon as every block of that one has started (compute capability 9.0 and up; in order
    /// elsewhere): its launch, and its loads of constant data before the wait, overlap the previous kernel's end.
    Overlapped,
}

/// A captured graph and its executable, replayed by [`Gpu::replay`].
pub struct Graph {
    graph: sys::CUgraph,
    exec: sys::CUgraphExec,
    context: Arc<CudaContext>,
}

impl Drop for Graph {
    fn drop(&mut self) {
        // SAFETY: both handles are this graph's own (or null), destroyed once, here.
        unsafe {
            if !self.exec.is_null() {
                self.context
                    .record_err(cudarc::driver::result::graph::exec_destroy(self.exec));
            }
            if !self.graph.is_null() {
                self.context
                    .record_err(cudarc::driver::result::graph::destroy(self.graph));
            }
        }
    }
}

/// The function of a kernel node, None for other nodes.
fn kernel_of(node: sys::CUgraphNode) -> Result<Option<sys::CUfunction>, GpuError> {
    let mut kind = sys::CUgraphNodeType::CU_GRAPH_NODE_TYPE_EMPTY;
    // SAFETY: `node` is a node of a live graph.
    unsafe { sys::cuGraphNodeGetType(node, &mut kind) }.result()?;
    if kind != sys::CUgraphNodeType::CU_GRAPH_NODE_TYPE_KERNEL {
        return Ok(None);
    }
    // SAFETY: an all-zero parameter block is valid to be overwritten; `node` is a kernel node.
    let mut params: sys::CUDA_KERNEL_NODE_PARAMS = unsafe { std::mem::zeroed() };
    unsafe { sys::cuGraphKernelNodeGetParams_v2(node, &mut params) }.result()?;
    Ok((!params.func.is_null()).then_some(params.func))
}

/// The kernels (`.entry` names) of a PTX module whose code holds `griddepcontrol.wait`, guarded by a predicate or not
/// (prelude.cuh's `wait_for_previous_kernel_after` guards it with one that always holds).
fn waiting_kernels(ptx: &str) -> Vec<&str> {
    let mut found = Vec::new();
    let mut current: Option<&str> = None;
    for line in ptx.lines() {
        let line = line.trim_start();
        if let Some(rest) = line
            .strip_prefix(".visible .entry ")
            .or_else(|| line.strip_prefix(".entry "))
        {
            current = rest.split('(').next().map(str::trim);
        } else if line.contains(".func ") {
            current = None; // a device function of its own: not inlined into the entry above
        } else if unguarded(line).starts_with("griddepcontrol.wait") {
            if let Some(name) = current.take() {
                found.push(name);
            }
        }
    }
    found
}

/// A PTX instruction line without its `@p` / `@!p` guard.
fn unguarded(line: &str) -> &str {
    match line.strip_prefix('@') {
        Some(guarded) => guarded
            .split_once(char::is_whitespace)
            .map_or("", |(_, instruction)| instruction.trim_start()),
        None => line,
    }
}

/// A number for the calling thread, unique in the process and never 0.
fn thread_number() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    thread_local!(static NUMBER: u64 = NEXT.fetch_add(1, Ordering::Relaxed));
    NUMBER.with(|n| *n)
}

/// A KV cache's length before a step (the positions it holds), which the kernels taking it read from device memory
/// when they run instead of receiving it as a launch argument: one CUDA graph captured for a decode step then
/// serves every step, the host rewriting `len` before each replay. `max` is the most it will hold (the cache's
/// capacity less the step's tokens); the launchers check buffers against it.
#[derive(Clone, Copy)]
pub struct CachedLen<'a> {
    /// One u32 on the device.
    pub len: &'a CudaView<'a, u32>,
    /// Its largest value.
    pub max: usize,
}

impl CachedLen<'_> {
    /// Refuses a `len` that is not one element (`what` names the launcher).
    pub(crate) fn check(&self, what: &str) -> Result<(), GpuError> {
        if self.len.len() != 1 {
            return Err(GpuError::Shape(format!(
                "{what}: the cache length on the device must be one u32, got {}",
                self.len.len()
            )));
        }
        Ok(())
    }
}

/// The GPU for a GPU test, or `None` after printing `skipped: no CUDA device (<why>): <test>` where there is
/// none, so CPU-only machines compile and list the GPU tests and say by name which did not run.
pub fn test_gpu(test: &str) -> Option<Arc<Gpu>> {
    match Gpu::get(0) {
        Ok(gpu) => Some(gpu),
        Err(GpuError::NoDriver | GpuError::NoDevice { .. }) => {
            // Written to the stream itself: the test harness hides printed output of tests that pass.
            let _ = writeln!(std::io::stderr(), "skipped: no CUDA device: {test}");
            None
        }
        Err(other) => panic!("{test}: the GPU is there but unusable: {other}"),
    }
}

/// Where the PTX of `source` compiled with `options` by this NVRTC is kept between processes (NVRTC takes tens of
/// seconds for the larger files): `$OLIVE_PTX_CACHE`, else `$XDG_CACHE_HOME/olive-rs/ptx`, else
/// `~/.cache/olive-rs/ptx`, named by a hash of the source, the options (include folders too) and NVRTC's version.
/// None without a home.
fn ptx_cache_path(source: &KernelSource, options: &[String]) -> Option<PathBuf> {
    let dir = match std::env::var_os("OLIVE_PTX_CACHE") {
        Some(d) => PathBuf::from(d),
        None => std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?
            .join("olive-rs")
            .join("ptx"),
    };
    let (mut major, mut minor) = (0, 0);
    // SAFETY: NVRTC is loaded (Gpu::open checked it) and writes two ints.
    unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    let key = format!(
        "{}\0{}\0nvrtc {major}.{minor}",
        source.code,
        options.join(" ")
    );
    // Two independent 64-bit hashes: FNV-1a and its variant over the reversed bytes.
    let fnv = |bytes: &mut dyn Iterator<Item = u8>| {
        bytes.fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    };
    let (a, b) = (fnv(&mut key.bytes()), fnv(&mut key.bytes().rev()));
    let stem = source.file.trim_end_matches(".cu");
    Some(dir.join(format!("{stem}-{a:016x}{b:016x}.ptx")))
}

/// Writes `ptx` to `path` through a temporary file and a rename; a cache that cannot be written is skipped (the
/// kernels are compiled again next time).
fn store_ptx(path: &Path, ptx: &str) {
    let Some(dir) = path.parent() else { return };
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        std::process::id(),
        path.file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
    ));
    if std::fs::write(&tmp, ptx).is_ok() && std::fs::rename(&tmp, path).is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}

/// The folders a CUDA toolkit may be installed in: $CUDA_PATH, $CUDA_HOME, /usr/local/cuda.
fn cuda_roots() -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = ["CUDA_PATH", "CUDA_HOME"]
        .iter()
        .filter_map(std::env::var_os)
        .map(PathBuf::from)
        .collect();
    roots.push(PathBuf::from("/usr/local/cuda"));
    roots
}

/// The toolkit's include folders (NVRTC needs them for `cuda_fp16.h`/`cuda_bf16.h` where it lacks built-ins).
fn cuda_include_dirs() -> Vec<String> {
    cuda_roots()
        .into_iter()
        .map(|root| root.join("include"))
        .filter(|dir| dir.join("cuda_fp16.h").is_file())
        .map(|dir| dir.to_string_lossy().into_owned())
        .take(1)
        .collect()
}

/// Makes libnvrtc loadable: cudarc opens it by name, so where it is not on the loader path, the first one found
/// under a toolkit root is opened here (globally, never closed) and the later open by name finds it loaded.
fn load_nvrtc() -> Result<(), GpuError> {
    static LOADED: OnceLock<Result<(), String>> = OnceLock::new();
    let result = LOADED.get_or_init(|| {
        // SAFETY: only tries to dlopen the library.
        if unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            return Ok(());
        }
        let dirs: Vec<PathBuf> = cuda_roots()
            .into_iter()
            .flat_map(|root| [root.join("lib64"), root.join("targets/x86_64-linux/lib")])
            .collect();
        for dir in &dirs {
            if let Some(lib) = nvrtc_in(dir) {
                if dlopen_global(&lib) {
                    return Ok(());
                }
            }
        }
        Err(dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", "))
    });
    result
        .clone()
        .map_err(|searched| GpuError::NoNvrtc { searched })
}

/// `libnvrtc.so.<major>` (or plain `libnvrtc.so`) in `dir`.
fn nvrtc_in(dir: &Path) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libnvrtc.so"))
        })
        .collect();
    found.sort();
    found.into_iter().next()
}

fn dlopen_global(path: &Path) -> bool {
    let Ok(path) = CString::new(path.to_string_lossy().as_bytes()) else {
        return false;
    };
    // SAFETY: dlopen of a shared library by path; the handle is deliberately never closed.
    let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    !handle.is_null()
}

#[cfg(test)]
mod tests {
    use super::waiting_kernels;

    #[test]
    fn waiting_kernels_are_the_entries_whose_own_code_waits() {
        let ptx = "\
.version 9.0
.target sm_90a
.visible .entry first(
\t.param .u64 first_param_0
)
{
\tgriddepcontrol.wait;
\tret;
}
.visible .entry second(
)
{
\tret;
}
.func helper(
)
{
\tgriddepcontrol.wait;
}
.entry third()
{
\tld.param.u64 %rd1, [third_param_0];
\tgriddepcontrol.wait;
\tgriddepcontrol.wait;
}
.visible .entry fourth()
{
\t{
\t.reg .pred p;
\tsetp.ne.u32 p, %r1, %r2;
\t@p griddepcontrol.wait;
\t}
}
.visible .entry fifth()
{
\t@%p1 bra $L__BB0_2;
\tgriddepcontrol.launch_dependents;
}
";
        assert_eq!(waiting_kernels(ptx), ["first", "third", "fourth"]);
    }
}
