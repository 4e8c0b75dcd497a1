//! Where the decoder's shared KV buffers live (`st::engine::KvPlace`). On a CUDA device whose decoder
//! attends with st's node (its CUDA kernel, kernels/attention.cu) the buffers are the GPU's memory and
//! the engine reaches them only through ORT's copies: growing, snapshots (a frame's prefix), restores
//! (another question on the frame). The same code runs here with the CPU allocator's memory, and must
//! give the host buffers' bits: logits of a prefill, a one-token and a three-token step, a step that
//! outgrows the buffers (their positions copied into larger ones), a snapshot, and steps after a
//! truncate, other tokens over the truncated positions, and a partial restore of the snapshot. Which exports get device buffers is read from the manifest.

mod common;

use common::model;
use ndarray::{Array2, Array3};
use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
use st::engine::{DecoderState, Device, ExportedModel, KvPlace, SessionOptions};

/// Deterministic embeddings in [-1, 1) (an LCG; any values do, both runs get the same).
fn embeds(seed: u64, tokens: usize, hidden: usize) -> Array3<f32> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    Array3::from_shape_fn((1, tokens, hidden), |_| {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    })
}

/// Text positions `from..from + n` on all three M-RoPE axes.
fn positions(from: usize, n: usize) -> Array2<i64> {
    Array2::from_shape_fn((3, n), |(_, i)| (from + i) as i64)
}

/// Every step's logits and the snapshot, with the buffers at `place`.
fn run(model: &ExportedModel, place: KvPlace) -> (Vec<f32>, Vec<f32>) {
    let hidden = model.manifest.config.text.hidden_size;
    let mut s = DecoderState::new_at(model, place);
    let mut logits = Vec::new();
    let mut step = |s: &mut DecoderState, seed: u64, n: usize, keep: usize| {
        let from = s.len;
        let l = s.forward(model, embeds(seed, n, hidden), positions(from, n), keep).unwrap();
        logits.extend(l.iter().copied());
    };
    step(&mut s, 1, 200, 1);
    step(&mut s, 2, 1, 1);
    step(&mut s, 3, 3, 3);
    assert_eq!((s.len, s.capacity()), (204, 256));
    let snap = s.snapshot(204).unwrap();
    step(&mut s, 4, 60, 2); // 264 positions: the buffers grow to 512, the filled ones copied over
    assert_eq!(s.capacity(), 512);
    s.truncate(100);
    step(&mut s, 6, 30, 1); // positions 100..130 now hold other tokens
    s.restore(model, &snap, 50, 204).unwrap(); // ... and the snapshot's again
    assert_eq!(s.len, 204);
    step(&mut s, 5, 2, 2);
    let snapshot = snap.layers.iter().flat_map(|(k, v)| k.iter().chain(v.iter()).copied()).collect();
    (logits, snapshot)
}

#[test]
fn kv_buffers_reached_through_ort_copies_give_the_host_buffers_bits() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tiny");
    let mut opts = st_export::ExportOptions::new(st_export::Precision::Int4);
    opts.target = st_export::Target::Cuda; // st's attention node, as a CUDA run gets it
    st_export::export(&model("tiny"), &dir, &opts).unwrap();
    let m = ExportedModel::load(&dir, &SessionOptions { threads: Some(2), ..Default::default() }).unwrap();
    assert!(matches!(m.kv_place, KvPlace::Host), "the CPU provider keeps host buffers");
    let cpu = MemoryInfo::new(AllocationDevice::CPU, 0, AllocatorType::Device, MemoryType::Default).unwrap();
    let (host, host_snap) = run(&m, KvPlace::Host);
    let (copied, copied_snap) = run(&m, KvPlace::Allocator(cpu));
    assert!(host.iter().all(|v| v.is_finite()));
    assert!(host == copied, "logits differ between host buffers and buffers behind ORT's copies");
    assert!(host_snap == copied_snap, "snapshots differ");
}

#[test]
fn device_buffers_where_st_attention_runs_on_cuda() {
    let tmp = tempfile::tempdir().unwrap();
    let export = |name: &str, target: st_export::Target, attention: st_export::Attention| {
        let dir = tmp.path().join(name);
        let mut opts = st_export::ExportOptions::new(st_export::Precision::Fp32);
        (opts.target, opts.attention) = (target, attention);
        st_export::export(&model("tiny"), &dir, &opts).unwrap()
    };
    st::engine::init_ort(None).unwrap(); // a memory info is an ORT object (no GPU needed to describe one)
    let cuda = Device::Cuda { device_id: 1 };
    let st_cuda = export("st", st_export::Target::Cuda, st_export::Attention::StGroupQuery);
    assert_eq!(st_cuda.graphs["decoder"].precision["attention"], "ai.st.GroupQueryAttention");
    match KvPlace::for_model(&st_cuda, &cuda).unwrap() {
        KvPlace::Allocator(info) => {
            assert_eq!((info.allocation_device(), info.device_id()), (AllocationDevice::CUDA, 1));
        }
        KvPlace::Host => panic!("st's attention on CUDA keeps its cache on the device"),
    }
    assert!(matches!(KvPlace::for_model(&st_cuda, &Device::Cpu).unwrap(), KvPlace::Host));
    // ORT's node (fp16-only on CUDA: an f32 graph's runs on the CPU) and the standard form keep host buffers.
    let gqa = export("gqa", st_export::Target::Cuda, st_export::Attention::GroupQuery);
    assert_eq!(gqa.graphs["decoder"].precision["attention"], "com.microsoft.GroupQueryAttention");
    assert!(matches!(KvPlace::for_model(&gqa, &cuda).unwrap(), KvPlace::Host));
    let standard = export("standard", st_export::Target::Cuda, st_export::Attention::Standard);
    assert!(matches!(KvPlace::for_model(&standard, &cuda).unwrap(), KvPlace::Host));
}
