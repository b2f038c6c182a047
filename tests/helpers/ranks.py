"""Several ranks on one machine: gloo process groups of spawned processes, and ports for
servers that must be told a number."""

from __future__ import annotations

from pathlib import Path

# Ports for servers that must be told a number (Ray's GCS and agent ports): picked from
# 20000-32767, below the kernel's ephemeral range (32768-60999 by default) and above Ray's
# worker ports (10002-19999), so neither a port-0 bind nor an outgoing connection of any process
# can take one between the check and the server's own bind; distinct within this session.
_UNASSIGNED = range(20000, 32768)
_handed_out: set[int] = set()


def unassigned_port() -> int:
    """A port in 20000-32767 that nothing listens on now and this session has not handed out."""
    import random
    import socket

    ephemeral = Path("/proc/sys/net/ipv4/ip_local_port_range")
    low = int(ephemeral.read_text().split()[0]) if ephemeral.exists() else 32768
    candidates = [p for p in _UNASSIGNED if p < low and p not in _handed_out]
    random.SystemRandom().shuffle(candidates)
    for port in candidates:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port in {_UNASSIGNED.start}-{low - 1}")


def _gloo_rank(rank: int, world: int, out_dir: str, fn) -> None:
    import torch
    import torch.distributed as tdist

    torch.set_num_threads(1)
    # a file rendezvous: no port to pick in advance (gloo binds its own at the moment of use)
    tdist.init_process_group("gloo", init_method=f"file://{Path(out_dir) / 'rendezvous'}", rank=rank,
                             world_size=world)
    try:
        torch.save(fn(rank, world), Path(out_dir) / f"rank{rank}.pt")
    finally:
        tdist.destroy_process_group()


def on_gloo_ranks(fn, out_dir, world: int = 2) -> list:
    """``fn(rank, world)`` in ``world`` processes joined in one gloo process group (a module-level
    function: the processes are spawned); what each returned (tensors), in rank order."""
    import torch
    import torch.multiprocessing as mp

    mp.spawn(_gloo_rank, args=(world, str(out_dir), fn), nprocs=world, join=True)
    return [torch.load(Path(out_dir) / f"rank{r}.pt", weights_only=True) for r in range(world)]
