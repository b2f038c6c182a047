"""python scripts/check_import_cycles.py [PREFIX ...]: import cycles between modules of mpcl and
data_prep that involve a module under one of the prefixes (default: mpcl.data, data_prep,
mpcl.bench), and any import of data_prep from mpcl. grimp's graph counts imports inside
functions too. Exit 1 if any."""
import sys

import grimp

prefixes = tuple(sys.argv[1:]) or ("mpcl.data", "data_prep", "mpcl.bench")
graph = grimp.build_graph("mpcl", "data_prep", include_external_packages=False)
mods = sorted(graph.modules)
edges = {m: set(graph.find_modules_directly_imported_by(m)) for m in mods}

# Tarjan's strongly connected components over module-level edges
index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]
sys.setrecursionlimit(10000)


def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on.add(v)
    for w in edges[v]:
        if w not in index:
            visit(w)
            low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop()
            on.discard(w)
            comp.append(w)
            if w == v:
                break
        if len(comp) > 1:
            sccs.append(sorted(comp))


for m in mods:
    if m not in index:
        visit(m)
bad = 0
for comp in sccs:
    if any(m.startswith(prefixes) for m in comp):
        print("cycle:", " <-> ".join(comp))
        bad += 1
up = [(m, i) for m in mods if m.startswith("mpcl") for i in edges[m] if i.startswith("data_prep")]
for m, i in up:
    print(f"mpcl imports data_prep: {m} -> {i}")
    bad += 1
print(f"{len(mods)} modules; " + ("no cycle touching " + ", ".join(prefixes) + "; no mpcl -> data_prep import"
                                  if not bad else f"{bad} problem(s)"))
sys.exit(1 if bad else 0)
