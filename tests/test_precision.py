"""The precision setting (auto/fp32/bf16/fp16), the accuracy guard for bf16, and the process runtime settings."""

import warnings

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import randomize, tiny_config
from linearsr import precision as prec, runtime
from linearsr.inference.pipeline import LinearSR
from linearsr.model.attention import linear_attention
from linearsr.model.network import LinearSRModel

INTEL_SPR = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
ZEN4 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n"
SKYLAKE = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw\n"
ARM = "processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n"


# ---- auto resolution --------------------------------------------------------------------------------
@pytest.mark.parametrize("text, fast", [(INTEL_SPR, True), (ZEN4, True), (SKYLAKE, False), (ARM, False), ("", False)])
def test_cpu_bf16_detection_reads_the_cpuinfo_flags(text, fast):
    assert prec.cpu_has_fast_bf16(text) is fast


@pytest.mark.parametrize("fast, want", [(True, "bf16"), (False, "fp32")])
def test_auto_on_cpu_follows_the_detection(monkeypatch, fast, want):
    monkeypatch.setattr(prec, "_this_cpu_has_fast_bf16", lambda: fast)
    assert prec.resolve_precision("auto", "cpu") == want
    assert prec.resolve_precision("fp32", "cpu") == "fp32"  # explicit choices are never changed
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert prec.resolve_precision("bf16", "cpu") == "bf16"
    # bf16 without the CPU's bf16 instructions is obeyed, with one warning that says why it is slow
    assert [str(w.message) for w in seen] == ([] if fast else [prec.SLOW_BF16])


@pytest.mark.parametrize("capability, want", [((7, 5), "fp32"), ((8, 0), "bf16"), ((9, 0), "bf16")])
def test_auto_on_cuda_needs_compute_capability_8(monkeypatch, capability, want):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert prec.resolve_precision("auto", "cuda") == want
    assert prec.resolve_precision("fp16", "cuda") == "fp16"


def test_auto_elsewhere_is_fp32_and_bad_choices_fail():
    assert prec.resolve_precision("auto", "mps") == "fp32"
    with pytest.raises(ValueError, match="fp16 is for GPUs"):
        prec.resolve_precision("fp16", "cpu")
    with pytest.raises(ValueError, match="unknown precision"):
        prec.resolve_precision("int8", "cpu")


def test_pipeline_resolves_auto_once(monkeypatch, tiny_model):
    monkeypatch.setattr(prec, "_this_cpu_has_fast_bf16", lambda: False)
    assert LinearSR(tiny_model, device="cpu").precision == "fp32"
    monkeypatch.setattr(prec, "_this_cpu_has_fast_bf16", lambda: True)
    sr = LinearSR(tiny_model, device="cpu")
    assert sr.precision == "bf16"
    sr.enhance_arrays(np.full((8, 8, 3), 0.5, np.float32))
    assert sr.last_run["precision"] == "bf16"


# ---- numerics under bf16 ----------------------------------------------------------------------------
class MatmulDtypes(TorchDispatchMode):
    """Records the input dtypes of every matrix product that reaches the kernels (after autocast's casts)."""

    OPS = {"aten::bmm", "aten::mm", "aten::matmul", "aten::baddbmm"}

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func._schema.name in self.OPS:
            self.seen.append(tuple(a.dtype for a in args if isinstance(a, torch.Tensor)))
        return func(*args, **(kwargs or {}))


def test_linear_attention_summary_stays_fp32_under_bf16_autocast():
    q, k, v = (torch.randn(1, 2, 64, 8, dtype=torch.bfloat16) for _ in range(3))
    with torch.autocast("cpu", dtype=torch.bfloat16), MatmulDtypes() as mode:
        out = linear_attention(q, k, v)
    assert mode.seen and all(d == torch.float32 for dtypes in mode.seen for d in dtypes), mode.seen
    assert out.dtype == torch.bfloat16  # handed back in the caller's precision


def _photo_like(h=32, w=40, seed=0):
    """Smooth colour gradients plus fine grain: the two things an upscaler has to get right."""
    yy, xx = np.mgrid[0:h, 0:w] / float(h)
    img = np.stack([0.5 + 0.4 * np.sin(3 * xx + yy), 0.5 + 0.3 * np.cos(2 * yy), 0.4 + 0.3 * xx * yy], -1)
    img = img + np.random.default_rng(seed).normal(0, 0.03, img.shape)
    return np.clip(img, 0, 1).astype(np.float32)


def _psnr(a, b):
    return 10 * np.log10(1.0 / max(float(np.mean((a - b) ** 2)), 1e-20))


