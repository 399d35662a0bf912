"""Issue 16's own case: auto on a LayerNorm/GELU block over 16 tokens, the cost model before and after
sequence layers paid for their memory traffic (ntkit.rules.contract.DIRECT_*_WEIGHT), methods timed
interleaved in one process. `python benchmarks/auto_issue16_case.py > benchmarks/results/auto_issue16_case.txt`."""
# The issue-16 case (LayerNorm + GELU over 16 tokens, N1 = 128, N2 = 96, full), methods interleaved,
# median of 5, on the tree at HEAD and with the sequence-traffic weights set to 0 (the old cost model).
import torch, time, statistics, ntkit
from torch import nn
import ntkit.rules.contract as C
from ntkit.engine import cache
torch.manual_seed(0)
class Block(nn.Module):
    def __init__(s, d=32, h=64, c=10):
        super().__init__(); s.inp=nn.Linear(d,h); s.ln=nn.LayerNorm(h); s.mid=nn.Linear(h,h); s.ln2=nn.LayerNorm(h); s.out=nn.Linear(h,c)
    def forward(s,x):
        h=nn.functional.gelu(s.ln(s.inp(x))); h=nn.functional.gelu(s.ln2(s.mid(h)))+h
        return s.out(h.mean(1))
m=Block().eval(); x1=torch.randn(128,16,32); x2=torch.randn(96,16,32)
def t(**kw):
    s=time.perf_counter(); ntkit.ntk(m,x1,x2,**kw); return time.perf_counter()-s
res={}
for weights, tag in [((0.0,0.0),"old cost model"), ((150.0,8.0),"new cost model")]:
    C.DIRECT_PERMUTE_WEIGHT, C.DIRECT_ELEMENTWISE_WEIGHT = weights
    cache.clear(m); t(method="structured"); t(method="auto")
    for r in range(5):
        for k in ["jacobian","structured","auto"]:
            res.setdefault((tag,k),[]).append(t(method=k))
for (tag,k),v in res.items(): print(tag, k, round(statistics.median(v),4))
