"""GPTQ reference for crates/quant/tests/golden_gptq.rs: a faithful torch port of AutoGPTQ's
`GPTQ.add_batch` / `GPTQ.fasterquant` and `Quantizer.find_params` / `quantize` (per channel, weight=True,
no mse search; IST-DASLab/gptq gptq.py + quant.py are the same algorithm), in float32 as GPTQ runs.

Rounding ties: a symmetric grid puts a group's largest |w| exactly on a tie (±7.5 levels at 4 bits), so the
last bit of an updated weight decides the level, in torch as in any other f32 code. The reference therefore
records which weights it met within TIE of a tie and its column order; the Rust test lets a row differ only
from such a weight on (GPTQ carries the other rounding into the row's later columns; rows are independent).

Writes tests/golden/out/gptq/reference.safetensors:
  W F32 [48, 80]; X F32 [256, 80] (correlated columns of unequal scale, so act-order matters);
  per case <name>: deq.<name> F32 [48, 80] (the dequantized weight), g_idx.<name> I32 [80],
  loss.<name> F64 [1] (sum of GPTQ's Losses; H counts X as one sample, as add_batch does for a 2-D input),
  tie.<name> U8 [48, 80] (1 where w/scale was within TIE of a rounding tie), order.<name> I64 [80] (the
  column order of the loop: act-order's perm, else 0..80).
Cases: bits 4, group 16 / 32 (ragged: 80 = 2·32 + 16) / -1, sym and asym, act-order off and on, plus
static groups with act-order and one 3-bit case. block size: the group size for grouped cases (with
blocks that start at every group the reference's grid sees every earlier column's update, which is what
crates/quant computes for any block size; see crates/quant/src/gptq.rs), 128 per channel.

Usage: python tests/golden/gptq_reference.py [out_dir]   (gen_golden.py calls write_gptq_case)
"""

import hashlib
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

SEED = 20261125
DTYPE = torch.float32
TIE = 1e-4
ROWS, COLS, TOKENS = 48, 80, 256
CASES = [
    # name, bits, group_size, sym, act_order, static_groups
    *[
        (f"b4_g{g if g > 0 else 'ch'}_{'sym' if s else 'asym'}_{'act' if a else 'seq'}", 4, g, s, a, False)
        for g in (16, 32, -1)
        for s in (False, True)
        for a in (False, True)
    ],
    ("b4_g32_asym_act_static", 4, 32, False, True, True),
    ("b3_g32_asym_act", 3, 32, False, True, False),
]


class Quantizer:
    """AutoGPTQ quantizer.py Quantizer (perchannel=True, mse=False), weight=True path."""

    def __init__(self, bits: int, sym: bool):
        self.maxq = torch.tensor(2**bits - 1)
        self.sym = sym

    def find_params(self, x: torch.Tensor) -> None:
        tmp = torch.zeros(x.shape[0], dtype=x.dtype)
        xmin = torch.minimum(x.min(1)[0], tmp)
        xmax = torch.maximum(x.max(1)[0], tmp)
        if self.sym:
            xmax = torch.maximum(torch.abs(xmin), xmax)
            tmp = xmin < 0
            if torch.any(tmp):
                xmin[tmp] = -xmax[tmp]
        tmp = (xmin == 0) & (xmax == 0)
        xmin[tmp] = -1
        xmax[tmp] = +1
        scale = (xmax - xmin) / self.maxq
        if self.sym:
            zero = torch.full_like(scale, (self.maxq + 1) / 2)
        else:
            zero = torch.round(-xmin / scale)
        self.scale = scale.reshape(-1, 1)
        self.zero = zero.reshape(-1, 1)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        r = x / self.scale
        self.near_tie = ((r - r.floor() - 0.5).abs() < TIE).flatten()
        q = torch.clamp(torch.round(r) + self.zero, 0, self.maxq)
        return self.scale * (q - self.zero)


