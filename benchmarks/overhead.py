import torch, time, statistics, stableeig as se
torch.set_num_threads(1)
for mode in ("eval", "train"):
    L = se.nn.ZCAWhitening2d(64, group_size=16)
    x = torch.randn(4, 64, 2, 2)
    L(x)
    if mode == "eval": L.eval()
    ts=[]
    for r in range(7):
        t=time.perf_counter()
        with torch.no_grad():
            for _ in range(300): L(x)
        ts.append((time.perf_counter()-t)/300*1e6)
    print(mode, "us/call", round(statistics.median(ts),1))