@pytest.mark.parametrize("steps, eta, bound", [(1, 0.0, 40.0), (8, 0.3, 35.0)])
def test_bf16_output_stays_close_to_fp32(steps, eta, bound):
    """The accuracy guard: the same model and input through the pipeline in bf16 and fp32. The tiny random
    model gets looser bounds than the bundled one (45 / 40 dB, measured in docs/benchmarks.md)."""
    model = randomize(LinearSRModel(tiny_config())).eval()
    img = _photo_like()
    kw = dict(steps=steps, eta=eta, color_fix="none", seed=3)
    ref, _ = LinearSR(model, precision="fp32").enhance_arrays(img, **kw)
    low, _ = LinearSR(model, precision="bf16").enhance_arrays(img, **kw)
    plain, _ = LinearSR(LinearSRModel(tiny_config()), precision="fp32").enhance_arrays(img, **kw)  # bicubic
    assert not np.array_equal(ref, low)  # bf16 really ran
    assert _psnr(ref, low) >= bound
    assert _psnr(ref, plain) < bound - 10  # the model changes the image far more than bf16 does


# ---- runtime: threads and allocator -----------------------------------------------------------------
def test_thread_count_respects_env_ranks_affinity_and_quota():
    assert runtime.thread_count({"OMP_NUM_THREADS": "3"}, affinity=16) == 3
    assert runtime.thread_count({}, affinity=16, quota=0) == 16
    assert runtime.thread_count({"LOCAL_WORLD_SIZE": "4", "WORLD_SIZE": "8"}, affinity=16, quota=0) == 4
    assert runtime.thread_count({"WORLD_SIZE": "2"}, affinity=16, quota=0) == 8  # single node, no LOCAL_*
    assert runtime.thread_count({"LOCAL_WORLD_SIZE": "4"}, affinity=2, quota=0) == 1  # never below one
    assert runtime.thread_count({}, affinity=16, quota=2.5) == 3  # cgroup cpu.max of 2.5 CPUs


def test_configure_threads_only_lowers_torch_threads():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert runtime.configure_threads({"OMP_NUM_THREADS": "4"}) == 4
        assert torch.get_num_threads() == 1  # a caller who chose fewer threads is left alone
        torch.set_num_threads(2)
        runtime.configure_threads({"OMP_NUM_THREADS": "1"})
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_allocator_tuning_is_idempotent_and_releases_only_large_growth():
    first = runtime.tune_allocator()
    assert runtime.tune_allocator() is first
    if not first or runtime.resident_bytes() is None:
        assert runtime.release_memory() is False  # not glibc: nothing to do, and nothing breaks
        return
    runtime.release_memory(keep_bytes=0)  # start from a trimmed heap
    x = torch.ones(64 * 2**20 // 4)  # a 64 MiB block: from the heap now, not a fresh mmap
    x.add_(1)
    del x  # freed but kept by the heap for the next image
    assert runtime.release_memory(keep_bytes=1 << 30) is False  # small growth: kept
    assert runtime.release_memory(keep_bytes=16 * 2**20) is True  # past the allowance: handed back


def test_restore_allocator_makes_fresh_blocks_visible_again():
    """After tuned work the heap keeps freed memory, so a new block adds nothing to the resident set; the
    restored allocator maps it afresh, which is what a later memory measurement needs."""
    from linearsr.evaluation.procinfo import PeakMemory

    if not runtime.tune_allocator() or runtime.resident_bytes() is None:
        pytest.skip("not glibc on Linux: no allocator tuning to undo")
    kept = np.ones(30_000_000)  # 240 MB through the tuned heap, then kept by it
    del kept
    runtime.restore_allocator()
    with PeakMemory() as mem:
        block = np.ones(20_000_000)
        del block
    assert mem.peak_bytes > 100e6
    assert runtime.tune_allocator() is True  # tuning again works after a restore


def test_cpu_pipeline_bands_the_mix_ffn_whatever_the_memory(tiny_model, monkeypatch):
    """On a CPU the Mix-FFN always runs in bands of CPU_FFN_ROWS token rows (faster and a smaller heap), with
    the same result as the whole grid."""
    from linearsr.inference import pipeline

    sr = LinearSR(tiny_model, device="cpu", precision="fp32")
    assert sr._plan(1024, 1024, "off", None, budget=2**40, batch=1)["ffn_chunk_rows"] == pipeline.CPU_FFN_ROWS
    img = _photo_like(48, 40)  # x4 with the tiny codec (4x): a 48-row token grid, more than one band
    banded, _ = sr.enhance_arrays(img, steps=1)
    assert sr.last_run["plans"][0]["ffn_chunk_rows"] == pipeline.CPU_FFN_ROWS
    monkeypatch.setattr(pipeline, "CPU_FFN_ROWS", 10**6)  # one band = the whole grid
    whole, _ = sr.enhance_arrays(img, steps=1)
    assert np.abs(banded - whole).max() < 1e-5


def test_warm_up_falls_back_to_eager_when_compilation_fails(tiny_model, monkeypatch):
    sr = LinearSR(tiny_model, device="cpu", precision="fp32")
    assert sr.warm_up() > 0 and not sr.compiled  # eager: just one small upscale
    sr.compiled = True  # as after compile=True, without paying for a real compilation in a unit test
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("inductor: no C compiler")
        return None, None

    monkeypatch.setattr(sr, "enhance_arrays", flaky)
    with pytest.warns(UserWarning, match="torch.compile failed"):
        sr.warm_up()
    assert not sr.compiled and len(calls) == 2
    assert all(getattr(e, "_compiled_call_impl", None) is None for e in tiny_model.experts)