def hessian(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """add_batch with a 2-D input: unsqueezed to one sample."""
    h = torch.zeros((COLS, COLS), dtype=x.dtype)
    nsamples = 0
    inp = x.unsqueeze(0)
    tmp = inp.shape[0]
    inp = inp.reshape((-1, inp.shape[-1])).t()
    h *= nsamples / (nsamples + tmp)
    nsamples += tmp
    inp = (2 / nsamples) ** 0.5 * inp
    h += inp.matmul(inp.t())
    return h, nsamples


def fasterquant(w, h, bits, group_size, sym, actorder, static_groups, blocksize, percdamp=0.01):
    """AutoGPTQ GPTQ.fasterquant; returns (dequantized W, g_idx, sum of Losses, near-tie mask, order)."""
    W = w.clone()
    columns = W.shape[1]
    quantizer = Quantizer(bits, sym)
    quantizer.find_params(W)
    H = h.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    groups = []
    if static_groups:
        for i in range(0, columns, group_size):
            g = Quantizer(bits, sym)
            g.find_params(W[:, i : (i + group_size)])
            groups.append(g)
    if actorder:
        perm = torch.argsort(torch.diag(H), descending=True)
        W = W[:, perm]
        H = H[perm][:, perm]
        invperm = torch.argsort(perm)
    Losses = torch.zeros_like(W)
    Q = torch.zeros_like(W)
    ties = torch.zeros(W.shape, dtype=torch.uint8)
    damp = percdamp * torch.mean(torch.diag(H))
    diag = torch.arange(columns)
    H[diag, diag] += damp
    H = torch.linalg.cholesky(H)
    H = torch.cholesky_inverse(H)
    H = torch.linalg.cholesky(H, upper=True)
    Hinv = H
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Losses1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(count):
            w_ = W1[:, i]
            d = Hinv1[i, i]
            if group_size != -1:
                if not static_groups:
                    if (i1 + i) % group_size == 0:
                        quantizer.find_params(W[:, (i1 + i) : (i1 + i + group_size)])
                else:
                    idx = i1 + i
                    if actorder:
                        idx = perm[idx]
                    quantizer = groups[idx // group_size]
            q = quantizer.quantize(w_.unsqueeze(1)).flatten()
            ties[:, i1 + i] = quantizer.near_tie
            Q1[:, i] = q
            Losses1[:, i] = (w_ - q) ** 2 / d**2
            err1 = (w_ - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1
        Q[:, i1:i2] = Q1
        Losses[:, i1:i2] = Losses1 / 2
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    gs = group_size if group_size != -1 else columns
    if static_groups and actorder:
        g_idx = [int(perm[i]) // gs for i in range(columns)]
    else:
        g_idx = [i // gs for i in range(columns)]
    g_idx = torch.tensor(g_idx, dtype=torch.int32)
    order = torch.arange(columns)
    if actorder:
        Q = Q[:, invperm]
        g_idx = g_idx[invperm]
        ties = ties[:, invperm]
        order = perm
    return Q, g_idx, float(torch.sum(Losses)), ties, order


def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(SEED)
    w = torch.randn(ROWS, COLS, generator=g, dtype=torch.float64) * 0.05
    w[torch.rand(ROWS, COLS, generator=g) < 0.01] *= 8.0  # a few outliers
    mix = torch.eye(COLS, dtype=torch.float64) + 0.4 * torch.randn(COLS, COLS, generator=g, dtype=torch.float64)
    col_scale = torch.exp(0.7 * torch.randn(COLS, generator=g, dtype=torch.float64))
    x = (torch.randn(TOKENS, COLS, generator=g, dtype=torch.float64) @ mix) * col_scale
    # f32 values, so both sides start from identical numbers
    return w.float().to(DTYPE), x.float().to(DTYPE)


def build(dest: Path) -> None:
    w, x = inputs()
    h, _ = hessian(x)
    tensors = {"W": w.float().contiguous(), "X": x.float().contiguous()}
    for name, bits, group, sym, act, static in CASES:
        blocksize = group if group > 0 else 128
        q, g_idx, loss, ties, order = fasterquant(w, h, bits, group, sym, act, static, blocksize)
        tensors[f"deq.{name}"] = q.float().contiguous()
        tensors[f"g_idx.{name}"] = g_idx.contiguous()
        tensors[f"loss.{name}"] = torch.tensor([loss], dtype=torch.float64)
        tensors[f"tie.{name}"] = ties.contiguous()
        tensors[f"order.{name}"] = order.to(torch.int64).contiguous()
        print(f"[golden] gptq {name}: loss {loss:.6g}, {int(ties.sum())} weights near a rounding tie")
    save_file(tensors, str(dest / "reference.safetensors"))


def write_gptq_case(out: Path) -> None:
    """Writes out/gptq unless its stamp (this file + torch version) matches; temp folder + rename."""
    dest = out / "gptq"
    stamp = hashlib.sha256(Path(__file__).read_bytes() + torch.__version__.encode()).hexdigest()
    if (dest / "stamp").is_file() and (dest / "stamp").read_text() == stamp:
        print("[golden] gptq: up to date")
        return
    tmp = out / ".gptq.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    build(tmp)
    (tmp / "stamp").write_text(stamp)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    print("[golden] gptq: written")


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "out"
    target.mkdir(parents=True, exist_ok=True)
    write_gptq_case(target)
