import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from linearsr.model.attention import SelfAttention, linear_attention, softmax_attention


def naive_linear_attention(q, k, v, eps=1e-15):
    """The ReLU-kernel formula written out with the N x N weight matrix (what linear attention avoids)."""
    q, k = torch.relu(q), torch.relu(k)
    weights = q @ k.transpose(-1, -2)  # (B, H, N, N)
    return (weights @ v) / (weights.sum(-1, keepdim=True) + eps)


@pytest.mark.parametrize("shape", [(1, 1, 7, 4), (2, 3, 64, 8), (1, 2, 300, 16)])
def test_linear_attention_matches_quadratic_formula(shape):
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(3))
    ref = naive_linear_attention(q, k, v)
    out = linear_attention(q, k, v)
    assert out.dtype == torch.float64
    assert torch.allclose(out, ref, atol=1e-6, rtol=0), (out - ref).abs().max()
    out32 = linear_attention(q.float(), k.float(), v.float()).double()
    assert torch.allclose(out32, ref, atol=1e-4, rtol=1e-4), (out32 - ref).abs().max()


def test_all_zero_keys_give_zero_not_nan():
    q = torch.randn(1, 2, 16, 8)
    k = -torch.rand(1, 2, 16, 8)  # ReLU maps every key to exactly zero
    out = linear_attention(q, k, torch.randn(1, 2, 16, 8))
    assert torch.isfinite(out).all() and (out == 0).all()


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor any op produces: a memory measure that does not depend on timing."""

    def __init__(self):
        super().__init__()
        self.max_numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.max_numel = max(self.max_numel, t.numel())
        return out


def largest_intermediate(attend, n, heads=2, d=8):
    q, k, v = (torch.randn(1, heads, n, d) for _ in range(3))
    with LargestTensor() as probe:
        attend(q, k, v)
    return probe.max_numel


def test_linear_attention_memory_is_linear_in_tokens():
    small, large = largest_intermediate(linear_attention, 256), largest_intermediate(linear_attention, 4096)
    assert large <= 16 * small * 1.05  # 16x the tokens -> at most ~16x the largest tensor
    assert large <= 2 * 4096 * (8 + 1)  # never more than O(N * heads * (d + 1))
    # the quadratic reference does build N x N: the probe can tell the difference
    assert largest_intermediate(naive_linear_attention, 1024) >= 2 * 1024 * 1024


def test_fp16_large_inputs_stay_finite():
    attn = SelfAttention(32, 4).half()
    x = (torch.randn(1, 256, 32) * 300).half()
    out = attn(x)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()


def test_bf16_autocast_close_to_fp32():
    torch.manual_seed(0)
    attn = SelfAttention(32, 4)
    x = torch.randn(2, 128, 32)
    ref = attn(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attn(x)
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).abs().max() < 0.05 * ref.abs().max()


def test_softmax_twin_shares_parameters():
    lin, soft = SelfAttention(16, 2, "linear"), SelfAttention(16, 2, "softmax")
    assert lin.state_dict().keys() == soft.state_dict().keys()
    soft.load_state_dict(lin.state_dict())
    x = torch.randn(1, 20, 16)
    assert not torch.allclose(lin(x), soft(x))  # same weights, different attention
    q, k, v = (torch.randn(1, 2, 20, 8) for _ in range(3))
    ref = torch.softmax(q @ k.transpose(-1, -2) / 8**0.5, -1) @ v
    assert torch.allclose(softmax_attention(q, k, v), ref, atol=1e-5)
