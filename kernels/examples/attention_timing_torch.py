"""torch's scaled_dot_product_attention on the shapes of attention_timing.rs (causal, GQA via enable_gqa, bf16,
head_dim 128), CUDA events, median of 20 after 3 warm-ups: the baseline for attention.cu on the same GPU."""
import torch
import torch.nn.functional as F

SHAPES = [(1, 4096, 4096, 32, 8), (4, 1024, 1024, 32, 8), (1, 16384, 16384, 32, 8), (1, 1, 4096, 32, 8), (16, 1, 4096, 32, 8)]
D = 128
print(torch.cuda.get_device_name(), "torch", torch.__version__)
print("batch tokens kv_len heads kv_heads  median_ms  TFLOP/s")
for batch, tokens, kv_len, heads, kv_heads in SHAPES:
    q = torch.rand(batch, heads, tokens, D, device="cuda", dtype=torch.bfloat16) * 2 - 1
    k = torch.rand(batch, kv_heads, kv_len, D, device="cuda", dtype=torch.bfloat16) * 2 - 1
    v = torch.rand(batch, kv_heads, kv_len, D, device="cuda", dtype=torch.bfloat16) * 2 - 1
    # A query block after a cache needs an explicit mask (is_causal aligns to the top-left); decode sees all keys.
    causal = tokens == kv_len
    times = []
    for i in range(23):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
        e.record()
        e.synchronize()
        if i >= 3:
            times.append(s.elapsed_time(e))
    ms = sorted(times)[len(times) // 2]
    pairs = sum(kv_len - tokens + t + 1 for t in range(tokens))
    print(f"{batch:5} {tokens:6} {kv_len:6} {heads:5} {kv_heads:8}  {ms:9.4f}  {4 * D * pairs * batch * heads / (ms * 1e-3) / 1e12:7.1f}")
    if causal and tokens <= 4096:
        q.requires_grad_(), k.requires_grad_(), v.requires_grad_()
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        d_out = torch.rand_like(out) * 2 - 1
        times = []
        for i in range(23):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            torch.autograd.grad(out, (q, k, v), d_out, retain_graph=True)
            e.record()
            e.synchronize()
            if i >= 3:
                times.append(s.elapsed_time(e))
        ms = sorted(times)[len(times) // 2]
        print(f"  backward {ms:9.4f} ms  {2.5 * 4 * D * pairs * batch * heads / (ms * 1e-3) / 1e12:7.1f} TFLOP/s")
