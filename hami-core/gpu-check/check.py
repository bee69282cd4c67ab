"""hami-core on a real NVIDIA GPU with PyTorch (run by run.sh, once per case).

Cases (the first argument):
  meminfo   print torch.cuda.mem_get_info() as "meminfo free=<bytes> total=<bytes>"
  oom       allocate 512 MiB blocks until PyTorch raises; print how many fit
  matmul    print bf16 matmul throughput as "matmul tflops=<x>" over a fixed time
"""
import sys
import time

import torch


def meminfo():
    free, total = torch.cuda.mem_get_info()
    print(f"meminfo free={free} total={total}")


def oom():
    blocks = []
    try:
        while len(blocks) < 10000:
            blocks.append(torch.empty(512 << 20, dtype=torch.uint8, device="cuda"))
    except torch.cuda.OutOfMemoryError as e:
        print(f"oom blocks={len(blocks)} error={type(e).__name__}")
        return
    print(f"oom blocks={len(blocks)} error=none")


def matmul(seconds=10.0, n=8192):
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start, iterations = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        a @ b
        iterations += 1
        if iterations % 10 == 0:
            torch.cuda.synchronize()
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    print(f"matmul tflops={2 * n**3 * iterations / elapsed / 1e12:.1f}")


if __name__ == "__main__":
    {"meminfo": meminfo, "oom": oom, "matmul": matmul}[sys.argv[1]]()
